"""Parsing and validating telemetry payloads: pure functions, no I/O.

A payload is ``{"ts": <ISO-8601 with offset | epoch ms>, "metrics": {name: number}, "seq"?: int}``
or a JSON array of such objects. Everything that cannot be stored becomes a :class:`Rejection`
with a reason code; the good readings beside a bad one are kept. The checks every payload
format shares (size, device, times, metric names and values) are public for the device
profiles' formats (ingest.formats), so that each format refuses what this one refuses.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import msgspec
import orjson

from iotp.model import DEFAULT_PROFILE, is_device_id, is_metric_name

_TOPIC = re.compile(r"devices/([^/]+)/telemetry")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_READING_KEYS = frozenset({"ts", "metrics", "seq"})
# Earlier than this is almost always epoch seconds sent where milliseconds are expected.
EARLIEST_TS = datetime(2000, 1, 1, tzinfo=UTC)

ACTIVE = "active"

# Reason codes, a public contract of the dead-letter stream.
PAYLOAD_TOO_LARGE = "payload_too_large"
NOT_UTF8 = "not_utf8"
INVALID_JSON = "invalid_json"
INVALID_SHAPE = "invalid_shape"
INVALID_TOPIC = "invalid_topic"
UNKNOWN_DEVICE = "unknown_device"
DEVICE_DECOMMISSIONED = "device_decommissioned"
INVALID_TIMESTAMP = "invalid_timestamp"
TS_IN_FUTURE = "ts_in_future"
TS_TOO_OLD = "ts_too_old"
INVALID_METRIC_NAME = "invalid_metric_name"
INVALID_VALUE = "invalid_value"
UNKNOWN_METRIC = "unknown_metric"
TOO_MANY_READINGS = "too_many_readings"
# Reasons of the device profiles' payload formats (ingest.formats).
UNSUPPORTED_VALUE = "unsupported_value"  # a SenML string, boolean or data value
BASE_NAME_MISMATCH = "base_name_mismatch"  # a SenML name outside the device's base name
UNMAPPED_NAME = "unmapped_name"  # no mapping, and not a valid metric name either
UNIT_MISMATCH = "unit_mismatch"  # a SenML unit other than the one the mapping expects
DUPLICATE_RECORD = "duplicate_record"  # a metric twice at the same time in one message


@dataclass(frozen=True, slots=True)
class MetricRange:
    min: float | None
    max: float | None

    def contains(self, value: float) -> bool:
        return (self.min is None or value >= self.min) and (self.max is None or value <= self.max)


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """What ingest needs to know of a device: whether it is active and what it declares."""

    device_id: str
    status: str
    metrics: Mapping[str, MetricRange] = field(default_factory=dict)
    profile: str = DEFAULT_PROFILE  # the device profile whose tree and format it speaks


@dataclass(frozen=True, slots=True)
class Limits:
    max_payload_bytes: int = 256 * 1024
    max_readings: int = 1000
    max_metrics: int = 100
    max_future: timedelta = timedelta(minutes=5)
    max_age: timedelta | None = None


# The per-message results are msgspec Structs rather than frozen dataclasses: as immutable,
# and built in a tenth of the time (a frozen dataclass sets each field through
# object.__setattr__), which was a fifth of parsing a message.
class Reading(msgspec.Struct, frozen=True, gc=False):
    """One timestamped reading of one message: its metrics and which ones broke their range."""

    ts: datetime
    metrics: dict[str, float]
    out_of_range: tuple[str, ...] = ()


class Rejection(msgspec.Struct, frozen=True, gc=False):
    reason: str
    detail: str
    index: int | None = None  # the reading's position in an array payload


class ParsedMessage(msgspec.Struct, frozen=True, gc=False):
    device_id: str | None
    readings: tuple[Reading, ...]
    rejections: tuple[Rejection, ...]


DeviceLookup = Callable[[str], DeviceInfo | None]
Problem = tuple[str, str]  # (reason code, detail)


def device_id_of(topic: str) -> str | None:
    """The device id in ``devices/{id}/telemetry``, or None for any other topic."""
    match = _TOPIC.fullmatch(topic)
    if match is None or not is_device_id(match.group(1)):
        return None
    return match.group(1)


def parse_message(
    topic: str,
    payload: bytes,
    received_at: datetime,
    lookup: DeviceLookup,
    limits: Limits,
) -> ParsedMessage:
    """Validate one MQTT message into readings to store and rejections to dead-letter."""
    device_id = device_id_of(topic)
    if device_id is None:
        return rejected(None, INVALID_TOPIC, "topic is not devices/{device_id}/telemetry")
    return parse_device_message(device_id, payload, received_at, lookup, limits)


def parse_device_message(
    device_id: str,
    payload: bytes,
    received_at: datetime,
    lookup: DeviceLookup,
    limits: Limits,
) -> ParsedMessage:
    """:func:`parse_message` once the device is known by its id (a topic, an HTTP path)."""
    problem = size_problem(payload, limits)
    if problem is not None:
        return rejected(device_id, *problem)
    device = lookup(device_id)
    problem = device_problem(device_id, device)
    if problem is not None:
        return rejected(device_id, *problem)
    assert device is not None
    return parse_iotp_payload(device, payload, received_at, limits)


def size_problem(payload: bytes, limits: Limits) -> Problem | None:
    """The problem of a payload over the size limit, if it is."""
    if len(payload) > limits.max_payload_bytes:
        return (
            PAYLOAD_TOO_LARGE,
            f"payload is {len(payload)} bytes, over the {limits.max_payload_bytes} limit",
        )
    return None


def device_problem(device_id: str, device: DeviceInfo | None) -> Problem | None:
    """Why a device's readings cannot be stored (unknown or not active), or None."""
    if device is None:
        return UNKNOWN_DEVICE, f"device {device_id!r} is not registered"
    if device.status != ACTIVE:
        return DEVICE_DECOMMISSIONED, f"device {device_id!r} is {device.status}"
    return None


class PayloadError(ValueError):
    """A payload that cannot be read at all: its reason code and detail."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def decode_text(payload: bytes) -> str:
    """The payload as UTF-8 text; raises PayloadError (not_utf8)."""
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PayloadError(
            NOT_UTF8, f"payload is not UTF-8: {exc.reason} at byte {exc.start}"
        ) from None


def decode_json(payload: bytes) -> object:
    """The payload's JSON document; raises PayloadError (not_utf8, invalid_json)."""
    text = decode_text(payload)
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise PayloadError(INVALID_JSON, f"payload is not JSON: {exc}") from None


class _WireReading(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """A reading of iotp's shape as msgspec decodes it, shape checks included, in C."""

    metrics: dict[str, float]
    ts: int | float | str | None = None
    seq: int | None = None


_WIRE = msgspec.json.Decoder(_WireReading | list[_WireReading])
# The integers orjson decodes as such; it reads a larger one as a float, which "seq" refuses.
_SEQ_RANGE = range(-(2**63), 2**64)


def _all_good(
    device: DeviceInfo, payload: bytes, received_at: datetime, limits: Limits
) -> ParsedMessage | None:
    """The message when every reading of it is storable as sent, else None.

    Nearly every message is such, and this reads it for a third of the full path's CPU
    (`iotp bench ingest-path`). Anything else, it leaves to the full path, which words the
    rejections: this path only ever accepts what that one accepts, with the same result.
    """
    try:
        document = _WIRE.decode(payload)
    except msgspec.DecodeError:
        return None
    items = document if isinstance(document, list) else (document,)
    if not items or len(items) > limits.max_readings:
        return None
    readings = []
    for item in items:
        metrics = item.metrics
        if not metrics or len(metrics) > limits.max_metrics:
            return None
        if item.seq is not None and item.seq not in _SEQ_RANGE:
            return None
        ts, _ = _timestamp(item.ts, received_at, limits)
        if ts is None:
            return None
        breaches = _breaches_if_storable(metrics, device)
        if breaches is None:
            return None
        readings.append(Reading(ts, metrics, breaches))
    return ParsedMessage(device.device_id, tuple(readings), ())


def _breaches_if_storable(metrics: dict[str, float], device: DeviceInfo) -> tuple[str, ...] | None:
    """The metrics out of their declared range when :func:`check_metrics` would keep every
    one as sent, else None. msgspec made every value a float; the dict is kept as it is,
    not copied value by value."""
    declared_metrics = device.metrics
    breaches: list[str] | None = None
    for name, value in metrics.items():
        if not math.isfinite(value):
            return None
        declared = declared_metrics.get(name)
        if declared is None:
            if declared_metrics or not is_metric_name(name):
                return None
            continue
        low, high = declared.min, declared.max
        if (low is not None and value < low) or (high is not None and value > high):
            breaches = [name] if breaches is None else [*breaches, name]
    return () if breaches is None else tuple(breaches)


def parse_iotp_payload(
    device: DeviceInfo, payload: bytes, received_at: datetime, limits: Limits
) -> ParsedMessage:
    """Readings of an active device's payload in iotp's own shape (the module docstring's)."""
    good = _all_good(device, payload, received_at, limits)
    return good if good is not None else _parse_in_full(device, payload, received_at, limits)


def _parse_in_full(
    device: DeviceInfo, payload: bytes, received_at: datetime, limits: Limits
) -> ParsedMessage:
    """Every reading and every rejection of a payload, whatever it holds."""
    device_id = device.device_id
    try:
        document = decode_json(payload)
    except PayloadError as exc:
        return rejected(device_id, exc.reason, exc.detail)

    if isinstance(document, dict):
        items: list[object] = [document]
        indexed = False
    elif isinstance(document, list):
        if not document:
            return rejected(device_id, INVALID_SHAPE, "payload is an empty array")
        if len(document) > limits.max_readings:
            return rejected(
                device_id,
                TOO_MANY_READINGS,
                f"payload holds {len(document)} readings, over the {limits.max_readings} limit",
            )
        items, indexed = document, True
    else:
        return rejected(device_id, INVALID_SHAPE, "payload must be a JSON object or an array")

    readings: list[Reading] = []
    rejections: list[Rejection] = []
    for position, item in enumerate(items):
        index = position if indexed else None
        reading, problems = _parse_reading(item, received_at, device, limits)
        if reading is not None:
            readings.append(reading)
        rejections.extend(Rejection(reason, detail, index) for reason, detail in problems)
    return ParsedMessage(device_id, tuple(readings), tuple(rejections))


def rejected(device_id: str | None, reason: str, detail: str) -> ParsedMessage:
    """A message of which nothing is stored, for one reason."""
    return ParsedMessage(device_id, (), (Rejection(reason, detail),))


def _parse_reading(
    item: object, received_at: datetime, device: DeviceInfo, limits: Limits
) -> tuple[Reading | None, list[Problem]]:
    if not isinstance(item, dict):
        return None, [(INVALID_SHAPE, "a reading must be a JSON object")]
    if len(item) > len(_READING_KEYS) or not _READING_KEYS.issuperset(item):
        unknown_keys = set(item) - _READING_KEYS
        return None, [(INVALID_SHAPE, f"unknown keys: {', '.join(sorted(map(str, unknown_keys)))}")]
    metrics = item.get("metrics")
    if not isinstance(metrics, dict) or not metrics:
        return None, [(INVALID_SHAPE, '"metrics" must be a non-empty object')]
    if len(metrics) > limits.max_metrics:
        return None, [(INVALID_SHAPE, f"more than {limits.max_metrics} metrics in one reading")]
    seq = item.get("seq")
    if seq is not None and (isinstance(seq, bool) or not isinstance(seq, int)):
        return None, [(INVALID_SHAPE, '"seq" must be an integer')]

    ts, problem = _timestamp(item.get("ts"), received_at, limits)
    if ts is None:
        assert problem is not None
        return None, [problem]

    kept, breaches, problems = check_metrics(metrics.items(), device)
    if not kept:
        return None, problems
    return Reading(ts, kept, breaches), problems


def check_metrics(
    metrics: Iterable[tuple[str, object]], device: DeviceInfo
) -> tuple[dict[str, float], tuple[str, ...], list[Problem]]:
    """The storable metrics of one reading, those out of their declared range, and problems.

    A name must be declared by the device (when it declares any) or match the metric-name
    pattern; a value must be a finite number (JSON true is not 1).
    """
    kept: dict[str, float] = {}
    breaches: list[str] = []
    problems: list[Problem] = []
    declared_metrics = device.metrics
    for name, value in metrics:
        declared = declared_metrics.get(name)
        # Declared names were validated at registration; only others need the pattern.
        if declared is None and not is_metric_name(name):
            problems.append(
                (INVALID_METRIC_NAME, f"metric name {clip(name)!r} is not 1-64 of [A-Za-z0-9_.-]")
            )
            continue
        if type(value) is float:  # nearly always: skips the checks below but for finiteness
            number = value
        elif isinstance(value, bool) or not isinstance(value, int | float):
            problems.append((INVALID_VALUE, f"metric {name!r} is not a number"))
            continue
        else:
            number = float(value)
        if not math.isfinite(number):
            problems.append((INVALID_VALUE, f"metric {name!r} is not finite"))
            continue
        if declared is not None:
            low, high = declared.min, declared.max
            if (low is not None and number < low) or (high is not None and number > high):
                breaches.append(name)
        elif declared_metrics:
            problems.append((UNKNOWN_METRIC, f"metric {name!r} is not declared by the device"))
            continue
        kept[name] = number
    return kept, tuple(breaches), problems


def _timestamp(
    raw: object, received_at: datetime, limits: Limits
) -> tuple[datetime | None, Problem | None]:
    if raw is None:
        return received_at, None
    if isinstance(raw, bool):
        return None, (INVALID_TIMESTAMP, '"ts" must be ISO-8601 text or epoch milliseconds')
    if isinstance(raw, int | float):
        if not math.isfinite(raw):
            return None, (INVALID_TIMESTAMP, '"ts" is not finite')
        try:
            ts = _EPOCH + timedelta(milliseconds=raw)
        except OverflowError:
            return None, (INVALID_TIMESTAMP, '"ts" is out of range')
    elif isinstance(raw, str):
        try:
            ts = datetime.fromisoformat(raw)
        except ValueError:
            return None, (INVALID_TIMESTAMP, f'"ts" {clip(raw)!r} is not ISO-8601')
        if ts.tzinfo is None:
            return None, (INVALID_TIMESTAMP, f'"ts" {clip(raw)!r} has no UTC offset')
        ts = ts.astimezone(UTC)
    else:
        return None, (INVALID_TIMESTAMP, '"ts" must be ISO-8601 text or epoch milliseconds')
    problem = time_problem(ts, received_at, limits)
    if problem is not None:
        return None, problem
    return ts, None


def time_problem(
    ts: datetime, received_at: datetime, limits: Limits, label: str = '"ts"'
) -> Problem | None:
    """Why a reading's time (aware, UTC) cannot be stored: ahead, before 2000 or too old."""
    if ts > received_at + limits.max_future:
        return TS_IN_FUTURE, f"{label} {ts.isoformat()} is more than {limits.max_future} ahead"
    if ts < EARLIEST_TS:
        return (
            TS_TOO_OLD,
            f"{label} {ts.isoformat()} is before 2000 (epoch seconds sent as ms?)",
        )
    if limits.max_age is not None and ts < received_at - limits.max_age:
        return TS_TOO_OLD, f"{label} {ts.isoformat()} is older than {limits.max_age.days} days"
    return None


def clip(text: str, length: int = 64) -> str:
    """Text cut to ``length`` characters for a detail, marked when it was cut."""
    return text if len(text) <= length else text[:length] + "..."
