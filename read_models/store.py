"""The read store: applying deltas with set-based upserts, tracking, and event dedupe.

A batch is applied in one transaction together with its event ids (dedupe) and the
consumer group's tracking row, so that a crash leaves either all of a batch or none of it.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import psycopg

from iotp.db import device_columns
from iotp.events import DeviceDecommissioned, DeviceRegistered, DeviceUpdated
from iotp.pg_arrays import (
    PgArray,
    bools,
    float8s,
    int8s,
    register_pg_arrays,
    texts,
    timestamptz_micros,
    timestamptzs,
    unix_minute_micros,
)
from iotp.redis_client import split_id
from read_models.alarms import apply_alarms
from read_models.projection import Deltas, DeviceEvent
from read_models.rollup_tiers import MINUTE, TIERS, Tier

# The upserts take their arrays as binary parameters (%b), packed by iotp.pg_arrays: psycopg
# dumps a list element by element in Python, and that dumping bounded the aggregator.

# Taken shared by each aggregator batch and exclusively by `iotp rebuild`, which therefore
# sees no batch half-applied and pauses the aggregators while it swaps the models in.
REBUILD_LOCK_KEY = 0x10770004

Conn = psycopg.Connection[Any]

_UPSERT_STATS = """
INSERT INTO read_models.metric_stats AS t (device_id, metric, count, sum, min, min_ts, max,
    max_ts, first_ts, last_ts, last_value, last_out_of_range, breaches)
SELECT * FROM unnest(%b::text[], %b::text[], %b::int8[], %b::float8[], %b::float8[],
    %b::timestamptz[], %b::float8[], %b::timestamptz[], %b::timestamptz[], %b::timestamptz[],
    %b::float8[], %b::bool[], %b::int8[]) ORDER BY 1, 2
ON CONFLICT (device_id, metric) DO UPDATE SET
    count = t.count + excluded.count,
    sum = t.sum + excluded.sum,
    min_ts = CASE WHEN excluded.min < t.min THEN excluded.min_ts
                  WHEN excluded.min > t.min THEN t.min_ts
                  ELSE LEAST(t.min_ts, excluded.min_ts) END,
    min = LEAST(t.min, excluded.min),
    max_ts = CASE WHEN excluded.max > t.max THEN excluded.max_ts
                  WHEN excluded.max < t.max THEN t.max_ts
                  ELSE LEAST(t.max_ts, excluded.max_ts) END,
    max = GREATEST(t.max, excluded.max),
    first_ts = LEAST(t.first_ts, excluded.first_ts),
    last_value = CASE WHEN excluded.last_ts >= t.last_ts THEN excluded.last_value
                      ELSE t.last_value END,
    last_out_of_range = CASE WHEN excluded.last_ts >= t.last_ts THEN excluded.last_out_of_range
                             ELSE t.last_out_of_range END,
    last_ts = GREATEST(t.last_ts, excluded.last_ts),
    breaches = t.breaches + excluded.breaches
"""

_MERGE_BUCKET = """ON CONFLICT (device_id, metric, bucket) DO UPDATE SET
    count = t.count + excluded.count,
    sum = t.sum + excluded.sum,
    min = LEAST(t.min, excluded.min),
    max = GREATEST(t.max, excluded.max)"""

_UPSERT_FLEET = """
INSERT INTO read_models.fleet_minute AS t (bucket, readings)
SELECT * FROM unnest(%b::timestamptz[], %b::int8[]) ORDER BY 1
ON CONFLICT (bucket) DO UPDATE SET readings = t.readings + excluded.readings
"""

_UPSERT_ACTIVITY = """
INSERT INTO read_models.device_activity AS t (device_id, last_seen, readings)
SELECT * FROM unnest(%b::text[], %b::timestamptz[], %b::int8[]) ORDER BY 1
ON CONFLICT (device_id) DO UPDATE SET
    last_seen = GREATEST(t.last_seen, excluded.last_seen),
    readings = t.readings + excluded.readings
"""


def _merged_from_minutes(tier: Tier) -> str:
    """An upsert of ``tier``'s buckets from the batch's minute buckets (the CTE ``m``)."""
    if tier is MINUTE:
        source = "SELECT * FROM m ORDER BY 1, 2, 3"
    else:
        stride = f"INTERVAL '{int(tier.bucket.total_seconds())} seconds'"
        source = (
            f"SELECT device_id, metric, date_bin({stride}, bucket, TIMESTAMPTZ 'epoch'),"  # noqa: S608 - a constant stride
            " sum(count), sum(sum), min(min), max(max) FROM m GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
        )
    return (
        f"INSERT INTO {tier.recent} AS t (device_id, metric, bucket, count, sum, min, max)"
        f" {source} {_MERGE_BUCKET}"
    )


_TRACK_ROWS = """
INSERT INTO read_models.tracking AS t (stream, group_name, last_id_ms, last_id_seq,
    last_event_at, updated_at)
SELECT *, now() FROM unnest(%s::text[], %s::text[], %s::int8[], %s::int8[], %s::timestamptz[])
ON CONFLICT (stream, group_name) DO UPDATE SET
    (last_id_ms, last_id_seq) = (SELECT ms, seq FROM (VALUES
        (t.last_id_ms, t.last_id_seq), (excluded.last_id_ms, excluded.last_id_seq)) AS v(ms, seq)
        ORDER BY ms DESC, seq DESC LIMIT 1),
    last_event_at = GREATEST(t.last_event_at, excluded.last_event_at),
    updated_at = now()
"""


def _telemetry_upsert(tracked: bool) -> str:
    """A batch's telemetry, every read model of it, in one statement; with ``tracked``, the
    group's positions too (_TRACK_ROWS, a round trip less).

    Each statement is a round trip, and a round trip costs the aggregator about 40 µs of CPU
    here, more than the events of a small batch. The hours and days are merged by PostgreSQL
    from the minute buckets (a third of the arrays to send, no coarsening in Python). Every
    insert goes in key order (ORDER BY), and every aggregator runs the same statement, so
    aggregators touching the same rows lock them in one order. Empty arrays insert nothing.
    Its parameters are _telemetry_arrays', in the order of the statement's placeholders.
    """
    tracking = f",\ntracked AS ({_TRACK_ROWS})" if tracked else ""
    return f"""
WITH stats AS ({_UPSERT_STATS}
), m AS (
    SELECT * FROM unnest(%b::text[], %b::text[], %b::timestamptz[], %b::int8[], %b::float8[],
        %b::float8[], %b::float8[]) AS m(device_id, metric, bucket, count, sum, min, max)
), {", ".join(f"{tier.name}s AS ({_merged_from_minutes(tier)})" for tier in TIERS)},
fleet AS ({_UPSERT_FLEET}
){tracking}
{_UPSERT_ACTIVITY}
"""  # noqa: S608 - it interpolates constant statements only


_UPSERT_TELEMETRY = _telemetry_upsert(tracked=False)
_UPSERT_TELEMETRY_AND_TRACK = _telemetry_upsert(tracked=True)

# Attributes move forward only (by event time), so two aggregators applying a device's
# events out of order still end on the newest; decommissioning is final.
_NEWER_ATTRIBUTES = "t.attrs_at IS NULL OR excluded.attrs_at >= t.attrs_at"
_TAKE_NEWER_ATTRIBUTES = ",\n    ".join(
    f"{column} = CASE WHEN {_NEWER_ATTRIBUTES} THEN excluded.{column} ELSE t.{column} END"
    for column in ("name", "kind", "lat", "lon", "metadata", "metrics")
)
_UPSERT_DEVICE = f"""
INSERT INTO read_models.devices AS t (device_id, name, kind, lat, lon, metadata, metrics,
    registered_at, updated_at, attrs_at)
VALUES (%(device_id)s, %(name)s, %(kind)s, %(lat)s, %(lon)s, %(metadata)s, %(metrics)s,
    %(registered_at)s, %(at)s, %(at)s)
ON CONFLICT (device_id) DO UPDATE SET
    {_TAKE_NEWER_ATTRIBUTES},
    registered_at = COALESCE(LEAST(t.registered_at, excluded.registered_at),
                             t.registered_at, excluded.registered_at),
    updated_at = GREATEST(t.updated_at, excluded.updated_at),
    attrs_at = GREATEST(t.attrs_at, excluded.attrs_at)
"""  # noqa: S608 - it interpolates constant column names only

_DECOMMISSION = """
INSERT INTO read_models.devices AS t (device_id, status, decommissioned_at, updated_at)
VALUES (%(device_id)s, 'decommissioned', %(at)s, %(at)s)
ON CONFLICT (device_id) DO UPDATE SET status = 'decommissioned',
    decommissioned_at = COALESCE(t.decommissioned_at, excluded.decommissioned_at),
    updated_at = GREATEST(t.updated_at, excluded.updated_at)
"""

_TOUCH = """
INSERT INTO read_models.devices AS t (device_id, updated_at) VALUES (%(device_id)s, %(at)s)
ON CONFLICT (device_id) DO UPDATE SET updated_at = GREATEST(t.updated_at, excluded.updated_at)
"""


# How many of the ids were new: usually all of them, and then nothing more comes back (each
# returned id was a UUID object built in Python, about a tenth of the aggregator's CPU).
_CLAIM = """
WITH claimed AS (
    INSERT INTO read_models.applied_events (event_id) SELECT unnest(%b::uuid[])
    ON CONFLICT DO NOTHING RETURNING 1
) SELECT count(*) FROM claimed
"""
# The same, the batch's lock (lock_for_batch) taken first, by the same statement: a round
# trip less. The insert reads its ids through the lock's row, so it waits for the lock.
_LOCK_AND_CLAIM = """
WITH locked AS (SELECT pg_advisory_xact_lock_shared(%s)), claimed AS (
    INSERT INTO read_models.applied_events (event_id) SELECT unnest(%b::uuid[]) FROM locked
    ON CONFLICT DO NOTHING RETURNING 1
) SELECT count(*) FROM claimed
"""
# Otherwise, which: the rows this transaction inserted (an event repeated in the batch is
# inserted once).
_CLAIMED_HERE = """
SELECT event_id FROM read_models.applied_events
WHERE event_id = ANY(%b::uuid[]) AND xmin = pg_current_xact_id()::xid
"""


def claim_events(
    conn: Conn, event_ids: list[uuid.UUID], lock: bool = False
) -> set[uuid.UUID] | None:
    """Record ``event_ids`` as applied, in the caller's transaction: the ones that were not
    applied before, or None when every one of them was new and they were distinct. With
    ``lock``, :func:`lock_for_batch` first."""
    if not event_ids:
        if lock:
            lock_for_batch(conn)
        return set()
    if lock:
        row = conn.execute(_LOCK_AND_CLAIM, (REBUILD_LOCK_KEY, event_ids)).fetchone()
    else:
        row = conn.execute(_CLAIM, (event_ids,)).fetchone()
    if row is not None and row[0] == len(event_ids):
        return None
    return {found for (found,) in conn.execute(_CLAIMED_HERE, (event_ids,)).fetchall()}


Positions = Mapping[str, tuple[str, datetime | None]]  # stream -> (last id, newest event)


def apply_deltas(
    conn: Conn, deltas: Deltas, group: str | None = None, positions: Positions | None = None
) -> None:
    """Merge ``deltas`` into the read models, in the caller's transaction; with ``group``,
    also record its ``positions`` (as :func:`track` does).

    Rows go in key order, so that aggregators sharing the group lock the rows they both
    touch in the same order and never deadlock.
    """
    register_pg_arrays(conn)
    for event in deltas.device_events:
        apply_device_event(conn, event)
    tracking = _tracking_arrays(group, positions) if group is not None and positions else ()
    if deltas.stats or deltas.minute or deltas.fleet or deltas.activity:
        statement = _UPSERT_TELEMETRY_AND_TRACK if tracking else _UPSERT_TELEMETRY
        conn.execute(statement, _telemetry_arrays(deltas, tracking))
        tracking = ()
    apply_alarms(conn, deltas.alarms)
    if tracking:
        conn.execute(_TRACK_ROWS, tracking)


def _tracking_arrays(group: str, positions: Positions) -> tuple[list[Any], ...]:
    """The parameters of _TRACK_ROWS: ``group``'s ``positions``."""
    ids = [split_id(last) for last, _ in positions.values()]
    return (
        list(positions),
        [group] * len(positions),
        [ms for ms, _ in ids],
        [seq for _, seq in ids],
        [at for _, at in positions.values()],
    )


def _telemetry_arrays(
    deltas: Deltas, tracking: tuple[list[Any], ...] = ()
) -> tuple[PgArray | list[Any], ...]:
    """The parameters of :func:`_telemetry_upsert`'s statement: stats, minute buckets, fleet,
    the positions (``tracking``, when the statement records them), activity."""
    keys, values = deltas.stats.keys(), deltas.stats.values()
    stats = (
        texts([k[0] for k in keys]),
        texts([k[1] for k in keys]),
        int8s([v.count for v in values]),
        float8s([v.sum for v in values]),
        float8s([v.min for v in values]),
        timestamptz_micros([v.min_ts for v in values]),
        float8s([v.max for v in values]),
        timestamptz_micros([v.max_ts for v in values]),
        timestamptz_micros([v.first_ts for v in values]),
        timestamptz_micros([v.last_ts for v in values]),
        float8s([v.last_value for v in values]),
        bools([v.last_out_of_range for v in values]),
        int8s([v.breaches for v in values]),
    )
    buckets, parts = deltas.minute.keys(), deltas.minute.values()
    minutes = (
        texts([k[0] for k in buckets]),
        texts([k[1] for k in buckets]),
        timestamptz_micros([unix_minute_micros(k[2]) for k in buckets]),
        int8s([v.count for v in parts]),
        float8s([v.sum for v in parts]),
        float8s([v.min for v in parts]),
        float8s([v.max for v in parts]),
    )
    fleet = (
        timestamptz_micros([unix_minute_micros(k) for k in deltas.fleet]),
        int8s(list(deltas.fleet.values())),
    )
    activity = deltas.activity
    seen = (
        texts(list(activity)),
        timestamptzs([a.last_seen for a in activity.values()]),
        int8s([a.readings for a in activity.values()]),
    )
    return (*stats, *minutes, *fleet, *tracking, *seen)


def apply_device_event(conn: Conn, event: DeviceEvent) -> None:
    if isinstance(event, DeviceRegistered | DeviceUpdated):
        conn.execute(
            _UPSERT_DEVICE,
            {
                "device_id": event.device_id,
                **device_columns(event),
                "registered_at": (
                    event.occurred_at if isinstance(event, DeviceRegistered) else None
                ),
                "at": event.occurred_at,
            },
        )
    elif isinstance(event, DeviceDecommissioned):
        conn.execute(_DECOMMISSION, {"device_id": event.device_id, "at": event.occurred_at})
    else:  # credentials rotated: nothing to show but that the device changed
        conn.execute(_TOUCH, {"device_id": event.device_id, "at": event.occurred_at})


def track(conn: Conn, group: str, positions: Positions) -> None:
    """Record ``group``'s ``positions`` (stream -> last id applied, newest event), in one
    statement; a position never moves back."""
    conn.execute(_TRACK_ROWS, _tracking_arrays(group, positions))


def reset_tracking(conn: Conn, group: str, positions: Mapping[str, str]) -> None:
    """Set ``group``'s positions to ``positions``, lower or not (after a heal: what Redis
    delivered, so that a stream Redis lost is not mistaken for a loss again)."""
    for stream, last_id in positions.items():
        ms, seq = split_id(last_id)
        conn.execute(
            "UPDATE read_models.tracking SET last_id_ms = %s, last_id_seq = %s, updated_at = now()"
            " WHERE stream = %s AND group_name = %s",
            (ms, seq, stream, group),
        )


def lock_for_batch(conn: Conn) -> None:
    conn.execute("SELECT pg_advisory_xact_lock_shared(%s)", (REBUILD_LOCK_KEY,))


def forget_applied(conn: Conn, hours: int) -> None:
    conn.execute(
        "DELETE FROM read_models.applied_events WHERE applied_at < now() - %s * INTERVAL '1 hour'",
        (hours,),
    )
