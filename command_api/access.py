"""What the command API gives its access middleware: the throttle, the counter, the lookup
of dashboard accounts, and the record of refused commands (AccessDenied events)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from fastapi import FastAPI

from command_api.outbox import write_outbox
from iotp.api_keys import CachedLookup
from iotp.auth_throttle import FailureCounter, FailureThrottle
from iotp.events import AccessDenied
from iotp.http_middleware import AccessPolicy, Denied
from iotp.permissions import Permission, Principal
from iotp.settings import Settings

# AccessDenied's bounds: a refused path is recorded, never a path long enough to hurt.
_MAX_PATH = 2048


def command_access_policy(settings: Settings, application: Callable[[], FastAPI]) -> AccessPolicy:
    """The command API's access policy; its stores are the app's (open once it starts)."""

    def redis_client() -> aioredis.Redis | None:
        return getattr(application().state, "redis", None)

    async def dashboard_account(username: str) -> Principal | None:
        from iotp.dashboard_accounts import account_principal

        async with application().state.pool.connection(timeout=5) as conn:
            return await account_principal(conn, username)

    return AccessPolicy(
        throttle=FailureThrottle(settings.auth_failure_limit, settings.auth_failure_window_seconds),
        counter=FailureCounter("command", redis_client),
        dashboard_users=CachedLookup(dashboard_account),
        on_denied=_denied_recorder(application),
    )


def _denied_recorder(application: Callable[[], FastAPI]) -> Denied:
    async def record(
        principal: Principal, method: str, path: str, permission: Permission | None, reason: str
    ) -> None:
        event = AccessDenied(
            actor=principal.actor,
            method=method[:16],
            path=path[:_MAX_PATH],
            permission=None if permission is None else permission.value,
            reason=reason[:500],
        )
        pool: Any = application().state.pool
        async with pool.connection(timeout=5) as conn:
            await write_outbox(conn, [event])

    return record
