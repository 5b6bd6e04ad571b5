"""Simulator signal models, fault injection, pacing and counting: pure logic and fakes."""

from __future__ import annotations

import asyncio
import random
import resource
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import aiomqtt
import pytest

from device_simulator.connections import ensure_open_files
from device_simulator.faults import FaultInjector, FaultRates, Outgoing
from device_simulator.profiles import Thermostat, VehicleTracker, profile_for
from device_simulator.registration import SimulatedDevice
from device_simulator.runner import SimulationConfig, Summary, run_fleet
from iotp.errors import ConfigurationError

T0 = datetime(2026, 11, 24, 0, 0, tzinfo=UTC)


def test_same_seed_same_signals() -> None:
    a, b = profile_for("thermostat", 3, seed=9), profile_for("thermostat", 3, seed=9)
    times = [T0 + timedelta(minutes=m) for m in range(50)]
    assert [a.reading(t) for t in times] == [b.reading(t) for t in times]
    c = profile_for("thermostat", 4, seed=9)
    assert c.reading(T0) != profile_for("thermostat", 3, seed=9).reading(T0)


def test_thermostat_has_a_daily_cycle_and_a_draining_battery() -> None:
    device = Thermostat(random.Random(1))
    night = [device.reading(T0 + timedelta(hours=3, seconds=s))["temperature"] for s in range(60)]
    day = [device.reading(T0 + timedelta(hours=15, seconds=s))["temperature"] for s in range(60)]
    assert sum(day) / 60 > sum(night) / 60 + 3
    first = device.reading(T0)["battery"]
    for s in range(5000):
        last = device.reading(T0 + timedelta(seconds=s))["battery"]
    assert last < first


def test_tracker_moves_along_a_path_and_burns_fuel() -> None:
    device = VehicleTracker(random.Random(2))
    positions = [device.reading(T0 + timedelta(seconds=30 * s)) for s in range(60)]
    assert len({(p["latitude"], p["longitude"]) for p in positions}) == 60
    assert all(0 <= p["speed"] <= 200 for p in positions)
    assert positions[-1]["fuel"] < positions[0]["fuel"]


def test_mixed_fleets_hold_both_kinds() -> None:
    kinds = {profile_for("mixed", n, seed=1).kind for n in range(6)}
    assert kinds == {"thermostat", "tracker"}


def test_fault_rates_parse_and_refuse_nonsense() -> None:
    rates = FaultRates.parse("malformed=0.1, late=0.5")
    assert rates.malformed == 0.1 and rates.late == 0.5 and rates.duplicate == 0
    for bad in ("nonsense=0.1", "late=2", "late=x"):
        with pytest.raises(ValueError):  # noqa: PT011
            FaultRates.parse(bad)


def test_faults_happen_at_their_rates() -> None:
    injector = FaultInjector(FaultRates(malformed=0.2, duplicate=0.2), random.Random(3))
    sent = [
        m
        for _ in range(2000)
        for m in injector.mangle(Outgoing("devices/d/telemetry", b'{"metrics": {}}', 1))
    ]
    assert 300 < injector.injected["malformed"] < 500
    assert any(m.fault == "duplicate" for m in sent)
    assert all(m.payload != b'{"metrics": {}}' for m in sent if m.fault == "malformed")


class RecordingLink:
    """A connection that answers every publish after ``ack_seconds``; every ``refuse_every``-th
    answer carries a failure reason code, every ``raise_every``-th publish raises."""

    def __init__(self, ack_seconds: float = 0.0, refuse_every: int = 0, raise_every: int = 0):
        self.ack_seconds, self.refuse_every, self.raise_every = (
            ack_seconds,
            refuse_every,
            raise_every,
        )
        self.published: list[tuple[float, str]] = []
        self.refused = 0

    async def publish(self, topic: str, payload: bytes, qos: int) -> None:
        self.published.append((time.monotonic(), topic))
        n = len(self.published)
        if self.raise_every and n % self.raise_every == 0:
            raise aiomqtt.MqttError("not connected")
        await asyncio.sleep(self.ack_seconds)
        if self.refuse_every and n % self.refuse_every == 0:
            self.refused += 1


def fleet_config(**overrides: Any) -> SimulationConfig:
    return SimulationConfig(api_url="", api_token="", mqtt_url="mqtt://localhost", **overrides)


def run(config: SimulationConfig, links: list[RecordingLink], stop: threading.Event) -> Summary:
    devices = [
        SimulatedDevice(f"d{n}", f"d{n}", "pw", f"devices/d{n}/telemetry")
        for n in range(config.devices)
    ]
    profiles = [profile_for(config.profile, n, config.seed) for n in range(config.devices)]
    return asyncio.run(run_fleet(config, devices, profiles, links, stop))


def test_each_device_publishes_at_its_rate_with_phases_spread_over_the_period() -> None:
    links = [RecordingLink() for _ in range(20)]
    summary = run(fleet_config(devices=20, rate=5, duration=1.0), links, threading.Event())
    started = min(t for link in links for t, _ in link.published)
    firsts = sorted(link.published[0][0] - started for link in links)
    assert firsts[-1] - firsts[0] > 0.1  # spread over the 0.2 s period, not one burst
    assert all(5 <= len(link.published) <= 6 for link in links)
    assert {topic for _, topic in links[3].published} == {"devices/d3/telemetry"}
    assert summary.messages_sent == sum(len(link.published) for link in links)
    assert summary.messages_acked == summary.messages_sent and summary.failures == 0
    assert summary.readings_sent == summary.messages_sent and summary.publish_errors == 0


def test_load_mode_multiplexes_devices_over_fewer_connections() -> None:
    links = [RecordingLink(), RecordingLink()]
    summary = run(
        fleet_config(devices=6, rate=20, duration=None, count=60), links, threading.Event()
    )
    assert {topic for _, topic in links[0].published} == {
        "devices/d0/telemetry",
        "devices/d2/telemetry",
        "devices/d4/telemetry",
    }
    assert 60 <= summary.readings_sent < 60 + 6 and summary.failures == 0


def test_refused_and_failed_publishes_are_failures_not_acknowledgements() -> None:
    link = RecordingLink(refuse_every=4, raise_every=5)
    summary = run(
        fleet_config(devices=1, rate=200, duration=None, count=100), [link], threading.Event()
    )
    sent = summary.messages_sent
    raised, refused = sent // 5, link.refused
    assert refused > 0 and raised > 0
    assert summary.publish_errors == raised + refused
    assert summary.messages_acked == sent - raised - refused
    assert summary.failures == raised + refused


def test_stop_ends_the_run_but_lets_publishes_in_flight_be_answered() -> None:
    links = [RecordingLink(ack_seconds=0.4) for _ in range(4)]
    stop = threading.Event()
    threading.Timer(0.5, stop.set).start()
    began = time.monotonic()
    summary = run(fleet_config(devices=4, rate=10, duration=60.0), links, stop)
    assert time.monotonic() - began < 2
    assert summary.messages_sent > 0 and summary.failures == 0


def test_qos0_counts_what_was_written() -> None:
    link = RecordingLink(raise_every=3)
    summary = run(
        fleet_config(devices=1, rate=100, qos=0, duration=None, count=30), [link], threading.Event()
    )
    assert summary.messages_acked == summary.messages_sent - summary.messages_sent // 3
    assert summary.failures == summary.publish_errors == summary.messages_sent // 3


def test_too_many_connections_for_the_open_file_limit_is_one_clear_error() -> None:
    ensure_open_files(100)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY:
        with pytest.raises(ConfigurationError, match="--connections"):
            ensure_open_files(hard)
