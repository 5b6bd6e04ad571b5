"""ASGI middleware that runs before any body is parsed: the access check and the size limit."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import psycopg
from fastapi.responses import JSONResponse
from fastapi.routing import RouteContext, iter_route_contexts
from starlette.exceptions import HTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from iotp.api_keys import CachedLookup, KeyAuthenticator
from iotp.auth_throttle import FailureCounter, FailureThrottle
from iotp.dashboard_accounts import DASHBOARD_USER_HEADER
from iotp.http_errors import problem
from iotp.permissions import (
    PRINCIPAL_SCOPE_KEY,
    Permission,
    Principal,
    forbidden,
    is_public,
    route_permissions,
)

logger = logging.getLogger(__name__)


# Sent by the dashboard with its own key: the person the command is for (issue 22).
_DASHBOARD_USER = DASHBOARD_USER_HEADER.lower().encode()
_READS = frozenset({"GET", "HEAD", "OPTIONS"})
Denied = Callable[[Principal, str, str, Permission | None, str], Awaitable[None]]


@dataclass(frozen=True)
class AccessPolicy:
    """What the access middleware is given besides the keys.

    ``throttle`` slows an address that keeps presenting refused credentials, ``counter``
    counts those refusals for /pipeline, ``dashboard_users`` finds an enabled dashboard
    account's principal (the command API only), and ``on_denied`` records a command
    refused to a known caller (the command API writes an AccessDenied event).
    """

    throttle: FailureThrottle | None = None
    counter: FailureCounter | None = None
    dashboard_users: CachedLookup | None = None
    on_denied: Denied | None = None


class AccessMiddleware:
    """401 for a request without a usable key, 403 for a role without the route's permission,
    429 for an address past the limit of refused credentials.

    Checked here rather than in a route dependency so that a refused request is refused
    before its body is read or validated. Deny by default: every path but the public ones
    needs a key, and a route declaring no permission (iotp.permissions) is refused to all.
    """

    def __init__(
        self, app: ASGIApp, authenticator: KeyAuthenticator, policy: AccessPolicy | None = None
    ) -> None:
        self.app = app
        self.authenticator = authenticator
        self.policy = policy or AccessPolicy()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_public(scope["path"]):
            await self.app(scope, receive, send)
            return
        refusal = await self._refusal(scope)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _refusal(self, scope: Scope) -> JSONResponse | None:
        address = _client_address(scope)
        throttle, counter = self.policy.throttle, self.policy.counter
        wait = throttle.retry_after(address) if throttle is not None else None
        if wait is not None:
            if counter is not None:
                await counter.add("throttled")
            return problem(
                429, "too many refused credentials from this address", {"Retry-After": str(wait)}
            )
        headers = dict(scope["headers"])
        given = headers.get(b"authorization", b"")
        scheme, _, credential = given.decode("latin-1").partition(" ")
        if not given:
            return problem(401, "missing bearer token", _AUTHENTICATE)
        try:
            principal = (
                await self.authenticator.principal(credential)
                if scheme == "Bearer" and credential
                else None
            )
        except psycopg.OperationalError as exc:
            logger.warning("API key lookup failed: %s", exc)
            return problem(503, "database unavailable, retry later")
        if principal is None:
            if throttle is not None:
                throttle.failed(address)
            if counter is not None:
                await counter.add("failures")
            return problem(401, "invalid bearer token", _AUTHENTICATE)
        person = headers.get(_DASHBOARD_USER)
        if person is not None:
            acting = await self._dashboard_user(scope, principal, person.decode("latin-1"))
            if isinstance(acting, JSONResponse):
                return acting
            principal = acting
        scope[PRINCIPAL_SCOPE_KEY] = principal
        route = _matching_route(scope)
        if route is None:  # the router answers 404 or 405
            return None
        needed = route_permissions(route)
        if not needed:
            return await self._denied(scope, principal, None, "this route declares no permission")
        for permission in needed:
            if not principal.may(permission):
                return await self._denied(
                    scope, principal, permission, forbidden(principal, permission)
                )
        return None

    async def _dashboard_user(
        self, scope: Scope, key: Principal, username: str
    ) -> Principal | JSONResponse:
        """The person the dashboard acts for, with that person's role, through ``key``."""
        accounts = self.policy.dashboard_users
        if accounts is None:
            return problem(400, "this API takes no X-Iotp-Dashboard-User header")
        if not key.may(Permission.DASHBOARD_USERS_ACT):
            needed = Permission.DASHBOARD_USERS_ACT
            return await self._denied(scope, key, needed, forbidden(key, needed))
        try:
            person = await accounts.get(username.encode("utf-8", "surrogateescape"), username)
        except psycopg.OperationalError as exc:
            logger.warning("dashboard account lookup failed: %s", exc)
            return problem(503, "database unavailable, retry later")
        if person is None:
            return problem(401, "unknown or disabled dashboard account", _AUTHENTICATE)
        actor = person.actor.model_copy(update={"via": key.name})
        return Principal(person.role, actor)

    async def _denied(
        self, scope: Scope, principal: Principal, permission: Permission | None, reason: str
    ) -> JSONResponse:
        on_denied = self.policy.on_denied
        if on_denied is not None and scope["method"] not in _READS:
            try:
                await on_denied(principal, scope["method"], scope["path"], permission, reason)
            except psycopg.Error as exc:  # the refusal stands; only its record is missing
                logger.warning("could not record a refused command: %s", exc)
        return problem(403, reason)


def _client_address(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


_AUTHENTICATE = {"WWW-Authenticate": "Bearer"}


def _matching_route(scope: Scope) -> RouteContext | None:
    """The route the router will call for ``scope`` (its first full match), if any.

    FastAPI (0.137 on) keeps an included router as one entry of ``app.routes``;
    ``iter_route_contexts`` gives its routes with their full paths and dependencies.
    """
    application = scope.get("app")
    for route in iter_route_contexts(getattr(application, "routes", [])):
        match, _ = route.matches(scope)
        if match == Match.FULL:
            return route
    return None


class BodySizeLimitMiddleware:
    """413 for request bodies over ``max_bytes``, whether announced or streamed."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await problem(413, _over(self.max_bytes))(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        try:
            await self.app(scope, limited_receive, send)
        except BodyTooLarge as exc:  # raised where no exception handler answers it
            await problem(413, exc.detail)(scope, receive, send)


class BodyTooLarge(HTTPException):
    """A streamed body went over the limit. An HTTPException, so that FastAPI, reading the
    body, passes it on to the app's handlers (any other error there becomes a 400)."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, _over(max_bytes))


def _over(max_bytes: int) -> str:
    return f"request body over {max_bytes} bytes"
