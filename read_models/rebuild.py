"""`iotp rebuild`: recompute every read model from the write store, then hand over.

1. Pause the aggregators (an exclusive advisory lock that each of their batches shares).
2. Note each stream's last entry id P, then open a repeatable-read snapshot S of the write
   store. Ingest commits rows before it publishes their event, so every event up to P has
   its readings in S.
3. In one read-store transaction: replace every model with what S says, chunk by chunk.
4. Hand over: every event the live consumers may still be given (pending, undelivered, or
   published after P) is recorded as applied if its readings are in S; the ones that are
   not (committed after S) are applied now. So are the events ingest committed in S but has
   not published yet (its ledger: Redis was away, or ingest died before it published); they
   reach the stream later, with the same ids, when their readings are counted already. The
   consumers then resume where they were, and the event-id dedupe makes the join exact: no
   gap, nothing counted twice.

Alarms are copied in step 3 from the write store's alarms table, which holds every column
of the alarm read model (each change is written with its event, in one transaction), so the
alarm stream is not needed: Redis may have lost it. An alarm event published after P may
already be in S (committed before S, relayed after P); step 4 applies it anyway, and that
changes nothing: the read model's merge keeps each column group's earliest event, whose
fields the row holds already, and the greater updated_at, and the row's is already the
newest occurred_at of the events in S.

It is also how a gap is healed (events cut from the stream before the aggregators read
them, :mod:`iotp.stream_gaps`): the cuts made before step 2 count as healed once it ends.
"""

from __future__ import annotations

import logging
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import psycopg
import redis
from psycopg.types.json import Jsonb

from iotp.db import connect
from iotp.event_shards import ensure_groups
from iotp.events import AnyEvent, TelemetryRecorded, UndecodableEvent, from_fields
from iotp.preflight import READ_DATABASE_SETTING
from iotp.redis_client import redis_for, split_id, text
from iotp.settings import Settings
from iotp.stream_gaps import cuts_into, mark_healed
from read_models import store

# The read model's own column list: the copy fills exactly the columns its events fill.
from read_models.alarms import ALARM_COLUMNS
from read_models.consumer import AGGREGATOR_GROUP, aggregated_streams
from read_models.kept import Before, coverage_start, joined_stats
from read_models.projection import Deltas
from read_models.retention import expire_before
from read_models.rollup_tiers import DAY, HOUR, MINUTE, PARTS, TIERS, Tier

logger = logging.getLogger(__name__)

# Emptied and refilled whole: the write store holds all of them.
WHOLE_TABLES = ("devices", "device_activity", "metric_stats", "alarms", "applied_events")
MODEL_TABLES = (
    *WHOLE_TABLES,
    *(f"rollup_{tier.name}_{part}" for tier in TIERS for part in PARTS),
    "fleet_minute",
)
Progress = Callable[[int, int], None]

# Telemetry's unique key is byte-ordered (migration 0005): look-ups by device say
# COLLATE "C" to use it. Every statement reads from %(from)s on (NULL: all of it).
_SINCE = "(%(from)s::timestamptz IS NULL OR t.ts >= %(from)s)"
_STATS = f"""
SELECT t.device_id, t.metric, count(*), sum(t.value),
       min(t.value), (array_agg(t.ts ORDER BY t.value ASC, t.ts ASC))[1],
       max(t.value), (array_agg(t.ts ORDER BY t.value DESC, t.ts ASC))[1],
       min(t.ts), max(t.ts), (array_agg(t.value ORDER BY t.ts DESC))[1],
       COALESCE((array_agg((t.value < r.min OR t.value > r.max) ORDER BY t.ts DESC))[1], false),
       count(*) FILTER (WHERE t.value < r.min OR t.value > r.max)
FROM telemetry t
JOIN devices d USING (device_id)
LEFT JOIN LATERAL jsonb_to_recordset(d.metrics) AS r(name text, min float8, max float8)
       ON r.name = t.metric
WHERE t.device_id COLLATE "C" = ANY(%(devices)s) AND {_SINCE}
GROUP BY t.device_id, t.metric
"""  # noqa: S608 - constant fragments only
# date_bin from the epoch, not date_trunc, whose days (and odd-offset hours) follow the
# session's time zone: buckets are UTC, as the aggregators make them.
_ROLLUP = f"""
SELECT t.device_id, t.metric, date_bin(%(width)s, t.ts, TIMESTAMPTZ 'epoch'), count(*),
       sum(t.value), min(t.value), max(t.value)
FROM telemetry t WHERE t.device_id COLLATE "C" = ANY(%(devices)s) AND {_SINCE}
GROUP BY 1, 2, 3
"""  # noqa: S608 - constant fragments only
_ACTIVITY = f"""
SELECT t.device_id, max(t.received_at), count(*) FROM telemetry t
WHERE t.device_id COLLATE "C" = ANY(%(devices)s) AND {_SINCE} GROUP BY 1
"""  # noqa: S608 - constant fragments only
_FLEET = f"""
SELECT date_bin(INTERVAL '1 minute', t.ts, TIMESTAMPTZ 'epoch'), count(*) FROM telemetry t
WHERE t.device_id COLLATE "C" = ANY(%(devices)s) AND {_SINCE} GROUP BY 1
"""  # noqa: S608 - constant fragments only
# Per series, before the coverage, from the day rollups (both halves).
_BEFORE = f"""
SELECT device_id, metric, sum(count)::bigint, sum(sum),
       min(min), (array_agg(bucket ORDER BY min ASC, bucket ASC))[1],
       max(max), (array_agg(bucket ORDER BY max DESC, bucket ASC))[1],
       min(bucket), max(bucket), (array_agg(sum / count ORDER BY bucket DESC))[1]
FROM ({
    DAY.buckets_sql(
        "device_id = ANY(%(devices)s) AND bucket < %(before)s",
        "device_id = ANY(%(devices)s) AND p.period < %(before)s"
        " AND p.period + (u.i - 1) * INTERVAL '1 day' < %(before)s",
    )
}) AS d
GROUP BY device_id, metric
"""  # noqa: S608 - constant fragments only
_STATS_COLUMNS = (
    "device_id",
    "metric",
    "count",
    "sum",
    "min",
    "min_ts",
    "max",
    "max_ts",
    "first_ts",
    "last_ts",
    "last_value",
    "last_out_of_range",
    "breaches",
)
_ROLLUP_COLUMNS = ("device_id", "metric", "bucket", "count", "sum", "min", "max")


@dataclass
class RebuildReport:
    devices: int
    metric_series: int
    minute_buckets: int
    hour_buckets: int
    window_events: int
    window_applied: int
    marked_applied: int
    day_buckets: int = 0
    # The first instant recomputed from raw telemetry; None: all of it (no raw retention).
    covered_from: datetime | None = None


@dataclass(frozen=True)
class Spans:
    """From when each model is recomputed; None: from the first reading."""

    coverage: datetime | None
    minute: datetime | None
    hour: datetime | None

    @classmethod
    def of(cls, settings: Settings, now: datetime) -> Spans:
        coverage = coverage_start(settings, now)

        def later(tier: Tier, days: int) -> datetime:
            kept = expire_before(tier, now, days)
            return kept if coverage is None else max(kept, coverage)

        return cls(
            coverage,
            later(MINUTE, settings.rollup_minute_retention_days),
            later(HOUR, settings.rollup_hour_retention_days),
        )

    def of_tier(self, tier: Tier) -> datetime | None:
        return {"minute": self.minute, "hour": self.hour}.get(tier.name, self.coverage)


def rebuild(
    settings: Settings,
    progress: Progress | None = None,
    chunk_devices: int = 200,
    now: datetime | None = None,
) -> RebuildReport:
    client = redis_for(settings.redis_url, settings.redis_cluster, socket_connect_timeout=5)
    streams = aggregated_streams(settings.event_shards)
    read = connect(settings.read_url(), setting=READ_DATABASE_SETTING)
    write = connect(settings.database_url)
    spans = Spans.of(settings, now or datetime.now(UTC))
    try:
        ensure_groups(client, AGGREGATOR_GROUP, streams)
        read.execute("SELECT pg_advisory_lock(%s)", (store.REBUILD_LOCK_KEY,))
        read.commit()
        try:
            cuts, _ = cuts_into(client, AGGREGATOR_GROUP, settings.event_shards)
            positions = {stream: _last_id(client, stream) for stream in streams}
            write.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            write.execute("SELECT 1")  # the snapshot is taken here, after the positions
            with read.transaction():
                report = _recompute(write, read, chunk_devices, progress, spans)
                _copy_alarms(write, read)
                _hand_over(client, write, read, positions, report)
            write.rollback()
            mark_healed(client, AGGREGATOR_GROUP, cuts)
        finally:
            read.execute("SELECT pg_advisory_unlock(%s)", (store.REBUILD_LOCK_KEY,))
            read.commit()
    finally:
        client.close()
        read.close()
        write.close()
    return report


def _last_id(client: redis.Redis, stream: str) -> str:
    entries: Any = client.xrevrange(stream, count=1)
    return text(entries[0][0]) if entries else "0-0"


def _recompute(
    write: psycopg.Connection[Any],
    read: psycopg.Connection[Any],
    chunk_devices: int,
    progress: Progress | None,
    spans: Spans,
) -> RebuildReport:
    coverage = spans.coverage
    if coverage is not None:
        # What the statistics said before: their instants before the coverage are kept.
        read.execute(
            "CREATE TEMP TABLE kept_stats ON COMMIT DROP AS SELECT * FROM read_models.metric_stats;"
            " CREATE TEMP TABLE kept_activity ON COMMIT DROP AS"
            " SELECT * FROM read_models.device_activity"
        )
    for table in WHOLE_TABLES:
        read.execute(f"DELETE FROM read_models.{table}")  # noqa: S608 - constant names
    for tier in TIERS:
        _clear_rollups(read, tier, coverage)
    read.execute(
        "DELETE FROM read_models.fleet_minute WHERE %(from)s::timestamptz IS NULL"
        " OR bucket >= %(from)s",
        {"from": coverage},
    )
    devices = write.execute(
        "SELECT device_id, name, kind, lat, lon, metadata, metrics, status, created_at,"
        " updated_at, decommissioned_at FROM devices ORDER BY device_id"
    ).fetchall()
    with read.cursor() as cur:
        cur.executemany(
            "INSERT INTO read_models.devices (device_id, name, kind, lat, lon, metadata,"
            " metrics, status, registered_at, updated_at, decommissioned_at, attrs_at)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            [(*row[:5], Jsonb(row[5]), Jsonb(row[6]), *row[7:], row[9]) for row in devices],
        )
    ids = [row[0] for row in devices]
    fleet: dict[datetime, int] = defaultdict(int)
    report = RebuildReport(len(devices), 0, 0, 0, 0, 0, 0, covered_from=coverage)
    for done, chunk in enumerate(_chunks(ids, chunk_devices), start=1):
        since = {"devices": chunk, "from": coverage}
        stats = write.execute(_STATS, since).fetchall()
        activity = write.execute(_ACTIVITY, since).fetchall()
        if coverage is not None:
            stats, activity = _joined(read, chunk, coverage, stats, activity)
        report.metric_series += len(stats)
        _copy(read, "metric_stats", _STATS_COLUMNS, stats)
        for tier in TIERS:
            rows = write.execute(
                _ROLLUP, {"devices": chunk, "from": spans.of_tier(tier), "width": tier.bucket}
            ).fetchall()
            if tier is MINUTE:
                report.minute_buckets += len(rows)
            elif tier is HOUR:
                report.hour_buckets += len(rows)
            else:
                report.day_buckets += len(rows)
            _copy(read, tier.recent.removeprefix("read_models."), _ROLLUP_COLUMNS, rows)
        _copy(read, "device_activity", ("device_id", "last_seen", "readings"), activity)
        fleet_since = {"devices": chunk, "from": spans.minute}
        for bucket, count in write.execute(_FLEET, fleet_since).fetchall():
            fleet[bucket] += count
        if progress is not None:
            progress(min(done * chunk_devices, len(ids)), len(ids))
    _copy(read, "fleet_minute", ("bucket", "readings"), sorted(fleet.items()))
    return report


def _clear_rollups(read: psycopg.Connection[Any], tier: Tier, start: datetime | None) -> None:
    """Delete ``tier``'s buckets from ``start`` on (all of them when None), in its three
    tables: a packed period that straddles ``start`` keeps the buckets before it."""
    if start is None:
        for table in (tier.recent, tier.packed, tier.columnar):
            read.execute(f"DELETE FROM {table}")  # noqa: S608 - constant names
        return
    for table in (tier.recent, tier.columnar):
        read.execute(f"DELETE FROM {table} WHERE bucket >= %s", (start,))  # noqa: S608
    read.execute(f"DELETE FROM {tier.packed} WHERE period >= %s", (start,))  # noqa: S608
    straddling = tier.period_of(start)
    kept = int((start - straddling) / tier.bucket)
    if kept:
        cut = ", ".join(
            f"{column} = {column}[1:{kept}] || array_fill(NULL::{kind}, ARRAY[{tier.slots - kept}])"
            for column, kind in (
                ("counts", "int8"),
                ("sums", "float8"),
                ("mins", "float8"),
                ("maxs", "float8"),
            )
        )
        read.execute(
            f"UPDATE {tier.packed} SET {cut} WHERE period = %s",  # noqa: S608 - constants
            (straddling,),
        )


def _joined(
    read: psycopg.Connection[Any],
    chunk: list[str],
    coverage: datetime,
    raw_stats: list[Any],
    raw_activity: list[Any],
) -> tuple[list[Any], list[Any]]:
    """The chunk's statistics and activity: the kept time before ``coverage`` joined to the
    write store's readings from it (:mod:`read_models.kept`)."""
    before = {
        (row[0], row[1]): Before(*row[2:])
        for row in read.execute(_BEFORE, {"devices": chunk, "before": coverage}).fetchall()
    }
    old = {
        (row[0], row[1]): tuple(row)
        for row in read.execute(
            f"SELECT {', '.join(_STATS_COLUMNS)} FROM kept_stats"  # noqa: S608 - constants
            " WHERE device_id = ANY(%s)",
            (chunk,),
        ).fetchall()
    }
    raw = {(row[0], row[1]): tuple(row) for row in raw_stats}
    stats = []
    for key in sorted(before.keys() | raw.keys()):
        joined = joined_stats(key, before.get(key), old.get(key), raw.get(key), coverage)
        if joined is not None:
            stats.append(joined)
    seen = {row[0]: (row[1], row[2]) for row in raw_activity}
    kept_seen = dict(
        read.execute(
            "SELECT device_id, last_seen FROM kept_activity WHERE device_id = ANY(%s)", (chunk,)
        ).fetchall()
    )
    counted: dict[str, int] = defaultdict(int)
    for (device, _), part in before.items():
        counted[device] += part.count
    activity = []
    for device in sorted(seen.keys() | counted.keys()):
        last_seen, readings = seen.get(device, (None, 0))
        candidates = [at for at in (last_seen, kept_seen.get(device)) if at is not None]
        if candidates:
            activity.append((device, max(candidates), readings + counted[device]))
    return stats, activity


def _copy(
    read: psycopg.Connection[Any], table: str, columns: tuple[str, ...], rows: list[Any]
) -> None:
    if not rows:
        return
    with (
        read.cursor() as cur,
        cur.copy(f"COPY read_models.{table} ({', '.join(columns)}) FROM STDIN".encode()) as copy,
    ):
        for row in rows:
            copy.write_row(row)


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _hand_over(
    client: redis.Redis,
    write: psycopg.Connection[Any],
    read: psycopg.Connection[Any],
    positions: dict[str, str],
    report: RebuildReport,
) -> None:
    applied: set[uuid.UUID] = set()
    later: list[AnyEvent] = []
    for stream in positions:
        start = _oldest_redeliverable(client, stream)
        for entry_id, event in _events(client, stream, start):
            if split_id(entry_id) <= split_id(positions[stream]):
                applied.add(event.event_id)  # its readings are in the snapshot
            else:
                later.append(event)
    report.window_events = len(later)
    in_snapshot = _present(write, [e for e in later if isinstance(e, TelemetryRecorded)])
    deltas = Deltas()
    for event in later:
        applied.add(event.event_id)
        if isinstance(event, TelemetryRecorded) and event.event_id in in_snapshot:
            continue
        deltas.add(event)
        report.window_applied += 1
    store.apply_deltas(read, deltas)
    applied |= _unpublished(write)
    store.claim_events(read, sorted(applied))
    report.marked_applied = len(applied)


def _unpublished(write: psycopg.Connection[Any]) -> set[uuid.UUID]:
    """The telemetry events in ingest's ledger: their readings are in the snapshot, and they
    will still be published (the ledger keeps a batch's events until they are)."""
    found: set[uuid.UUID] = set()
    for (entries,) in write.execute("SELECT entries FROM ingest_ledger").fetchall():
        for fields in orjson.loads(entries):
            if fields.get("type") == "TelemetryRecorded" and "event_id" in fields:
                found.add(uuid.UUID(fields["event_id"]))
    return found


def _copy_alarms(write: psycopg.Connection[Any], read: psycopg.Connection[Any]) -> None:
    """The write store's alarms, as they are in the snapshot, into the empty read model.

    Binary COPY from one to the other: the columns have the same names and types on both
    sides, and nothing is held in memory but a block at a time.
    """
    columns = ", ".join(name for name, _ in ALARM_COLUMNS)
    with (
        write.cursor() as source,
        source.copy(f"COPY (SELECT {columns} FROM alarms) TO STDOUT (FORMAT BINARY)") as out,  # noqa: S608
        read.cursor() as target,
        target.copy(f"COPY read_models.alarms ({columns}) FROM STDIN (FORMAT BINARY)") as into,
    ):
        for block in out:
            into.write(block)


def _oldest_redeliverable(client: redis.Redis, stream: str) -> str:
    """The first entry the aggregators' group may still be given (pending or undelivered)."""
    groups: Any = client.xinfo_groups(stream)
    group = next((g for g in groups if text(g["name"]) == AGGREGATOR_GROUP), None)
    if group is None:
        return "0-0"
    start = split_id(text(group["last-delivered-id"]))
    start = (start[0], start[1] + 1)
    pending: Any = client.xpending(stream, AGGREGATOR_GROUP)
    if pending and pending.get("min"):
        start = min(start, split_id(text(pending["min"])))
    return f"{start[0]}-{start[1]}"


def _events(client: redis.Redis, stream: str, start: str) -> Iterator[tuple[str, AnyEvent]]:
    cursor = start
    while True:
        entries: Any = client.xrange(stream, min=cursor, count=5000)
        if not entries:
            return
        for entry_id, fields in entries:
            try:
                yield text(entry_id), from_fields(fields)
            except UndecodableEvent as exc:
                logger.error("skipping undecodable entry %s: %s", text(entry_id), exc)
        last = split_id(text(entries[-1][0]))
        cursor = f"{last[0]}-{last[1] + 1}"


def _present(write: psycopg.Connection[Any], events: list[TelemetryRecorded]) -> set[uuid.UUID]:
    """Events whose readings are in the snapshot (a batch commits all of them or none)."""
    keyed = [(e, e.readings[0]) for e in events if e.readings]
    if not keyed:
        return set()
    rows = write.execute(
        "SELECT k.i FROM unnest(%s::text[], %s::text[], %s::timestamptz[], %s::int4[])"
        " AS k(d, m, ts, i) WHERE EXISTS (SELECT 1 FROM telemetry t"
        ' WHERE t.device_id COLLATE "C" = k.d AND t.metric COLLATE "C" = k.m AND t.ts = k.ts)',
        (
            [e.device_id for e, _ in keyed],
            [next(iter(r.metrics)) for _, r in keyed],
            [r.ts for _, r in keyed],
            list(range(len(keyed))),
        ),
    ).fetchall()
    return {keyed[i][0].event_id for (i,) in rows}
