"""The command API application: wiring of pools, routes, middleware and the relay."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from fastapi import FastAPI, Request, Response

from command_api.access import command_access_policy
from command_api.alarm_routes import alarm_rules, alarms
from command_api.alarms import (
    AlarmIsCleared,
    AlarmNotFound,
    AlarmRuleNotFound,
    NoActiveDeviceOfKind,
)
from command_api.api_key_routes import api_key_router
from command_api.dashboard_account_routes import dashboard_account_router
from command_api.domain import (
    DeviceAlreadyExists,
    DeviceIsDecommissioned,
    DeviceNotFound,
    IdempotencyKeyReused,
    InvalidField,
)
from command_api.gateway_routes import gateways
from command_api.profile_routes import device_profiles
from command_api.profiles import (
    BuiltInProfile,
    FriendlyNameTaken,
    GatewayAlreadyExists,
    GatewayNotFound,
    ProfileAlreadyExists,
    ProfileInUse,
    ProfileNotFound,
)
from command_api.relay import run_relay
from command_api.routes import devices, health
from command_api.webhook_routes import webhooks
from command_api.webhooks import WebhookNotFound
from iotp import __version__
from iotp.api_keys import ApiKeyNotFound, KeyAuthenticator, principal_for
from iotp.dashboard_accounts import DashboardAccountExists, DashboardAccountNotFound
from iotp.db import open_pool
from iotp.errors import ConfigurationError
from iotp.http_errors import (
    error_responses,
    install_error_handlers,
    problem,
    refusal,
    unavailable,
)
from iotp.http_middleware import AccessMiddleware, BodySizeLimitMiddleware
from iotp.permissions import Permission, Principal, Role, bootstrap_principal, requires
from iotp.redis_client import async_redis_for
from iotp.settings import Settings, token_problem
from iotp.tasks import stop_task

# Each rejection a handler may raise, and the status it answers with.
_STATUS_FOR: dict[type[Exception], int] = {
    DeviceNotFound: 404,
    DeviceAlreadyExists: 409,
    DeviceIsDecommissioned: 409,
    NoActiveDeviceOfKind: 404,
    AlarmRuleNotFound: 404,
    AlarmNotFound: 404,
    AlarmIsCleared: 409,
    WebhookNotFound: 404,
    ApiKeyNotFound: 404,
    DashboardAccountNotFound: 404,
    DashboardAccountExists: 409,
    ProfileNotFound: 404,
    ProfileAlreadyExists: 409,
    ProfileInUse: 409,
    BuiltInProfile: 409,
    GatewayNotFound: 404,
    GatewayAlreadyExists: 409,
    FriendlyNameTaken: 409,
}


def create_app(settings: Settings, *, run_relay_task: bool = True) -> FastAPI:
    """The command API for ``settings``; nothing connects until the app starts."""
    unusable = token_problem(settings.api_token)
    if unusable is not None or settings.api_token is None:
        raise ConfigurationError(f"{unusable}: the command API refuses to start without a token")
    token = settings.api_token.get_secret_value()
    pepper = settings.device_pepper()
    assert pepper is not None  # IOTP_API_TOKEN at least
    authenticator = KeyAuthenticator(
        {token: bootstrap_principal("IOTP_API_TOKEN", Role.ADMIN)}, _stored_key_lookup(lambda: app)
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = await open_pool(settings.database_url)
        client = async_redis_for(
            settings.redis_url, settings.redis_cluster, socket_connect_timeout=5
        )
        app.state.settings, app.state.pool, app.state.redis = settings, pool, client
        app.state.pepper = pepper.get_secret_value().encode()
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
    # The webhook routes are another area's module: their permission is declared here.
    app.include_router(
        webhooks,
        dependencies=[requires(Permission.WEBHOOKS_MANAGE)],
        responses=error_responses(403),
    )
    app.include_router(alarm_rules)
    app.include_router(alarms)
    app.include_router(api_key_router)
    app.include_router(dashboard_account_router)
    app.include_router(device_profiles)
    app.include_router(gateways)
    app.add_middleware(
        AccessMiddleware,
        authenticator=authenticator,
        policy=command_access_policy(settings, lambda: app),
    )
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.request_max_bytes)

    install_error_handlers(app)
    for exc_type, status in _STATUS_FOR.items():
        app.add_exception_handler(exc_type, _answer(status))
    app.add_exception_handler(IdempotencyKeyReused, _key_reused)
    app.add_exception_handler(InvalidField, _invalid_field)
    app.add_exception_handler(psycopg.OperationalError, unavailable("database"))
    return app


def _stored_key_lookup(application: Callable[[], FastAPI]) -> Callable[[str], Awaitable[Any]]:
    """Look a key up in the write store through the app's pool (open once the app starts)."""

    async def lookup(key: str) -> Principal | None:
        async with application().state.pool.connection(timeout=5) as conn:
            return await principal_for(conn, key)

    return lookup


def _answer(status: int) -> Callable[[Request, Exception], Awaitable[Response]]:
    async def handler(request: Request, exc: Exception) -> Response:
        return problem(status, str(exc))

    return handler


async def _key_reused(request: Request, exc: Exception) -> Response:
    return refusal(
        [{"loc": ("header", "Idempotency-Key"), "msg": str(exc), "type": "idempotency_key_reused"}]
    )


async def _invalid_field(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, InvalidField)
    return refusal([{"loc": ("body", exc.field), "msg": str(exc), "type": "value_error"}])
