"""Running a simulation: register the devices, connect them, publish, count acknowledgements.

Every device connects with its own credentials on its own MQTT connection, all of them in
one asyncio process; ``connections`` multiplexes the devices over fewer connections, as an
explicit load mode. The summary's ``failures`` counts every message that failed or that the
broker did not acknowledge (QoS 1), so a run with ``failures == 0`` lost nothing on the way
to the broker.
"""

from __future__ import annotations

import asyncio
import random
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx

from device_simulator.connections import Link, close_links, ensure_open_files, open_links
from device_simulator.faults import FaultInjector, FaultRates
from device_simulator.fleet import STOP_POLL_SECONDS, Fleet, Publisher, Schedule
from device_simulator.http_links import http_links
from device_simulator.profiles import Profile, profile_for
from device_simulator.registration import (
    SimulatedDevice,
    api_client,
    ensure_offline_rule,
    ensure_profile,
    register,
)
from device_simulator.wire_formats import Wire, profile_for_format
from iotp.device_profiles import BUILTIN_PROFILE, DeviceProfile
from iotp.mqtt_url import parse_mqtt_url


@dataclass(frozen=True)
class SimulationConfig:
    api_url: str
    api_token: str
    mqtt_url: str
    devices: int = 10
    rate: float = 1.0  # readings per second per device
    duration: float | None = 60.0
    count: int | None = None  # total readings; stops the run when reached
    profile: str = "mixed"
    batch: int = 1  # readings per message
    qos: int = 1
    connections: int | None = None  # None: one connection per device
    seed: int = 42
    prefix: str = "sim"
    faults: FaultRates = field(default_factory=FaultRates)
    protocol: str = "5"  # "3.1.1" for brokers without MQTT v5
    # mqtts:// URLs: the verified TLS context (iotp.mqtt_url.tls_context); None there means
    # the system's CAs.
    tls: ssl.SSLContext | None = None
    payload_format: str = "iotp"  # iotp, senml+json, json-map or plain (wire_formats)
    transport: str = "mqtt"  # or http: ingest's HTTP endpoint at http_url
    http_url: str = ""

    def __post_init__(self) -> None:
        if self.profile not in ("thermostat", "tracker", "mixed"):
            raise ValueError("profile must be thermostat, tracker or mixed")
        Wire(self.payload_format, self.transport)  # refuses an unknown format or transport
        if self.payload_format == "plain" and self.batch > 1:
            raise ValueError("plain values carry no time: --batch must be 1 with --format plain")
        if self.payload_format == "json-map" and self.rate > 1:
            # Two readings of a device in one second would share a time: one would be lost.
            raise ValueError("Tasmota's Time has whole seconds: --rate must be at most 1")
        if self.transport == "http" and not self.http_url:
            raise ValueError(
                "--transport http needs ingest's HTTP endpoint: --http-url, or"
                " IOTP_INGEST_HTTP_PORT (0: off)"
            )
        if self.qos not in (0, 1) or self.batch < 1 or self.devices < 1 or self.rate <= 0:
            raise ValueError("need qos 0 or 1, batch >= 1, devices >= 1, rate > 0")
        if self.connections is not None and self.connections < 1:
            raise ValueError("--connections must be at least 1")

    @property
    def wire(self) -> Wire:
        return Wire(self.payload_format, self.transport)


@dataclass
class Summary:
    devices: int
    messages_sent: int = 0
    messages_acked: int = 0
    readings_sent: int = 0
    publish_errors: int = 0
    failures: int = 0
    seconds: float = 0.0
    messages_per_s: float = 0.0
    readings_per_s: float = 0.0
    faults: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_simulation(
    config: SimulationConfig,
    stop: threading.Event,
    on_progress: Callable[[Summary], None] | None = None,
) -> Summary:
    """Register the fleet through the command API, then publish until the run ends."""
    profiles: list[Profile] = [
        profile_for(config.profile, n, config.seed) for n in range(config.devices)
    ]
    if config.transport == "mqtt":
        ensure_open_files(config.connections or config.devices)
    devices: list[SimulatedDevice] = []
    with api_client(config.api_url, config.api_token) as api:
        speaks = _device_profiles(api, config.payload_format, profiles)
        for n, profile in enumerate(profiles):
            if stop.is_set():  # a large fleet takes a while to register: stop means now
                return Summary(devices=len(devices))
            device_id = f"{config.prefix}-{n:05d}"
            kind, metrics = profile.kind, profile.metrics
            devices.append(register(api, device_id, kind, metrics, speaks[kind]))
        if config.faults.silence:
            for kind in sorted({profile.kind for profile in profiles}):
                ensure_offline_rule(api, kind)
    return asyncio.run(publish_fleet(config, devices, profiles, stop, on_progress))


async def publish_fleet(
    config: SimulationConfig,
    devices: list[SimulatedDevice],
    profiles: list[Profile],
    stop: threading.Event,
    on_progress: Callable[[Summary], None] | None = None,
) -> Summary:
    """Connect registered devices, publish their readings, disconnect; the run's summary."""
    if config.transport == "http":
        async with http_links(devices, config.http_url) as posting:
            return await run_fleet(config, devices, profiles, posting, stop, on_progress)
    links = await _connected(config, devices, stop)
    try:
        return await run_fleet(config, devices, profiles, links, stop, on_progress)
    finally:
        await close_links(links)


async def run_fleet(
    config: SimulationConfig,
    devices: Sequence[SimulatedDevice],
    profiles: Sequence[Profile],
    links: Sequence[Publisher],
    stop: threading.Event,
    on_progress: Callable[[Summary], None] | None = None,
) -> Summary:
    """Publish on open ``links`` (device n on link n mod len) until the run ends."""
    rng = random.Random(config.seed)
    schedule = Schedule(
        config.batch / config.rate, config.batch, config.qos, config.duration, config.count
    )
    injector = FaultInjector(config.faults, rng)
    fleet = Fleet(devices, profiles, links, schedule, injector, rng, config.wire)

    def progress(running: Fleet) -> None:
        if on_progress is not None:
            on_progress(_summary(running))

    if links:
        await fleet.run(stop, progress)
    summary = _summary(fleet)
    summary.failures = summary.messages_sent - summary.messages_acked
    if on_progress is not None:
        on_progress(summary)
    return summary


async def _connected(
    config: SimulationConfig, devices: list[SimulatedDevice], stop: threading.Event
) -> list[Link]:
    """The fleet's open connections; none when ``stop`` was set while they were opening."""
    broker = parse_mqtt_url(config.mqtt_url)
    tls = None
    if broker.tls:
        tls = config.tls if config.tls is not None else ssl.create_default_context()
    wanted = min(config.connections or len(devices), len(devices))
    per_link = -(-len(devices) // wanted)
    opening = asyncio.create_task(
        open_links(devices[:wanted], broker, tls, config.protocol, per_link)
    )
    while not opening.done():
        # The stop event is set by a signal handler, outside the event loop: poll it.
        await asyncio.wait({opening}, timeout=STOP_POLL_SECONDS)
        if stop.is_set():
            opening.cancel()
    try:
        return opening.result()
    except asyncio.CancelledError:
        return []


def _device_profiles(
    api: httpx.Client, payload_format: str, profiles: Sequence[Profile]
) -> dict[str, DeviceProfile]:
    """The profile each kind of device speaks ``payload_format`` in, saved on the API."""
    speaks = {}
    for profile in profiles:
        if profile.kind not in speaks:
            wanted = profile_for_format(payload_format, profile.kind, profile.metrics)
            if wanted is not None:
                ensure_profile(api, wanted)
            speaks[profile.kind] = wanted or BUILTIN_PROFILE
    return speaks


def _summary(fleet: Fleet) -> Summary:
    tally, qos = fleet.tally, fleet.schedule.qos
    seconds = round(time.monotonic() - fleet.started, 3)
    return Summary(
        devices=len(fleet.devices),
        messages_sent=tally.sent,
        messages_acked=tally.acknowledged(fleet.links, qos),
        readings_sent=tally.readings,
        publish_errors=tally.errors(fleet.links),
        seconds=seconds,
        messages_per_s=round(tally.sent / seconds, 1) if seconds else 0.0,
        readings_per_s=round(tally.readings / seconds, 1) if seconds else 0.0,
        faults=dict(fleet.injector.injected),
    )
