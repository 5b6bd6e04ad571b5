"""HTTP request and response bodies of the command API."""

from __future__ import annotations

from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

from iotp.model import DeclaredMetrics, FrozenModel, Kind, Location, Metadata, Name, SafeText


class DevicePatch(FrozenModel):
    """Body of ``PATCH /devices/{id}``: the attributes to replace, at least one.

    Only ``location`` may be null (that clears it): the command refuses null elsewhere."""

    model_config = ConfigDict(json_schema_extra={"minProperties": 1})

    name: Name | SkipJsonSchema[None] = None
    kind: Kind | SkipJsonSchema[None] = None
    location: Location | None = None
    metadata: Metadata | SkipJsonSchema[None] = None
    metrics: DeclaredMetrics | SkipJsonSchema[None] = None


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
