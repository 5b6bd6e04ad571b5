"""The fold of a batch, merged by the store, gives what the fold's rules say, value by value.

The reference below folds every value in order into Python objects with the rules the read
models document: a tie on the minimum or the maximum keeps the earliest timestamp, the last
value is the one at the newest timestamp and the later one on a tie, buckets are the UTC
minute and hour the timestamp falls in. Batches split anywhere must reach the same models.
"""

from __future__ import annotations

import random
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import psycopg

from iotp.events import RecordedReading, TelemetryRecorded
from iotp.group_reader import Batch, Delivered
from read_models import store
from read_models.consumer import ReadModelUpdater
from read_models.projection import fold
from tests.support.read_model_harness import Models, read_models

NOW = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
# Few distinct timestamps and values, so that ties are common; late ones land in buckets
# written by earlier batches; some fall before 1970 and on a bucket's edges.
INSTANTS = [
    NOW,
    NOW + timedelta(microseconds=1),
    NOW + timedelta(seconds=53),
    NOW - timedelta(hours=3, seconds=1),
    NOW - timedelta(days=2),
    NOW.replace(second=0, microsecond=0) - timedelta(microseconds=1),
    datetime(1969, 12, 31, 23, 59, 59, 500_000, tzinfo=UTC),
    datetime(1969, 12, 31, 23, 0, tzinfo=UTC),
]
OFFSET = timezone(timedelta(hours=5, minutes=30))  # not every timestamp arrives in UTC


def _events(rng: random.Random, count: int) -> list[TelemetryRecorded]:
    events = []
    for _ in range(count):
        readings = []
        for _ in range(rng.randint(1, 3)):
            metrics = {
                m: rng.randint(-8, 8) / 4 for m in ("temp", "hum", "co2") if rng.random() < 0.7
            }
            metrics = metrics or {"temp": 0.25}
            breaching = tuple(m for m in metrics if rng.random() < 0.3)
            ts = rng.choice(INSTANTS)
            if rng.random() < 0.3:
                ts = ts.astimezone(OFFSET)
            readings.append(RecordedReading(ts=ts, metrics=metrics, out_of_range=breaching))
        seen = NOW + timedelta(seconds=rng.randrange(600))
        events.append(
            TelemetryRecorded(
                device_id=rng.choice(("d-1", "d-2", "D-3", "d-10")),
                readings=tuple(readings),
                received_at=seen if rng.random() < 0.8 else None,
                ingested_at=seen + timedelta(seconds=1),
            )
        )
    return events


def _reference(events: list[TelemetryRecorded]) -> Models:
    stats: dict[Any, list[Any]] = {}
    minute: dict[Any, list[Any]] = {}
    hour: dict[Any, list[Any]] = {}
    day: dict[Any, list[Any]] = {}
    fleet: dict[Any, list[Any]] = {}
    activity: dict[Any, list[Any]] = {}
    for event in events:
        device = event.device_id
        for reading in event.readings:
            ts = reading.ts.astimezone(UTC)
            for metric, value in reading.metrics.items():
                out = metric in reading.out_of_range
                s = stats.get((device, metric))
                if s is None:
                    stats[(device, metric)] = [
                        1,
                        value,
                        value,
                        ts,
                        value,
                        ts,
                        ts,
                        ts,
                        value,
                        out,
                        0,
                    ]
                else:
                    s[0] += 1
                    s[1] += value
                    if value < s[2] or (value == s[2] and ts < s[3]):
                        s[2], s[3] = value, ts
                    if value > s[4] or (value == s[4] and ts < s[5]):
                        s[4], s[5] = value, ts
                    s[6] = min(s[6], ts)
                    if ts >= s[7]:
                        s[7], s[8], s[9] = ts, value, out
                stats[(device, metric)][10] += out
                for buckets, start in (
                    (minute, ts.replace(second=0, microsecond=0)),
                    (hour, ts.replace(minute=0, second=0, microsecond=0)),
                    (day, ts.replace(hour=0, minute=0, second=0, microsecond=0)),
                ):
                    b = buckets.setdefault((device, metric, start), [0, 0.0, value, value])
                    b[0] += 1
                    b[1] += value
                    b[2], b[3] = min(b[2], value), max(b[3], value)
                fleet.setdefault((ts.replace(second=0, microsecond=0),), [0])[0] += 1
        seen = event.received_at or event.ingested_at
        points = sum(len(r.metrics) for r in event.readings)
        a = activity.setdefault((device,), [seen, 0])
        a[0], a[1] = max(a[0], seen), a[1] + points
    return {
        name: {k: tuple(v) for k, v in model.items()}
        for name, model in (
            ("metric_stats", stats),
            ("rollup_minute", minute),
            ("rollup_hour", hour),
            ("rollup_day", day),
            ("fleet_minute", fleet),
            ("device_activity", activity),
        )
    }


def _telemetry_models(db: psycopg.Connection[Any]) -> Models:
    models = read_models(db)
    del models["devices"]
    return models


def test_batches_split_anywhere_reach_the_reference_fold(db: psycopg.Connection[Any]) -> None:
    for seed in range(12):
        db.execute(
            "TRUNCATE read_models.metric_stats, read_models.rollup_minute_recent,"
            " read_models.rollup_hour_recent, read_models.rollup_day_recent,"
            " read_models.fleet_minute, read_models.device_activity"
        )
        rng = random.Random(seed)
        events = _events(rng, rng.randint(1, 80))
        start = 0
        while start < len(events):
            end = start + rng.randint(1, 30)
            with db.transaction():
                store.apply_deltas(db, fold(events[start:end]))
            start = end
        assert _telemetry_models(db) == _reference(events), f"seed {seed}"


def test_an_event_twice_in_one_batch_is_applied_once(
    database_url: str, db: psycopg.Connection[Any]
) -> None:
    event = _events(random.Random(1), 1)[0]
    other = event.model_copy(update={"event_id": uuid.uuid4()})
    stream = "iotp:events:telemetry"
    updater = ReadModelUpdater(
        lambda: psycopg.connect(database_url), "iotp-aggregators", 24, lambda: None
    )
    try:
        batch = Batch(
            [Delivered(stream, f"{n}-0", e) for n, e in enumerate((event, other, event), 1)],
            {stream: "3-0"},
        )
        assert updater.apply(batch) == 2
    finally:
        updater.close()
    assert _telemetry_models(db) == _reference([event, other])


def test_a_batch_records_each_streams_position_only_forward(
    database_url: str, db: psycopg.Connection[Any]
) -> None:
    """The positions go with the read models' statement when the batch holds telemetry, on
    their own when not; neither moves a position back (a batch applied late)."""
    event = _events(random.Random(2), 1)[0]
    telemetry, alarms = "iotp:events:telemetry", "iotp:events:alarms"
    updater = ReadModelUpdater(lambda: psycopg.connect(database_url), "g", 24, lambda: None)
    positions = (
        "SELECT stream, last_id_ms, last_id_seq FROM read_models.tracking"
        " WHERE group_name = 'g' ORDER BY stream"
    )
    try:
        batch = Batch([Delivered(telemetry, "7-2", event)], {telemetry: "7-2", alarms: "5-0"})
        assert updater.apply(batch) == 1
        assert db.execute(positions).fetchall() == [(alarms, 5, 0), (telemetry, 7, 2)]
        # No telemetry: the positions alone; an older one stays behind the newer.
        assert updater.apply(Batch([], {telemetry: "6-9", alarms: "9-1"})) == 0
        assert db.execute(positions).fetchall() == [(alarms, 9, 1), (telemetry, 7, 2)]
        again = event.model_copy(update={"event_id": uuid.uuid4()})
        assert updater.apply(Batch([Delivered(telemetry, "7-1", again)], {telemetry: "7-1"})) == 1
        assert db.execute(positions).fetchall() == [(alarms, 9, 1), (telemetry, 7, 2)]
    finally:
        updater.close()
    assert _telemetry_models(db) == _reference([event, again])


def test_buckets_are_the_utc_minute_and_hour_an_instant_falls_in(
    db: psycopg.Connection[Any],
) -> None:
    rng = random.Random(7)
    first, last = datetime(1, 1, 1, tzinfo=UTC), datetime(9999, 12, 31, tzinfo=UTC)
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    edges = [first, last, epoch, epoch - timedelta(microseconds=1), NOW, *INSTANTS]
    span = int((last - first) / timedelta(microseconds=1))
    instants = edges + [first + timedelta(microseconds=rng.randrange(span)) for _ in range(300)]
    event = TelemetryRecorded(
        device_id="d-1",
        readings=tuple(RecordedReading(ts=ts, metrics={"m": 1.0}) for ts in instants),
        ingested_at=NOW,
    )
    with db.transaction():
        store.apply_deltas(db, fold([event]))
    models = _telemetry_models(db)
    for table, start in (
        ("rollup_minute", lambda ts: ts.replace(second=0, microsecond=0)),
        ("rollup_hour", lambda ts: ts.replace(minute=0, second=0, microsecond=0)),
        ("rollup_day", lambda ts: ts.replace(hour=0, minute=0, second=0, microsecond=0)),
    ):
        expected = Counter(start(ts.astimezone(UTC)) for ts in instants)
        assert {key[2]: row[0] for key, row in models[table].items()} == expected
