"""Events: facts the platform records, and their one serialisation to Redis stream fields."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Annotated, ClassVar, Literal, TypeVar
from uuid import UUID, uuid4

import msgspec
import orjson
from pydantic import AwareDatetime, Field, TypeAdapter, ValidationError

from iotp.device_profiles import DeviceProfile, FriendlyName
from iotp.model import (
    DeviceAttributes,
    DeviceId,
    FrozenModel,
    MetricName,
    is_device_id,
    is_metric_name,
)

SCHEMA_VERSION = 1
T = TypeVar("T")


def utc_now() -> datetime:
    return datetime.now(UTC)


class Envelope(FrozenModel):
    """Envelope shared by every event: a unique id, when it happened, and its schema version."""

    schema_version: ClassVar[int] = SCHEMA_VERSION

    event_id: UUID = Field(default_factory=uuid4)
    occurred_at: AwareDatetime = Field(default_factory=utc_now)


class Event(Envelope):
    """An event about one device (every event but the platform's configuration events)."""

    device_id: DeviceId


ActorKind = Literal["api-key", "bootstrap-token", "dashboard-user", "command-line"]


class Actor(FrozenModel):
    """Who issued a command: a named API key, a bootstrap token, a person logged in to the
    dashboard (``via`` the key the dashboard holds), or an operator at the command line."""

    kind: ActorKind
    id: str | None = Field(default=None, max_length=200)  # a key's id, an account's user name
    name: str = Field(max_length=200)
    via: str | None = Field(default=None, max_length=200)


class Issued(FrozenModel):
    """Mixed into every event a command can cause: who issued that command.

    None on events from before actors were recorded and on events no command caused (an
    alarm cleared by a reading). The unit of work stamps it at commit (command_api), so no
    handler has to pass it along.
    """

    actor: Actor | None = None


# The broker's password file needs each device's password hash (Mosquitto's $7$ PBKDF2
# form); events carry it so that `iotp broker-sync` follows the stream alone. The password
# itself never travels: it has 256 random bits, so its hash reveals nothing usable. Events
# from before the field existed have None, and broker-sync looks the hash up instead.
CredentialHash = Annotated[str, Field(pattern=r"^\$7\$[0-9]+\$[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+$")]


class DeviceRegistered(DeviceAttributes, Event, Issued):
    type: Literal["DeviceRegistered"] = "DeviceRegistered"
    credential_hash: CredentialHash | None = None


class DeviceUpdated(DeviceAttributes, Event, Issued):
    """Carries the device's attributes after the update, so applying it twice is harmless."""

    type: Literal["DeviceUpdated"] = "DeviceUpdated"
    changed: tuple[str, ...]


class DeviceDecommissioned(Event, Issued):
    type: Literal["DeviceDecommissioned"] = "DeviceDecommissioned"
    reason: str | None = None


class DeviceCredentialsRotated(Event, Issued):
    """The device's MQTT password changed; the secret itself never travels on a stream."""

    type: Literal["DeviceCredentialsRotated"] = "DeviceCredentialsRotated"
    username: str
    credential_hash: CredentialHash | None = None


class RecordedReading(FrozenModel):
    """One timestamped reading of one or more metrics, with the metrics outside their range."""

    ts: AwareDatetime
    metrics: dict[MetricName, float]
    out_of_range: tuple[MetricName, ...] = ()


class TelemetryRecorded(Event):
    """Readings of one MQTT message that were newly stored in the telemetry table."""

    type: Literal["TelemetryRecorded"] = "TelemetryRecorded"
    readings: tuple[RecordedReading, ...]
    received_at: AwareDatetime | None = None  # when the broker handed ingest the message
    ingested_at: AwareDatetime


# Alarms (issue 16). An alarm is one episode of a rule's condition on one device: raised
# once, acknowledged at most once by a person, cleared once. ``alarm_id`` is derived by the
# alarm process from (rule, device, the position that raised it), so a process that raises
# again after a crash writes the same id and consumers dedupe on it.
Severity = Literal["critical", "major", "minor", "warning"]
SEVERITIES: tuple[Severity, ...] = ("critical", "major", "minor", "warning")
AlarmCondition = Literal["above", "below", "outside_range", "offline"]


class AlarmRaised(Event):
    type: Literal["AlarmRaised"] = "AlarmRaised"
    alarm_id: UUID
    rule_id: str  # "range:<metric>" for the default rule of a declared metric range
    metric: MetricName | None = None  # None for an offline alarm
    condition: AlarmCondition
    severity: Severity
    raised_at: AwareDatetime  # the time of the reading (or timer) that completed the breach
    value: float | None = None  # the reading that completed the breach
    threshold_low: float | None = None
    threshold_high: float | None = None


class AlarmAcknowledged(Event, Issued):
    type: Literal["AlarmAcknowledged"] = "AlarmAcknowledged"
    alarm_id: UUID
    acknowledged_by: str
    acknowledged_at: AwareDatetime
    note: str | None = None


class AlarmCleared(Event, Issued):
    type: Literal["AlarmCleared"] = "AlarmCleared"
    alarm_id: UUID
    cleared_at: AwareDatetime  # the time of the reading (or event) that ended the condition
    value: float | None = None
    reason: str | None = None  # e.g. "back in range", "reading received", "rule deleted"


# Webhooks (issue 16): configuration of the notifier, about no device. The secret never
# travels on a stream, nor the URL's path and query (they often hold a token): only where
# deliveries go (scheme, host and port).
class WebhookRegistered(Envelope, Issued):
    type: Literal["WebhookRegistered"] = "WebhookRegistered"
    webhook_id: UUID
    name: str | None = None
    url_origin: str
    severities: tuple[Severity, ...]
    has_secret: bool


class WebhookDeleted(Envelope, Issued):
    type: Literal["WebhookDeleted"] = "WebhookDeleted"
    webhook_id: UUID


# Alarm rules (issue 16): configuration of the alarm process, about no device (a rule may
# watch a whole kind), on their own stream beside the alarms.
class AlarmRuleAttributes(Envelope, Issued):
    rule_id: UUID
    scope: Literal["device", "kind"]
    device_id: str | None = None
    kind: str | None = None
    metric: MetricName | None = None
    condition: AlarmCondition
    threshold_low: float | None = None
    threshold_high: float | None = None
    for_readings: int | None = None
    for_seconds: int | None = None
    clear_readings: int
    severity: Severity


class AlarmRuleCreated(AlarmRuleAttributes):
    type: Literal["AlarmRuleCreated"] = "AlarmRuleCreated"


class AlarmRuleUpdated(AlarmRuleAttributes):
    """Carries every attribute of the rule after the update."""

    type: Literal["AlarmRuleUpdated"] = "AlarmRuleUpdated"


class AlarmRuleDeleted(Envelope, Issued):
    type: Literal["AlarmRuleDeleted"] = "AlarmRuleDeleted"
    rule_id: UUID


# Access (issue 22): API keys, dashboard accounts and refused commands, on their own stream.
class ApiKeyCreated(Envelope, Issued):
    type: Literal["ApiKeyCreated"] = "ApiKeyCreated"
    key_id: UUID
    name: str
    role: str
    expires_at: AwareDatetime | None = None


class ApiKeyRevoked(Envelope, Issued):
    type: Literal["ApiKeyRevoked"] = "ApiKeyRevoked"
    key_id: UUID
    name: str


class DashboardAccountCreated(Envelope, Issued):
    type: Literal["DashboardAccountCreated"] = "DashboardAccountCreated"
    username: str
    role: str


class DashboardAccountChanged(Envelope, Issued):
    """Carries the account's role and state after the change; never its password."""

    type: Literal["DashboardAccountChanged"] = "DashboardAccountChanged"
    username: str
    role: str
    disabled: bool
    changed: tuple[str, ...]  # of "role", "disabled", "password"


class AccessDenied(Envelope, Issued):
    """A known caller was refused a command its role does not allow (403)."""

    type: Literal["AccessDenied"] = "AccessDenied"
    method: str = Field(max_length=16)
    path: str = Field(max_length=2048)
    permission: str | None = None
    reason: str = Field(max_length=500)


# Device profiles and gateways (issue 25): how devices connect, on their own stream. Each
# event carries the whole profile or gateway after the change, so applying it twice, or only
# the last one, is harmless. A gateway's password hash travels as a device's does.
class DeviceProfileSaved(Envelope, Issued):
    type: Literal["DeviceProfileSaved"] = "DeviceProfileSaved"
    profile: DeviceProfile
    created: bool  # False: it replaced the profile of that name


class DeviceProfileDeleted(Envelope, Issued):
    type: Literal["DeviceProfileDeleted"] = "DeviceProfileDeleted"
    name: str


class GatewayAttributes(Envelope, Issued):
    """A gateway as it stands after the change: its profile and the devices it speaks for."""

    gateway_id: DeviceId
    name: str
    profile: str
    devices: dict[FriendlyName, DeviceId]


class GatewayRegistered(GatewayAttributes):
    type: Literal["GatewayRegistered"] = "GatewayRegistered"
    credential_hash: CredentialHash


class GatewayChanged(GatewayAttributes):
    type: Literal["GatewayChanged"] = "GatewayChanged"
    changed: tuple[str, ...]  # of "profile", "devices", "credentials"
    credential_hash: CredentialHash


class GatewayDeleted(Envelope, Issued):
    type: Literal["GatewayDeleted"] = "GatewayDeleted"
    gateway_id: DeviceId


AnyEvent = Annotated[
    DeviceRegistered
    | DeviceUpdated
    | DeviceDecommissioned
    | DeviceCredentialsRotated
    | TelemetryRecorded
    | AlarmRaised
    | AlarmAcknowledged
    | AlarmCleared,
    Field(discriminator="type"),
]
_EVENT_ADAPTER: TypeAdapter[AnyEvent] = TypeAdapter(AnyEvent)
# Apart from AnyEvent, whose every consumer relies on a device_id; on their own stream.
AnyConfigurationEvent = Annotated[
    WebhookRegistered | WebhookDeleted | AlarmRuleCreated | AlarmRuleUpdated | AlarmRuleDeleted,
    Field(discriminator="type"),
]
_CONFIGURATION_ADAPTER: TypeAdapter[AnyConfigurationEvent] = TypeAdapter(AnyConfigurationEvent)
AnyAccessEvent = Annotated[
    ApiKeyCreated
    | ApiKeyRevoked
    | DashboardAccountCreated
    | DashboardAccountChanged
    | AccessDenied,
    Field(discriminator="type"),
]
_ACCESS_ADAPTER: TypeAdapter[AnyAccessEvent] = TypeAdapter(AnyAccessEvent)
AnyProfileEvent = Annotated[
    DeviceProfileSaved | DeviceProfileDeleted | GatewayRegistered | GatewayChanged | GatewayDeleted,
    Field(discriminator="type"),
]
_PROFILE_ADAPTER: TypeAdapter[AnyProfileEvent] = TypeAdapter(AnyProfileEvent)


class UndecodableEvent(ValueError):
    """A stream entry that is not an event this version of iotp understands."""


def to_fields(event: Envelope) -> dict[str, str]:
    """The Redis stream entry for ``event``: routing fields plus the event as JSON."""
    # A configuration event (webhooks) is about no device: its entry has no device_id.
    device = {"device_id": event.device_id} if isinstance(event, Event) else {}
    return {
        "type": str(getattr(event, "type")),  # noqa: B009 - every concrete event has one
        "event_id": str(event.event_id),
        **device,
        "schema_version": str(event.schema_version),
        "data": event.model_dump_json(),
    }


def new_event_ids(count: int) -> Iterator[str]:
    """``count`` random (version 4) UUIDs as text, from one read of the system's randomness.

    ``str(uuid4())`` per event was half the cost of ingest's events: one ``os.urandom`` call
    and one UUID object each.
    """
    digits = os.urandom(16 * count).hex()
    for start in range(0, 32 * count, 32):
        h = digits[start : start + 32]
        variant = _VARIANT[int(h[16], 16) & 3]
        yield f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{variant}{h[17:20]}-{h[20:]}"


_VARIANT = "89ab"  # RFC 4122: the two top bits of the clock sequence are 10


def utc_text(at: datetime) -> str:
    """``at`` as event JSON writes it (ISO 8601, UTC as Z): rendered once, used by many."""
    return orjson.dumps(at, option=orjson.OPT_UTC_Z)[1:-1].decode()


def telemetry_recorded_fields(
    device_id: str,
    readings: list[tuple[datetime, dict[str, float], tuple[str, ...]]],
    received_at: datetime | str,
    ingested_at: datetime | str,
    event_id: str | None = None,
) -> dict[str, str]:
    """``to_fields(TelemetryRecorded(...))`` without building the model: ingest's hot path.

    The inputs are already validated by ingest; a unit test holds this equal to the model's
    own serialisation. The times may come as :func:`utc_text` of them, which a batch's
    messages share.
    """
    if event_id is None:
        event_id = str(uuid4())
    data = {
        "event_id": event_id,
        "occurred_at": ingested_at,
        "device_id": device_id,
        "type": "TelemetryRecorded",
        "readings": [
            {"ts": ts, "metrics": metrics, "out_of_range": out_of_range}
            for ts, metrics, out_of_range in readings
        ],
        "received_at": received_at,
        "ingested_at": ingested_at,
    }
    return {
        "type": "TelemetryRecorded",
        "event_id": event_id,
        "device_id": device_id,
        "schema_version": str(SCHEMA_VERSION),
        "data": orjson.dumps(data, option=orjson.OPT_UTC_Z).decode(),
    }


def from_fields(fields: dict[str, str] | dict[bytes, bytes]) -> AnyEvent:
    """Decode a stream entry written by :func:`to_fields`."""
    return _decode(fields, _EVENT_ADAPTER)


def configuration_event_from_fields(
    fields: dict[str, str] | dict[bytes, bytes],
) -> AnyConfigurationEvent:
    """Decode a configuration event's stream entry written by :func:`to_fields`."""
    return _decode(fields, _CONFIGURATION_ADAPTER)


def access_event_from_fields(fields: dict[str, str] | dict[bytes, bytes]) -> AnyAccessEvent:
    """Decode an access event's stream entry written by :func:`to_fields`."""
    return _decode(fields, _ACCESS_ADAPTER)


def profile_event_from_fields(fields: dict[str, str] | dict[bytes, bytes]) -> AnyProfileEvent:
    """Decode a profile or gateway event's stream entry written by :func:`to_fields`."""
    return _decode(fields, _PROFILE_ADAPTER)


def _decode(fields: dict[str, str] | dict[bytes, bytes], adapter: TypeAdapter[T]) -> T:
    decoded = {
        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
        for k, v in fields.items()
    }
    version = decoded.get("schema_version", "")
    if version != str(SCHEMA_VERSION):
        raise UndecodableEvent(f"unsupported schema_version {version!r}")
    try:
        return adapter.validate_json(decoded["data"])
    except (KeyError, ValidationError) as exc:
        raise UndecodableEvent(f"malformed event entry: {exc}") from exc


# The aggregator's hot path: TelemetryRecorded decoded by msgspec into plain structs with the
# fields the read models fold, instead of pydantic models (decoding them, and the garbage
# collections their objects set off, were nearly half of an aggregator's time). The structs
# accept a subset of what the pydantic model accepts: anything they refuse goes to
# from_fields, which decodes it or names why not. One known difference: a timestamp with more
# than six fractional digits (never written by iotp, whose encoder writes microseconds) is
# rounded here and truncated by pydantic.
#
# Names are held to the model's patterns too, but not by msgspec: its pattern check ran a
# regular expression for every name of every event (an eighth of an aggregator's time, py-spy),
# while a fleet has few distinct names (iotp.model.is_device_id matches each once).
_FastName = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
_FastAware = Annotated[datetime, msgspec.Meta(tz=True)]


class TelemetryReadingFacts(msgspec.Struct, frozen=True, forbid_unknown_fields=True, gc=False):
    ts: _FastAware
    metrics: dict[_FastName, float]
    out_of_range: tuple[_FastName, ...] = ()


class TelemetryFacts(msgspec.Struct, frozen=True, forbid_unknown_fields=True, gc=False):
    """A TelemetryRecorded event as the read models fold it (the same fields and values)."""

    type: Literal["TelemetryRecorded"]  # required, as the pydantic union requires it
    event_id: UUID
    occurred_at: _FastAware
    device_id: _FastName
    readings: tuple[TelemetryReadingFacts, ...]
    ingested_at: _FastAware
    received_at: _FastAware | None = None


def _names_ok(facts: TelemetryFacts) -> bool:
    if not is_device_id(facts.device_id):
        return False
    for reading in facts.readings:
        for name in reading.metrics:
            if not is_metric_name(name):
                return False
        for name in reading.out_of_range:
            if not is_metric_name(name):
                return False
    return True


_TELEMETRY_DECODER = msgspec.json.Decoder(TelemetryFacts)
_VERSION = str(SCHEMA_VERSION).encode()


def from_fields_to_fold(fields: dict[bytes, bytes]) -> AnyEvent | TelemetryFacts:
    """:func:`from_fields`, with TelemetryRecorded entries decoded fast into TelemetryFacts."""
    if fields.get(b"type") == b"TelemetryRecorded" and fields.get(b"schema_version") == _VERSION:
        data = fields.get(b"data")
        if data is not None:
            try:
                facts = _TELEMETRY_DECODER.decode(data)
            except msgspec.DecodeError:  # ValidationError included
                pass  # from_fields decides, with pydantic's rules and error messages
            else:
                if _names_ok(facts):
                    return facts
    return from_fields(fields)
