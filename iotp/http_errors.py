"""The one error shape of both HTTP APIs: the models, their OpenAPI declaration, the handlers.

Every error answer is a JSON object ``{"detail": ...}``. A refused request (422) lists what
is wrong with it, each issue naming where (``loc``), why (``msg``) and a machine-readable
``type``, as FastAPI answers; any other error status (400, 401, 403, 404, 409, 413, 500, 503)
says what happened in one sentence. Routes declare the statuses they answer with
:func:`error_responses`, so that the OpenAPI document states every answer a client can get.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.utils import is_body_allowed_for_status_code
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException

logger = logging.getLogger(__name__)

# Longest rejected text echoed back in an issue's ``input``; longer input is left out.
MAX_ECHOED_INPUT = 100

Handler = Callable[[Request, Exception], Awaitable[Response]]
Loc = tuple[str | int, ...]


class Problem(BaseModel):
    """Any error but a refused request: what went wrong, in one sentence."""

    detail: str


class Issue(BaseModel):
    """One thing wrong with a request."""

    loc: list[str | int] = Field(description="Where: body, path, query or header, then the field")
    msg: str
    type: str
    input: str | None = Field(default=None, description="The rejected text, when it is short")
    ctx: dict[str, str | int | float | bool] | None = Field(
        default=None, description="The bound that was broken, e.g. {'le': 500}"
    )


class InvalidRequest(BaseModel):
    """A request refused before anything was done (422): every issue found in it."""

    detail: list[Issue] = Field(min_length=1)


_MEANING = {
    400: "The request body cannot be read (not UTF-8)",
    401: "Missing, unknown, revoked or expired bearer token (API key)",
    403: "The key's role lacks the permission this route needs",
    404: "No such device",
    409: "The request conflicts with the device's state",
    413: "The request body is over IOTP_REQUEST_MAX_BYTES",
    422: "The request is invalid; nothing was done",
    429: "Too many refused credentials from this address (IOTP_AUTH_FAILURE_LIMIT); retry later",
    503: "A backing store is unavailable; retry later",
}
_AUTHENTICATE = {
    "WWW-Authenticate": {
        "description": "Always `Bearer`",
        "required": True,
        "schema": {"type": "string"},
    }
}
_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds until this address may try again",
        "required": True,
        "schema": {"type": "integer"},
    }
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` entries of the error statuses a route may answer.

    A route that may answer 401 may answer 429 too: both come from the access check.
    """
    declared: dict[int | str, dict[str, Any]] = {}
    for status in (*statuses, 429) if 401 in statuses else statuses:
        entry: dict[str, Any] = {
            "model": InvalidRequest if status == 422 else Problem,
            "description": _MEANING[status],
        }
        if status == 401:
            entry["headers"] = _AUTHENTICATE
        elif status == 429:
            entry["headers"] = _RETRY_AFTER
        declared[status] = entry
    return declared


def install_error_handlers(app: FastAPI) -> None:
    """Answer refused requests, HTTP errors and unexpected failures in the one shape."""
    app.add_exception_handler(RequestValidationError, _refused)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)


def invalid(loc: Loc, msg: str, kind: str = "value_error") -> RequestValidationError:
    """A refusal found by a route rather than by FastAPI, in the same shape."""
    return RequestValidationError([{"loc": loc, "msg": msg, "type": kind}])


def refusal(errors: Sequence[Any]) -> JSONResponse:
    """The 422 answer listing ``errors`` (pydantic's or :func:`invalid`'s)."""
    detail = [_issue(error) for error in errors if isinstance(error, Mapping)]
    if not detail:
        detail = [{"loc": [], "msg": "invalid request", "type": "value_error"}]
    return JSONResponse({"detail": detail}, status_code=422)


def problem(status: int, detail: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    """An error answer other than a refusal."""
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def unavailable(what: str) -> Handler:
    """A handler answering 503 when ``what`` (a store) does not answer."""

    async def handler(request: Request, exc: Exception) -> Response:
        logger.warning(
            "%s unavailable during %s %s: %s", what, request.method, request.url.path, exc
        )
        return problem(503, f"{what} unavailable, retry later")

    return handler


async def _refused(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return refusal(exc.errors())


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if not is_body_allowed_for_status_code(exc.status_code):
        return Response(status_code=exc.status_code, headers=exc.headers)
    message = _printable(exc.detail)
    if exc.status_code == 422:  # whoever raised it, a 422 lists its issues
        return refusal([{"loc": (), "msg": message, "type": "value_error"}])
    return problem(exc.status_code, str(message), exc.headers)


async def _unexpected(request: Request, exc: Exception) -> Response:
    # Starlette logs the traceback and re-raises after this answer; the client gets the shape.
    return problem(500, "internal server error")


def _issue(error: Mapping[str, Any]) -> dict[str, Any]:
    """An issue safe to encode, whatever the client sent.

    FastAPI's default echoes the whole rejected input, which may hold lone surrogates, NaN
    or integers no encoder takes (a 500), or megabytes of hostile text: only short text is
    echoed, and only the scalar bounds of ``ctx``.
    """
    issue: dict[str, Any] = {
        "loc": [_printable(part) for part in error.get("loc", ())],
        "msg": str(_printable(error.get("msg", ""))),
        "type": str(_printable(error.get("type", ""))),
    }
    echoed = error.get("input")
    if (
        isinstance(echoed, str)
        and len(echoed) <= MAX_ECHOED_INPUT
        and not _is_secret(error.get("loc", ()))
    ):
        issue["input"] = _printable(echoed)
    bounds = error.get("ctx")
    if isinstance(bounds, Mapping):
        scalars = {str(k): _printable(v) for k, v in bounds.items() if _is_scalar(v)}
        if scalars:
            issue["ctx"] = scalars
    return issue


# A refused password or secret is never sent back: answers end up in logs and proxies.
_SECRET_FIELDS = ("password", "secret", "token", "key")


def _is_secret(loc: Sequence[Any]) -> bool:
    return any(isinstance(part, str) and part.lower().endswith(_SECRET_FIELDS) for part in loc)


def _is_scalar(value: object) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return -(2**53) < value < 2**53
    return isinstance(value, str | bool)


def _printable(value: object) -> str | int | float | bool:
    """``value`` as JSON carries it: numbers and booleans as they are, the rest as UTF-8 text."""
    if isinstance(value, int | float):  # bool is an int
        return value
    return str(value).encode("utf-8", "backslashreplace").decode("utf-8")
