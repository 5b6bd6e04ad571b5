"""The query API (`iotp query-api`): read models over HTTP, never the write store."""

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import psycopg
import redis
from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBearer
from psycopg_pool import ConnectionPool

from iotp import __version__
from iotp.errors import ConfigurationError
from iotp.http_middleware import BearerTokenMiddleware
from iotp.model import DEVICE_ID_PATTERN, METRIC_NAME_PATTERN
from iotp.settings import Settings, token_problem
from read_models import queries
from read_models.pipeline import PipelineHealth, pipeline_health

DeviceIdPath = Annotated[str, Path(pattern=DEVICE_ID_PATTERN)]
_documented_bearer = HTTPBearer(auto_error=False, description="IOTP_QUERY_TOKEN")


def create_query_app(settings: Settings) -> FastAPI:
    token = settings.query_token_value()
    problem = token_problem(token)
    if problem is not None or token is None:
        problem = (problem or "").replace("IOTP_API_TOKEN", "IOTP_QUERY_TOKEN (or IOTP_API_TOKEN)")
        raise ConfigurationError(f"{problem}: the query API refuses to start without a token")
    rule = queries.LivenessRule(
        default_seconds=settings.liveness_timeout_seconds, per_kind=settings.liveness_timeouts
    )
    max_page = settings.query_max_page_size

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = ConnectionPool(
            settings.read_url(),
            min_size=1,
            max_size=8,
            open=False,
            name="iotp-read",
            kwargs={"connect_timeout": 5},
        )
        pool.open(wait=False)
        app.state.pool = pool
        app.state.redis = redis.Redis.from_url(
            settings.redis_url, socket_connect_timeout=3, socket_timeout=5
        )
        try:
            yield
        finally:
            app.state.redis.close()
            pool.close()

    app = FastAPI(
        title="iotp query API",
        version=__version__,
        lifespan=lifespan,
        description="Read models: devices, statistics, series, fleet, pipeline.",
        dependencies=[Depends(_documented_bearer)],
    )
    app.add_middleware(
        BearerTokenMiddleware,
        token=token.get_secret_value(),
        protected=("/devices", "/fleet", "/pipeline"),
    )

    def connection(request: Request) -> Iterator[queries.Conn]:
        with request.app.state.pool.connection(timeout=10) as conn:
            yield conn

    Db = Annotated[queries.Conn, Depends(connection)]

    @app.exception_handler(psycopg.OperationalError)
    async def read_store_down(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": "read store unavailable, retry later"}, status_code=503)

    @app.get("/devices", response_model=queries.Page)
    def list_devices(
        db: Db,
        status: Literal["active", "decommissioned"] | None = None,
        kind: Annotated[str | None, Query(max_length=64)] = None,
        liveness: queries.Liveness | None = None,
        name: Annotated[str | None, Query(max_length=200)] = None,
        sort: Literal["device_id", "name", "kind", "status", "last_seen", "registered_at"] = (
            "device_id"
        ),
        order: Literal["asc", "desc"] = "asc",
        limit: Annotated[int, Query(ge=1, le=max_page)] = 50,
        offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
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
            limit=limit,
            offset=offset,
        )

    @app.get("/devices/{device_id}", response_model=queries.DeviceDetail)
    def get_device(db: Db, device_id: DeviceIdPath) -> queries.DeviceDetail:
        """One device: attributes, status, liveness, last values."""
        device = queries.get_device(db, rule, device_id)
        if device is None:
            raise _unknown(device_id)
        return device

    @app.get("/devices/{device_id}/stats", response_model=list[queries.MetricStats])
    def get_stats(db: Db, device_id: DeviceIdPath) -> list[queries.MetricStats]:
        """Per-metric statistics of one device."""
        if not queries.device_exists(db, device_id):
            raise _unknown(device_id)
        return queries.device_stats(db, device_id)

    @app.get("/devices/{device_id}/series", response_model=list[queries.SeriesPoint])
    def get_series(
        db: Db,
        device_id: DeviceIdPath,
        metric: Annotated[str, Query(pattern=METRIC_NAME_PATTERN)],
        start: Annotated[datetime | None, Query(alias="from")] = None,
        end: Annotated[datetime | None, Query(alias="to")] = None,
        bucket: Literal["1m", "1h"] = "1m",
    ) -> list[queries.SeriesPoint]:
        """Rollups of one metric: minute or hour buckets between from and to (UTC)."""
        end = _aware(end) if end else datetime.now(UTC)
        start = _aware(start) if start else end - timedelta(hours=1)
        if start >= end:
            raise HTTPException(422, "from must be before to")
        if not queries.device_exists(db, device_id):
            raise _unknown(device_id)
        try:
            return queries.series(db, device_id, metric, start, end, bucket)
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from exc

    @app.get("/fleet", response_model=queries.FleetSummary)
    def get_fleet(db: Db) -> queries.FleetSummary:
        """Devices by status, liveness and kind; readings per minute over the last hour."""
        return queries.fleet(db, rule)

    @app.get("/pipeline", response_model=PipelineHealth)
    def get_pipeline(db: Db, request: Request) -> PipelineHealth:
        """Consumer groups, pending entries and lag, ingest counters, dead letters."""
        try:
            return pipeline_health(db, request.app.state.redis)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise HTTPException(503, "Redis unavailable, retry later") from exc

    @app.get("/healthz")
    def healthz(db: Db) -> dict[str, Any]:
        db.execute("SELECT 1")
        return {"status": "ok"}

    return app


def _unknown(device_id: str) -> HTTPException:
    return HTTPException(404, f"device {device_id!r} is not known to the read models")


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)
