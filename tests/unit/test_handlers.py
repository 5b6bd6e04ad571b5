"""Command handlers and the device aggregate, with an in-memory unit of work."""

from __future__ import annotations

import asyncio

import pytest

from command_api import handlers
from command_api.credentials import verify_password
from command_api.domain import (
    DeviceAlreadyExists,
    DeviceIsDecommissioned,
    DeviceNotFound,
    IdempotencyKeyReused,
)
from iotp.commands import DecommissionDevice, RegisterDevice, RotateCredentials, UpdateDevice
from iotp.events import DeviceDecommissioned, DeviceRegistered, DeviceUpdated
from tests.support.fakes import FakeUnitOfWork

PEPPER = b"pepper-for-tests"


def _register(
    uow: FakeUnitOfWork, key: str | None = None, **fields: object
) -> handlers.Registration:
    cmd = RegisterDevice.model_validate({"device_id": "d1", "name": "D", "kind": "k", **fields})
    return asyncio.run(handlers.register_device(cmd, uow, PEPPER, key))


def test_register_emits_one_event_and_stores_only_a_hash() -> None:
    uow = FakeUnitOfWork()
    result = _register(uow)
    assert [type(e) for e in uow.published] == [DeviceRegistered]
    assert uow.published[0].event_id == result.event_id
    stored = uow.devices_store["d1"]
    assert result.credentials.password not in stored.credential_hash
    assert verify_password(result.credentials.password, stored.credential_hash)


def test_register_twice_is_rejected_without_a_second_event() -> None:
    uow = FakeUnitOfWork()
    _register(uow)
    with pytest.raises(DeviceAlreadyExists):
        _register(uow)
    assert len(uow.published) == 1


def test_idempotent_replay_returns_the_same_password() -> None:
    uow = FakeUnitOfWork()
    first = _register(uow, key="k1")
    again = _register(uow, key="k1")
    assert again.replayed and again.credentials == first.credentials
    assert again.event_id == first.event_id
    assert len(uow.published) == 1
    with pytest.raises(IdempotencyKeyReused):
        _register(uow, key="k1", name="Other")


def test_update_emits_only_real_changes() -> None:
    uow = FakeUnitOfWork()
    _register(uow, metadata={"a": 1})
    same = asyncio.run(handlers.update_device(UpdateDevice(device_id="d1", metadata={"a": 1}), uow))
    assert same.event_id is None and same.changed == ()
    changed = asyncio.run(
        handlers.update_device(UpdateDevice(device_id="d1", kind="k2", metadata={"a": 1}), uow)
    )
    assert changed.changed == ("kind",)
    event = uow.published[-1]
    assert isinstance(event, DeviceUpdated) and event.kind == "k2" and event.name == "D"


def test_decommissioned_device_refuses_every_command() -> None:
    uow = FakeUnitOfWork()
    _register(uow)
    asyncio.run(handlers.decommission_device(DecommissionDevice(device_id="d1"), uow))
    assert isinstance(uow.published[-1], DeviceDecommissioned)
    for call in (
        handlers.update_device(UpdateDevice(device_id="d1", name="x"), uow),
        handlers.decommission_device(DecommissionDevice(device_id="d1"), uow),
        handlers.rotate_credentials(RotateCredentials(device_id="d1"), uow, PEPPER),
    ):
        with pytest.raises(DeviceIsDecommissioned):
            asyncio.run(call)
    assert len(uow.published) == 2


def test_unknown_device_is_not_found() -> None:
    with pytest.raises(DeviceNotFound):
        asyncio.run(
            handlers.rotate_credentials(RotateCredentials(device_id="x"), FakeUnitOfWork(), PEPPER)
        )
