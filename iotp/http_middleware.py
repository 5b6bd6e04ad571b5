"""ASGI middleware that runs before any body is parsed: the access check and the size limit."""

from __future__ import annotations

import logging

import psycopg
from fastapi.responses import JSONResponse
from fastapi.routing import RouteContext, iter_route_contexts
from starlette.exceptions import HTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from iotp.api_keys import KeyAuthenticator
from iotp.http_errors import problem
from iotp.permissions import PRINCIPAL_SCOPE_KEY, forbidden, is_public, route_permissions

logger = logging.getLogger(__name__)


class AccessMiddleware:
    """401 for a request without a usable key, 403 for a role without the route's permission.

    Checked here rather than in a route dependency so that a refused request is refused
    before its body is read or validated. Deny by default: every path but the public ones
    needs a key, and a route declaring no permission (iotp.permissions) is refused to all.
    """

    def __init__(self, app: ASGIApp, authenticator: KeyAuthenticator) -> None:
        self.app = app
        self.authenticator = authenticator

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
        given = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, credential = given.decode("latin-1").partition(" ")
        if not given:
            return problem(401, "missing bearer token", _AUTHENTICATE)
        if scheme != "Bearer" or not credential:
            return problem(401, "invalid bearer token", _AUTHENTICATE)
        try:
            principal = await self.authenticator.principal(credential)
        except psycopg.OperationalError as exc:
            logger.warning("API key lookup failed: %s", exc)
            return problem(503, "database unavailable, retry later")
        if principal is None:
            return problem(401, "invalid bearer token", _AUTHENTICATE)
        scope[PRINCIPAL_SCOPE_KEY] = principal
        route = _matching_route(scope)
        if route is None:  # the router answers 404 or 405
            return None
        needed = route_permissions(route)
        if not needed:
            return problem(403, "this route declares no permission")
        for permission in needed:
            if not principal.may(permission):
                return problem(403, forbidden(principal, permission))
        return None


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
