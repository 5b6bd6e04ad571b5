"""Which message's event reports a reading, when a batch holds it more than once."""

from __future__ import annotations

from datetime import UTC, datetime

from ingest.mqtt_source import InboundMessage
from ingest.payloads import ParsedMessage, Reading, Rejection
from ingest.pipeline import _deadletters, _events, _staged_rows
from iotp.events import TelemetryRecorded, from_fields, to_fields

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
