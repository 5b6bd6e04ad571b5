"""Simulator signal models and fault injection: pure logic."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from device_simulator.faults import FaultInjector, FaultRates, Outgoing
from device_simulator.profiles import Thermostat, VehicleTracker, profile_for

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
