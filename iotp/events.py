"""Events: facts the platform records, and their one serialisation to Redis stream fields."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, ClassVar, Literal
from uuid import UUID, uuid4

import orjson
from pydantic import AwareDatetime, Field, TypeAdapter, ValidationError

from iotp.model import DeviceAttributes, DeviceId, FrozenModel, MetricName

SCHEMA_VERSION = 1


def utc_now() -> datetime:
    return datetime.now(UTC)


class Event(FrozenModel):
    """Envelope shared by every event: a unique id, when it happened, and its schema version."""

    schema_version: ClassVar[int] = SCHEMA_VERSION

    event_id: UUID = Field(default_factory=uuid4)
    occurred_at: AwareDatetime = Field(default_factory=utc_now)
    device_id: DeviceId


# The broker's password file needs each device's password hash (Mosquitto's $7$ PBKDF2
# form); events carry it so that `iotp broker-sync` follows the stream alone. The password
# itself never travels: it has 256 random bits, so its hash reveals nothing usable. Events
# from before the field existed have None, and broker-sync looks the hash up instead.
CredentialHash = Annotated[str, Field(pattern=r"^\$7\$[0-9]+\$[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+$")]


class DeviceRegistered(DeviceAttributes, Event):
    type: Literal["DeviceRegistered"] = "DeviceRegistered"
    credential_hash: CredentialHash | None = None


class DeviceUpdated(DeviceAttributes, Event):
    """Carries the device's attributes after the update, so applying it twice is harmless."""

    type: Literal["DeviceUpdated"] = "DeviceUpdated"
    changed: tuple[str, ...]


class DeviceDecommissioned(Event):
    type: Literal["DeviceDecommissioned"] = "DeviceDecommissioned"
    reason: str | None = None


class DeviceCredentialsRotated(Event):
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


AnyEvent = Annotated[
    DeviceRegistered
    | DeviceUpdated
    | DeviceDecommissioned
    | DeviceCredentialsRotated
    | TelemetryRecorded,
    Field(discriminator="type"),
]
_EVENT_ADAPTER: TypeAdapter[AnyEvent] = TypeAdapter(AnyEvent)


class UndecodableEvent(ValueError):
    """A stream entry that is not an event this version of iotp understands."""


def to_fields(event: Event) -> dict[str, str]:
    """The Redis stream entry for ``event``: routing fields plus the event as JSON."""
    return {
        "type": str(getattr(event, "type")),  # noqa: B009 - every concrete event has one
        "event_id": str(event.event_id),
        "device_id": event.device_id,
        "schema_version": str(event.schema_version),
        "data": event.model_dump_json(),
    }


def telemetry_recorded_fields(
    device_id: str,
    readings: list[tuple[datetime, dict[str, float], tuple[str, ...]]],
    received_at: datetime,
    ingested_at: datetime,
) -> dict[str, str]:
    """``to_fields(TelemetryRecorded(...))`` without building the model: ingest's hot path.

    The inputs are already validated by ingest; a unit test holds this equal to the model's
    own serialisation.
    """
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
    decoded = {
        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
        for k, v in fields.items()
    }
    version = decoded.get("schema_version", "")
    if version != str(SCHEMA_VERSION):
        raise UndecodableEvent(f"unsupported schema_version {version!r}")
    try:
        return _EVENT_ADAPTER.validate_json(decoded["data"])
    except (KeyError, ValidationError) as exc:
        raise UndecodableEvent(f"malformed event entry: {exc}") from exc
