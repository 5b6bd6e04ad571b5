"""Vendor JSON read declaratively: each metric at a JSON path, and maybe a time at another.

A payload yields one reading: the metrics whose paths it holds (firmware leaves out sensors
that have nothing to say), at the time its timestamp path gives, or at the receive time when
the profile names none. An ISO 8601 time without an offset is wall time in the profile's
zone: a time the clocks skipped (spring forward) is refused, and a time they passed twice
(fall back) is taken at its first passing (PEP 495's fold=0).
"""

from __future__ import annotations

import functools
import math
from datetime import UTC, datetime, timedelta
from typing import Final
from zoneinfo import ZoneInfo

from ingest.payloads import (
    INVALID_SHAPE,
    INVALID_TIMESTAMP,
    DeviceInfo,
    Limits,
    ParsedMessage,
    PayloadError,
    Problem,
    Reading,
    Rejection,
    check_metrics,
    clip,
    decode_json,
    rejected,
    time_problem,
)
from iotp.device_profiles import (
    DeviceProfile,
    JsonPath,
    TimestampField,
    TimestampUnit,
    TopicMatch,
    parse_json_path,
)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MISSING: Final = object()
# A profile's paths are few and read for every message: each is parsed once.
_path = functools.lru_cache(maxsize=4096)(parse_json_path)


def resolve(document: object, path: JsonPath) -> object:
    """The value at ``path`` in a JSON document, or ``MISSING``."""
    for step in path:
        if isinstance(step, int):
            if not isinstance(document, list) or step >= len(document):
                return MISSING
            document = document[step]
        elif isinstance(document, dict) and step in document:
            document = document[step]
        else:
            return MISSING
    return document


def parse_json_map(
    profile: DeviceProfile,
    match: TopicMatch,
    device: DeviceInfo,
    payload: bytes,
    received_at: datetime,
    limits: Limits,
) -> ParsedMessage:
    """The reading of a JSON object from an active device of a json-map profile."""
    device_id = device.device_id
    try:
        document = decode_json(payload)
    except PayloadError as exc:
        return rejected(device_id, exc.reason, exc.detail)
    if not isinstance(document, dict):
        return rejected(device_id, INVALID_SHAPE, "a json-map payload must be a JSON object")
    ts = received_at
    if profile.timestamp is not None:
        read = _timestamp(document, profile.timestamp, received_at, limits)
        if isinstance(read, tuple):
            return rejected(device_id, *read)
        ts = read
    found = [
        (mapping.metric, value)
        for mapping in profile.metrics
        if (value := resolve(document, _path(mapping.source))) is not MISSING
    ]
    if not found:
        detail = f"none of profile {profile.name!r}'s metric paths is in the payload"
        return rejected(device_id, INVALID_SHAPE, detail)
    if len(found) > limits.max_metrics:
        detail = f"more than {limits.max_metrics} metrics in one reading"
        return rejected(device_id, INVALID_SHAPE, detail)
    kept, breaches, problems = check_metrics(found, device)
    readings = (Reading(ts, kept, breaches),) if kept else ()
    return ParsedMessage(device_id, readings, tuple(Rejection(*p) for p in problems))


def _timestamp(
    document: object, spec: TimestampField, received_at: datetime, limits: Limits
) -> datetime | Problem:
    label = f"timestamp {clip(spec.path)!r}"
    raw = resolve(document, _path(spec.path))
    if raw is MISSING:
        return INVALID_TIMESTAMP, f"{label} is not in the payload"
    if spec.unit is TimestampUnit.ISO8601:
        ts = _from_text(raw, spec.time_zone, label)
    else:
        ts = _from_epoch(raw, spec.unit, label)
    if isinstance(ts, tuple):
        return ts
    return time_problem(ts, received_at, limits, label) or ts


def _from_epoch(raw: object, unit: TimestampUnit, label: str) -> datetime | Problem:
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
        return INVALID_TIMESTAMP, f"{label} must be a number of epoch {unit}"
    try:
        seconds = raw if unit is TimestampUnit.SECONDS else raw / 1000
        return _EPOCH + timedelta(seconds=seconds)
    except OverflowError:
        return INVALID_TIMESTAMP, f"{label} is out of range"


def _from_text(raw: object, zone_name: str | None, label: str) -> datetime | Problem:
    if not isinstance(raw, str):
        return INVALID_TIMESTAMP, f"{label} must be ISO 8601 text"
    try:
        ts = datetime.fromisoformat(raw)
    except ValueError:
        return INVALID_TIMESTAMP, f"{label} {clip(raw)!r} is not ISO 8601"
    if ts.tzinfo is not None:
        return ts.astimezone(UTC)
    if zone_name is None:
        return INVALID_TIMESTAMP, f"{label} {clip(raw)!r} has no UTC offset and no time zone"
    zone = ZoneInfo(zone_name)
    aware = ts.replace(tzinfo=zone)
    # A wall time the clocks skipped does not survive the round trip through UTC.
    if aware.astimezone(UTC).astimezone(zone).replace(tzinfo=None) != ts:
        return INVALID_TIMESTAMP, f"{label} {clip(raw)!r} never happened in {zone_name}"
    return aware.astimezone(UTC)
