"""Fault injection: turn good messages into the bad and odd ones real fleets send."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from typing import Any

FAULTS = (
    "malformed",
    "out_of_range",
    "unknown_device",
    "duplicate",
    "out_of_order",
    "late",
    "silence",
    "breach",
)


@dataclass(frozen=True)
class FaultRates:
    """Probability per message of each fault (silence and breach: per device and second)."""

    malformed: float = 0.0
    out_of_range: float = 0.0
    unknown_device: float = 0.0
    duplicate: float = 0.0
    out_of_order: float = 0.0
    late: float = 0.0
    silence: float = 0.0
    # A spell of 30-120 s in which one bounded metric of the device stays above its declared
    # range, then returns: long enough for the default alarm rule to raise and then clear.
    breach: float = 0.0

    @classmethod
    def parse(cls, text: str) -> FaultRates:
        """``"malformed=0.01,late=0.05"``; unnamed faults are off."""
        values: dict[str, float] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            name, _, rate = part.partition("=")
            if name not in FAULTS:
                raise ValueError(f"unknown fault {name!r}; known: {', '.join(FAULTS)}")
            number = float(rate)
            if not 0 <= number <= 1:
                raise ValueError(f"fault rate {name}={rate} is not between 0 and 1")
            values[name] = number
        return cls(**values)

    def any(self) -> bool:
        return any(getattr(self, f.name) for f in fields(self))


@dataclass
class Outgoing:
    topic: str  # an MQTT topic, or the path of the ingest HTTP endpoint
    payload: bytes
    readings: int
    fault: str | None = None
    device_id: str = ""  # the device the topic names (an unknown device takes its place)


class FaultInjector:
    def __init__(self, rates: FaultRates, rng: random.Random) -> None:
        self.rates, self.rng = rates, rng
        self.injected: Counter[str] = Counter()
        self.silent_until: dict[str, float] = {}
        self.breaching: dict[str, tuple[float, str]] = {}  # device -> (until, metric)

    def silent(self, device_id: str, now: float, interval: float) -> bool:
        """Whether the device is in a silent spell (and maybe start one)."""
        if self.silent_until.get(device_id, 0.0) > now:
            return True
        if self.rates.silence and self.rng.random() < self.rates.silence * interval:
            self.silent_until[device_id] = now + self.rng.uniform(30, 180)
            self.injected["silence"] += 1
            return True
        return False

    def hold_breach(
        self,
        device_id: str,
        now: float,
        interval: float,
        metrics: dict[str, float],
        declared: list[dict[str, Any]],
    ) -> str | None:
        """Hold a metric out of range while the device's breach spell lasts (maybe start one)."""
        spell = self.breaching.get(device_id)
        if spell is None or spell[0] <= now:
            self.breaching.pop(device_id, None)
            bounded = [m["name"] for m in declared if m.get("max") is not None]
            if not bounded or self.rng.random() >= self.rates.breach * interval:
                return None
            spell = (now + self.rng.uniform(30, 120), self.rng.choice(bounded))
            self.breaching[device_id] = spell
            self.injected["breach"] += 1
        spec = next(m for m in declared if m["name"] == spell[1])
        high, low = float(spec["max"]), float(spec.get("min") or 0.0)
        metrics[spell[1]] = high + max(abs(high - low) * 0.1, 1.0)
        return "breach"

    def shift_time(self, ts: datetime) -> tuple[datetime, str | None]:
        if self.rates.late and self.rng.random() < self.rates.late:
            self.injected["late"] += 1
            return ts - timedelta(seconds=self.rng.uniform(3600, 86_400)), "late"
        if self.rates.out_of_order and self.rng.random() < self.rates.out_of_order:
            self.injected["out_of_order"] += 1
            return ts - timedelta(seconds=self.rng.uniform(1, 60)), "out_of_order"
        return ts, None

    def distort(self, metrics: dict[str, float], declared: list[dict[str, Any]]) -> str | None:
        if self.rates.out_of_range and self.rng.random() < self.rates.out_of_range:
            spec = self.rng.choice([m for m in declared if m.get("max") is not None] or declared)
            metrics[spec["name"]] = float(spec.get("max", 0) or 0) * 2 + 100
            self.injected["out_of_range"] += 1
            return "out_of_range"
        return None

    def mangle(self, message: Outgoing) -> list[Outgoing]:
        """The messages actually sent for ``message``: one, two, or a broken one."""
        if self.rates.malformed and self.rng.random() < self.rates.malformed:
            self.injected["malformed"] += 1
            return [
                Outgoing(
                    message.topic,
                    message.payload[: len(message.payload) // 2] + b"}{",
                    0,
                    "malformed",
                    message.device_id,
                )
            ]
        if self.rates.unknown_device and self.rng.random() < self.rates.unknown_device:
            self.injected["unknown_device"] += 1
            ghost = f"ghost-{self.rng.randrange(10**6)}"
            if message.device_id:
                topic = message.topic.replace(message.device_id, ghost)
            else:
                topic = f"devices/{ghost}/telemetry"
            return [Outgoing(topic, message.payload, 0, "unknown_device", ghost)]
        if self.rates.duplicate and self.rng.random() < self.rates.duplicate:
            self.injected["duplicate"] += 1
            copy = Outgoing(message.topic, message.payload, 0, "duplicate", message.device_id)
            return [message, copy]
        return [message]
