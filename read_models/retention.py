"""The retention job: packs finished rollup periods, and deletes what is past its tier.

What it does, in this order, a batch at a time:

1. **Pack** each tier: buckets of ``rollup_<tier>_recent`` older than the tier's grace (an
   hour of minutes, a day of hours, two days of days) move into ``rollup_<tier>_packed``
   (one row per period, merged with what is there).
2. **Expire** minute rollups older than IOTP_ROLLUP_MINUTE_RETENTION_DAYS, hour rollups older
   than IOTP_ROLLUP_HOUR_RETENTION_DAYS (whole packed periods: a period that straddles the
   limit waits until all of it is past), and the fleet's readings per minute with the minutes.
   Day rollups and the all-time statistics are never expired.
3. **Raw telemetry** older than IOTP_TELEMETRY_RETENTION_DAYS, on plain PostgreSQL only: with
   TimescaleDB its retention policy drops whole chunks (iotp migrate sets it).

Every batch is one short transaction of at most ``batch`` rows, which also takes the rebuild
lock shared, as an aggregator batch does: `iotp rebuild` waits for it and pauses it. Rows an
aggregator holds are skipped (SKIP LOCKED) and taken next round, so the job never waits on an
aggregator, and an aggregator waits on the job for one batch at most (docs/benchmarks.md has
the measured worst case).

One process runs it: the aggregator that holds a session advisory lock on the read store
(:data:`RETENTION_LOCK_KEY`); the others try again next round. `iotp retention --once` runs it
now, under the same lock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from iotp.db import connect
from iotp.preflight import READ_DATABASE_SETTING
from iotp.settings import Settings
from read_models import audit_store, store
from read_models.rollup_tiers import HOUR, MINUTE, TIERS, Tier

logger = logging.getLogger(__name__)

Conn = psycopg.Connection[Any]
RETENTION_LOCK_KEY = 0x10770005
BATCH_ROWS = 2_000

_PACK = """
WITH moved AS (
    DELETE FROM {recent} r WHERE r.ctid = ANY(ARRAY(
        SELECT ctid FROM {recent} WHERE bucket < %(before)s
        ORDER BY bucket LIMIT %(limit)s FOR UPDATE SKIP LOCKED))
    RETURNING r.device_id, r.metric, r.bucket, r.count, r.sum, r.min, r.max
), placed AS (
    SELECT m.*, date_bin(INTERVAL '{period} seconds', m.bucket, TIMESTAMPTZ 'epoch') AS period
    FROM moved m
), grouped AS (
    SELECT device_id, metric, period,
           array_agg((extract(epoch FROM bucket - period) / {step})::int4 + 1) AS slots,
           array_agg(count) AS counts, array_agg(sum) AS sums, array_agg(min) AS mins,
           array_agg(max) AS maxs
    FROM placed GROUP BY device_id, metric, period
), packed AS (
INSERT INTO {packed} AS t (device_id, metric, period, counts, sums, mins, maxs)
SELECT device_id, metric, period,
       read_models.rollup_spread(slots, counts, {slots}),
       read_models.rollup_spread(slots, sums, {slots}),
       read_models.rollup_spread(slots, mins, {slots}),
       read_models.rollup_spread(slots, maxs, {slots})
FROM grouped ORDER BY device_id, metric, period
ON CONFLICT (device_id, metric, period) DO UPDATE SET
    counts = read_models.rollup_add(t.counts, excluded.counts),
    sums = read_models.rollup_add(t.sums, excluded.sums),
    mins = read_models.rollup_least(t.mins, excluded.mins),
    maxs = read_models.rollup_greatest(t.maxs, excluded.maxs)
RETURNING 1
)
SELECT count(*) FROM moved
"""

_EXPIRE = """
DELETE FROM {table} WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM {table} WHERE {column} < %(before)s LIMIT %(limit)s FOR UPDATE SKIP LOCKED))
"""


@dataclass
class RetentionReport:
    """Rows each step moved or removed, by what they were (``packed minute`` ...)."""

    rows: dict[str, int] = field(default_factory=dict)
    longest_batch_ms: float = 0.0

    def add(self, what: str, count: int) -> None:
        self.rows[what] = self.rows.get(what, 0) + count


def pack_before(tier: Tier, now: datetime) -> datetime:
    """Buckets before this are packed: they are older than the tier's grace."""
    return tier.bucket_of(now - tier.grace)


def expire_before(tier: Tier, now: datetime, days: int) -> datetime:
    """Packed periods starting before this are wholly older than ``days`` days."""
    return tier.period_of(now - timedelta(days=days))


def run_retention(
    settings: Settings,
    now: datetime | None = None,
    batch: int = BATCH_ROWS,
    *,
    everything: bool = False,
) -> RetentionReport | None:
    """The retention steps, now; None when another process holds the job's lock.

    ``everything`` adds the read store's other retention (the audit log's, which the audit
    process runs, and the applied event ids', which each aggregator prunes), for
    `iotp retention --once`.
    """
    read = connect(settings.read_url(), setting=READ_DATABASE_SETTING)
    try:
        locked = read.execute("SELECT pg_try_advisory_lock(%s)", (RETENTION_LOCK_KEY,)).fetchone()
        read.commit()
        if not locked or not locked[0]:
            return None
        try:
            report = RetentionReport()
            now = now or datetime.now(UTC)
            _read_side(read, settings, now, batch, report)
            if everything:
                report.add("expired audit rows", _forget_audit(read, settings, batch, report))
                with read.transaction():
                    store.forget_applied(read, settings.applied_events_keep_hours)
            _raw_telemetry(settings, now, batch, report)
            return report
        finally:
            read.execute("SELECT pg_advisory_unlock(%s)", (RETENTION_LOCK_KEY,))
            read.commit()
    finally:
        read.close()


def _read_side(
    read: Conn, settings: Settings, now: datetime, batch: int, report: RetentionReport
) -> None:
    for tier in TIERS:
        sql = _PACK.format(
            recent=tier.recent,
            packed=tier.packed,
            period=int(tier.period.total_seconds()),
            step=int(tier.bucket.total_seconds()),
            slots=tier.slots,
        )
        params = {"before": pack_before(tier, now), "limit": batch}
        report.add(f"packed {tier.name} buckets", _batches(read, sql, params, report))
    for tier, days in (
        (MINUTE, settings.rollup_minute_retention_days),
        (HOUR, settings.rollup_hour_retention_days),
    ):
        before = expire_before(tier, now, days)
        for table, column, what in (
            (tier.recent, "bucket", f"{tier.name} buckets (late, unpacked)"),
            (tier.packed, "period", f"{tier.name} periods"),
        ):
            sql = _EXPIRE.format(table=table, column=column)
            removed = _batches(read, sql, {"before": before, "limit": batch}, report)
            report.add(f"expired {what}", removed)
    sql = _EXPIRE.format(table="read_models.fleet_minute", column="bucket")
    before = now - timedelta(days=settings.rollup_minute_retention_days)
    report.add(
        "expired fleet minutes", _batches(read, sql, {"before": before, "limit": batch}, report)
    )


def _batches(conn: Conn, sql: str, params: dict[str, Any], report: RetentionReport) -> int:
    """Run ``sql`` in short transactions until it touches nothing; rows touched in all (its
    row count, or the count it selects)."""

    def step() -> int:
        cur = conn.execute(sql.encode(), params)
        if cur.description is None:
            return cur.rowcount
        row = cur.fetchone()
        return int(row[0]) if row else 0

    total = 0
    for count, elapsed_ms in _timed_rounds(conn, step):
        total += count
        report.longest_batch_ms = max(report.longest_batch_ms, elapsed_ms)
    return total


def _forget_audit(conn: Conn, settings: Settings, batch: int, report: RetentionReport) -> int:
    total = 0
    rounds = _timed_rounds(
        conn, lambda: audit_store.forget_older_than(conn, settings.audit_retention_days, batch)
    )
    for count, elapsed_ms in rounds:
        total += count
        report.longest_batch_ms = max(report.longest_batch_ms, elapsed_ms)
    return total


def _timed_rounds(conn: Conn, step: Callable[[], int]) -> Iterator[tuple[int, float]]:
    while True:
        started = time.perf_counter()
        with conn.transaction():
            store.lock_for_batch(conn)
            count = step()
        yield count, (time.perf_counter() - started) * 1000
        if count <= 0:
            return


def _raw_telemetry(settings: Settings, now: datetime, batch: int, report: RetentionReport) -> None:
    if settings.telemetry_retention_days <= 0:
        return
    write = connect(settings.database_url)
    try:
        if _is_hypertable(write, "telemetry"):
            report.add("raw telemetry (TimescaleDB retention policy)", 0)
            return
        before = now - timedelta(days=settings.telemetry_retention_days)
        sql = _EXPIRE.format(table="telemetry", column="ts")
        total = 0
        while True:
            with write.transaction():
                count = write.execute(sql.encode(), {"before": before, "limit": batch}).rowcount
            total += count
            if count <= 0:
                break
        report.add("expired raw telemetry rows", total)
    finally:
        write.close()


def _is_hypertable(conn: Conn, table: str) -> bool:
    row = conn.execute(
        "SELECT to_regclass('timescaledb_information.hypertables') IS NOT NULL"
    ).fetchone()
    if not row or not row[0]:
        conn.rollback()
        return False
    found = conn.execute(
        "SELECT EXISTS (SELECT FROM timescaledb_information.hypertables"
        " WHERE hypertable_name = %s)",
        (table,),
    ).fetchone()
    conn.rollback()
    return bool(found and found[0])


def run_periodically(settings: Settings, stop: threading.Event) -> None:
    """Run the job every IOTP_RETENTION_INTERVAL_SECONDS until ``stop``; an error is logged
    and the job tried again next round (retention can always wait)."""
    while not stop.wait(settings.retention_interval_seconds):
        try:
            report = run_retention(settings)
        except psycopg.Error:
            logger.exception("the retention job failed; trying again next round")
            continue
        if report is not None and any(report.rows.values()):
            logger.info(
                "retention: %s; longest batch %.0f ms",
                ", ".join(f"{what} {count}" for what, count in report.rows.items() if count),
                report.longest_batch_ms,
            )
