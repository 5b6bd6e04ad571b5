"""HTTP request and response bodies of the command API."""

from __future__ import annotations

from uuid import UUID

from pydantic import BaseModel, Field

from iotp.model import DeclaredMetrics, FrozenModel, Kind, Location, Metadata, Name, SafeText


class DevicePatch(FrozenModel):
    """Body of ``PATCH /devices/{id}``: the attributes to replace (``location: null`` clears)."""

    name: Name | None = None
    kind: Kind | None = None
    location: Location | None = None
    metadata: Metadata | None = None
    metrics: DeclaredMetrics | None = None


class DecommissionBody(FrozenModel):
    reason: SafeText | None = Field(default=None, max_length=500)


class CredentialsOut(BaseModel):
    username: str
    password: str = Field(description="Shown only in this answer; store it on the device.")
    topic: str


class RegisteredOut(BaseModel):
    device_id: str
    event_id: UUID
    credentials: CredentialsOut


class CommandOut(BaseModel):
    device_id: str
    event_id: UUID | None = Field(description="The event the command emitted; null if none.")
    changed: list[str]


class RotatedOut(CommandOut):
    credentials: CredentialsOut


class ServiceHealth(BaseModel):
    reachable: bool
    error: str | None = None


class HealthOut(BaseModel):
    status: str
    database: ServiceHealth
    redis: ServiceHealth
    outbox_backlog: int | None = None
