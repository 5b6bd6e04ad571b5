"""Device and health routes: translate requests into commands and handler results into answers."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any, TypeVar

import redis
from fastapi import APIRouter, Body, Header, Path, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from command_api import handlers
from command_api.dependencies import PepperDep, UnitOfWorkDep
from command_api.outbox import outbox_backlog
from command_api.schemas import (
    CommandOut,
    CredentialsOut,
    DecommissionBody,
    DevicePatch,
    HealthOut,
    RegisteredOut,
    RotatedOut,
    ServiceHealth,
)
from iotp.commands import DecommissionDevice, RegisterDevice, RotateCredentials, UpdateDevice
from iotp.errors import first_line
from iotp.http_errors import error_responses
from iotp.model import DEVICE_ID_PATTERN
from iotp.permissions import Permission, requires

devices = APIRouter(
    prefix="/devices",
    tags=["devices"],
    responses=error_responses(401, 403, 422, 503),
)
health = APIRouter(tags=["health"])

DeviceIdPath = Annotated[
    str, Path(pattern=DEVICE_ID_PATTERN, description="The device id", examples=["boiler-1"])
]
IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        pattern=r"^[\x21-\x7e]+$",
        max_length=255,
        description="Retrying with the same key and body answers the first answer again",
    ),
]
_REGISTERED_HEADERS = {
    "Location": {
        "description": "/devices/{device_id}",
        "required": True,
        "schema": {"type": "string"},
    },
    "Idempotent-Replayed": {
        "description": "`true` when this answers a retry under the same Idempotency-Key",
        "schema": {"type": "string", "enum": ["true"]},
    },
}


C = TypeVar("C", UpdateDevice, DecommissionDevice, RotateCredentials)


def _command(model: type[C], **fields: Any) -> C:
    """Build a command from path and body parts, answering 422 the way FastAPI would."""
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from exc


def _credentials_out(creds: handlers.DeviceCredentials) -> CredentialsOut:
    return CredentialsOut(**asdict(creds))


@devices.post(
    "",
    status_code=201,
    response_model=RegisteredOut,
    dependencies=[requires(Permission.DEVICES_REGISTER)],
    responses={201: {"headers": _REGISTERED_HEADERS}, **error_responses(400, 409, 413)},
)
async def register_device(
    cmd: RegisterDevice,
    response: Response,
    uow: UnitOfWorkDep,
    pepper: PepperDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> RegisteredOut:
    """Register a device; answers its MQTT credentials, whose password is shown only here."""
    result = await handlers.register_device(cmd, uow, pepper, idempotency_key)
    response.headers["Location"] = f"/devices/{result.device_id}"
    if result.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return RegisteredOut(
        device_id=result.device_id,
        event_id=result.event_id,
        credentials=_credentials_out(result.credentials),
    )


@devices.patch(
    "/{device_id}",
    response_model=CommandOut,
    dependencies=[requires(Permission.DEVICES_MANAGE)],
    responses=error_responses(400, 404, 409, 413),
)
async def update_device(
    device_id: DeviceIdPath, patch: DevicePatch, uow: UnitOfWorkDep
) -> CommandOut:
    """Replace some attributes of a device; answers which ones changed."""
    fields = {name: getattr(patch, name) for name in patch.model_fields_set}
    cmd = _command(UpdateDevice, device_id=device_id, **fields)
    result = await handlers.update_device(cmd, uow)
    return CommandOut(device_id=device_id, event_id=result.event_id, changed=list(result.changed))


@devices.post(
    "/{device_id}/decommission",
    response_model=CommandOut,
    dependencies=[requires(Permission.DEVICES_MANAGE)],
    responses=error_responses(400, 404, 409, 413),
)
async def decommission_device(
    device_id: DeviceIdPath,
    uow: UnitOfWorkDep,
    body: Annotated[DecommissionBody | None, Body()] = None,
) -> CommandOut:
    """Retire a device for good: ingest refuses its readings from then on."""
    cmd = _command(DecommissionDevice, device_id=device_id, reason=body.reason if body else None)
    result = await handlers.decommission_device(cmd, uow)
    return CommandOut(device_id=device_id, event_id=result.event_id, changed=list(result.changed))


@devices.post(
    "/{device_id}/credentials",
    response_model=RotatedOut,
    dependencies=[requires(Permission.DEVICES_ROTATE_CREDENTIALS)],
    responses=error_responses(404, 409),
)
async def rotate_credentials(
    device_id: DeviceIdPath, uow: UnitOfWorkDep, pepper: PepperDep
) -> RotatedOut:
    """Issue a new MQTT password; the old one stops working."""
    cmd = _command(RotateCredentials, device_id=device_id)
    result = await handlers.rotate_credentials(cmd, uow, pepper)
    assert result.credentials is not None
    return RotatedOut(
        device_id=device_id,
        event_id=result.event_id,
        changed=list(result.changed),
        credentials=_credentials_out(result.credentials),
    )


@health.get(
    "/healthz",
    response_model=HealthOut,
    responses={503: {"model": HealthOut, "description": "PostgreSQL or Redis does not answer"}},
)
async def healthz(request: Request, response: Response) -> HealthOut:
    """Whether PostgreSQL and Redis answer, and how many events wait in the outbox."""
    state = request.app.state
    database, backlog = ServiceHealth(reachable=True), None
    try:
        async with state.pool.connection(timeout=2) as conn:
            backlog = await outbox_backlog(conn)
    except Exception as exc:  # any failure here is the answer, not an error
        database = ServiceHealth(reachable=False, error=first_line(exc))
    cache = ServiceHealth(reachable=True)
    try:
        await state.redis.ping()
    except (redis.RedisError, OSError) as exc:
        cache = ServiceHealth(reachable=False, error=first_line(exc))
    ok = database.reachable and cache.reachable
    if not ok:
        response.status_code = 503
    return HealthOut(
        status="ok" if ok else "degraded", database=database, redis=cache, outbox_backlog=backlog
    )
