"""SenML packs (RFC 8428, JSON): records resolved against their base fields into readings.

Each record's name is the base name and its own name joined; its time the base time plus
its own, absolute from 2**28 seconds on and otherwise relative to the receive time (zero or
negative: now or the past); its value the base value plus its own ``v``, or else the base
sum plus its own sum ``s`` (a record holding both stores its value). Records of the same
time make one reading. A malformed base field, a record that is not an object or a field
the receiver must understand (a label ending in '_') refuses the whole pack, whose meaning
depends on it; anything else refuses only its record, with the record's index.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from ingest.formats.metric_names import metric_for
from ingest.payloads import (
    BASE_NAME_MISMATCH,
    DUPLICATE_RECORD,
    INVALID_SHAPE,
    INVALID_TIMESTAMP,
    TOO_MANY_READINGS,
    UNSUPPORTED_VALUE,
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
from iotp.device_profiles import DEVICE, DeviceProfile, TopicMatch

RELATIVE_TIME_LIMIT = 2**28  # RFC 8428 section 4.5.3: smaller times are relative to now
SENML_VERSION = 10
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_STRINGS = frozenset({"bn", "bu", "n", "u", "vs", "vd"})
_NUMBERS = frozenset({"bt", "bv", "bs", "v", "s", "t", "ut"})
_UNSUPPORTED = {"vs": "a string", "vb": "a boolean", "vd": "data"}


class _PackError(Exception):
    """A record that makes the rest of the pack unreadable."""


@dataclass
class _Base:
    name: str = ""
    time: float = 0.0
    unit: str | None = None
    value: float = 0.0
    sum: float = 0.0


def parse_senml(
    profile: DeviceProfile,
    match: TopicMatch,
    device: DeviceInfo,
    payload: bytes,
    received_at: datetime,
    limits: Limits,
) -> ParsedMessage:
    """Readings of a SenML pack from an active device of a senml+json profile."""
    device_id = device.device_id
    try:
        pack = decode_json(payload)
    except PayloadError as exc:
        return rejected(device_id, exc.reason, exc.detail)
    if not isinstance(pack, list) or not pack:
        return rejected(device_id, INVALID_SHAPE, "a SenML pack must be a non-empty JSON array")
    if len(pack) > limits.max_readings:
        return rejected(
            device_id,
            TOO_MANY_READINGS,
            f"pack holds {len(pack)} records, over the {limits.max_readings} limit",
        )
    prefix = profile.senml_base_name
    if prefix is not None and match.device is not None:
        prefix = prefix.replace(DEVICE, match.device)

    base = _Base()
    by_time: dict[datetime, dict[str, float]] = {}
    breaches: dict[datetime, list[str]] = {}
    rejections: list[Rejection] = []
    for index, record in enumerate(pack):
        try:
            outcome = _record(record, base, prefix, profile, match, device, received_at, limits)
        except _PackError as exc:
            return ParsedMessage(device_id, (), (Rejection(INVALID_SHAPE, str(exc), index),))
        if isinstance(outcome, list):
            rejections.extend(Rejection(reason, detail, index) for reason, detail in outcome)
            continue
        if outcome is None:
            continue  # a record of base fields only
        ts, metric, value, breached = outcome
        metrics = by_time.setdefault(ts, {})
        if metric in metrics:
            detail = f"metric {metric!r} is in the pack twice at {ts.isoformat()}"
            rejections.append(Rejection(DUPLICATE_RECORD, detail, index))
        elif len(metrics) >= limits.max_metrics:
            detail = f"more than {limits.max_metrics} metrics in one reading"
            rejections.append(Rejection(INVALID_SHAPE, detail, index))
        else:
            metrics[metric] = value
            if breached:
                breaches.setdefault(ts, []).append(metric)
    readings = tuple(
        Reading(ts, metrics, tuple(breaches.get(ts, ())))
        for ts, metrics in by_time.items()
        if metrics
    )
    return ParsedMessage(device_id, readings, tuple(rejections))


_Resolved = tuple[datetime, str, float, bool]


def _record(
    record: object,
    base: _Base,
    prefix: str | None,
    profile: DeviceProfile,
    match: TopicMatch,
    device: DeviceInfo,
    received_at: datetime,
    limits: Limits,
) -> _Resolved | list[Problem] | None:
    """One record resolved (time, metric, value, out of range), its problems, or None."""
    _apply_base(record, base)
    assert isinstance(record, dict)
    present = [label for label in ("v", "vs", "vb", "vd") if label in record]
    name = base.name + record.get("n", "")
    if len(present) > 1:
        return [(INVALID_SHAPE, f"record {clip(name)!r} holds more than one value")]
    if present and present[0] in _UNSUPPORTED:
        label = present[0]
        kind = _UNSUPPORTED[label]
        return [(UNSUPPORTED_VALUE, f"record {clip(name)!r} holds {kind} ({label}), not a number")]
    if present:
        value = base.value + record["v"]
    elif "s" in record:
        value = base.sum + record["s"]
    elif all(label.startswith("b") for label in record):
        return None
    else:
        return [(INVALID_SHAPE, f"record {clip(name)!r} holds no value")]
    if not name:
        return [(INVALID_SHAPE, "record has no name (neither bn nor n)")]
    if prefix is not None and not name.startswith(prefix):
        detail = f"record {clip(name)!r} is not under the device's base name {clip(prefix)!r}"
        return [(BASE_NAME_MISMATCH, detail)]

    unit = record.get("u", base.unit)
    relative = name[len(prefix) :] if prefix is not None else name
    metric = metric_for(profile, name, match.device, unit=unit, unmapped=relative)
    if isinstance(metric, tuple):
        return [metric]
    ts = _time(base.time + record.get("t", 0.0), received_at)
    if ts is None:
        return [(INVALID_TIMESTAMP, f"record {clip(name)!r}: its time is out of range")]
    problem = time_problem(ts, received_at, limits, label=f"record {clip(name)!r} time")
    if problem is not None:
        return [problem]
    kept, breached, problems = check_metrics(((metric, value),), device)
    if not kept:
        return problems
    return ts, metric, kept[metric], bool(breached)


def _apply_base(record: object, base: _Base) -> None:
    """Check a record's fields and carry its base fields to the records that follow."""
    if not isinstance(record, dict):
        raise _PackError("a SenML record must be a JSON object")
    for label, field in record.items():
        if label in _STRINGS and not isinstance(field, str):
            raise _PackError(f"SenML field {label!r} must be a string")
        if label in _NUMBERS and not _is_number(field):
            raise _PackError(f"SenML field {label!r} must be a finite number")
        if label == "vb" and not isinstance(field, bool):
            raise _PackError("SenML field 'vb' must be true or false")
        if label.endswith("_"):
            raise _PackError(f"SenML field {clip(label)!r} must be understood, and is not")
    version = record.get("bver", SENML_VERSION)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise _PackError("SenML field 'bver' must be a positive integer")
    if version > SENML_VERSION:
        raise _PackError(f"SenML version {version} is newer than {SENML_VERSION}")
    base.name = record.get("bn", base.name)
    base.time = record.get("bt", base.time)
    base.unit = record.get("bu", base.unit)
    base.value = record.get("bv", base.value)
    base.sum = record.get("bs", base.sum)


def _is_number(field: object) -> bool:
    return isinstance(field, int | float) and not isinstance(field, bool) and math.isfinite(field)


def _time(seconds: float, received_at: datetime) -> datetime | None:
    try:
        if seconds >= RELATIVE_TIME_LIMIT:
            return _EPOCH + timedelta(seconds=seconds)
        return received_at + timedelta(seconds=seconds)
    except OverflowError:
        return None
