"""Plain values: a topic level names the metric and the payload is one number as text.

ESPHome publishes ``<node>/sensor/<name>/state`` with ``23.5``, and ``nan`` when the sensor
has no reading. The number is written as JSON writes one (a sign, digits, a fraction, an
exponent), so that ``nan``, ``inf``, ``1_000`` or ``unknown`` are refused (``invalid_value``),
and stored at the receive time: the payload carries none.
"""

from __future__ import annotations

import re
from datetime import datetime

from ingest.formats.metric_names import metric_for
from ingest.payloads import (
    INVALID_TOPIC,
    INVALID_VALUE,
    DeviceInfo,
    Limits,
    ParsedMessage,
    PayloadError,
    Reading,
    Rejection,
    check_metrics,
    clip,
    decode_text,
    rejected,
)
from iotp.device_profiles import DeviceProfile, TopicMatch

_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
# What firmware puts around a value: a trailing newline from a shell, spaces from a printf.
_PADDING = " \t\r\n"


def parse_plain(
    profile: DeviceProfile,
    match: TopicMatch,
    device: DeviceInfo,
    payload: bytes,
    received_at: datetime,
    limits: Limits,
) -> ParsedMessage:
    """The reading of one plain number from an active device of a plain profile."""
    device_id = device.device_id
    if match.metric is None:
        return rejected(device_id, INVALID_TOPIC, "the topic names no metric")
    metric = metric_for(profile, match.metric, match.device)
    if isinstance(metric, tuple):
        return rejected(device_id, *metric)
    try:
        text = decode_text(payload).strip(_PADDING)
    except PayloadError as exc:
        return rejected(device_id, exc.reason, exc.detail)
    if _NUMBER.fullmatch(text) is None:
        return rejected(
            device_id, INVALID_VALUE, f"metric {metric!r}: {clip(text)!r} is not a number"
        )
    kept, breaches, problems = check_metrics(((metric, float(text)),), device)
    readings = (Reading(received_at, kept, breaches),) if kept else ()
    return ParsedMessage(device_id, readings, tuple(Rejection(*p) for p in problems))
