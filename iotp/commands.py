"""Commands: what a client asks the command side to do. Typed, immutable, validated once."""

from __future__ import annotations

from pydantic import Field, model_validator

from iotp.model import (
    DeclaredMetrics,
    DeviceAttributes,
    DeviceId,
    FrozenModel,
    Kind,
    Location,
    Metadata,
    Name,
    SafeText,
)


class Command(FrozenModel):
    """Base of every command."""


class RegisterDevice(DeviceAttributes, Command):
    device_id: DeviceId | None = None


class UpdateDevice(Command):
    """Replace the given attributes; attributes left out keep their value."""

    device_id: DeviceId
    name: Name | None = None
    kind: Kind | None = None
    location: Location | None = None
    metadata: Metadata | None = None
    metrics: DeclaredMetrics | None = None

    @model_validator(mode="after")
    def _changes_something(self) -> UpdateDevice:
        if not self.changed_fields():
            raise ValueError("an update must name at least one of: " + ", ".join(UPDATABLE_FIELDS))
        for field in ("name", "kind", "metadata", "metrics"):
            if field in self.model_fields_set and getattr(self, field) is None:
                raise ValueError(f"{field} cannot be null")
        return self

    def changed_fields(self) -> tuple[str, ...]:
        """The attributes this update sets (``location`` may be set to null to clear it)."""
        return tuple(f for f in UPDATABLE_FIELDS if f in self.model_fields_set)


UPDATABLE_FIELDS = ("name", "kind", "location", "metadata", "metrics")


class DecommissionDevice(Command):
    device_id: DeviceId
    reason: SafeText | None = Field(default=None, max_length=500)


class RotateCredentials(Command):
    device_id: DeviceId
