"""The aggregator's fast TelemetryRecorded decoding agrees with the pydantic model."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import orjson
import pytest

from iotp.events import (
    TelemetryFacts,
    TelemetryRecorded,
    UndecodableEvent,
    from_fields,
    from_fields_to_fold,
    telemetry_recorded_fields,
)
from read_models.projection import fold

TS = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)


def _entry(**data_changes: object) -> dict[bytes, bytes]:
    fields = telemetry_recorded_fields(
        "dev-1", [(TS, {"temperature": 21.5, "humidity": 40}, ("humidity",))], TS, TS
    )
    data = orjson.loads(fields["data"])
    data.update(data_changes)
    fields["data"] = orjson.dumps(data).decode()
    return {k.encode(): v.encode() for k, v in fields.items()}


def test_fast_decoding_gives_the_models_fields_and_the_same_fold() -> None:
    entry = _entry()
    fast = from_fields_to_fold(entry)
    model = from_fields(entry)
    assert isinstance(fast, TelemetryFacts)
    assert isinstance(model, TelemetryRecorded)
    for name in ("event_id", "occurred_at", "device_id", "received_at", "ingested_at"):
        assert getattr(fast, name) == getattr(model, name)
    assert [(r.ts, r.metrics, r.out_of_range) for r in fast.readings] == [
        (r.ts, r.metrics, r.out_of_range) for r in model.readings
    ]
    assert fold([fast]) == fold([model])


def test_offsets_other_than_utc_fold_alike() -> None:
    ts = TS.astimezone(timezone(timedelta(hours=5, minutes=30))).isoformat()
    entry = _entry(readings=[{"ts": ts, "metrics": {"m": 1.0}}], received_at=None)
    assert fold([from_fields_to_fold(entry)]) == fold([from_fields(entry)])


@pytest.mark.parametrize(
    "changes",
    [
        {"device_id": "dev-1\n"},
        {"device_id": "bad id"},
        {"readings": [{"ts": "2026-01-02T03:04:05", "metrics": {"m": 1.0}}]},  # naive
        {"readings": [{"ts": TS.isoformat(), "metrics": {"bad metric": 1.0}}]},
        {"readings": [{"ts": TS.isoformat(), "metrics": {"m\n": 1.0}}]},
        {"readings": [{"ts": TS.isoformat(), "metrics": {"": 1.0}}]},
        {"readings": [{"ts": TS.isoformat(), "metrics": {"m" * 65: 1.0}}]},
        {"readings": [{"ts": TS.isoformat(), "metrics": {"m": 1.0}, "out_of_range": ["bad m"]}]},
        {"device_id": "d" * 65},
        {"device_id": ""},
        {"readings": [{"ts": TS.isoformat(), "metrics": {"m": True}}]},
        {"readings": [{"ts": TS.isoformat(), "metrics": {"m": 1.0}, "extra": 1}]},
        {"unexpected": 1},
        {"type": "DeviceDecommissioned", "readings": None},
        {"event_id": "not-a-uuid"},
    ],
)
def test_what_the_fast_path_refuses_is_judged_by_from_fields(changes: dict[str, object]) -> None:
    entry = _entry(**changes)
    try:
        expected: object = from_fields(entry)
    except UndecodableEvent:
        with pytest.raises(UndecodableEvent):
            from_fields_to_fold(entry)
        return
    assert from_fields_to_fold(entry) == expected


def test_undecodable_json_raises_the_one_error_type() -> None:
    entry = _entry()
    entry[b"data"] = b"{not json"
    with pytest.raises(UndecodableEvent):
        from_fields_to_fold(entry)
    entry[b"data"] = b"1e400"
    with pytest.raises(UndecodableEvent):
        from_fields_to_fold(entry)


def test_an_entry_without_its_type_in_the_data_is_refused_as_before() -> None:
    entry = _entry()
    data = orjson.loads(entry[b"data"])
    del data["type"]
    entry[b"data"] = orjson.dumps(data)
    with pytest.raises(UndecodableEvent):
        from_fields_to_fold(entry)
