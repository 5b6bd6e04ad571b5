"""HTTP routes of the query API: each answers one read-model query, never the write store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Path, Query, Response
from pydantic import BaseModel

from iotp.http_errors import error_responses, invalid
from iotp.model import DEVICE_ID_PATTERN, METRIC_NAME_PATTERN
from iotp.permissions import Permission, requires
from read_models import queries
from read_models.dependencies import (
    LivenessRuleDep,
    PageWindowDep,
    ReadConnectionDep,
    RedisDep,
    SettingsDep,
)
from read_models.health import PipelineHealth, pipeline_health
from read_models.rollup_tiers import BucketName

# Checked by AccessMiddleware before anything is read (iotp.permissions); /healthz is public.
router = APIRouter(dependencies=[requires(Permission.READ_MODELS_READ)])
health_router = APIRouter()

DeviceIdPath = Annotated[str, Path(pattern=DEVICE_ID_PATTERN, examples=["boiler-1"])]
# Stored names and kinds hold no control character (PostgreSQL text no NUL at all), so a
# filter holding one is refused rather than sent to the database.
NO_CONTROL_CHARACTER = r"^[^\x00-\x08\x0a-\x1f\x7f-\x9f]*$"
# Every read answers 401 without a key, 403 to a role without it, 503 while the store is down.
_READ_ERRORS = (401, 403, 503)
_DEVICE_READ = error_responses(*_READ_ERRORS, 404, 422)


class Healthy(BaseModel):
    status: Literal["ok"]


@router.get("/devices", response_model=queries.Page, responses=error_responses(*_READ_ERRORS, 422))
def list_devices(
    db: ReadConnectionDep,
    rule: LivenessRuleDep,
    window: PageWindowDep,
    status: Literal["active", "decommissioned"] | None = None,
    kind: Annotated[str | None, Query(max_length=64, pattern=NO_CONTROL_CHARACTER)] = None,
    liveness: queries.Liveness | None = None,
    name: Annotated[str | None, Query(max_length=200, pattern=NO_CONTROL_CHARACTER)] = None,
    sort: queries.SortKey = "device_id",
    order: Literal["asc", "desc"] = "asc",
) -> queries.Page:
    """The device directory: filter, sort and paginate (at most IOTP_QUERY_MAX_PAGE_SIZE)."""
    return queries.list_devices(
        db,
        rule,
        status=status,
        kind=kind,
        liveness=liveness,
        search=name,
        sort=sort,
        descending=order == "desc",
        limit=window.limit,
        offset=window.offset,
    )


@router.get("/devices/{device_id}", response_model=queries.DeviceDetail, responses=_DEVICE_READ)
def get_device(
    db: ReadConnectionDep, rule: LivenessRuleDep, device_id: DeviceIdPath
) -> queries.DeviceDetail:
    """One device: attributes, status, liveness, last values."""
    device = queries.get_device(db, rule, device_id)
    if device is None:
        raise _unknown(device_id)
    return device


@router.get(
    "/devices/{device_id}/stats", response_model=list[queries.MetricStats], responses=_DEVICE_READ
)
def get_stats(db: ReadConnectionDep, device_id: DeviceIdPath) -> list[queries.MetricStats]:
    """Per-metric statistics of one device."""
    if not queries.device_exists(db, device_id):
        raise _unknown(device_id)
    return queries.device_stats(db, device_id)


@router.get(
    "/devices/{device_id}/series", response_model=list[queries.SeriesPoint], responses=_DEVICE_READ
)
def get_series(
    db: ReadConnectionDep,
    device_id: DeviceIdPath,
    metric: Annotated[str, Query(pattern=METRIC_NAME_PATTERN)],
    start: Annotated[datetime | None, Query(alias="from")] = None,
    end: Annotated[datetime | None, Query(alias="to")] = None,
    bucket: BucketName = "1m",
) -> Response:
    """Rollups of one metric: minute (`1m`), hour (`1h`) or day (`1d`) buckets between from
    and to (UTC). Minute buckets are kept IOTP_ROLLUP_MINUTE_RETENTION_DAYS, hour buckets
    IOTP_ROLLUP_HOUR_RETENTION_DAYS, day buckets for ever."""
    end = _aware(end) if end else datetime.now(UTC)
    start = _aware(start) if start else _hour_before(end)
    if start >= end:
        raise invalid(("query", "from"), "from must be before to")
    if not queries.device_exists(db, device_id):
        raise _unknown(device_id)
    try:
        body = queries.series_json(db, device_id, metric, start, end, bucket)
    except ValueError as exc:
        raise invalid(("query", "bucket"), str(exc)) from exc
    return Response(body, media_type="application/json")


@router.get("/fleet", response_model=queries.FleetSummary, responses=error_responses(*_READ_ERRORS))
def get_fleet(db: ReadConnectionDep, rule: LivenessRuleDep) -> queries.FleetSummary:
    """Devices by status, liveness and kind; readings per minute over the last hour; alarms
    not cleared, by severity and state."""
    return queries.fleet(db, rule)


@router.get("/pipeline", response_model=PipelineHealth, responses=error_responses(*_READ_ERRORS))
def get_pipeline(db: ReadConnectionDep, client: RedisDep, settings: SettingsDep) -> PipelineHealth:
    """Consumer groups, pending entries and lag, ingest counters, dead letters."""
    return pipeline_health(db, client, settings.event_shards)


@health_router.get("/healthz", response_model=Healthy, responses=error_responses(503))
def healthz(db: ReadConnectionDep) -> Healthy:
    """Whether the read store answers."""
    db.execute("SELECT 1")
    return Healthy(status="ok")


def _unknown(device_id: str) -> HTTPException:
    return HTTPException(404, f"device {device_id!r} is not known to the read models")


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _hour_before(end: datetime) -> datetime:
    try:
        return end - timedelta(hours=1)
    except OverflowError:  # `to` within the first hour of year 1
        raise invalid(("query", "to"), "to must be later than 0001-01-01T01:00:00Z") from None
