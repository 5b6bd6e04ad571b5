"""The simulator's payload formats, read back by ingest's parsers with the simulator's profiles.

Every format round-trips: what the simulator encodes for a device, matched against the
profile it registers the device with and parsed by ingest.formats, is the readings it
sampled, at the times the format can carry (SenML: ms, Tasmota: s, plain: receive time).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from device_simulator.faults import FaultInjector, FaultRates
from device_simulator.fleet import Schedule, messages
from device_simulator.profiles import Profile, profile_for
from device_simulator.registration import SimulatedDevice
from device_simulator.runner import SimulationConfig
from device_simulator.wire_formats import (
    FORMATS,
    Sample,
    Wire,
    encode,
    profile_for_format,
    profile_name,
)
from ingest.formats import parse_payload
from ingest.payloads import DeviceInfo, Limits, MetricRange, ParsedMessage, Reading
from iotp.device_profiles import BUILTIN_PROFILE, DeviceProfile, TopicKind, match_topic

DEVICE = "sim-00007"
RECEIVED = datetime(2026, 11, 24, 12, 0, 0, 654321, tzinfo=UTC)
LIMITS = Limits()


def device_profile(payload_format: str, sim: Profile) -> DeviceProfile:
    return profile_for_format(payload_format, sim.kind, sim.metrics) or BUILTIN_PROFILE


def device_info(sim: Profile, profile: DeviceProfile) -> DeviceInfo:
    ranges = {m["name"]: MetricRange(m.get("min"), m.get("max")) for m in sim.metrics}
    return DeviceInfo(DEVICE, "active", ranges, profile=profile.name)


def samples(sim: Profile, count: int) -> list[Sample]:
    # Microseconds, which some formats cannot carry: they show what each keeps.
    step = timedelta(seconds=5, microseconds=1111)
    times = [RECEIVED - step * (count - k) for k in range(count)]
    return [(ts, sim.reading(ts)) for ts in times]


def read_back(payload_format: str, sim: Profile, sent: list[Sample]) -> list[ParsedMessage]:
    """Each encoded message, matched to the registered profile's tree and parsed by ingest."""
    profile = device_profile(payload_format, sim)
    names = [m["name"] for m in sim.metrics]
    parsed = []
    for message in encode(payload_format, DEVICE, sent, names):
        match = match_topic(profile, message.topic)
        assert match is not None and match.kind is TopicKind.TELEMETRY, message.topic
        assert match.device == DEVICE
        device = device_info(sim, profile)
        parsed.append(parse_payload(profile, match, message.payload, RECEIVED, device, LIMITS))
    return parsed


def readings(parsed: list[ParsedMessage]) -> list[Reading]:
    assert [r for p in parsed for r in p.rejections] == []
    return [r for p in parsed for r in p.readings]


def exact(ts: datetime) -> datetime:
    return ts


def to_ms(ts: datetime) -> datetime:
    """SenML's times: epoch seconds to the millisecond (rounded)."""
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=round(ts.timestamp(), 3))


def to_s(ts: datetime) -> datetime:
    """Tasmota's times: whole seconds."""
    return ts.replace(microsecond=0)


@pytest.mark.parametrize("kind", ["thermostat", "tracker"])
@pytest.mark.parametrize(
    ("payload_format", "stored_at"),
    [("iotp", exact), ("senml+json", to_ms), ("json-map", to_s)],
)
def test_timed_formats_round_trip_through_ingest(
    kind: str, payload_format: str, stored_at: Callable[[datetime], datetime]
) -> None:
    sim = profile_for(kind, 0, seed=3)
    sent = samples(sim, 3)
    got = readings(read_back(payload_format, sim, sent))
    assert [(r.ts, r.metrics) for r in got] == [(stored_at(ts), dict(m)) for ts, m in sent]
    assert all(r.out_of_range == () for r in got)


@pytest.mark.parametrize("kind", ["thermostat", "tracker"])
def test_plain_values_round_trip_one_metric_per_topic(kind: str) -> None:
    sim = profile_for(kind, 0, seed=3)
    sent = samples(sim, 1)
    parsed = read_back("plain", sim, sent)
    assert len(parsed) == len(sim.metrics)
    got = readings(parsed)
    assert all(r.ts == RECEIVED for r in got)  # a plain payload carries no time
    merged = {name: value for r in got for name, value in r.metrics.items()}
    assert merged == sent[0][1]


def test_a_senml_pack_has_base_fields_and_relative_times() -> None:
    sim = profile_for("thermostat", 0, seed=3)
    sent = samples(sim, 2)
    (message,) = encode("senml+json", DEVICE, sent, [m["name"] for m in sim.metrics])
    assert message.topic == f"devices/{DEVICE}/senml" and message.readings == 2
    pack = orjson.loads(message.payload)
    first, second, third, fourth = pack[:4]
    assert first["bn"] == f"urn:dev:sim:{DEVICE}:"
    assert first["bt"] == round(sent[0][0].timestamp(), 3)
    assert first["bu"] == "Cel" and first["n"] == "temp" and "u" not in first
    assert second == {"n": "hum", "u": "%RH", "v": sent[0][1]["humidity"]}
    assert third["n"] == "bat" and third["u"] == "%EL"
    assert fourth["n"] == "temp" and fourth["t"] == pytest.approx(5.001, abs=1e-3)
    assert all("bn" not in record for record in pack[1:])


def test_a_senml_record_in_another_unit_than_mapped_is_refused() -> None:
    sim = profile_for("thermostat", 0, seed=3)
    profile = device_profile("senml+json", sim)
    match = match_topic(profile, f"devices/{DEVICE}/senml")
    assert match is not None
    pack = [{"bn": f"urn:dev:sim:{DEVICE}:", "n": "temp", "u": "K", "v": 294.0}]
    result = parse_payload(
        profile, match, orjson.dumps(pack), RECEIVED, device_info(sim, profile), LIMITS
    )
    assert [r.reason for r in result.rejections] == ["unit_mismatch"]


def test_tasmota_time_is_local_wall_time_without_offset() -> None:
    sim = profile_for("thermostat", 0, seed=3)
    summer = datetime(2026, 7, 1, 10, 0, 0, 250000, tzinfo=UTC)
    (message,) = encode("json-map", DEVICE, [(summer, sim.reading(summer))], ["temperature"])
    document = orjson.loads(message.payload)
    assert message.topic == f"tele/{DEVICE}/SENSOR"
    assert document["Time"] == "2026-07-01T12:00:00"  # Berlin, CEST (+02:00)
    assert set(document["AM2301"]) == {"Temperature", "Humidity"}
    assert set(document["Battery"]) == {"Percent"}


def test_profiles_are_named_per_format_and_kind_and_iotp_needs_none() -> None:
    sim = profile_for("tracker", 2, seed=1)
    assert profile_for_format("iotp", sim.kind, sim.metrics) is None
    names = {profile_name(f, sim.kind) for f in FORMATS}
    assert names == {
        "sim-iotp-tracker",
        "sim-senml-tracker",
        "sim-jsonmap-tracker",
        "sim-plain-tracker",
    }
    for payload_format in FORMATS[1:]:
        profile = profile_for_format(payload_format, sim.kind, sim.metrics)
        assert profile is not None and profile.payload_format == payload_format
        # What the command API takes as a body, and stores: the same profile back.
        body = profile.model_dump(mode="json")
        assert DeviceProfile.model_validate(body) == profile


def test_http_destinations_name_the_device_and_a_plain_metric() -> None:
    sim = profile_for("thermostat", 0, seed=3)
    sent = samples(sim, 1)
    names = [m["name"] for m in sim.metrics]
    wire = Wire("plain", "http")
    paths = [wire.destination(DEVICE, m) for m in encode("plain", DEVICE, sent, names)]
    assert paths[0] == f"/telemetry/{DEVICE}?metric=dht_temperature"
    (senml,) = encode("senml+json", DEVICE, sent, names)
    assert Wire("senml+json", "http").destination(DEVICE, senml) == f"/telemetry/{DEVICE}"
    assert Wire("senml+json", "mqtt").destination(DEVICE, senml) == f"devices/{DEVICE}/senml"


def test_an_unknown_device_fault_stays_in_the_formats_tree() -> None:
    sim = profile_for("thermostat", 0, seed=3)
    injector = FaultInjector(FaultRates(unknown_device=1.0), random.Random(1))
    device = SimulatedDevice(DEVICE, DEVICE, "pw", "unused")
    schedule = Schedule(period=1.0, batch=1, qos=1, duration=None, count=None)
    (message,) = messages(device, sim, schedule, injector, Wire("json-map", "mqtt"))
    assert message.fault == "unknown_device" and message.readings == 0
    assert message.topic.startswith("tele/ghost-") and message.topic.endswith("/SENSOR")
    (posted,) = messages(device, sim, schedule, injector, Wire("iotp", "http"))
    assert posted.topic.startswith("/telemetry/ghost-")


def test_plain_messages_count_each_reading_once() -> None:
    sim = profile_for("tracker", 0, seed=3)
    injector = FaultInjector(FaultRates(), random.Random(1))
    device = SimulatedDevice(DEVICE, DEVICE, "pw", "unused")
    schedule = Schedule(period=1.0, batch=1, qos=1, duration=None, count=None)
    sent = messages(device, sim, schedule, injector, Wire("plain", "mqtt"))
    assert len(sent) == 4 and sum(m.readings for m in sent) == 1
    assert {m.topic for m in sent} == {
        f"{DEVICE}/sensor/gps_latitude/state",
        f"{DEVICE}/sensor/gps_longitude/state",
        f"{DEVICE}/sensor/gps_speed/state",
        f"{DEVICE}/sensor/fuel_level/state",
    }


def test_the_config_refuses_what_cannot_work() -> None:
    base: dict[str, Any] = {"api_url": "http://api", "api_token": "t", "mqtt_url": "mqtt://b"}
    with pytest.raises(ValueError, match="--format"):
        SimulationConfig(**base, payload_format="xml")
    with pytest.raises(ValueError, match="--transport"):
        SimulationConfig(**base, transport="coap")
    with pytest.raises(ValueError, match="--batch must be 1"):
        SimulationConfig(**base, payload_format="plain", batch=3)
    with pytest.raises(ValueError, match="--rate must be at most 1"):
        SimulationConfig(**base, payload_format="json-map", rate=2)
    with pytest.raises(ValueError, match="--http-url"):
        SimulationConfig(**base, transport="http")
    assert SimulationConfig(**base, transport="http", http_url="http://ingest:8088")
