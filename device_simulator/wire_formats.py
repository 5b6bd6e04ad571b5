"""What simulated devices send in each payload format, and the profile that reads it back.

Each format is written as its firmware writes it: iotp's own shape; a SenML pack (RFC 8428)
with base name, base time and base unit, as LwM2M devices send; Tasmota-like JSON with the
local time and no offset; ESPHome-like plain numbers, one topic per metric. The profile of
a format (iotp.device_profiles) maps those names back to the simulator's metric names, so a
reading goes out in a format and is stored under the names the device declared. Times go
out as precisely as the format carries them (SenML: milliseconds, Tasmota: seconds).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote
from zoneinfo import ZoneInfo

import orjson

from iotp.device_profiles import DeviceProfile, PayloadFormat

FORMATS = tuple(f.value for f in PayloadFormat)
SENML_TOPIC = "devices/{device}/senml"
SENML_BASE_NAME = "urn:dev:sim:{device}:"
TASMOTA_TOPIC = "tele/{device}/SENSOR"
TASMOTA_ZONE = "Europe/Berlin"  # Tasmota's Timezone setting: its "Time" is this wall time
ESPHOME_TOPIC = "{device}/sensor/{metric}/state"

Sample = tuple[datetime, Mapping[str, float]]  # one reading: its time and metrics


@dataclass(frozen=True)
class Source:
    """How firmware names one metric: SenML record name and unit, JSON path, ESPHome id."""

    senml: tuple[str, str | None]
    json_path: tuple[str, str]
    plain: str


# The simulator's metrics (device_simulator.profiles) as firmware would name them.
SOURCES: Mapping[str, Source] = {
    "temperature": Source(("temp", "Cel"), ("AM2301", "Temperature"), "dht_temperature"),
    "humidity": Source(("hum", "%RH"), ("AM2301", "Humidity"), "dht_humidity"),
    "battery": Source(("bat", "%EL"), ("Battery", "Percent"), "battery_level"),
    "latitude": Source(("lat", "lat"), ("GPS", "Lat"), "gps_latitude"),
    "longitude": Source(("lon", "lon"), ("GPS", "Lon"), "gps_longitude"),
    "speed": Source(("speed", "km/h"), ("GPS", "Speed"), "gps_speed"),
    "fuel": Source(("fuel", "%"), ("Fuel", "Level"), "fuel_level"),
}


def source_of(metric: str) -> Source:
    """How a metric is named on the wire; one the table lacks keeps its own name."""
    return SOURCES.get(metric) or Source((metric, None), ("Sensor", metric), metric)


@dataclass(frozen=True)
class Encoded:
    """One message: the topic part the format fixes, the payload, the readings it carries."""

    topic: str  # the MQTT topic
    payload: bytes
    readings: int
    metric: str | None = None  # plain: the topic level naming the metric (HTTP: ?metric=)


def encode(
    payload_format: str, device_id: str, samples: Sequence[Sample], metric_names: Sequence[str]
) -> list[Encoded]:
    """The messages that carry ``samples`` of ``device_id`` in ``payload_format``."""
    if payload_format == PayloadFormat.SENML_JSON:
        topic = SENML_TOPIC.replace("{device}", device_id)
        return [Encoded(topic, encode_senml(device_id, samples, metric_names), len(samples))]
    if payload_format == PayloadFormat.JSON_MAP:
        topic = TASMOTA_TOPIC.replace("{device}", device_id)
        return [Encoded(topic, encode_tasmota(sample), 1) for sample in samples]
    if payload_format == PayloadFormat.PLAIN:
        messages = []
        for _, metrics in samples:
            for n, (metric, value) in enumerate(metrics.items()):
                level = source_of(metric).plain
                topic = ESPHOME_TOPIC.replace("{device}", device_id).replace("{metric}", level)
                # One message per metric: the sample's first one counts the reading.
                messages.append(Encoded(topic, encode_plain(value), int(n == 0), level))
        return messages
    topic = f"devices/{device_id}/telemetry"
    return [Encoded(topic, encode_iotp(samples), len(samples))]


def encode_iotp(samples: Sequence[Sample]) -> bytes:
    """iotp's shape: one reading as an object, several as an array."""
    readings = [{"ts": ts.isoformat(), "metrics": dict(metrics)} for ts, metrics in samples]
    return orjson.dumps(readings[0] if len(readings) == 1 else readings)


def encode_senml(device_id: str, samples: Sequence[Sample], metric_names: Sequence[str]) -> bytes:
    """A SenML pack: the first record carries bn, bt and bu; times after it are relative.

    ``bu`` is the unit of the device's first metric: records in it leave ``u`` out.
    """
    if not samples:
        raise ValueError("a SenML pack holds at least one record")
    base_unit = source_of(metric_names[0]).senml[1] if metric_names else None
    base_time = _milliseconds(samples[0][0])
    pack: list[dict[str, object]] = []
    for ts, metrics in samples:
        offset = round(_milliseconds(ts) - base_time, 3)
        for metric, value in metrics.items():
            name, unit = source_of(metric).senml
            record: dict[str, object] = {"n": name, "v": value}
            if unit is not None and unit != base_unit:
                record["u"] = unit
            if offset:
                record["t"] = offset
            if not pack:
                base = {"bn": SENML_BASE_NAME.replace("{device}", device_id), "bt": base_time}
                record = {**base, **({"bu": base_unit} if base_unit else {}), **record}
            pack.append(record)
    return orjson.dumps(pack)


def encode_tasmota(sample: Sample) -> bytes:
    """Tasmota's tele/<name>/SENSOR: sensors as objects, ``Time`` local with no offset.

    A wall time the clocks pass twice (autumn) is read back at its first passing: in that
    hour a Tasmota device's (and this one's) second pass is stored an hour early.
    """
    ts, metrics = sample
    local = ts.astimezone(ZoneInfo(TASMOTA_ZONE)).replace(tzinfo=None, microsecond=0)
    document: dict[str, object] = {"Time": local.isoformat()}
    for metric, value in metrics.items():
        sensor, field = source_of(metric).json_path
        section = document.setdefault(sensor, {})
        assert isinstance(section, dict)
        section[field] = value
    return orjson.dumps(document)


def encode_plain(value: float) -> bytes:
    """ESPHome's state payload: the number as text (JSON's way of writing one)."""
    return orjson.dumps(value)


def profile_for_format(
    payload_format: str, kind: str, metrics: Sequence[Mapping[str, object]]
) -> DeviceProfile | None:
    """The profile that reads a ``kind`` device's messages in ``payload_format`` back into its
    metrics; None for iotp (the built-in profile)."""
    names = [str(m["name"]) for m in metrics]
    units = {str(m["name"]): None if m.get("unit") is None else str(m["unit"]) for m in metrics}
    if payload_format == PayloadFormat.SENML_JSON:
        mapping = [
            {
                "source": SENML_BASE_NAME + source_of(name).senml[0],
                "metric": name,
                "unit": source_of(name).senml[1],
            }
            for name in names
        ]
        return DeviceProfile.model_validate(
            {
                "name": profile_name(payload_format, kind),
                "payload_format": payload_format,
                "topics": {"telemetry": [SENML_TOPIC]},
                "senml_base_name": SENML_BASE_NAME,
                "metrics": mapping,
            }
        )
    if payload_format == PayloadFormat.JSON_MAP:
        mapping = [
            {"source": ".".join(source_of(name).json_path), "metric": name, "unit": units[name]}
            for name in names
        ]
        return DeviceProfile.model_validate(
            {
                "name": profile_name(payload_format, kind),
                "payload_format": payload_format,
                "topics": {
                    "telemetry": [TASMOTA_TOPIC],
                    "availability": "tele/{device}/LWT",
                    "online_payload": "Online",
                    "offline_payload": "Offline",
                },
                "metrics": mapping,
                "timestamp": {"path": "Time", "unit": "iso8601", "time_zone": TASMOTA_ZONE},
            }
        )
    if payload_format == PayloadFormat.PLAIN:
        mapping = [
            {"source": source_of(name).plain, "metric": name, "unit": units[name]} for name in names
        ]
        return DeviceProfile.model_validate(
            {
                "name": profile_name(payload_format, kind),
                "payload_format": payload_format,
                "topics": {"telemetry": [ESPHOME_TOPIC], "availability": "{device}/status"},
                "metrics": mapping,
            }
        )
    if payload_format == PayloadFormat.IOTP:
        return None
    raise ValueError(f"unknown payload format {payload_format!r}; known: {', '.join(FORMATS)}")


def profile_name(payload_format: str, kind: str) -> str:
    """``sim-senml-thermostat``: profile names take no '+'."""
    slug = {"senml+json": "senml", "json-map": "jsonmap"}.get(payload_format, payload_format)
    return f"sim-{slug}-{kind}"


def _milliseconds(ts: datetime) -> float:
    """Epoch seconds to the millisecond: a float carries them exactly enough to read back."""
    return round(ts.astimezone(UTC).timestamp(), 3)


TRANSPORTS = ("mqtt", "http")


@dataclass(frozen=True)
class Wire:
    """A payload format over a transport: where each message of a device goes."""

    payload_format: str = PayloadFormat.IOTP.value
    transport: str = "mqtt"

    def __post_init__(self) -> None:
        if self.payload_format not in FORMATS:
            raise ValueError(f"--format must be one of {', '.join(FORMATS)}")
        if self.transport not in TRANSPORTS:
            raise ValueError(f"--transport must be one of {', '.join(TRANSPORTS)}")

    def destination(self, device_id: str, message: Encoded) -> str:
        """The MQTT topic, or the HTTP path (the ingest endpoint's) of ``message``."""
        if self.transport == "mqtt":
            return message.topic
        path = f"/telemetry/{quote(device_id, safe='')}"
        if message.metric is not None:
            path += f"?metric={quote(message.metric, safe='')}"
        return path
