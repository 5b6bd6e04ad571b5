"""HTTP request and response bodies of the command API."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

from iotp.commands import ALARM_NOTE_MAX_LENGTH
from iotp.events import AlarmCondition, Severity
from iotp.model import (
    DeclaredMetrics,
    FrozenModel,
    Kind,
    Location,
    Metadata,
    Name,
    ProfileName,
    SafeText,
)


class DevicePatch(FrozenModel):
    """Body of ``PATCH /devices/{id}``: the attributes to replace, at least one.

    Only ``location`` may be null (that clears it): the command refuses null elsewhere."""

    model_config = ConfigDict(json_schema_extra={"minProperties": 1})

    name: Name | SkipJsonSchema[None] = None
    kind: Kind | SkipJsonSchema[None] = None
    location: Location | None = None
    metadata: Metadata | SkipJsonSchema[None] = None
    metrics: DeclaredMetrics | SkipJsonSchema[None] = None
    profile: ProfileName | SkipJsonSchema[None] = None


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


class AlarmRuleOut(BaseModel):
    rule_id: UUID
    scope: str
    device_id: str | None
    kind: str | None
    metric: str | None
    condition: AlarmCondition
    threshold_low: float | None
    threshold_high: float | None
    for_readings: int | None
    for_seconds: int | None
    clear_readings: int
    severity: Severity
    created_at: datetime
    updated_at: datetime


class AlarmRuleChangedOut(AlarmRuleOut):
    event_id: UUID
    cleared_alarms: int = Field(description="Open alarms this change cleared")


class AlarmRuleList(BaseModel):
    rules: list[AlarmRuleOut]


class AlarmRuleDeletedOut(BaseModel):
    rule_id: UUID
    event_id: UUID
    cleared_alarms: int = Field(description="Open alarms of the rule, cleared with it")


class AcknowledgeBody(FrozenModel):
    acknowledged_by: Name | None = Field(
        default=None,
        description="Who acknowledges; by default the key's name. For a person logged in to"
        " the dashboard it is always that person, and naming anyone else is refused.",
    )
    note: SafeText | None = Field(default=None, max_length=ALARM_NOTE_MAX_LENGTH)


class AcknowledgedOut(BaseModel):
    alarm_id: UUID
    state: str
    acknowledged_by: str
    acknowledged_at: datetime
    note: str | None
    event_id: UUID | None = Field(
        description="This acknowledgement's event; null when it was acknowledged before"
    )


class WebhookOut(BaseModel):
    webhook_id: UUID
    name: str | None
    url: str
    severities: list[Severity]
    has_secret: bool = Field(description="Whether deliveries are signed; the secret is not shown")
    created_at: datetime


class WebhookList(BaseModel):
    webhooks: list[WebhookOut]


class WebhookDeletedOut(BaseModel):
    webhook_id: UUID
    event_id: UUID
    cancelled_deliveries: int = Field(description="Pending deliveries that will not be made")
