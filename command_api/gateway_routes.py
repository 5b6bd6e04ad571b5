"""Gateway routes: a broker account that speaks for the devices it lists (Zigbee2MQTT's bridge).

Registration answers the gateway's MQTT credentials once, as a device's registration does;
``PUT /gateways/{id}/devices`` replaces the devices it may speak for (friendly name ->
device id). No answer after the first holds a password.
"""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Depends, Path, Response
from pydantic import BaseModel, Field

from command_api import configuration, profile_handlers
from command_api.dependencies import PepperDep, PoolDep, UnitOfWorkDep, documented_bearer
from command_api.profiles import Gateway, GatewayNotFound
from command_api.schemas import CredentialsOut
from iotp.commands import DeleteGateway, GatewayDeviceMap, RegisterGateway, SetGatewayDevices
from iotp.http_errors import error_responses
from iotp.model import DEVICE_ID_PATTERN, FrozenModel
from iotp.permissions import Permission, requires

gateways = APIRouter(
    prefix="/gateways",
    tags=["gateways"],
    dependencies=[Depends(documented_bearer), requires(Permission.GATEWAYS_MANAGE)],
    responses=error_responses(401, 403, 422, 503),
)
GatewayIdPath = Annotated[str, Path(pattern=DEVICE_ID_PATTERN, examples=["zigbee-bridge-1"])]


class GatewayOut(BaseModel):
    gateway_id: str
    name: str
    profile: str
    devices: dict[str, str] = Field(description="Friendly name -> device id")


class GatewayChangedOut(GatewayOut):
    event_id: UUID | None = Field(description="The event the command emitted; null if none.")


class GatewayRegisteredOut(GatewayChangedOut):
    credentials: CredentialsOut


class GatewayList(BaseModel):
    gateways: list[GatewayOut]


class GatewayDevicesBody(FrozenModel):
    devices: GatewayDeviceMap


class GatewayDeletedOut(BaseModel):
    gateway_id: str
    event_id: UUID


def _out(gateway: Gateway) -> dict[str, object]:
    return {
        "gateway_id": gateway.gateway_id,
        "name": gateway.name,
        "profile": gateway.profile,
        "devices": gateway.devices,
    }


@gateways.post(
    "",
    status_code=201,
    response_model=GatewayRegisteredOut,
    responses=error_responses(400, 409, 413),
)
async def post_gateway(
    cmd: RegisterGateway, response: Response, uow: UnitOfWorkDep, pepper: PepperDep
) -> GatewayRegisteredOut:
    """Register a gateway of a gateway profile; answers its MQTT credentials, shown only here."""
    result = await profile_handlers.register_gateway(cmd, uow, pepper)
    assert result.credentials is not None
    response.headers["Location"] = f"/gateways/{result.gateway.gateway_id}"
    return GatewayRegisteredOut(
        **_out(result.gateway),
        event_id=result.event_id,
        credentials=CredentialsOut(
            username=result.credentials.username,
            password=result.credentials.password,
            topic=result.credentials.topic,
        ),
    )


@gateways.get("", response_model=GatewayList)
async def list_gateways(pool: PoolDep) -> GatewayList:
    return GatewayList(gateways=[GatewayOut(**_out(g)) for g in await configuration.gateways(pool)])


@gateways.get("/{gateway_id}", response_model=GatewayOut, responses=error_responses(404))
async def get_gateway(gateway_id: GatewayIdPath, pool: PoolDep) -> GatewayOut:
    gateway = await configuration.gateway(pool, gateway_id)
    if gateway is None:
        raise GatewayNotFound(gateway_id)
    return GatewayOut(**_out(gateway))


@gateways.put(
    "/{gateway_id}/devices",
    response_model=GatewayChangedOut,
    responses=error_responses(400, 404, 409, 413),
)
async def put_gateway_devices(
    gateway_id: GatewayIdPath, body: GatewayDevicesBody, uow: UnitOfWorkDep
) -> GatewayChangedOut:
    """Replace the devices the gateway may speak for; the broker refuses it any other."""
    cmd = SetGatewayDevices(gateway_id=gateway_id, devices=body.devices)
    result = await profile_handlers.set_gateway_devices(cmd, uow)
    return GatewayChangedOut(**_out(result.gateway), event_id=result.event_id)


@gateways.delete("/{gateway_id}", response_model=GatewayDeletedOut, responses=error_responses(404))
async def delete_gateway(gateway_id: GatewayIdPath, uow: UnitOfWorkDep) -> GatewayDeletedOut:
    """Delete a gateway: its broker account goes, its devices stay."""
    event_id = await profile_handlers.delete_gateway(DeleteGateway(gateway_id=gateway_id), uow)
    return GatewayDeletedOut(gateway_id=gateway_id, event_id=event_id)
