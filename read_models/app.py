"""The query API application (`iotp query-api`): wiring of pools, routes and middleware.

It reads the read models only, but for a raw export (read_models.export), which reads
the write store's telemetry in a read-only transaction, and for the API keys, which it
looks up in the write store (a lookup is kept a second at most, so a revocation holds within
two). Once started it outlives a restart of PostgreSQL or Redis: the pools reconnect, and
meanwhile the routes needing them answer 503.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import psycopg
import redis
import uvicorn
from fastapi import FastAPI
from psycopg_pool import AsyncConnectionPool

from iotp import __version__
from iotp.api_keys import KeyAuthenticator, principal_for
from iotp.auth_throttle import FailureCounter, FailureThrottle
from iotp.errors import ConfigurationError
from iotp.http_errors import error_responses, install_error_handlers, unavailable
from iotp.http_middleware import AccessMiddleware, AccessPolicy
from iotp.permissions import Permission, Principal, Role, bootstrap_principal, requires
from iotp.preflight import require_read_replica, require_read_store
from iotp.redis_client import async_redis_for
from iotp.settings import Settings, token_problem
from read_models.alarm_routes import alarm_router
from read_models.audit_routes import audit_router
from read_models.export import router as export_router
from read_models.health import health_redis
from read_models.queries import LivenessRule, open_read_pool
from read_models.routes import health_router, router


class QueryAPI(FastAPI):
    """The FastAPI application, whose OpenAPI document states the page-size setting."""

    def openapi(self) -> dict[str, Any]:
        fresh = self.openapi_schema is None
        document = super().openapi()
        if fresh:
            _state_page_limit(document, self.state.settings.query_max_page_size)
        return document


def create_query_app(settings: Settings) -> FastAPI:
    """The query API for ``settings``; nothing connects until the app starts."""
    token = settings.query_token_value()
    problem = token_problem(token)
    if problem is not None or token is None:
        problem = (problem or "").replace("IOTP_API_TOKEN", "IOTP_QUERY_TOKEN (or IOTP_API_TOKEN)")
        raise ConfigurationError(f"{problem}: the query API refuses to start without a token")
    app = QueryAPI(
        title="iotp query API",
        version=__version__,
        lifespan=_lifespan,
        description="Read models: devices, statistics, series, fleet, pipeline.",
    )
    app.state.settings = settings
    app.state.liveness_rule = LivenessRule.from_settings(settings)
    bootstrap = {token.get_secret_value(): bootstrap_principal("IOTP_QUERY_TOKEN", Role.VIEWER)}
    throttle = FailureThrottle(settings.auth_failure_limit, settings.auth_failure_window_seconds)
    counter = FailureCounter("query", lambda: getattr(app.state, "auth_redis", None))
    app.add_middleware(
        AccessMiddleware,
        authenticator=KeyAuthenticator(bootstrap, _stored_key_lookup(app)),
        policy=AccessPolicy(throttle=throttle, counter=counter),
    )
    install_error_handlers(app)
    app.add_exception_handler(psycopg.OperationalError, unavailable("read store"))
    for redis_down in (redis.ConnectionError, redis.TimeoutError):
        app.add_exception_handler(redis_down, unavailable("Redis"))
    app.include_router(health_router)
    app.include_router(router)
    app.include_router(alarm_router)
    app.include_router(audit_router)
    # The export module belongs to another area: its permission is declared here.
    app.include_router(
        export_router,
        dependencies=[requires(Permission.READ_MODELS_READ)],
        responses=error_responses(403),
    )
    return app


def run_query_api(settings: Settings, host: str | None = None, port: int | None = None) -> None:
    """Serve the query API until stopped, once the read store answers.

    Raises the kernel's ServiceUnavailable or ConfigurationError, for one line on stderr.
    """
    require_read_store(settings)
    require_read_replica(settings)
    application = create_query_app(settings)
    uvicorn.run(
        application,
        host=host or settings.query_host,
        port=port or settings.query_port,
        log_level=settings.log_level.lower(),
    )


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    pool = open_read_pool(settings.reader_url(), name="iotp-read", max_size=8)
    app.state.pool = pool
    app.state.redis = health_redis(settings.redis_url, settings.redis_cluster)
    # The access middleware counts refused credentials without blocking the event loop.
    app.state.auth_redis = async_redis_for(
        settings.redis_url, settings.redis_cluster, socket_connect_timeout=3, socket_timeout=5
    )
    app.state.key_pool = _write_store_key_pool(settings)
    await app.state.key_pool.open(wait=False)
    try:
        yield
    finally:
        await app.state.key_pool.close()
        await app.state.auth_redis.aclose()
        app.state.redis.close()
        pool.close()


def _write_store_key_pool(settings: Settings) -> AsyncConnectionPool[psycopg.AsyncConnection[Any]]:
    """A small pool on the write store, where the API keys are (the read store may be
    another database); it connects in the background, so the app starts without it."""
    return AsyncConnectionPool(
        settings.database_url,
        min_size=1,
        max_size=4,
        open=False,
        kwargs={"connect_timeout": 5},
        name="iotp-keys",
    )


def _stored_key_lookup(app: FastAPI) -> Callable[[str], Awaitable[Principal | None]]:
    async def lookup(key: str) -> Principal | None:
        async with app.state.key_pool.connection(timeout=5) as conn:
            return await principal_for(conn, key)

    return lookup


def _state_page_limit(document: dict[str, Any], max_page: int) -> None:
    """Put the IOTP_QUERY_MAX_PAGE_SIZE bound of `limit` in the OpenAPI document, where it
    stood when it was in the route's signature."""
    for parameter in document["paths"]["/devices"]["get"]["parameters"]:
        if parameter["name"] == "limit":
            schema = parameter["schema"]
            parameter["schema"] = {"type": schema.pop("type"), "maximum": max_page, **schema}
