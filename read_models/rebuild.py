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
from datetime import datetime
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
from read_models.projection import Deltas

logger = logging.getLogger(__name__)

MODEL_TABLES = (
    "devices",
    "device_activity",
    "metric_stats",
    "rollup_minute",
    "rollup_hour",
    "fleet_minute",
    "alarms",
    "applied_events",
)
Progress = Callable[[int, int], None]

# Telemetry's unique key is byte-ordered (migration 0005): look-ups by device say
# COLLATE "C" to use it.
_STATS = """
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
WHERE t.device_id COLLATE "C" = ANY(%s)
GROUP BY t.device_id, t.metric
"""
_ROLLUP = """
SELECT device_id, metric, date_trunc(%s, ts), count(*), sum(value), min(value), max(value)
FROM telemetry WHERE device_id COLLATE "C" = ANY(%s)
GROUP BY 1, 2, 3
"""
_ACTIVITY = """
SELECT device_id, max(received_at), count(*) FROM telemetry
WHERE device_id COLLATE "C" = ANY(%s) GROUP BY 1
"""
_FLEET = """
SELECT date_trunc('minute', ts), count(*) FROM telemetry
WHERE device_id COLLATE "C" = ANY(%s) GROUP BY 1
"""


@dataclass
class RebuildReport:
    devices: int
    metric_series: int
    minute_buckets: int
    hour_buckets: int
    window_events: int
    window_applied: int
    marked_applied: int


def rebuild(
    settings: Settings, progress: Progress | None = None, chunk_devices: int = 200
) -> RebuildReport:
    client = redis_for(settings.redis_url, settings.redis_cluster, socket_connect_timeout=5)
    streams = aggregated_streams(settings.event_shards)
    read = connect(settings.read_url(), setting=READ_DATABASE_SETTING)
    write = connect(settings.database_url)
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
                report = _recompute(write, read, chunk_devices, progress)
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
) -> RebuildReport:
    for table in MODEL_TABLES:
        read.execute(f"DELETE FROM read_models.{table}")  # noqa: S608 - constant names
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
    series = minutes = hours = 0
    for done, chunk in enumerate(_chunks(ids, chunk_devices), start=1):
        stats = write.execute(_STATS, (chunk,)).fetchall()
        series += len(stats)
        _copy(
            read,
            "metric_stats",
            (
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
            ),
            stats,
        )
        for unit, table in (("minute", "rollup_minute"), ("hour", "rollup_hour")):
            rows = write.execute(_ROLLUP, (unit, chunk)).fetchall()
            if unit == "minute":
                minutes += len(rows)
            else:
                hours += len(rows)
            _copy(
                read, table, ("device_id", "metric", "bucket", "count", "sum", "min", "max"), rows
            )
        _copy(
            read,
            "device_activity",
            ("device_id", "last_seen", "readings"),
            write.execute(_ACTIVITY, (chunk,)).fetchall(),
        )
        for bucket, count in write.execute(_FLEET, (chunk,)).fetchall():
            fleet[bucket] += count
        if progress is not None:
            progress(min(done * chunk_devices, len(ids)), len(ids))
    _copy(read, "fleet_minute", ("bucket", "readings"), sorted(fleet.items()))
    return RebuildReport(len(devices), series, minutes, hours, 0, 0, 0)


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
