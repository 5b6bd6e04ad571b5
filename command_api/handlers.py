"""Command handlers: plain functions from a command and a unit of work to a result."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from command_api import credentials
from command_api.domain import (
    Device,
    DeviceAlreadyExists,
    DeviceNotFound,
    IdempotencyKeyReused,
)
from command_api.profile_handlers import device_profile
from command_api.unit_of_work import UnitOfWork
from iotp.commands import (
    Command,
    DecommissionDevice,
    RegisterDevice,
    RotateCredentials,
    UpdateDevice,
)
from iotp.device_profiles import BUILTIN_PROFILE, DeviceProfile, device_topic


@dataclass(frozen=True)
class DeviceCredentials:
    username: str
    password: str
    topic: str


@dataclass(frozen=True)
class Registration:
    device_id: str
    event_id: UUID
    credentials: DeviceCredentials
    replayed: bool = False


@dataclass(frozen=True)
class CommandResult:
    device_id: str
    event_id: UUID | None
    changed: tuple[str, ...] = ()
    credentials: DeviceCredentials | None = None


def fingerprint(cmd: Command) -> str:
    """A digest of the request, to tell a retry from a different request under the same key."""
    return hashlib.sha256(cmd.model_dump_json().encode()).hexdigest()


async def register_device(
    cmd: RegisterDevice, uow: UnitOfWork, pepper: bytes, idempotency_key: str | None = None
) -> Registration:
    device_id = cmd.device_id or uuid.uuid4().hex
    seed = credentials.new_seed()
    async with uow:
        if idempotency_key is not None:
            prior = await uow.idempotency.claim(idempotency_key, fingerprint(cmd), device_id, seed)
            if prior is not None:
                return _replay(
                    prior.fingerprint, fingerprint(cmd), prior.secret_seed, prior.response, pepper
                )
        if await uow.devices.get(device_id) is not None or await uow.gateways.exists(device_id):
            raise DeviceAlreadyExists(device_id)
        profile = await device_profile(uow, cmd.profile)
        password = credentials.password_from_seed(seed, pepper)
        device = Device.register(cmd, device_id, credentials.hash_password(password))
        await uow.devices.add(device)
        event_id = device.events[0].event_id
        if idempotency_key is not None:
            await uow.idempotency.complete(
                idempotency_key,
                {
                    "device_id": device_id,
                    "event_id": str(event_id),
                    "topic": device_topic(profile, device_id),
                },
            )
        await uow.commit()
    return Registration(device_id, event_id, _credentials(device_id, password, profile))


def _replay(
    stored: str, given: str, seed: bytes, response: dict[str, Any], pepper: bytes
) -> Registration:
    if stored != given:
        raise IdempotencyKeyReused()
    device_id = response["device_id"]
    password = credentials.password_from_seed(seed, pepper)
    # The topic is said as the first answer said it: the profile the request named then.
    topic = response.get("topic", device_topic(BUILTIN_PROFILE, device_id))
    return Registration(
        device_id,
        UUID(response["event_id"]),
        DeviceCredentials(username=device_id, password=password, topic=topic),
        replayed=True,
    )


async def update_device(cmd: UpdateDevice, uow: UnitOfWork) -> CommandResult:
    async with uow:
        device = await _existing(uow, cmd.device_id)
        if cmd.profile is not None and cmd.profile != device.profile:
            await device_profile(uow, cmd.profile)
        event = device.update(cmd)
        if event is not None:
            await uow.devices.save(device)
            await uow.commit()
    return CommandResult(
        cmd.device_id, event.event_id if event else None, event.changed if event else ()
    )


async def decommission_device(cmd: DecommissionDevice, uow: UnitOfWork) -> CommandResult:
    async with uow:
        device = await _existing(uow, cmd.device_id)
        event = device.decommission(cmd.reason)
        await uow.devices.save(device)
        await uow.commit()
    return CommandResult(cmd.device_id, event.event_id, ("status",))


async def rotate_credentials(
    cmd: RotateCredentials, uow: UnitOfWork, pepper: bytes
) -> CommandResult:
    password = credentials.password_from_seed(credentials.new_seed(), pepper)
    async with uow:
        device = await _existing(uow, cmd.device_id)
        event = device.rotate_credentials(credentials.hash_password(password))
        await uow.devices.save(device)
        profile = await uow.profiles.get(device.profile)
        await uow.commit()
    return CommandResult(
        cmd.device_id,
        event.event_id,
        ("credentials",),
        _credentials(cmd.device_id, password, profile),
    )


async def _existing(uow: UnitOfWork, device_id: str) -> Device:
    device = await uow.devices.get(device_id)
    if device is None:
        raise DeviceNotFound(device_id)
    return device


def _credentials(device_id: str, password: str, profile: DeviceProfile | None) -> DeviceCredentials:
    """The answer's credentials, with the first telemetry topic of the device's profile."""
    topic = device_topic(profile or BUILTIN_PROFILE, device_id)
    return DeviceCredentials(username=device_id, password=password, topic=topic)
