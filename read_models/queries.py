"""Every read of the read models: typed results, bounded lists, parameterised SQL only.

The dashboard and the query API read through these functions, over the pool that
:func:`open_read_pool` builds, and nothing else; none of them touches the write store.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, get_args

import orjson
import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool
from pydantic import BaseModel, Field, TypeAdapter

from iotp.settings import Settings
from read_models.alarms import AlarmCounts, open_alarm_counts
from read_models.rollup_tiers import BY_BUCKET, BucketName, range_sql

Conn = psycopg.Connection[Any]
Liveness = Literal["online", "offline", "never_seen"]
SortKey = Literal["device_id", "name", "kind", "status", "last_seen", "registered_at"]
SORTABLE = set(get_args(SortKey))
MAX_SERIES_POINTS = 20_000


def open_read_pool(
    url: str, *, name: str, max_size: int, connect_timeout: int = 5
) -> ConnectionPool[Conn]:
    """A pool over the read store at ``url``, opening in the background.

    The process starts even while PostgreSQL is down; until it answers, taking a connection
    fails (PoolTimeout, an OperationalError), which each reader turns into a clear answer.
    """
    pool: ConnectionPool[Conn] = ConnectionPool(
        url,
        min_size=1,
        max_size=max_size,
        open=False,
        name=name,
        kwargs={"connect_timeout": connect_timeout},
    )
    pool.open(wait=False)
    return pool


class LivenessRule(BaseModel):
    """How long a device may stay silent and still count as online, by kind."""

    default_seconds: int
    per_kind: dict[str, int] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> LivenessRule:
        """IOTP_LIVENESS_TIMEOUT_SECONDS, and IOTP_LIVENESS_TIMEOUTS per kind."""
        return cls(
            default_seconds=settings.liveness_timeout_seconds, per_kind=settings.liveness_timeouts
        )


class DeviceSummary(BaseModel):
    device_id: str
    name: str | None
    kind: str | None
    status: str
    liveness: Liveness
    last_seen: datetime | None
    registered_at: datetime | None
    last_values: dict[str, float]


class Page(BaseModel):
    items: list[DeviceSummary]
    total: int
    limit: int
    offset: int


class DeviceDetail(DeviceSummary):
    lat: float | None
    lon: float | None
    metadata: dict[str, Any]
    metrics: list[dict[str, Any]]
    updated_at: datetime | None
    decommissioned_at: datetime | None
    readings: int


class MetricStats(BaseModel):
    metric: str
    count: int
    sum: float
    mean: float
    min: float
    min_ts: datetime
    max: float
    max_ts: datetime
    first_ts: datetime
    last_ts: datetime
    last_value: float
    last_out_of_range: bool
    breaches: int


class SeriesPoint(BaseModel):
    bucket: datetime
    count: int
    mean: float
    min: float
    max: float


SERIES = TypeAdapter(list[SeriesPoint])


class FleetSummary(BaseModel):
    registered: int
    active: int
    decommissioned: int
    online: int
    offline: int
    never_seen: int
    by_kind: dict[str, int]
    breaching_devices: int
    readings_per_minute: list[tuple[datetime, int]]
    alarms: AlarmCounts = Field(default_factory=AlarmCounts)


_LIVENESS = """
    CASE WHEN a.last_seen IS NULL THEN 'never_seen'
         WHEN a.last_seen >= now() - make_interval(secs =>
              COALESCE((%(timeouts)s::jsonb ->> d.kind)::int, %(default_timeout)s))
         THEN 'online' ELSE 'offline' END
"""

_FILTER = f"""
    WHERE (%(status)s::text IS NULL OR d.status = %(status)s)
      AND (%(kind)s::text IS NULL OR d.kind = %(kind)s)
      AND (%(search)s::text IS NULL OR d.name ILIKE %(search)s OR d.device_id ILIKE %(search)s)
      AND (%(liveness)s::text IS NULL OR {_LIVENESS} = %(liveness)s)
"""

_LAST_VALUES = """
    COALESCE((SELECT jsonb_object_agg(s.metric, s.last_value)
              FROM read_models.metric_stats s WHERE s.device_id = d.device_id), '{}'::jsonb)
"""


def _liveness_params(rule: LivenessRule) -> dict[str, Any]:
    return {
        "timeouts": orjson.dumps(rule.per_kind).decode(),
        "default_timeout": rule.default_seconds,
    }


def list_devices(
    conn: Conn,
    rule: LivenessRule,
    *,
    status: str | None = None,
    kind: str | None = None,
    liveness: Liveness | None = None,
    search: str | None = None,
    sort: str = "device_id",
    descending: bool = False,
    limit: int = 50,
    offset: int = 0,
) -> Page:
    """One page of the device directory, filtered and sorted, with the total count."""
    if sort not in SORTABLE:
        raise ValueError(f"sort must be one of {sorted(SORTABLE)}")
    order = f"{'a' if sort == 'last_seen' else 'd'}.{sort} {'DESC' if descending else 'ASC'}"
    order += " NULLS LAST, d.device_id"
    params = {
        **_liveness_params(rule),
        "status": status,
        "kind": kind,
        "liveness": liveness,
        "search": f"%{_escape_like(search)}%" if search else None,
        "limit": limit,
        "offset": offset,
    }
    sql = f"""
        WITH page AS (
            SELECT d.device_id, d.name, d.kind, d.status, a.last_seen, d.registered_at,
                   {_LIVENESS} AS liveness, count(*) OVER () AS total
            FROM read_models.devices d
            LEFT JOIN read_models.device_activity a USING (device_id)
            {_FILTER}
            ORDER BY {order}
            LIMIT %(limit)s OFFSET %(offset)s
        )
        SELECT page.*, {_LAST_VALUES.replace("d.device_id", "page.device_id")} AS last_values
        FROM page
    """  # noqa: S608 - order is built from a whitelist; values are parameters
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(sql.encode(), params).fetchall()
    total = rows[0]["total"] if rows else _count(conn, rule, status, kind, liveness, search)
    return Page(
        items=[DeviceSummary.model_validate(row) for row in rows],
        total=total,
        limit=limit,
        offset=offset,
    )


def _count(
    conn: Conn,
    rule: LivenessRule,
    status: str | None,
    kind: str | None,
    liveness: str | None,
    search: str | None,
) -> int:
    # An empty page past the end still reports how many there are.
    params = {
        **_liveness_params(rule),
        "status": status,
        "kind": kind,
        "liveness": liveness,
        "search": f"%{_escape_like(search)}%" if search else None,
    }
    row = conn.execute(
        f"""
        SELECT count(*) FROM read_models.devices d
        LEFT JOIN read_models.device_activity a USING (device_id)
        {_FILTER}
        """.encode(),  # noqa: S608
        params,
    ).fetchone()
    return int(row[0]) if row else 0


def _escape_like(text: str | None) -> str:
    return (text or "").replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def get_device(conn: Conn, rule: LivenessRule, device_id: str) -> DeviceDetail | None:
    sql = f"""
        SELECT d.*, a.last_seen, COALESCE(a.readings, 0) AS readings,
               {_LIVENESS} AS liveness, {_LAST_VALUES} AS last_values
        FROM read_models.devices d
        LEFT JOIN read_models.device_activity a USING (device_id)
        WHERE d.device_id = %(device_id)s
    """  # noqa: S608
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            sql.encode(), {**_liveness_params(rule), "device_id": device_id}
        ).fetchone()
    return None if row is None else DeviceDetail.model_validate(row)


def device_exists(conn: Conn, device_id: str) -> bool:
    row = conn.execute(
        "SELECT 1 FROM read_models.devices WHERE device_id = %s", (device_id,)
    ).fetchone()
    return row is not None


def device_stats(conn: Conn, device_id: str) -> list[MetricStats]:
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            "SELECT *, sum / count AS mean FROM read_models.metric_stats"
            " WHERE device_id = %s ORDER BY metric",
            (device_id,),
        ).fetchall()
    return [MetricStats.model_validate(row) for row in rows]


def series(
    conn: Conn,
    device_id: str,
    metric: str,
    start: datetime,
    end: datetime,
    bucket: BucketName,
) -> list[SeriesPoint]:
    """Rollup buckets of one metric in [start, end): minute, hour or day buckets, bounded."""
    return SERIES.validate_python(_series_rows(conn, device_id, metric, start, end, bucket))


def series_json(
    conn: Conn,
    device_id: str,
    metric: str,
    start: datetime,
    end: datetime,
    bucket: BucketName,
) -> bytes:
    """:func:`series` as the JSON the query API answers: the rows straight from the read
    store into JSON, with no model per row (a week of minutes is 10,080 of them)."""
    rows = _series_rows(conn, device_id, metric, start, end, bucket)
    return orjson.dumps(rows, option=orjson.OPT_UTC_Z)


def _series_rows(
    conn: Conn,
    device_id: str,
    metric: str,
    start: datetime,
    end: datetime,
    bucket: BucketName,
) -> list[dict[str, Any]]:
    tier = BY_BUCKET[bucket]
    if (end - start) / tier.bucket > MAX_SERIES_POINTS:
        raise ValueError(f"at most {MAX_SERIES_POINTS} buckets: use a wider bucket or range")
    # Binary results: no timestamp parsing of up to MAX_SERIES_POINTS rows.
    with conn.cursor(row_factory=dict_row, binary=True) as cur:
        return cur.execute(
            "SELECT bucket, count, sum / count AS mean, min, max FROM ("  # noqa: S608
            + range_sql(tier, "device_id = %(device)s AND metric = %(metric)s", one_series=True)
            + ") AS r ORDER BY bucket",
            {"device": device_id, "metric": metric, "start": start, "end": end},
        ).fetchall()


def fleet(conn: Conn, rule: LivenessRule) -> FleetSummary:
    with conn.cursor(row_factory=dict_row) as cur:
        counts = cur.execute(
            f"""
            SELECT count(*) AS registered,
                   count(*) FILTER (WHERE d.status = 'active') AS active,
                   count(*) FILTER (WHERE d.status = 'decommissioned') AS decommissioned,
                   count(*) FILTER (WHERE d.status = 'active' AND {_LIVENESS} = 'online')
                       AS online,
                   count(*) FILTER (WHERE d.status = 'active' AND {_LIVENESS} = 'offline')
                       AS offline,
                   count(*) FILTER (WHERE d.status = 'active' AND {_LIVENESS} = 'never_seen')
                       AS never_seen
            FROM read_models.devices d
            LEFT JOIN read_models.device_activity a USING (device_id)
            """.encode(),  # noqa: S608
            _liveness_params(rule),
        ).fetchone()
        assert counts is not None
        by_kind = {
            row["kind"] or "": row["n"]
            for row in cur.execute(
                "SELECT kind, count(*) AS n FROM read_models.devices GROUP BY kind ORDER BY kind"
            ).fetchall()
        }
        breaching = cur.execute(
            "SELECT count(DISTINCT device_id) AS n FROM read_models.metric_stats"
            " WHERE last_out_of_range"
        ).fetchone()
        per_minute = cur.execute(
            "SELECT bucket, readings FROM read_models.fleet_minute"
            " WHERE bucket >= date_trunc('minute', now()) - INTERVAL '60 minutes'"
            " ORDER BY bucket"
        ).fetchall()
    return FleetSummary(
        **counts,
        by_kind=by_kind,
        breaching_devices=breaching["n"] if breaching else 0,
        readings_per_minute=[(row["bucket"], row["readings"]) for row in per_minute],
        alarms=open_alarm_counts(conn),
    )


def kinds(conn: Conn) -> list[str]:
    """The device kinds in the directory, for a filter's choices."""
    rows = conn.execute(
        "SELECT DISTINCT kind FROM read_models.devices WHERE kind IS NOT NULL ORDER BY kind"
    ).fetchall()
    return [row[0] for row in rows]


def tracking(conn: Conn) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "SELECT stream, group_name, last_id_ms || '-' || last_id_seq AS last_applied_id,"
            " last_event_at, updated_at FROM read_models.tracking ORDER BY stream, group_name"
        ).fetchall()


MAX_DEVICE_CHOICES = 10_000


class DeviceChoice(BaseModel):
    device_id: str
    name: str | None
    status: str


def device_choices(conn: Conn, limit: int = MAX_DEVICE_CHOICES) -> list[DeviceChoice]:
    """Every device's id, name and status by id (at most ``limit``), for a picker."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            "SELECT device_id, name, status FROM read_models.devices ORDER BY device_id LIMIT %s",
            (limit,),
        ).fetchall()
    return [DeviceChoice.model_validate(row) for row in rows]
