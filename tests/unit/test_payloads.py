"""Telemetry payload validation: every way a payload can be bad has its reason."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import pytest

from ingest import payloads as p
from ingest.payloads import DeviceInfo, Limits, MetricRange, parse_message

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
DEVICES = {
    "thermo-1": DeviceInfo(
        "thermo-1", "active", {"temp": MetricRange(-40, 125), "hum": MetricRange(0, 100)}
    ),
    "free-1": DeviceInfo("free-1", "active", {}),
    "old-1": DeviceInfo("old-1", "decommissioned", {}),
}
LIMITS = Limits(max_payload_bytes=2048, max_readings=10, max_age=timedelta(days=30))
TOPIC = "devices/thermo-1/telemetry"


def parse(payload: bytes | str | object, topic: str = TOPIC) -> p.ParsedMessage:
    if isinstance(payload, str):
        raw = payload.encode()
    elif isinstance(payload, bytes):
        raw = payload
    else:
        raw = orjson.dumps(payload)
    return parse_message(topic, raw, NOW, DEVICES.get, LIMITS)


def reasons(result: p.ParsedMessage) -> list[str]:
    return [r.reason for r in result.rejections]


def test_single_object_with_iso_timestamp() -> None:
    result = parse({"ts": "2026-11-24T11:59:00Z", "metrics": {"temp": 21.5, "hum": 40}})
    assert result.rejections == ()
    (reading,) = result.readings
    assert reading.ts == datetime(2026, 11, 24, 11, 59, tzinfo=UTC)
    assert reading.metrics == {"temp": 21.5, "hum": 40.0}


def test_epoch_milliseconds_and_offsets_are_normalised_to_utc() -> None:
    epoch = int(datetime(2026, 11, 24, 11, 0, tzinfo=UTC).timestamp() * 1000)
    result = parse(
        [
            {"ts": epoch, "metrics": {"temp": 1}},
            {"ts": "2026-11-24T13:00:00+02:00", "metrics": {"temp": 2}},
        ]
    )
    assert [r.ts for r in result.readings] == [datetime(2026, 11, 24, 11, 0, tzinfo=UTC)] * 2


def test_missing_ts_means_the_receive_time() -> None:
    assert parse({"metrics": {"temp": 1}}).readings[0].ts == NOW


def test_out_of_range_is_stored_and_flagged() -> None:
    result = parse({"ts": "2026-11-24T11:00:00Z", "metrics": {"temp": 500, "hum": 50}})
    assert result.rejections == ()
    assert result.readings[0].out_of_range == ("temp",)
    assert result.readings[0].metrics["temp"] == 500


def test_undeclared_metrics_are_free_for_devices_that_declare_none() -> None:
    result = parse({"metrics": {"anything": 1}}, topic="devices/free-1/telemetry")
    assert result.readings[0].metrics == {"anything": 1.0}


def test_one_bad_reading_does_not_reject_its_neighbours() -> None:
    result = parse(
        [
            {"ts": "2026-11-24T11:00:00Z", "metrics": {"temp": 1}},
            {"ts": "yesterday", "metrics": {"temp": 2}},
            {"ts": "2026-11-24T11:01:00Z", "metrics": {"temp": 3, "hum": "wet"}},
        ]
    )
    assert [r.metrics for r in result.readings] == [{"temp": 1.0}, {"temp": 3.0}]
    assert [(r.reason, r.index) for r in result.rejections] == [
        ("invalid_timestamp", 1),
        ("invalid_value", 2),
    ]


HOSTILE: list[tuple[str, object, str]] = [
    ("not UTF-8", b'{"metrics": {"temp": 1}}\xff\xfe', p.NOT_UTF8),
    ("not JSON", "{metrics: temp=1}", p.INVALID_JSON),
    ("truncated JSON", '{"metrics": {"temp": 1', p.INVALID_JSON),
    ("NaN literal", '{"metrics": {"temp": NaN}}', p.INVALID_JSON),
    ("Infinity literal", '{"metrics": {"temp": Infinity}}', p.INVALID_JSON),
    ("overflowing number", '{"metrics": {"temp": 1e999}}', p.INVALID_JSON),
    ("lone surrogate", '{"metrics": {"temp": 1}, "ts": "\\ud800"}', p.INVALID_JSON),
    ("empty payload", b"", p.INVALID_JSON),
    ("JSON string", '"hello"', p.INVALID_SHAPE),
    ("JSON number", "42", p.INVALID_SHAPE),
    ("empty array", "[]", p.INVALID_SHAPE),
    ("array of numbers", "[1, 2]", p.INVALID_SHAPE),
    ("metrics missing", {"ts": "2026-11-24T11:00:00Z"}, p.INVALID_SHAPE),
    ("metrics empty", {"metrics": {}}, p.INVALID_SHAPE),
    ("metrics a list", {"metrics": [1, 2]}, p.INVALID_SHAPE),
    ("unknown key", {"metrics": {"temp": 1}, "extra": 1}, p.INVALID_SHAPE),
    ("seq not an integer", {"metrics": {"temp": 1}, "seq": "7"}, p.INVALID_SHAPE),
    ("string value", {"metrics": {"temp": "21.5"}}, p.INVALID_VALUE),
    ("boolean value", {"metrics": {"temp": True}}, p.INVALID_VALUE),
    ("null value", {"metrics": {"temp": None}}, p.INVALID_VALUE),
    ("object value", {"metrics": {"temp": {"v": 1}}}, p.INVALID_VALUE),
    ("undeclared metric", {"metrics": {"pressure": 1013}}, p.UNKNOWN_METRIC),
    (
        "SQL in metric name",
        {"metrics": {"temp'); DROP TABLE telemetry;--": 1}},
        p.INVALID_METRIC_NAME,
    ),
    ("metric name too long", {"metrics": {"t" * 65: 1}}, p.INVALID_METRIC_NAME),
    ("empty metric name", {"metrics": {"": 1}}, p.INVALID_METRIC_NAME),
    ("metric name with a trailing newline", {"metrics": {"temp\n": 1}}, p.INVALID_METRIC_NAME),
    ("ts not a date", {"ts": "tomorrow", "metrics": {"temp": 1}}, p.INVALID_TIMESTAMP),
    (
        "ts without offset",
        {"ts": "2026-11-24T11:00:00", "metrics": {"temp": 1}},
        p.INVALID_TIMESTAMP,
    ),
    ("ts boolean", {"ts": True, "metrics": {"temp": 1}}, p.INVALID_TIMESTAMP),
    ("ts object", {"ts": {"s": 1}, "metrics": {"temp": 1}}, p.INVALID_TIMESTAMP),
    ("ts overflowing", {"ts": 1e300, "metrics": {"temp": 1}}, p.INVALID_TIMESTAMP),
    (
        "ts far in the future",
        {"ts": "2027-01-01T00:00:00Z", "metrics": {"temp": 1}},
        p.TS_IN_FUTURE,
    ),
    (
        "ts older than retention",
        {"ts": "2026-01-01T00:00:00Z", "metrics": {"temp": 1}},
        p.TS_TOO_OLD,
    ),
    ("ts in epoch seconds", {"ts": 1795500000, "metrics": {"temp": 1}}, p.TS_TOO_OLD),
    ("payload too large", {"metrics": {"temp": 1}, "pad": "x" * 4000}, p.PAYLOAD_TOO_LARGE),
    ("too many readings", [{"metrics": {"temp": 1}}] * 11, p.TOO_MANY_READINGS),
]


@pytest.mark.parametrize(("case", "payload", "reason"), HOSTILE, ids=[c[0] for c in HOSTILE])
def test_hostile_payload_is_rejected_with_its_reason(
    case: str, payload: object, reason: str
) -> None:
    result = parse(payload)
    assert set(reasons(result)) == {reason}, case
    assert result.readings == ()
    assert all(r.detail for r in result.rejections)


@pytest.mark.parametrize(
    ("topic", "reason"),
    [
        ("devices/ghost/telemetry", p.UNKNOWN_DEVICE),
        ("devices/old-1/telemetry", p.DEVICE_DECOMMISSIONED),
        ("devices/a b/telemetry", p.INVALID_TOPIC),
        ("devices/thermo-1/status", p.INVALID_TOPIC),
        ("devices/" + "x" * 65 + "/telemetry", p.INVALID_TOPIC),
        ("devices/free-1\n/telemetry", p.INVALID_TOPIC),
        ("devices/free-1/telemetry\n", p.INVALID_TOPIC),
    ],
)
def test_topic_and_device_problems(topic: str, reason: str) -> None:
    assert reasons(parse({"metrics": {"temp": 1}}, topic=topic)) == [reason]


def test_a_name_the_models_refuse_is_never_stored_for_a_device_that_declares_none() -> None:
    # The event would carry it, and the aggregator (pydantic) would refuse the whole event.
    result = parse({"metrics": {"temp\n": 1, "hum": 2}}, topic="devices/free-1/telemetry")
    assert reasons(result) == [p.INVALID_METRIC_NAME]
    assert [r.metrics for r in result.readings] == [{"hum": 2.0}]


def test_hostile_text_in_details_is_clipped() -> None:
    result = parse({"metrics": {"x" * 5000: 1}})
    assert len(result.rejections[0].detail) < 200
