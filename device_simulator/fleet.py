"""Publishing a registered fleet: every device on its own schedule, in one asyncio process.

Pacing: device n publishes first at a random phase within one period (batch / rate), then
every period, so that the fleet's load is spread evenly over the period rather than arriving
in bursts; a device whose acknowledgement came late catches up at once. Each device awaits
the broker's answer to a message before it sends the next, as a device with QoS 1 does.

Counting: a message is sent when its publish starts; acknowledged when the publish returned
(QoS 1: a PUBACK came) and the PUBACK carried no failure reason code; an error when the
publish raised or was refused. When the run ends every publish has returned or raised, so
``sent - acknowledged`` is exactly what failed or was not acknowledged.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

import aiomqtt
import httpx

from device_simulator.faults import FaultInjector, Outgoing
from device_simulator.profiles import Profile
from device_simulator.registration import SimulatedDevice
from device_simulator.wire_formats import Sample, Wire, encode
from iotp.errors import first_line

logger = logging.getLogger(__name__)

PROGRESS_SECONDS = 0.5
STOP_POLL_SECONDS = 0.1
IOTP_OVER_MQTT = Wire()


class Publisher(Protocol):
    """A connection devices publish on (connections.Link, http_links.HttpLink)."""

    @property
    def refused(self) -> int:
        """Publishes the broker answered with a failure reason code."""
        ...

    async def publish(self, topic: str, payload: bytes, qos: int) -> None: ...


@dataclass(frozen=True)
class Schedule:
    """When devices publish, and when the run ends."""

    period: float  # seconds between one device's messages: batch / rate
    batch: int  # readings per message
    qos: int
    duration: float | None  # seconds after the start; None: until count or stop
    count: int | None  # readings; the run ends once this many were sent


@dataclass
class Tally:
    """What the fleet sent so far and what came of it."""

    sent: int = 0
    readings: int = 0
    returned: int = 0  # publishes that returned (QoS 1: a PUBACK came)
    raised: int = 0  # publishes that raised: not sent, no connection, no PUBACK in time

    def acknowledged(self, links: Sequence[Publisher], qos: int) -> int:
        return self.returned - (self.refused(links) if qos > 0 else 0)

    def errors(self, links: Sequence[Publisher]) -> int:
        return self.raised + self.refused(links)

    @staticmethod
    def refused(links: Sequence[Publisher]) -> int:
        return sum(link.refused for link in links)


class Fleet:
    """The devices, the links they publish on, and the run's schedule and tally."""

    def __init__(
        self,
        devices: Sequence[SimulatedDevice],
        profiles: Sequence[Profile],
        links: Sequence[Publisher],
        schedule: Schedule,
        injector: FaultInjector,
        rng: random.Random,
        wire: Wire = IOTP_OVER_MQTT,
    ) -> None:
        self.devices, self.profiles, self.links = devices, profiles, links
        self.schedule, self.injector, self.wire = schedule, injector, wire
        # Drawn up front, in device order, so that a seed gives the same phases every run.
        self.phases = [rng.uniform(0, schedule.period) for _ in devices]
        self.tally = Tally()
        self.started = time.monotonic()
        self.halted = False
        self._sleeping: set[asyncio.Task[None]] = set()
        self._errors_logged = 0

    async def run(
        self, stop: threading.Event, on_progress: Callable[[Fleet], None] | None = None
    ) -> None:
        """Publish until the duration or count is reached or ``stop`` is set; returns when
        every publish has been answered or has failed."""
        self.started = time.monotonic()
        watcher = asyncio.create_task(self._watch(stop, on_progress))
        try:
            async with asyncio.TaskGroup() as group:
                for index in range(len(self.devices)):
                    group.create_task(self._device(index))
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)

    def halt(self) -> None:
        """End the run: sleeping devices stop now, publishing ones after their answer."""
        self.halted = True
        for task in self._sleeping:
            task.cancel()

    async def _watch(
        self, stop: threading.Event, on_progress: Callable[[Fleet], None] | None
    ) -> None:
        # The stop event is set by a signal handler, outside the event loop: poll it.
        last_progress = time.monotonic()
        while not stop.is_set():
            await asyncio.sleep(STOP_POLL_SECONDS)
            if on_progress is not None and time.monotonic() - last_progress >= PROGRESS_SECONDS:
                last_progress = time.monotonic()
                on_progress(self)
        self.halt()

    async def _device(self, index: int) -> None:
        device, profile = self.devices[index], self.profiles[index]
        link = self.links[index % len(self.links)]
        schedule = self.schedule
        due = self.started + self.phases[index]
        while not self.halted:
            if schedule.duration is not None and due - self.started > schedule.duration:
                return
            await self._sleep_until(due)
            due += schedule.period
            if self.halted or self.injector.silent(
                device.device_id, time.monotonic(), schedule.period
            ):
                continue
            if schedule.count is not None and self.tally.readings >= schedule.count:
                self.halt()
                return
            for message in messages(device, profile, schedule, self.injector, self.wire):
                await self._send(link, message)

    async def _sleep_until(self, due: float) -> None:
        delay = due - time.monotonic()
        if delay <= 0:
            return
        task = asyncio.current_task()
        assert task is not None
        # halt() cancels a sleeping device only, never one awaiting a PUBACK; the cancelled
        # task simply ends (the task group ignores children cancelled this way).
        self._sleeping.add(task)
        try:
            await asyncio.sleep(delay)
        finally:
            self._sleeping.discard(task)

    async def _send(self, link: Publisher, message: Outgoing) -> None:
        self.tally.sent += 1
        self.tally.readings += message.readings
        try:
            await link.publish(message.topic, message.payload, self.schedule.qos)
        except (aiomqtt.MqttError, httpx.HTTPError) as exc:
            self.tally.raised += 1
            if self._errors_logged < 3:  # counted in the summary; a few are enough to read
                self._errors_logged += 1
                logger.warning("publish on %s failed: %s", message.topic, first_line(exc))
        else:
            self.tally.returned += 1


def messages(
    device: SimulatedDevice,
    profile: Profile,
    schedule: Schedule,
    injector: FaultInjector,
    wire: Wire = IOTP_OVER_MQTT,
) -> list[Outgoing]:
    """What ``device`` sends now: ``batch`` readings in the wire's format, as faults shape
    them (one message, or one per reading or per metric where the format says so)."""
    now = datetime.now(UTC)
    step = timedelta(seconds=schedule.period / schedule.batch)
    samples: list[Sample] = []
    faults = []
    for k in range(schedule.batch):
        ts, fault = injector.shift_time(now - step * (schedule.batch - 1 - k))
        metrics = profile.reading(ts)
        distorted = injector.distort(metrics, profile.metrics)
        if injector.rates.breach:
            held = injector.hold_breach(
                device.device_id, now.timestamp(), step.total_seconds(), metrics, profile.metrics
            )
            distorted = distorted or held
        faults += [f for f in (fault, distorted) if f]
        samples.append((ts, metrics))
    names = [str(m["name"]) for m in profile.metrics]
    sent: list[Outgoing] = []
    for n, encoded in enumerate(encode(wire.payload_format, device.device_id, samples, names)):
        fault = faults[0] if faults and n == 0 else None
        destination = wire.destination(device.device_id, encoded)
        message = Outgoing(destination, encoded.payload, encoded.readings, fault, device.device_id)
        sent += injector.mangle(message)
    return sent
