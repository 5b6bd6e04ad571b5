"""Which message's event reports a reading, when a batch holds it more than once."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from ingest.mqtt_source import InboundMessage
from ingest.payloads import ParsedMessage, Reading, Rejection
from ingest.pipeline import _deadletters, _events, _staged_rows
from iotp.events import TelemetryRecorded, from_fields, new_event_ids, to_fields, utc_text

T0 = datetime(2026, 11, 24, 10, tzinfo=UTC)
T1 = datetime(2026, 11, 24, 10, 1, tzinfo=UTC)


def _message(payload: bytes = b"{}") -> InboundMessage:
    return InboundMessage("devices/d/telemetry", payload, 1, 1, 1, T1)


def test_a_reading_held_twice_is_reported_once_by_the_first_message() -> None:
    first = ParsedMessage("d", (Reading(T0, {"a": 1.0, "b": 2.0}),), ())
    again = ParsedMessage("d", (Reading(T0, {"a": 9.0}), Reading(T1, {"a": 3.0}, ("a",))), ())
    batch = [_message(), _message()]
    rows = _staged_rows(batch, [first, again])
    # seqs: 0 = first a@T0, 1 = first b@T0, 2 = again a@T0 (a duplicate), 3 = again a@T1
    assert [r[0] for r in rows] == [0, 1, 3]
    assert rows[0][4] == 1.0  # the first copy's value is the one staged
    entries = _events(batch, [first, again], {0, 1, 3})
    events = [from_fields(e) for e in entries]
    assert all(isinstance(e, TelemetryRecorded) for e in events)
    first_event, second_event = events
    assert isinstance(first_event, TelemetryRecorded)
    assert isinstance(second_event, TelemetryRecorded)
    assert first_event.readings[0].metrics == {"a": 1.0, "b": 2.0}
    assert [(r.ts, r.metrics, r.out_of_range) for r in second_event.readings] == [
        (T1, {"a": 3.0}, ("a",))
    ]


def test_repeats_of_a_device_time_keep_each_metric_once() -> None:
    first = ParsedMessage("d", (Reading(T0, {"a": 1.0, "b": 2.0}),), ())
    second = ParsedMessage("d", (Reading(T0, {"b": 5.0, "c": 6.0}),), ())
    third = ParsedMessage("d", (Reading(T0, {"a": 7.0, "c": 8.0, "e": 9.0}),), ())
    other = ParsedMessage("x", (Reading(T0, {"a": 4.0}),), ())
    batch = [_message(), _message(), _message(), _message()]
    rows = _staged_rows(batch, [first, second, other, third])
    # seqs: first a0 b1; second b2 (repeat) c3; other a4 (another device); third a5 c6 e7
    assert [(r[0], r[1], r[3], r[4]) for r in rows] == [
        (0, "d", "a", 1.0),
        (1, "d", "b", 2.0),
        (3, "d", "c", 6.0),
        (4, "x", "a", 4.0),
        (7, "d", "e", 9.0),
    ]


def test_a_message_with_nothing_new_emits_nothing() -> None:
    parsed = ParsedMessage("d", (Reading(T0, {"a": 1.0}),), ())
    assert _events([_message()], [parsed], set()) == []


def test_deadletters_keep_hostile_bytes_printable_and_truncated() -> None:
    parsed = ParsedMessage("d", (), (Rejection("not_utf8", "bad bytes"),))
    (entry,) = _deadletters([_message(b"\xff" * 5000)], [parsed], payload_max=100)
    assert entry["reason"] == "not_utf8"
    assert entry["payload_bytes"] == "5000"
    assert entry["payload"] == "\\xff" * 100
    entry["payload"].encode("utf-8")


def test_fast_serialisation_equals_the_models() -> None:
    from iotp.events import RecordedReading, telemetry_recorded_fields

    fields = telemetry_recorded_fields(
        "d", [(T0, {"a": 1.5, "b": -2.0}, ("b",)), (T1, {"a": 3.0}, ())], T0, T1
    )
    event = from_fields(fields)
    assert isinstance(event, TelemetryRecorded)
    expected = TelemetryRecorded(
        event_id=event.event_id,
        occurred_at=T1,
        device_id="d",
        readings=(
            RecordedReading(ts=T0, metrics={"a": 1.5, "b": -2.0}, out_of_range=("b",)),
            RecordedReading(ts=T1, metrics={"a": 3.0}),
        ),
        received_at=T0,
        ingested_at=T1,
    )
    assert event == expected
    assert fields == to_fields(expected)
    # with the times rendered once for a batch, the same fields
    rendered = telemetry_recorded_fields(
        "d",
        [(T0, {"a": 1.5, "b": -2.0}, ("b",)), (T1, {"a": 3.0}, ())],
        utc_text(T0),
        utc_text(T1),
        fields["event_id"],
    )
    assert rendered == fields


def test_a_batch_of_all_new_readings_reports_each_message_as_parsed() -> None:
    received = datetime(2026, 11, 24, 10, 0, 1, 123456, tzinfo=UTC)
    later = datetime(2026, 11, 24, 10, 0, 2, tzinfo=UTC)
    batch = [
        InboundMessage("devices/d/telemetry", b"{}", 1, 1, 1, received),
        InboundMessage("devices/e/telemetry", b"{}", 2, 1, 1, received),
        InboundMessage("devices/d/telemetry", b"{}", 3, 1, 1, later),
    ]
    parsed = [
        ParsedMessage("d", (Reading(T0, {"a": 1.0, "b": 2.0}, ("b",)),), ()),
        ParsedMessage("e", (Reading(T0, {"a": 1.0}), Reading(T1, {"a": 2.0})), ()),
        ParsedMessage("d", (Reading(T1, {"a": 5.0}),), ()),
    ]
    rows = _staged_rows(batch, parsed)
    events = [from_fields(e) for e in _events(batch, parsed, {row[0] for row in rows})]
    assert [
        (e.device_id, e.received_at, [(r.ts, r.metrics, r.out_of_range) for r in e.readings])
        for e in events
        if isinstance(e, TelemetryRecorded)
    ] == [
        ("d", received, [(T0, {"a": 1.0, "b": 2.0}, ("b",))]),
        ("e", received, [(T0, {"a": 1.0}, ()), (T1, {"a": 2.0}, ())]),
        ("d", later, [(T1, {"a": 5.0}, ())]),
    ]
    assert len({e.ingested_at for e in events if isinstance(e, TelemetryRecorded)}) == 1


def test_event_ids_are_distinct_version_4_uuids() -> None:
    ids = list(new_event_ids(5000))
    assert len(set(ids)) == 5000
    for text in ids:
        parsed = uuid.UUID(text)
        assert str(parsed) == text and parsed.version == 4 and parsed.variant == uuid.RFC_4122
