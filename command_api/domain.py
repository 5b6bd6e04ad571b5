"""The device aggregate and the rejections every command shares: business rules, free of I/O."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from iotp.commands import RegisterDevice, UpdateDevice
from iotp.events import (
    DeviceCredentialsRotated,
    DeviceDecommissioned,
    DeviceRegistered,
    DeviceUpdated,
    Event,
)
from iotp.model import DEFAULT_PROFILE, DeviceAttributes, Location, MetricSpec

ACTIVE = "active"
DECOMMISSIONED = "decommissioned"


class CommandRejected(Exception):
    """A command that breaks a business rule; the message says which."""


class InvalidField(CommandRejected):
    """A field that breaks a rule only the write store can check (e.g. a metric its device
    does not declare): refused as a malformed request would be, naming the field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class DeviceNotFound(CommandRejected):
    def __init__(self, device_id: str) -> None:
        super().__init__(f"device {device_id!r} is not registered")


class DeviceAlreadyExists(CommandRejected):
    def __init__(self, device_id: str) -> None:
        super().__init__(f"device {device_id!r} is already registered")


class DeviceIsDecommissioned(CommandRejected):
    def __init__(self, device_id: str) -> None:
        super().__init__(f"device {device_id!r} is decommissioned")


class IdempotencyKeyReused(CommandRejected):
    def __init__(self) -> None:
        super().__init__("this Idempotency-Key was used with a different request")


@dataclass
class Device:
    device_id: str
    name: str
    kind: str
    credential_hash: str
    location: Location | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    metrics: tuple[MetricSpec, ...] = ()
    profile: str = DEFAULT_PROFILE
    status: str = ACTIVE
    events: list[Event] = field(default_factory=list, compare=False)

    @classmethod
    def register(cls, cmd: RegisterDevice, device_id: str, credential_hash: str) -> Device:
        device = cls(
            device_id=device_id,
            name=cmd.name,
            kind=cmd.kind,
            credential_hash=credential_hash,
            location=cmd.location,
            metadata=dict(cmd.metadata),
            metrics=cmd.metrics,
            profile=cmd.profile,
        )
        device.events.append(
            DeviceRegistered(
                device_id=device_id, credential_hash=credential_hash, **device._attributes()
            )
        )
        return device

    def update(self, cmd: UpdateDevice) -> DeviceUpdated | None:
        """Apply the attributes the command sets; no event when nothing actually changes."""
        self._require_active()
        changed = []
        for name in cmd.changed_fields():
            value = getattr(cmd, name)
            if name == "metadata":
                value = dict(value)
            if getattr(self, name) != value:
                setattr(self, name, value)
                changed.append(name)
        if not changed:
            return None
        event = DeviceUpdated(
            device_id=self.device_id, changed=tuple(changed), **self._attributes()
        )
        self.events.append(event)
        return event

    def decommission(self, reason: str | None) -> DeviceDecommissioned:
        self._require_active()
        self.status = DECOMMISSIONED
        event = DeviceDecommissioned(device_id=self.device_id, reason=reason)
        self.events.append(event)
        return event

    def rotate_credentials(self, credential_hash: str) -> DeviceCredentialsRotated:
        self._require_active()
        self.credential_hash = credential_hash
        event = DeviceCredentialsRotated(
            device_id=self.device_id, username=self.device_id, credential_hash=credential_hash
        )
        self.events.append(event)
        return event

    def _attributes(self) -> dict[str, Any]:
        """What describes the device now, as its registered and updated events carry it."""
        return {name: getattr(self, name) for name in DeviceAttributes.model_fields}

    def _require_active(self) -> None:
        if self.status != ACTIVE:
            raise DeviceIsDecommissioned(self.device_id)
