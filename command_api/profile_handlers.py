"""Command handlers of device profiles and gateways: plain functions on the unit of work."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from uuid import UUID

from command_api import credentials
from command_api.profiles import (
    BuiltInProfile,
    FriendlyNameTaken,
    Gateway,
    GatewayNotFound,
    ProfileInUse,
    ProfileNotFound,
    check_device_profile,
    check_gateway_profile,
    gateway_topics_name_it,
)
from command_api.unit_of_work import UnitOfWork
from iotp.commands import (
    CreateDeviceProfile,
    DeleteDeviceProfile,
    DeleteGateway,
    RegisterGateway,
    ReplaceDeviceProfile,
    SetGatewayDevices,
)
from iotp.device_profiles import DeviceProfile, device_topic
from iotp.events import DeviceProfileDeleted, DeviceProfileSaved, GatewayDeleted
from iotp.model import DEFAULT_PROFILE


@dataclass(frozen=True)
class ProfileResult:
    profile: DeviceProfile
    event_id: UUID


@dataclass(frozen=True)
class GatewayCredentials:
    username: str
    password: str
    topic: str  # the telemetry topic of its first friendly name, or its pattern


@dataclass(frozen=True)
class GatewayResult:
    gateway: Gateway
    event_id: UUID | None
    credentials: GatewayCredentials | None = None


async def device_profile(uow: UnitOfWork, name: str) -> DeviceProfile:
    """The profile a device registered or updated now may name (locked until commit)."""
    return check_device_profile(await uow.profiles.get(name), name)


async def create_profile(cmd: CreateDeviceProfile, uow: UnitOfWork) -> ProfileResult:
    if cmd.profile.name == DEFAULT_PROFILE:
        raise BuiltInProfile()
    event = DeviceProfileSaved(profile=cmd.profile, created=True)
    async with uow:
        await uow.profiles.add(cmd.profile)
        uow.emit(event)
        await uow.commit()
    return ProfileResult(cmd.profile, event.event_id)


async def replace_profile(cmd: ReplaceDeviceProfile, uow: UnitOfWork) -> ProfileResult:
    profile = cmd.profile
    if profile.name == DEFAULT_PROFILE:
        raise BuiltInProfile()
    event = DeviceProfileSaved(profile=profile, created=False)
    async with uow:
        current = await uow.profiles.get(profile.name, lock="update")
        if current is None:
            raise ProfileNotFound(profile.name)
        if current.gateway != profile.gateway:
            devices, gateways = await uow.profiles.users(profile.name)
            if devices or gateways:
                raise ProfileInUse(profile.name, devices, gateways, "turned into a gateway's")
        await uow.profiles.replace(profile)
        uow.emit(event)
        await uow.commit()
    return ProfileResult(profile, event.event_id)


async def delete_profile(cmd: DeleteDeviceProfile, uow: UnitOfWork) -> UUID:
    if cmd.name == DEFAULT_PROFILE:
        raise BuiltInProfile()
    event = DeviceProfileDeleted(name=cmd.name)
    async with uow:
        if await uow.profiles.get(cmd.name, lock="update") is None:
            raise ProfileNotFound(cmd.name)
        devices, gateways = await uow.profiles.users(cmd.name)
        if devices or gateways:
            raise ProfileInUse(cmd.name, devices, gateways, "deleted")
        await uow.profiles.delete(cmd.name)
        uow.emit(event)
        await uow.commit()
    return event.event_id


async def register_gateway(cmd: RegisterGateway, uow: UnitOfWork, pepper: bytes) -> GatewayResult:
    """Register a gateway; its password is in the result, and nowhere else."""
    gateway_id = cmd.gateway_id or uuid.uuid4().hex
    password = credentials.password_from_seed(credentials.new_seed(), pepper)
    gateway = Gateway(
        gateway_id, cmd.name, cmd.profile, credentials.hash_password(password), dict(cmd.devices)
    )
    async with uow:
        profile = check_gateway_profile(await uow.profiles.get(cmd.profile), cmd.profile)
        await _check_devices(uow, gateway, profile)
        await uow.gateways.add(gateway)
        event = gateway.registered()
        uow.emit(event)
        await uow.commit()
    topic = device_topic(profile, next(iter(gateway.devices), "{device}")).replace(
        "{gateway}", gateway_id
    )
    return GatewayResult(gateway, event.event_id, GatewayCredentials(gateway_id, password, topic))


async def set_gateway_devices(cmd: SetGatewayDevices, uow: UnitOfWork) -> GatewayResult:
    async with uow:
        gateway = await uow.gateways.get(cmd.gateway_id)
        if gateway is None:
            raise GatewayNotFound(cmd.gateway_id)
        if gateway.devices == cmd.devices:
            return GatewayResult(gateway, None)
        gateway.devices = dict(cmd.devices)
        profile = check_gateway_profile(await uow.profiles.get(gateway.profile), gateway.profile)
        await _check_devices(uow, gateway, profile)
        await uow.gateways.save(gateway)
        event = gateway.changed(("devices",))
        uow.emit(event)
        await uow.commit()
    return GatewayResult(gateway, event.event_id)


async def delete_gateway(cmd: DeleteGateway, uow: UnitOfWork) -> UUID:
    event = GatewayDeleted(gateway_id=cmd.gateway_id)
    async with uow:
        if await uow.gateways.get(cmd.gateway_id) is None:
            raise GatewayNotFound(cmd.gateway_id)
        await uow.gateways.delete(cmd.gateway_id)
        uow.emit(event)
        await uow.commit()
    return event.event_id


async def _check_devices(uow: UnitOfWork, gateway: Gateway, profile: DeviceProfile) -> None:
    known = await uow.gateways.active_devices(set(gateway.devices.values()))
    gateway.checked_devices(profile, known)
    if not gateway_topics_name_it(profile):
        taken = await uow.gateways.names_of_others(gateway.profile, gateway.gateway_id)
        clash = sorted(taken & set(gateway.devices))
        if clash:
            raise FriendlyNameTaken(clash, gateway.profile)
