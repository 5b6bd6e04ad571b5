"""Rollup tiers and their retention (issue 24), on the real read store.

Readings go through the real fold (read_models.projection) and store; the retention job packs
and expires; rebuild recomputes only what the write store still covers.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from iotp.events import RecordedReading, TelemetryRecorded
from iotp.settings import Settings
from read_models import queries, store
from read_models.projection import fold
from read_models.rebuild import rebuild
from read_models.retention import expire_before, run_retention
from read_models.rollup_tiers import HOUR
from tests.support.read_model_harness import Models, assert_models_equal, read_models

NOW = datetime.now(UTC).replace(second=0, microsecond=0)
Conn = psycopg.Connection[Any]


def _event(device: str, readings: Iterable[tuple[datetime, dict[str, float]]]) -> TelemetryRecorded:
    recorded = tuple(RecordedReading(ts=ts, metrics=metrics) for ts, metrics in readings)
    return TelemetryRecorded(device_id=device, readings=recorded, ingested_at=NOW)


def _every_minute(device: str, days: int, rng: random.Random) -> list[TelemetryRecorded]:
    """One reading a minute, ``days`` back from NOW, in messages of an hour each."""
    events = []
    for hour in range(days * 24):
        start = NOW - timedelta(days=days) + timedelta(hours=hour)
        events.append(
            _event(
                device,
                (
                    (start + timedelta(minutes=m), {"temp": rng.randint(-80, 240) / 4})
                    for m in range(60)
                ),
            )
        )
    return events


def _apply(db: Conn, events: list[TelemetryRecorded]) -> None:
    with db.transaction():
        store.apply_deltas(db, fold(events))


def _retention(settings: Settings, now: datetime = NOW, **changes: Any) -> dict[str, int]:
    report = run_retention(settings.model_copy(update=changes), now=now, batch=500)
    assert report is not None
    return report.rows


def _count(db: Conn, relation: str, where: str = "true") -> int:
    row = db.execute(f"SELECT count(*) FROM {relation} WHERE {where}").fetchone()
    assert row is not None
    return int(row[0])


def test_minute_rollups_older_than_the_retention_are_gone(db: Conn, settings: Settings) -> None:
    _apply(db, _every_minute("d-1", 10, random.Random(1)))
    before = read_models(db)
    assert len(before["rollup_minute"]) == 10 * 1440

    rows = _retention(settings, rollup_minute_retention_days=7)

    oldest = db.execute("SELECT min(bucket) FROM read_models.rollup_minute").fetchone()
    assert oldest is not None and oldest[0] >= NOW - timedelta(days=7, hours=1)
    assert rows["expired minute periods"] > 0
    after = read_models(db)
    kept = {k: v for k, v in before["rollup_minute"].items() if k[2] >= oldest[0]}
    assert after["rollup_minute"] == kept
    assert len(kept) >= 7 * 1440
    # Hours, days and the all-time statistics are untouched.
    for name in ("rollup_hour", "rollup_day", "metric_stats", "fleet_minute"):
        if name != "fleet_minute":
            assert after[name] == before[name], name
    # What is left is packed: one row an hour, not one a minute.
    assert _count(db, "read_models.rollup_minute_packed") <= 7 * 24 + 1
    assert _count(db, "read_models.rollup_minute_recent") <= 2 * 60


def test_hour_rollups_expire_with_their_tier_and_days_never(db: Conn, settings: Settings) -> None:
    _apply(db, _every_minute("d-1", 20, random.Random(2)))
    before = read_models(db)
    _retention(settings, rollup_minute_retention_days=1, rollup_hour_retention_days=5)
    after = read_models(db)
    # Whole weeks of hours go: at least 5 days are kept, at most a week more.
    limit = expire_before(HOUR, NOW, 5)
    assert NOW - timedelta(days=12) <= limit <= NOW - timedelta(days=5)
    assert min(k[2] for k in after["rollup_hour"]) == limit
    assert after["rollup_hour"] == {k: v for k, v in before["rollup_hour"].items() if k[2] >= limit}
    assert after["rollup_day"] == before["rollup_day"]
    assert after["metric_stats"] == before["metric_stats"]


def _messy(rng: random.Random, days: int, count: int) -> list[TelemetryRecorded]:
    """Several devices and metrics, duplicates of instants, readings across buckets."""
    events = []
    for _ in range(count):
        device = rng.choice(("d-1", "d-2", "D-3"))
        readings = []
        for _ in range(rng.randint(1, 4)):
            ts = NOW - timedelta(seconds=rng.randrange(days * 86400))
            metrics = {m: rng.randint(-40, 40) / 4 for m in ("temp", "hum") if rng.random() < 0.8}
            readings.append((ts, metrics or {"temp": 0.5}))
        events.append(_event(device, readings))
    return events


def test_packing_in_any_number_of_steps_keeps_every_bucket_exact(
    db: Conn, settings: Settings
) -> None:
    rng = random.Random(3)
    events = _messy(rng, 5, 600)
    late = _messy(rng, 5, 200)  # land in periods packed already
    _apply(db, events + late)
    reference = read_models(db)

    db.execute(
        "TRUNCATE read_models.metric_stats, read_models.rollup_minute_recent,"
        " read_models.rollup_hour_recent, read_models.rollup_day_recent,"
        " read_models.rollup_minute_packed, read_models.rollup_hour_packed,"
        " read_models.rollup_day_packed, read_models.fleet_minute, read_models.device_activity"
    )
    _apply(db, events[:300])
    _retention(settings, rollup_minute_retention_days=30)
    _apply(db, events[300:])
    _retention(settings, rollup_minute_retention_days=30)
    _apply(db, late)
    assert _count(db, "read_models.rollup_minute_packed") > 0
    assert_models_equal(read_models(db), reference)  # late buckets in both halves, merged
    _retention(settings, rollup_minute_retention_days=30)
    assert_models_equal(read_models(db), reference)
    # A day bucket packed with the block it falls in still reads as itself.
    assert (
        _count(db, "read_models.rollup_day_packed") + _count(db, "read_models.rollup_day_recent")
        > 0
    )


def test_a_late_reading_for_a_dropped_minute_updates_hour_day_and_all_time(
    db: Conn, settings: Settings
) -> None:
    _apply(db, _every_minute("d-1", 10, random.Random(4)))
    _retention(settings, rollup_minute_retention_days=7)
    before = read_models(db)
    at = NOW - timedelta(days=9, minutes=17, seconds=5)
    minute = at.replace(second=0)
    assert not [k for k in before["rollup_minute"] if k[2] == minute]

    _apply(db, [_event("d-1", [(at, {"temp": 1000.0})])])

    after = read_models(db)
    hour = at.replace(minute=0, second=0)
    day = at.replace(hour=0, minute=0, second=0)
    h0, h1 = (
        before["rollup_hour"][("d-1", "temp", hour)],
        after["rollup_hour"][("d-1", "temp", hour)],
    )
    assert (h1[0], h1[1], h1[3]) == (h0[0] + 1, h0[1] + 1000.0, 1000.0)
    d0, d1 = before["rollup_day"][("d-1", "temp", day)], after["rollup_day"][("d-1", "temp", day)]
    assert (d1[0], d1[1], d1[3]) == (d0[0] + 1, d0[1] + 1000.0, 1000.0)
    s0, s1 = before["metric_stats"][("d-1", "temp")], after["metric_stats"][("d-1", "temp")]
    assert (s1[0], s1[1], s1[4], s1[5]) == (s0[0] + 1, s0[1] + 1000.0, 1000.0, at)
    # The minute itself goes again at the next round.
    _retention(settings, rollup_minute_retention_days=7)
    assert ("d-1", "temp", minute) not in read_models(db)["rollup_minute"]


def _write_store(db: Conn, events: list[TelemetryRecorded]) -> None:
    """The readings of ``events`` as ingest would have stored them (the write store)."""
    devices = sorted({e.device_id for e in events})
    for device in devices:
        db.execute(
            "INSERT INTO devices (device_id, name, kind, metrics, credential_hash, created_at,"
            " updated_at) VALUES (%s, %s, 'sensor', %s, 'x', %s, %s)",
            (device, device, Jsonb([{"name": "temp", "min": -10, "max": 40}]), NOW, NOW),
        )
    rows = {
        (e.device_id, metric, r.ts): value
        for e in events
        for r in e.readings
        for metric, value in r.metrics.items()
    }
    with (
        db.cursor() as cur,
        cur.copy("COPY telemetry (device_id, metric, ts, value, received_at) FROM STDIN") as copy,
    ):
        for (device, metric, ts), value in rows.items():
            copy.write_row((device, metric, ts, value, NOW))


def _all_time(models: Models) -> dict[Any, tuple[Any, ...]]:
    """count, sum, min, max of every series: what stays exact whatever raw retention did."""
    return {k: (v[0], v[1], v[2], v[4]) for k, v in models["metric_stats"].items()}


def test_rebuild_recomputes_only_what_the_write_store_covers(db: Conn, settings: Settings) -> None:
    rng = random.Random(5)
    events = _every_minute("d-1", 20, rng) + _every_minute("d-2", 20, rng)
    _write_store(db, events)
    rebuild(settings)  # no raw retention: every read model from the readings
    live = read_models(db)
    assert len(live["rollup_day"]) == 2 * 21 or len(live["rollup_day"]) == 2 * 20

    # Raw retention drops 15 of the 20 days (plain PostgreSQL: the retention job deletes).
    kept_raw = settings.model_copy(update={"telemetry_retention_days": 5})
    rows = _retention(kept_raw)
    assert rows["expired raw telemetry rows"] > 0
    oldest_raw = db.execute("SELECT min(ts) FROM telemetry").fetchone()
    assert oldest_raw is not None and oldest_raw[0] >= NOW - timedelta(days=5)
    after_retention = read_models(db)

    # A corrupted covered bucket is restored; nothing before the coverage is lost.
    db.execute(
        "DELETE FROM read_models.rollup_hour_recent WHERE bucket >= now() - INTERVAL '1 hour'"
    )
    report = rebuild(kept_raw)
    assert report.covered_from is not None
    assert report.covered_from >= NOW - timedelta(days=5)
    rebuilt = read_models(db)
    assert rebuilt["rollup_day"] == after_retention["rollup_day"]
    assert _all_time(rebuilt) == _all_time(live)
    assert rebuilt["rollup_hour"] == after_retention["rollup_hour"]
    assert {k: v[1] for k, v in rebuilt["device_activity"].items()} == {
        k: v[1] for k, v in live["device_activity"].items()
    }
    # Twice changes nothing.
    rebuild(kept_raw)
    assert read_models(db) == rebuilt


def test_series_reads_day_buckets(db: Conn, settings: Settings) -> None:
    _apply(db, _every_minute("d-1", 40, random.Random(7)))
    _retention(settings, rollup_minute_retention_days=7, rollup_hour_retention_days=30)
    days = queries.series(db, "d-1", "temp", NOW - timedelta(days=45), NOW, "1d")
    assert len(days) in (40, 41)
    assert sum(p.count for p in days) == 40 * 1440
    hours = queries.series(db, "d-1", "temp", NOW - timedelta(days=45), NOW, "1h")
    assert hours and hours[0].bucket == expire_before(HOUR, NOW, 30)
    minutes = queries.series(db, "d-1", "temp", NOW - timedelta(days=1), NOW, "1m")
    assert len(minutes) == 1440
    view = read_models(db)["rollup_minute"]
    for point in minutes:
        count, total, low, high = view[("d-1", "temp", point.bucket)]
        assert (point.count, point.mean, point.min, point.max) == (count, total / count, low, high)


def test_iotp_retention_once_prints_what_it_removed(db: Conn, settings: Settings) -> None:
    _apply(db, _every_minute("d-1", 9, random.Random(8)))
    env = {
        **os.environ,
        "IOTP_DATABASE_URL": settings.database_url,
        "IOTP_REDIS_URL": settings.redis_url,
        "IOTP_ROLLUP_MINUTE_RETENTION_DAYS": "7",
    }
    result = subprocess.run(
        [sys.executable, "-m", "cli", "retention", "--once"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(": ", 1) for line in result.stdout.strip().splitlines())
    assert int(lines["expired minute periods"]) >= 24
    assert int(lines["packed minute buckets"]) >= 8 * 1440
    oldest = db.execute("SELECT min(bucket) FROM read_models.rollup_minute").fetchone()
    assert oldest is not None and oldest[0] >= NOW - timedelta(days=7, hours=1)


@pytest.mark.parametrize("bucket", ["1m", "1h", "1d"])
def test_series_are_bounded_per_bucket(db: Conn, bucket: str) -> None:
    with pytest.raises(ValueError, match="at most"):
        queries.series(db, "d-1", "temp", NOW - timedelta(days=25_000), NOW, bucket)  # type: ignore[arg-type]
