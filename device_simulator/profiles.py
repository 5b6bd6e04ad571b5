"""Signal models of simulated devices: pure functions of time and a seeded random state."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

DAY_SECONDS = 86_400.0


class Profile(Protocol):
    kind: str
    metrics: list[dict[str, Any]]

    def reading(self, ts: datetime) -> dict[str, float]: ...


@dataclass
class Thermostat:
    """Temperature with a daily cycle, noise, slow drift and rare spikes; a draining battery."""

    rng: random.Random
    kind: str = "thermostat"
    metrics: list[dict[str, Any]] = field(
        default_factory=lambda: [
            {"name": "temperature", "unit": "C", "min": -20, "max": 45},
            {"name": "humidity", "unit": "%", "min": 0, "max": 100},
            {"name": "battery", "unit": "%", "min": 0, "max": 100},
        ]
    )
    base: float = 0.0
    drift: float = 0.0
    battery: float = 100.0

    def __post_init__(self) -> None:
        self.base = self.rng.uniform(17, 23)
        self.battery = self.rng.uniform(60, 100)

    def reading(self, ts: datetime) -> dict[str, float]:
        phase = 2 * math.pi * (ts.timestamp() % DAY_SECONDS) / DAY_SECONDS
        self.drift += self.rng.gauss(0, 0.002)
        temperature = self.base + 3 * math.sin(phase - math.pi / 2) + self.drift
        temperature += self.rng.gauss(0, 0.15)
        if self.rng.random() < 0.002:
            temperature += self.rng.choice((-1, 1)) * self.rng.uniform(5, 12)  # a spike
        humidity = 45 - 8 * math.sin(phase - math.pi / 2) + self.rng.gauss(0, 1)
        self.battery = max(0.0, self.battery - self.rng.uniform(0, 0.002))
        return {
            "temperature": round(temperature, 2),
            "humidity": round(min(100.0, max(0.0, humidity)), 1),
            "battery": round(self.battery, 3),
        }


@dataclass
class VehicleTracker:
    """A vehicle driving a loop around a depot: position, speed and fuel."""

    rng: random.Random
    kind: str = "tracker"
    metrics: list[dict[str, Any]] = field(
        default_factory=lambda: [
            {"name": "latitude", "unit": "deg", "min": -90, "max": 90},
            {"name": "longitude", "unit": "deg", "min": -180, "max": 180},
            {"name": "speed", "unit": "km/h", "min": 0, "max": 200},
            {"name": "fuel", "unit": "%", "min": 0, "max": 100},
        ]
    )
    depot: tuple[float, float] = (0.0, 0.0)
    radius_deg: float = 0.05
    lap_seconds: float = 1800.0
    fuel: float = 100.0
    last: datetime | None = None

    def __post_init__(self) -> None:
        self.depot = (self.rng.uniform(48, 54), self.rng.uniform(2, 12))
        self.radius_deg = self.rng.uniform(0.02, 0.1)
        self.lap_seconds = self.rng.uniform(900, 3600)
        self.fuel = self.rng.uniform(40, 100)

    def reading(self, ts: datetime) -> dict[str, float]:
        angle = 2 * math.pi * (ts.timestamp() % self.lap_seconds) / self.lap_seconds
        lat = self.depot[0] + self.radius_deg * math.sin(angle)
        lon = self.depot[1] + 1.5 * self.radius_deg * math.cos(angle)
        circumference_km = 2 * math.pi * self.radius_deg * 111
        speed = max(0.0, circumference_km / (self.lap_seconds / 3600) + self.rng.gauss(0, 3))
        elapsed = (ts - self.last).total_seconds() if self.last else 0.0
        self.last = ts
        self.fuel = max(0.0, self.fuel - speed * elapsed / 3600 * 0.05)
        if self.fuel < 5:
            self.fuel = 100.0  # refuelled
        return {
            "latitude": round(lat, 6),
            "longitude": round(lon, 6),
            "speed": round(speed, 1),
            "fuel": round(self.fuel, 2),
        }


PROFILES = {"thermostat": Thermostat, "tracker": VehicleTracker}


def profile_for(name: str, index: int, seed: int) -> Profile:
    """The profile of device ``index``: ``mixed`` alternates thermostats and trackers."""
    rng = random.Random(seed * 1_000_003 + index)
    if name == "mixed":
        name = "tracker" if index % 3 == 2 else "thermostat"
    factory: Any = PROFILES[name]
    profile: Profile = factory(rng)
    return profile
