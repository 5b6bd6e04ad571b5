"""Commands: what a client asks the command side to do. Typed, immutable, validated once."""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Literal
from urllib.parse import urlsplit
from uuid import UUID

from pydantic import AfterValidator, AwareDatetime, Field, SecretStr, model_validator

from iotp.device_profiles import MAX_GATEWAY_DEVICES, DeviceProfile, FriendlyName
from iotp.events import SEVERITIES, AlarmCondition, Severity
from iotp.model import (
    DeclaredMetrics,
    DeviceAttributes,
    DeviceId,
    FrozenModel,
    Kind,
    Location,
    Metadata,
    MetricName,
    Name,
    ProfileName,
    Role,
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
    profile: ProfileName | None = None

    @model_validator(mode="after")
    def _changes_something(self) -> UpdateDevice:
        if not self.changed_fields():
            raise ValueError("an update must name at least one of: " + ", ".join(UPDATABLE_FIELDS))
        for field in ("name", "kind", "metadata", "metrics", "profile"):
            if field in self.model_fields_set and getattr(self, field) is None:
                raise ValueError(f"{field} cannot be null")
        return self

    def changed_fields(self) -> tuple[str, ...]:
        """The attributes this update sets (``location`` may be set to null to clear it)."""
        return tuple(f for f in UPDATABLE_FIELDS if f in self.model_fields_set)


UPDATABLE_FIELDS = ("name", "kind", "location", "metadata", "metrics", "profile")


class DecommissionDevice(Command):
    device_id: DeviceId
    reason: SafeText | None = Field(default=None, max_length=500)


class RotateCredentials(Command):
    device_id: DeviceId


# Webhooks (issue 16). The URL is checked as text only: it is never fetched at registration.
WEBHOOK_URL_MAX_LENGTH = 2048
WEBHOOK_SECRET_MIN_LENGTH, WEBHOOK_SECRET_MAX_LENGTH = 16, 256
_HOST_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9.-]{0,251}[a-z0-9])?$")


def _valid_host(host: str) -> bool:
    if ":" in host:  # urlsplit has taken the brackets off an IPv6 address
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return False
        return True
    return bool(_HOST_NAME.match(host))


def _check_webhook_url(value: str) -> str:
    """An absolute http(s) URL with a host, no credentials, no spaces or control characters."""
    if any(not "\x21" <= char <= "\x7e" for char in value):
        raise ValueError("the URL must be printable ASCII without spaces (percent-encode the rest)")
    parts = urlsplit(value)
    if parts.scheme.lower() not in ("http", "https"):
        raise ValueError("the URL's scheme must be http or https")
    if "@" in parts.netloc:
        raise ValueError("the URL must not carry credentials (user:password@); use a secret")
    host = parts.hostname
    if not host:
        raise ValueError("the URL must name a host (http://host/...)")
    if not _valid_host(host):
        raise ValueError("the URL's host is not a valid host name or IP address")
    try:
        port = parts.port
    except ValueError:  # out of range or not a number
        port = -1
    if port is not None and not 1 <= port <= 65535:
        raise ValueError("the URL's port is not a number from 1 to 65535")
    if parts.fragment:
        raise ValueError("the URL must not have a #fragment")
    return value


def url_origin(url: str) -> str:
    """``scheme://host[:port]`` of a webhook URL: not its path, which may hold a token."""
    parts = urlsplit(url)
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}"


WebhookUrl = Annotated[
    str,
    Field(min_length=1, max_length=WEBHOOK_URL_MAX_LENGTH, examples=["https://example.com/hook"]),
    AfterValidator(_check_webhook_url),
]


def _check_secret(value: SecretStr) -> SecretStr:
    if any(not "\x21" <= char <= "\x7e" for char in value.get_secret_value()):
        raise ValueError("the secret must be printable ASCII without spaces")
    return value


WebhookSecret = Annotated[
    SecretStr,
    Field(min_length=WEBHOOK_SECRET_MIN_LENGTH, max_length=WEBHOOK_SECRET_MAX_LENGTH),
    AfterValidator(_check_secret),
]


class RegisterWebhook(Command):
    """Notify ``url`` of the alarms of the given severities (every severity by default)."""

    url: WebhookUrl
    secret: WebhookSecret | None = Field(
        default=None, description="Set: every delivery is signed (X-Iotp-Signature)"
    )
    severities: tuple[Severity, ...] = Field(default=SEVERITIES, min_length=1, max_length=4)
    name: Name | None = None

    @model_validator(mode="after")
    def _severities_once(self) -> RegisterWebhook:
        if len(set(self.severities)) != len(self.severities):
            raise ValueError("severities must not repeat")
        return self


class DeleteWebhook(Command):
    webhook_id: UUID


# Alarm rules and acknowledgements (issue 16). Bounds keep every number a rule holds far
# inside what a double and the dashboards represent exactly.
ALARM_THRESHOLD_LIMIT = 1e12
ALARM_MAX_READINGS = 10_000
ALARM_MAX_SECONDS = 7 * 24 * 3600
ALARM_NOTE_MAX_LENGTH = 1000
AlarmThreshold = Annotated[
    float, Field(ge=-ALARM_THRESHOLD_LIMIT, le=ALARM_THRESHOLD_LIMIT, strict=True)
]


class AlarmRuleSpec(Command):
    """A rule: on one device or every device of a kind, a metric above/below/outside its
    thresholds (default: the declared range) for N readings or T seconds, or the device
    silent for T seconds (default: the kind's liveness timeout)."""

    scope: Literal["device", "kind"]
    device_id: DeviceId | None = None
    kind: Kind | None = None
    metric: MetricName | None = None
    condition: AlarmCondition
    threshold_low: AlarmThreshold | None = None
    threshold_high: AlarmThreshold | None = None
    for_readings: int | None = Field(default=None, ge=1, le=ALARM_MAX_READINGS, strict=True)
    for_seconds: int | None = Field(default=None, ge=1, le=ALARM_MAX_SECONDS, strict=True)
    clear_readings: int = Field(default=3, ge=1, le=ALARM_MAX_READINGS, strict=True)
    severity: Severity = "major"

    @model_validator(mode="after")
    def _consistent(self) -> AlarmRuleSpec:
        targets = (self.device_id is not None, self.kind is not None)
        if targets != (self.scope == "device", self.scope == "kind"):
            raise ValueError("scope 'device' takes device_id only, scope 'kind' takes kind only")
        if self.condition == "offline":
            if self.metric is not None or self.threshold_low is not None:
                raise ValueError("an offline rule has no metric and no thresholds")
            if self.threshold_high is not None or self.for_readings is not None:
                raise ValueError("an offline rule has no thresholds and no for_readings")
            return self
        if self.metric is None:
            raise ValueError(f"a rule on condition {self.condition!r} needs a metric")
        if self.condition == "above" and self.threshold_low is not None:
            raise ValueError("an 'above' rule takes threshold_high only")
        if self.condition == "below" and self.threshold_high is not None:
            raise ValueError("a 'below' rule takes threshold_low only")
        low, high = self.threshold_low, self.threshold_high
        if low is not None and high is not None and not low < high:
            raise ValueError("threshold_low must be below threshold_high")
        return self


class CreateAlarmRule(AlarmRuleSpec):
    pass


class UpdateAlarmRule(AlarmRuleSpec):
    """Replace every attribute of the rule ``rule_id``."""

    rule_id: UUID


class DeleteAlarmRule(Command):
    rule_id: UUID


class AcknowledgeAlarm(Command):
    alarm_id: UUID
    acknowledged_by: Name
    note: SafeText | None = Field(default=None, max_length=ALARM_NOTE_MAX_LENGTH)


# API keys (issue 22): made with a role, shown once, revoked for good.
class CreateApiKey(Command):
    name: Name
    role: Role
    expires_at: AwareDatetime | None = Field(default=None, description="Refused from then on")


class RevokeApiKey(Command):
    key_id: UUID


# Dashboard accounts (issue 22): people with a role. A user name is lower case so that
# "Ada" and "ada" cannot be two accounts, and may be an e-mail address (the OIDC login maps
# a person's e-mail to the account of that name).
DASHBOARD_USERNAME_PATTERN = r"^[a-z0-9][a-z0-9._@+\-]{0,127}$"
DASHBOARD_PASSWORD_MIN_LENGTH = 12
DASHBOARD_PASSWORD_MAX_LENGTH = 1024  # argon2 takes any length; this bounds the work per login
DashboardUsername = Annotated[
    str,
    Field(
        pattern=DASHBOARD_USERNAME_PATTERN,
        description="1-128 of a-z, 0-9 and . _ @ + - (lower case), starting with a letter or digit",
        examples=["ada", "ada@example.com"],
    ),
]
DashboardPassword = Annotated[
    SecretStr,
    Field(min_length=DASHBOARD_PASSWORD_MIN_LENGTH, max_length=DASHBOARD_PASSWORD_MAX_LENGTH),
]


class CreateDashboardAccount(Command):
    username: DashboardUsername
    role: Role
    password: DashboardPassword


class ChangeDashboardAccount(Command):
    """Change the given attributes of an account; those left out keep their value."""

    username: DashboardUsername
    role: Role | None = None
    disabled: bool | None = Field(default=None, strict=True)
    password: DashboardPassword | None = None

    @model_validator(mode="after")
    def _changes_something(self) -> ChangeDashboardAccount:
        if self.role is None and self.disabled is None and self.password is None:
            raise ValueError("a change must name at least one of: role, disabled, password")
        return self


# Device profiles and gateways (issue 25).
class CreateDeviceProfile(Command):
    profile: DeviceProfile


class ReplaceDeviceProfile(Command):
    """Replace every attribute of the profile of the same name."""

    profile: DeviceProfile


class DeleteDeviceProfile(Command):
    name: ProfileName


GatewayDeviceMap = Annotated[
    dict[FriendlyName, DeviceId],
    Field(
        max_length=MAX_GATEWAY_DEVICES,
        description="Friendly name (as the gateway publishes it) -> device id",
        examples=[{"kitchen/floor light": "lamp-1"}],
    ),
]


class RegisterGateway(Command):
    """A broker account that speaks for the listed devices, in its (gateway) profile's format."""

    gateway_id: DeviceId | None = None
    name: Name
    profile: ProfileName
    devices: GatewayDeviceMap = Field(default_factory=dict)


class SetGatewayDevices(Command):
    """Replace the devices a gateway may speak for."""

    gateway_id: DeviceId
    devices: GatewayDeviceMap


class DeleteGateway(Command):
    gateway_id: DeviceId
