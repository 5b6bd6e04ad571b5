"""HTTP telemetry for devices without MQTT: ``POST /telemetry/{device_id}``.

A device authenticates with its own credentials (HTTP Basic: its device id and its MQTT
password). The body is what the device would publish, in its profile's format (a ``plain``
payload names its metric in ``?metric=``); it goes through the ingest pipeline as a broker's
message does (ingest/http_inbox.py), and the answer comes only after the batch holding it
committed and its events were published:

- 202: stored, or found already stored; ``rejected`` lists any readings dead-lettered beside;
- 422: nothing in it could be stored; it is dead-lettered, and the issues' ``type`` is the
  dead letter's reason;
- 401: no or wrong credentials; 403: a device's credentials for another device's path;
- 413: over IOTP_INGEST_MAX_PAYLOAD_BYTES, refused unread (no dead letter);
- 429 with Retry-After: too many refused credentials from the address, or ingest is
  behind (IOTP_INGEST_HTTP_MAX_PENDING requests wait for a commit);
- 503 with Retry-After: ingest is stopping, or the commit took longer than
  COMMIT_WAIT_SECONDS (it may still happen: a reading sent twice is stored once).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated, Any

import psycopg
from fastapi import APIRouter, FastAPI, Query, Request, Response
from fastapi.responses import JSONResponse
from psycopg_pool import AsyncConnectionPool

from ingest.device_credentials import DeviceCredentials, HashLookup
from ingest.http_inbox import Completion, HttpInbox, Offer, http_message
from ingest.payloads import ParsedMessage
from iotp import __version__
from iotp.auth_throttle import FailureCounter, FailureThrottle
from iotp.db import open_pool
from iotp.http_errors import install_error_handlers, problem, refusal, unavailable
from iotp.http_middleware import BodySizeLimitMiddleware
from iotp.redis_client import async_redis_for
from iotp.settings import Settings

COMMIT_WAIT_SECONDS = 30.0
BEHIND_RETRY_SECONDS = 1
AUTHENTICATE = {"WWW-Authenticate": 'Basic realm="iotp telemetry", charset="UTF-8"'}
_ANSWERS: dict[int | str, dict[str, Any]] = {
    202: {"description": "Stored (or already stored); `rejected` lists dead-lettered readings"},
    401: {"description": "Missing or wrong device credentials (HTTP Basic)"},
    403: {"description": "The credentials are another device's"},
    413: {"description": "The body is over IOTP_INGEST_MAX_PAYLOAD_BYTES"},
    422: {"description": "Nothing could be stored; dead-lettered with the issues' reasons"},
    429: {"description": "Too many refused credentials, or ingest is behind; see Retry-After"},
    503: {"description": "Ingest is stopping or the database is slow; see Retry-After"},
}

router = APIRouter()


class TelemetryEndpoint:
    """What the route needs: the inbox, the credentials and the failure throttle."""

    def __init__(
        self,
        inbox: HttpInbox,
        credentials: DeviceCredentials,
        throttle: FailureThrottle,
        counter: FailureCounter,
    ) -> None:
        self.inbox, self.credentials = inbox, credentials
        self.throttle, self.counter = throttle, counter

    async def refusal(self, request: Request, device_id: str) -> Response | None:
        """401, 403 or 429 when the request may not post to ``device_id``; else None."""
        address = request.client.host if request.client else "unknown"
        wait = self.throttle.retry_after(address)
        if wait is not None:
            await self.counter.add("throttled")
            return problem(
                429, "too many refused credentials from this address", {"Retry-After": str(wait)}
            )
        given = basic_credentials(request.headers.get("authorization"))
        if given is None or not await self.credentials.verify(*given):
            self.throttle.failed(address)
            await self.counter.add("failures")
            return problem(401, "missing or wrong device credentials", AUTHENTICATE)
        if given[0] != device_id:
            return problem(403, f"these credentials are device {given[0]!r}'s, not this path's")
        return None

    async def store(self, device_id: str, payload: bytes, metric: str | None) -> Response:
        """Hand the payload to the pipeline and answer once its batch is committed."""
        completion = Completion(asyncio.get_running_loop())
        message = http_message(device_id, payload, datetime.now(UTC), completion, metric)
        offer = self.inbox.offer(message)
        if offer is Offer.FULL:
            return problem(
                429, "ingest is behind; retry later", {"Retry-After": str(BEHIND_RETRY_SECONDS)}
            )
        if offer is Offer.CLOSED:
            return _not_stored("ingest is stopping")
        try:
            async with asyncio.timeout(COMMIT_WAIT_SECONDS):
                parsed = await completion.wait()
        except TimeoutError:
            return _not_stored(f"not committed within {COMMIT_WAIT_SECONDS:.0f}s")
        if parsed is None:
            return _not_stored("ingest stopped before storing it")
        return answer(parsed)


def basic_credentials(header: str | None) -> tuple[str, str] | None:
    """(username, password) of an HTTP Basic Authorization header, or None."""
    if not header:
        return None
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    username, colon, password = decoded.partition(":")
    return (username, password) if colon and username else None


def answer(parsed: ParsedMessage) -> Response:
    """202 when readings were stored (or already were), 422 when nothing could be."""
    issues = [
        {
            "loc": ("body",) if r.index is None else ("body", r.index),
            "msg": r.detail,
            "type": r.reason,
        }
        for r in parsed.rejections
    ]
    if not parsed.readings:
        return refusal(issues)
    # (a detail quotes the payload: what JSON cannot carry is escaped, as in a dead letter)
    rejected = [
        {"loc": list(i["loc"]), "msg": _printable(i["msg"]), "type": i["type"]} for i in issues
    ]
    return JSONResponse({"readings": len(parsed.readings), "rejected": rejected}, 202)


def _printable(text: object) -> str:
    return str(text).encode("utf-8", "backslashreplace").decode("utf-8")


def _not_stored(why: str) -> Response:
    return problem(
        503, f"{why}: send it again (a reading sent twice is stored once)", {"Retry-After": "1"}
    )


@router.post("/telemetry/{device_id}", status_code=202, responses=_ANSWERS)
async def post_telemetry(
    device_id: str,
    request: Request,
    metric: Annotated[
        str | None,
        Query(max_length=256, description="The metric of a `plain` profile's one number"),
    ] = None,
) -> Response:
    """Store a device's readings, in the body as the device would publish them over MQTT."""
    endpoint: TelemetryEndpoint = request.app.state.endpoint
    refused = await endpoint.refusal(request, device_id)
    if refused is not None:
        return refused
    return await endpoint.store(device_id, await request.body(), metric)


def create_http_telemetry_app(settings: Settings, inbox: HttpInbox) -> FastAPI:
    """The HTTP telemetry app over ``inbox``; it connects to its stores when it starts."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = await open_pool(settings.database_url, max_size=4)
        failures = async_redis_for(
            settings.redis_url, settings.redis_cluster, socket_connect_timeout=3, socket_timeout=5
        )
        app.state.endpoint = TelemetryEndpoint(
            inbox,
            DeviceCredentials(_hash_lookup(pool), settings.ingest_http_credentials_cache_seconds),
            FailureThrottle(settings.auth_failure_limit, settings.auth_failure_window_seconds),
            FailureCounter("ingest-http", lambda: failures),
        )
        try:
            yield
        finally:
            await failures.aclose()
            await pool.close()

    app = FastAPI(
        title="iotp HTTP telemetry",
        version=__version__,
        description="Devices without MQTT post their readings here, with their own credentials.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.include_router(router)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.ingest_max_payload_bytes)
    install_error_handlers(app)
    app.add_exception_handler(psycopg.OperationalError, unavailable("database"))
    return app


def _hash_lookup(pool: AsyncConnectionPool[psycopg.AsyncConnection[dict[str, Any]]]) -> HashLookup:
    async def stored_hash(device_id: str) -> str | None:
        """The password hash of an active device (one that the broker lets in too)."""
        async with pool.connection(timeout=5) as conn:
            cursor = await conn.execute(
                "SELECT credential_hash FROM devices WHERE device_id = %s AND status = 'active'",
                (device_id,),
            )
            row = await cursor.fetchone()
        return None if row is None else str(row["credential_hash"])

    return stored_hash
