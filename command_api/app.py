"""The command API application: wiring of pools, routes, middleware and the relay."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import psycopg
import redis.asyncio as aioredis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from command_api.domain import (
    DeviceAlreadyExists,
    DeviceIsDecommissioned,
    DeviceNotFound,
    IdempotencyKeyReused,
)
from command_api.relay import run_relay
from command_api.routes import devices, health
from iotp import __version__
from iotp.db import open_pool
from iotp.errors import ConfigurationError
from iotp.http_middleware import BearerTokenMiddleware, BodySizeLimitMiddleware
from iotp.settings import Settings, token_problem
from iotp.tasks import stop_task

logger = logging.getLogger(__name__)

_STATUS_FOR = {
    DeviceNotFound: 404,
    DeviceAlreadyExists: 409,
    DeviceIsDecommissioned: 409,
    IdempotencyKeyReused: 422,
}


def create_app(settings: Settings, *, run_relay_task: bool = True) -> FastAPI:
    """The command API for ``settings``; nothing connects until the app starts."""
    problem = token_problem(settings.api_token)
    if problem is not None or settings.api_token is None:
        raise ConfigurationError(f"{problem}: the command API refuses to start without a token")
    token = settings.api_token.get_secret_value()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = await open_pool(settings.database_url)
        client = aioredis.Redis.from_url(settings.redis_url, socket_connect_timeout=5)
        app.state.settings, app.state.pool, app.state.redis = settings, pool, client
        app.state.pepper = token.encode()
        stop = asyncio.Event()
        relay = (
            asyncio.create_task(run_relay(pool, client, settings, stop)) if run_relay_task else None
        )
        try:
            yield
        finally:
            stop.set()
            if relay is not None:
                await stop_task(relay, grace=10.0)
            await client.aclose()
            await pool.close()

    app = FastAPI(
        title="iotp command API",
        version=__version__,
        description="Register and manage devices. Reads belong to the query API.",
        lifespan=lifespan,
    )
    app.include_router(devices)
    app.include_router(health)
    app.add_middleware(BearerTokenMiddleware, token=token, protected=("/devices",))
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.request_max_bytes)

    for exc_type, status in _STATUS_FOR.items():
        app.add_exception_handler(exc_type, _answer(status))
    app.add_exception_handler(psycopg.OperationalError, _database_unavailable)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    return app


def _printable(value: object) -> str | int:
    """A value safe to put in a JSON answer, whatever bytes the client sent."""
    if isinstance(value, int):
        return value
    return str(value).encode("utf-8", "backslashreplace").decode("utf-8")


async def _invalid_request(request: Request, exc: Exception) -> JSONResponse:
    # FastAPI's default answer echoes the rejected input, which may hold lone surrogates
    # or NaN that cannot be encoded (a 500), or megabytes of hostile text.
    assert isinstance(exc, RequestValidationError)
    detail = [
        {
            "loc": [_printable(part) for part in error.get("loc", ())],
            "msg": _printable(error.get("msg", "")),
            "type": _printable(error.get("type", "")),
        }
        for error in exc.errors()
    ]
    return JSONResponse({"detail": detail}, status_code=422)


def _answer(status: int) -> Callable[[Request, Exception], Awaitable[JSONResponse]]:
    async def handler(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=status)

    return handler


async def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    logger.warning("database unavailable during %s %s: %s", request.method, request.url.path, exc)
    return JSONResponse({"detail": "database unavailable, retry later"}, status_code=503)
