"""One entry for every payload format: the profile says which parser reads a message."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime

from ingest.formats.json_map import parse_json_map
from ingest.formats.plain import parse_plain
from ingest.formats.senml import parse_senml
from ingest.payloads import (
    UNKNOWN_DEVICE,
    DeviceInfo,
    Limits,
    ParsedMessage,
    clip,
    device_problem,
    parse_iotp_payload,
    rejected,
    size_problem,
)
from iotp.device_profiles import DeviceProfile, PayloadFormat, TopicKind, TopicMatch

FormatParser = Callable[
    [DeviceProfile, TopicMatch, DeviceInfo, bytes, datetime, Limits], ParsedMessage
]


def _parse_iotp(
    profile: DeviceProfile,
    match: TopicMatch,
    device: DeviceInfo,
    payload: bytes,
    received_at: datetime,
    limits: Limits,
) -> ParsedMessage:
    return parse_iotp_payload(device, payload, received_at, limits)


PARSERS: Mapping[PayloadFormat, FormatParser] = {
    PayloadFormat.IOTP: _parse_iotp,
    PayloadFormat.SENML_JSON: parse_senml,
    PayloadFormat.JSON_MAP: parse_json_map,
    PayloadFormat.PLAIN: parse_plain,
}


def parse_payload(
    profile: DeviceProfile,
    match: TopicMatch,
    payload: bytes,
    received_at: datetime,
    device: DeviceInfo | None,
    limits: Limits,
) -> ParsedMessage:
    """Validate one telemetry message of a profile's tree into readings and rejections.

    ``device`` is the device the topic's name (or a gateway's friendly name) stands for,
    None when no registered device does.
    """
    if match.kind is not TopicKind.TELEMETRY:
        raise ValueError(f"a {match.kind} topic carries no telemetry")
    if device is None:
        name = clip(match.device or "")
        return rejected(None, UNKNOWN_DEVICE, f"no registered device publishes as {name!r}")
    problem = size_problem(payload, limits) or device_problem(device.device_id, device)
    if problem is not None:
        return rejected(device.device_id, *problem)
    return PARSERS[profile.payload_format](profile, match, device, payload, received_at, limits)
