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
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from iotp.db import connect
from iotp.migrate import is_hypertable
from iotp.preflight import READ_DATABASE_SETTING
from iotp.settings import Settings
from read_models import audit_store, store
from read_models.rollup_tiers import HOUR, MINUTE, TIERS, Tier

logger = logging.getLogger(__name__)

Conn = psycopg.Connection[Any]
RETENTION_LOCK_KEY = 0x10770005
BATCH_ROWS = 5_000  # the most rows a round may touch
ROUND_MS = 20.0  # what a round aims to take
ROUND_TIMEOUT_MS = 80  # a round's statement is cancelled past this (its locks with it)
MIN_ROUND_ROWS = 20
EPOCH_START = datetime(1, 1, 1, tzinfo=UTC)  # before any bucket

# A round of packing: the rows it takes from a tier's _recent table (locked as picked, so
# never a version an aggregator replaced since), deleted there; then where it ended.
_TAKE = """
WITH picked AS (
    SELECT device_id, metric, bucket FROM {recent}
    WHERE (device_id, metric, bucket) > (%(after_device)s, %(after_metric)s, %(after)s)
      AND bucket < %(before)s
    ORDER BY device_id, metric, bucket LIMIT %(limit)s FOR UPDATE SKIP LOCKED
), moved AS (
    DELETE FROM {recent} r USING picked k
    WHERE r.device_id = k.device_id AND r.metric = k.metric AND r.bucket = k.bucket
    RETURNING r.device_id, r.metric, r.bucket, r.count, r.sum, r.min, r.max
)"""
_TAKEN = """
SELECT (SELECT count(*) FROM moved), (SELECT count(*) FROM picked), last.*
FROM (SELECT device_id, metric, bucket FROM picked
      ORDER BY device_id DESC, metric DESC, bucket DESC LIMIT 1) AS last
RIGHT JOIN (SELECT 1) AS one ON true
"""

_PACK = (
    _TAKE  # noqa: S608 - constant fragments; names and integers filled in by _read_side
    + """, placed AS (
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
-- Merged bucket by bucket, in one pass over both rows' arrays: the aggregators' own merge,
-- so packing in any order, in any number of steps, gives one result.
ON CONFLICT (device_id, metric, period) DO UPDATE SET (counts, sums, mins, maxs) = (
    SELECT array_agg(COALESCE(c1 + c2, c1, c2) ORDER BY i),
           array_agg(COALESCE(s1 + s2, s1, s2) ORDER BY i),
           array_agg(LEAST(lo1, lo2) ORDER BY i),
           array_agg(GREATEST(hi1, hi2) ORDER BY i)
    FROM unnest(t.counts, t.sums, t.mins, t.maxs,
                excluded.counts, excluded.sums, excluded.mins, excluded.maxs)
         WITH ORDINALITY AS u(c1, s1, lo1, hi1, c2, s2, lo2, hi2, i))
RETURNING 1
)
"""
    + _TAKEN
)

# With TimescaleDB: the same rounds, into the tier's columnar hypertable, one row a bucket.
# A series' values in a round share the decimal places its readings need (its min and max
# are readings), so that the integers of a compressed batch stay on one scale; a bucket
# those places do not keep exactly keeps its values as float8 (migration 0070).
_PACK_COLUMNAR = (
    _TAKE  # noqa: S608 - constant fragments; table names filled in by _read_side
    + """, placed AS (
    SELECT m.*, max(GREATEST(read_models.decimal_places(m.min),
                             read_models.decimal_places(m.max)))
                    OVER (PARTITION BY m.device_id, m.metric) AS places
    FROM moved m
), packed AS (
INSERT INTO {columnar} AS t (device_id, metric, bucket, count, scale, sum_scaled, min_scaled,
                             max_scaled, sum, min, max)
SELECT p.device_id, p.metric, p.bucket, p.count, e.*
FROM placed p, read_models.rollup_encode(p.sum, p.min, p.max, p.places, p.count) e
ORDER BY p.device_id, p.metric, p.bucket
-- A late reading's bucket packed already: merged as the aggregators merge (counts and sums
-- add, min and max compare), kept scaled where both were and the result is exact.
ON CONFLICT (device_id, metric, bucket) DO UPDATE SET
    (count, scale, sum_scaled, min_scaled, max_scaled, sum, min, max) = (
    SELECT t.count + excluded.count, e.*
    FROM read_models.rollup_encode(
        read_models.unscaled(t.sum_scaled, t.scale, t.sum)
            + read_models.unscaled(excluded.sum_scaled, excluded.scale, excluded.sum),
        LEAST(read_models.unscaled(t.min_scaled, t.scale, t.min),
              read_models.unscaled(excluded.min_scaled, excluded.scale, excluded.min)),
        GREATEST(read_models.unscaled(t.max_scaled, t.scale, t.max),
                 read_models.unscaled(excluded.max_scaled, excluded.scale, excluded.max)),
        CASE WHEN t.scale IS NOT NULL AND excluded.scale IS NOT NULL
             THEN GREATEST(t.scale, excluded.scale) END,
        t.count + excluded.count
    ) e)
RETURNING 1
)
"""
    + _TAKEN
)

# Rows picked by their key ({key}: columns, or ctid where nothing else writes old rows),
# locked as they are picked: deleted as seen, never a version an aggregator replaced since.
# Each round starts where the last one ended (%(after)s): from the oldest again, an index scan
# would step over every entry the earlier rounds deleted (still in the index until vacuum),
# and the rounds would slow down as they go.
_EXPIRE = """
WITH picked AS (
    SELECT {key}, {column} AS at FROM {table}
    WHERE {column} >= %(after)s AND {column} < %(before)s
    ORDER BY {column} LIMIT %(limit)s FOR UPDATE SKIP LOCKED
), gone AS (
    DELETE FROM {table} t USING picked k WHERE ({qualified}) = ({picked}) RETURNING 1
)
SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM picked), (SELECT max(at) FROM picked)
"""


def _expire_sql(table: str, column: str, key: tuple[str, ...]) -> str:
    return _EXPIRE.format(
        table=table,
        column=column,
        key=", ".join(key),
        qualified=", ".join(f"t.{c}" for c in key),
        picked=", ".join(f"k.{c}" for c in key),
    )


@dataclass
class RetentionReport:
    """Rows each step moved or removed, by what they were (``packed minute`` ...)."""

    rows: dict[str, int] = field(default_factory=dict)
    longest_batch_ms: float = 0.0
    longest_ms: dict[str, float] = field(default_factory=dict)  # by step
    cancelled_rounds: int = 0  # rounds cancelled at ROUND_TIMEOUT_MS, and tried smaller

    def timed(self, what: str, elapsed_ms: float) -> None:
        self.longest_batch_ms = max(self.longest_batch_ms, elapsed_ms)
        self.longest_ms[what] = max(self.longest_ms.get(what, 0.0), elapsed_ms)

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
    columnar = is_hypertable(read, MINUTE.columnar)  # the read store has TimescaleDB's layout
    for tier in TIERS:
        before = pack_before(tier, now)
        if columnar:
            sql = _PACK_COLUMNAR.format(recent=tier.recent, columnar=tier.columnar)
        else:
            sql = _PACK.format(
                recent=tier.recent,
                packed=tier.packed,
                period=int(tier.period.total_seconds()),
                step=int(tier.bucket.total_seconds()),
                slots=tier.slots,
            )
        params = {"before": before, "limit": batch}
        # By series: a round takes whole periods of a few series, packed in one go, rather
        # than a few minutes of every series, merged into every period again and again.
        cursor = {"after_device": "", "after_metric": "", "after": EPOCH_START}
        what = f"packed {tier.name} buckets"
        report.add(what, _batches(read, sql, params, report, what, cursor))
        if columnar:
            compressed, reopened = _compress_chunks(read, tier, before, report)
            report.add(f"compressed {tier.name} chunks", compressed)
            report.add(f"recompressed {tier.name} chunks (late readings)", reopened)
    for tier, days in (
        (MINUTE, settings.rollup_minute_retention_days),
        (HOUR, settings.rollup_hour_retention_days),
    ):
        before = expire_before(tier, now, days)
        sql = _expire_sql(tier.recent, "bucket", ("device_id", "metric", "bucket"))
        what = f"expired {tier.name} buckets (late, unpacked)"
        report.add(what, _batches(read, sql, {"before": before, "limit": batch}, report, what))
        if columnar:
            # Whole chunks of both layouts: the packed arrays hold what was packed before
            # the read store gained the columnar one, until it expires.
            dropped = _drop_chunks(read, tier.columnar, tier.bucket_of(now - timedelta(days=days)))
            dropped += _drop_chunks(read, tier.packed, before)
            report.add(f"expired {tier.name} chunks", dropped)
            continue
        sql = _expire_sql(tier.packed, "period", ("device_id", "metric", "period"))
        what = f"expired {tier.name} periods"
        report.add(what, _batches(read, sql, {"before": before, "limit": batch}, report, what))
    sql = _expire_sql("read_models.fleet_minute", "bucket", ("bucket",))
    before = now - timedelta(days=settings.rollup_minute_retention_days)
    what = "expired fleet minutes"
    report.add(what, _batches(read, sql, {"before": before, "limit": batch}, report, what))


def _batches(
    conn: Conn,
    sql: str,
    params: dict[str, Any],
    report: RetentionReport,
    what: str,
    cursor: dict[str, Any] | None = None,
) -> int:
    """Run ``sql`` in short transactions until it has caught up; rows touched in all.

    ``sql`` takes ``%(limit)s`` and the ``cursor``'s parameters (where the last round
    ended: ``%(after)s`` by default), and selects the rows it touched, the rows it picked,
    then the cursor's next values (NULL when it picked none).
    """
    position = dict(cursor or {"after": EPOCH_START})

    def step(limit: int) -> tuple[int, int]:
        # Planned for its parameters every time: a generic plan, once psycopg prepares the
        # statement, may scan and sort the whole table to pick a round's rows (measured: the
        # columnar pack 30 times slower).
        bound = {**params, **position, "limit": limit}
        row = conn.execute(sql.encode(), bound, prepare=False).fetchone()
        if not row:
            return 0, 0
        if row[2] is not None:
            position.update(zip(position, row[2:], strict=True))
        return int(row[0]), int(row[1])

    return _rounds(conn, step, int(params["limit"]), report, what)


def _forget_audit(conn: Conn, settings: Settings, batch: int, report: RetentionReport) -> int:
    days = settings.audit_retention_days

    def step(limit: int) -> tuple[int, int]:
        gone = audit_store.forget_older_than(conn, days, limit)
        return gone, gone

    return _rounds(conn, step, batch, report, "expired audit rows")


def _rounds(
    conn: Conn,
    step: Callable[[int], tuple[int, int]],
    most: int,
    report: RetentionReport,
    what: str,
) -> int:
    """``step(limit)`` (rows touched, rows picked) in one short transaction at a time, until
    a round picks fewer rows than it may (caught up: late rows arriving meanwhile wait for
    the next run).

    The limit adapts so that a round takes about :data:`ROUND_MS`: a round's row locks are
    what an aggregator may wait on, and a round merging into packed periods costs far more
    a row than one deleting. A round that runs past :data:`ROUND_TIMEOUT_MS` anyway (the
    machine stalled, or it waited) is cancelled, its locks released, and tried smaller; a
    step that keeps being cancelled at the smallest size waits for the next run.
    """
    total, limit, cancelled = 0, min(most, 200), 0
    while True:
        started = time.perf_counter()
        try:
            with conn.transaction():
                conn.execute(f"SET LOCAL statement_timeout = {ROUND_TIMEOUT_MS}")
                store.lock_for_batch(conn)
                touched, picked = step(limit)
        except psycopg.errors.QueryCanceled:
            report.cancelled_rounds += 1
            cancelled = cancelled + 1 if limit == MIN_ROUND_ROWS else 0
            if cancelled >= 3:
                logger.warning("retention: %s keeps timing out; trying again next run", what)
                return total
            limit = max(MIN_ROUND_ROWS, limit // 4)
            continue
        elapsed_ms = (time.perf_counter() - started) * 1000
        report.timed(what, elapsed_ms)
        total += touched
        if picked < limit:
            return total
        if elapsed_ms > ROUND_MS:
            limit = max(MIN_ROUND_ROWS, limit // 2)
        elif elapsed_ms < ROUND_MS / 4:
            limit = min(most, limit * 2)


def _raw_telemetry(settings: Settings, now: datetime, batch: int, report: RetentionReport) -> None:
    if settings.telemetry_retention_days <= 0:
        return
    write = connect(settings.database_url)
    try:
        before = now - timedelta(days=settings.telemetry_retention_days)
        if is_hypertable(write, "telemetry"):
            report.add("expired raw telemetry chunks", _drop_chunks(write, "telemetry", before))
            return
        sql = _expire_sql("telemetry", "ts", ("ctid",))
        total, after = 0, EPOCH_START
        while True:
            params = {"before": before, "limit": batch, "after": after}
            with write.transaction():
                row = write.execute(sql.encode(), params).fetchone()
            gone, picked, last = row if row else (0, 0, None)
            total += gone
            after = last or after
            if picked < batch:
                break
        report.add("expired raw telemetry rows", total)
    finally:
        write.close()


def _drop_chunks(conn: Conn, table: str, before: datetime) -> int:
    """TimescaleDB drops whole chunks (what its retention policy does, run now): no rows
    deleted one by one, and only the dropped chunks locked."""
    with conn.transaction():
        dropped = conn.execute(
            "SELECT count(*) FROM drop_chunks(%s::regclass, older_than => %s)", (table, before)
        ).fetchone()
    return int(dropped[0]) if dropped else 0


def _compress_chunks(
    conn: Conn, tier: Tier, before: datetime, report: RetentionReport
) -> tuple[int, int]:
    """Compress the chunks of ``tier``'s columnar table that hold only buckets before
    ``before`` (all packed already): those not compressed yet, and those a late reading has
    reopened since (TimescaleDB decompressed a batch to merge it into, and its buckets stay
    rows until the chunk is compressed again, which compresses only them). One chunk a
    transaction; how many were compressed, and how many again."""
    with conn.transaction():
        # A reopened chunk is "partial" (status bit 8): TimescaleDB's catalog is the only
        # place that tells.
        chunks = conn.execute(
            "SELECT format('%%I.%%I', i.chunk_schema, i.chunk_name), i.is_compressed"
            " FROM timescaledb_information.chunks i"
            " JOIN _timescaledb_catalog.chunk c"
            " ON c.schema_name = i.chunk_schema AND c.table_name = i.chunk_name"
            " WHERE format('%%I.%%I', i.hypertable_schema, i.hypertable_name) = %s"
            " AND i.range_end <= %s AND (NOT i.is_compressed OR c.status & 8 <> 0)"
            " ORDER BY i.range_end",
            (tier.columnar, before),
        ).fetchall()
    for chunk, _ in chunks:
        started = time.perf_counter()
        with conn.transaction():
            conn.execute("SELECT compress_chunk(%s::regclass, if_not_compressed => true)", (chunk,))
        report.timed(f"compressed {tier.name} chunks", (time.perf_counter() - started) * 1000)
    reopened = sum(1 for _, compressed in chunks if compressed)
    return len(chunks) - reopened, reopened


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
