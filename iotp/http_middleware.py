"""ASGI middleware that runs before any body is parsed: the token check and the size limit."""

from __future__ import annotations

import secrets

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from iotp.http_errors import problem


class BearerTokenMiddleware:
    """401 for any request under ``protected`` without ``Authorization: Bearer <token>``.

    Checked here rather than in a route dependency so that an unauthenticated request is
    refused before its body is read or validated.
    """

    def __init__(self, app: ASGIApp, token: str, protected: tuple[str, ...]) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()
        self.protected = protected

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(self.protected):
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not secrets.compare_digest(given, self.expected):
                detail = "missing bearer token" if not given else "invalid bearer token"
                answer = problem(401, detail, {"WWW-Authenticate": "Bearer"})
                await answer(scope, receive, send)
                return
        await self.app(scope, receive, send)


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
