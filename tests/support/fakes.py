"""In-memory unit of work for handler tests: the same protocol, no database."""

from __future__ import annotations

import copy
from types import TracebackType
from typing import Any, Self

from command_api.domain import Device, DeviceAlreadyExists
from command_api.unit_of_work import IdempotencyRecord
from iotp.events import Event


class FakeDevices:
    def __init__(self, store: dict[str, Device]) -> None:
        self.store = store
        self.seen: dict[str, Device] = {}

    async def add(self, device: Device) -> None:
        if device.device_id in self.store:
            raise DeviceAlreadyExists(device.device_id)
        self.seen[device.device_id] = device

    async def get(self, device_id: str) -> Device | None:
        found = self.store.get(device_id)
        if found is None:
            return None
        device = copy.deepcopy(found)
        self.seen[device_id] = device
        return device

    async def save(self, device: Device) -> None:
        self.seen[device.device_id] = device


class FakeIdempotency:
    def __init__(self, store: dict[str, IdempotencyRecord]) -> None:
        self.store = store
        self.pending: dict[str, IdempotencyRecord] = {}

    async def claim(
        self, key: str, fingerprint: str, device_id: str, seed: bytes
    ) -> IdempotencyRecord | None:
        if key in self.store:
            return self.store[key]
        self.pending[key] = IdempotencyRecord(fingerprint, device_id, seed, {})
        return None

    async def complete(self, key: str, response: dict[str, Any]) -> None:
        record = self.pending[key]
        self.pending[key] = IdempotencyRecord(
            record.fingerprint, record.device_id, record.secret_seed, response
        )


class FakeUnitOfWork:
    """Commits copy into ``devices``/``published``; leaving without commit keeps nothing."""

    def __init__(self) -> None:
        self.devices_store: dict[str, Device] = {}
        self.keys: dict[str, IdempotencyRecord] = {}
        self.published: list[Event] = []
        self.commits = 0

    async def __aenter__(self) -> Self:
        self.devices = FakeDevices(self.devices_store)
        self.idempotency = FakeIdempotency(self.keys)
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None

    async def commit(self) -> None:
        for device in self.devices.seen.values():
            self.published.extend(device.events)
            device.events.clear()
            self.devices_store[device.device_id] = copy.deepcopy(device)
        self.keys.update(self.idempotency.pending)
        self.commits += 1
