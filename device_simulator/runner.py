"""Running a simulation: schedule readings, inject faults, publish, count acknowledgements."""

from __future__ import annotations

import heapq
import random
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from device_simulator.faults import FaultInjector, FaultRates, Outgoing
from device_simulator.profiles import Profile, profile_for
from device_simulator.registration import SimulatedDevice, api_client, register
from iotp.mqtt_url import BrokerAddress, parse_mqtt_url

ACK_WAIT_SECONDS = 30.0


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


class Connections:
    """The MQTT clients, and the count of messages the broker acknowledged."""

    def __init__(
        self,
        broker: BrokerAddress,
        devices: list[SimulatedDevice],
        per_device: bool,
        count: int | None,
        qos: int,
        protocol: str = "5",
    ) -> None:
        self.acked = 0
        self._lock = threading.Lock()
        groups = len(devices) if per_device else max(1, min(count or 1, len(devices)))
        self.clients: list[mqtt.Client] = []
        for index in range(groups):
            identity = devices[index]
            client = mqtt.Client(
                CallbackAPIVersion.VERSION2,
                client_id=f"iotp-sim-{identity.device_id}",
                protocol=mqtt.MQTTv5 if protocol == "5" else mqtt.MQTTv311,
            )
            client.username_pw_set(identity.username, identity.password)
            client.max_inflight_messages_set(1000)
            client.max_queued_messages_set(0)
            client.on_publish = self._on_publish
            if broker.tls:
                client.tls_set()
            client.connect(broker.host, broker.port, keepalive=30)
            client.loop_start()
            self.clients.append(client)
        self.qos = qos

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, properties: Any
    ) -> None:
        with self._lock:
            self.acked += 1

    def publish(self, device_index: int, message: Outgoing) -> bool:
        client = self.clients[device_index % len(self.clients)]
        info = client.publish(message.topic, message.payload, qos=self.qos)
        return info.rc == mqtt.MQTT_ERR_SUCCESS

    def close(self) -> None:
        for client in self.clients:
            client.disconnect()
            client.loop_stop()


def run_simulation(
    config: SimulationConfig,
    stop: threading.Event,
    on_progress: Callable[[Summary], None] | None = None,
) -> Summary:
    rng = random.Random(config.seed)
    profiles: list[Profile] = [
        profile_for(config.profile, n, config.seed) for n in range(config.devices)
    ]
    with api_client(config.api_url, config.api_token) as api:
        devices = [
            register(api, f"{config.prefix}-{n:05d}", p.kind, p.metrics)
            for n, p in enumerate(profiles)
        ]
    summary = Summary(devices=len(devices))
    injector = FaultInjector(config.faults, rng)
    connections = Connections(
        parse_mqtt_url(config.mqtt_url),
        devices,
        config.connections is None,
        config.connections,
        config.qos,
        config.protocol,
    )
    period = config.batch / config.rate
    started = time.monotonic()
    queue = [(started + rng.uniform(0, period), n) for n in range(len(devices))]
    heapq.heapify(queue)
    last_progress = 0.0
    try:
        while queue and not stop.is_set():
            due, index = heapq.heappop(queue)
            if config.duration is not None and due - started > config.duration:
                break
            if config.count is not None and summary.readings_sent >= config.count:
                break
            delay = due - time.monotonic()
            if delay > 0:
                stop.wait(delay)
            heapq.heappush(queue, (due + period, index))
            if injector.silent(devices[index].device_id, time.monotonic(), period):
                continue
            for message in _messages(devices[index], profiles[index], config, injector):
                summary.messages_sent += 1
                summary.readings_sent += message.readings
                if not connections.publish(index, message):
                    summary.publish_errors += 1
            if on_progress and time.monotonic() - last_progress > 0.5:
                last_progress = time.monotonic()
                _update(summary, connections, config, started, injector)
                on_progress(summary)
        deadline = time.monotonic() + ACK_WAIT_SECONDS
        while (
            config.qos > 0
            and connections.acked < summary.messages_sent
            and time.monotonic() < deadline
        ):
            time.sleep(0.05)
    finally:
        _update(summary, connections, config, started, injector)
        connections.close()
    summary.failures = summary.publish_errors + max(
        0, summary.messages_sent - summary.messages_acked
    )
    if on_progress:
        on_progress(summary)
    return summary


def _update(
    summary: Summary,
    connections: Connections,
    config: SimulationConfig,
    started: float,
    injector: FaultInjector,
) -> None:
    summary.messages_acked = (
        connections.acked if config.qos > 0 else summary.messages_sent - summary.publish_errors
    )
    summary.seconds = round(time.monotonic() - started, 3)
    if summary.seconds:
        summary.messages_per_s = round(summary.messages_sent / summary.seconds, 1)
        summary.readings_per_s = round(summary.readings_sent / summary.seconds, 1)
    summary.faults = dict(injector.injected)


def _messages(
    device: SimulatedDevice, profile: Profile, config: SimulationConfig, injector: FaultInjector
) -> list[Outgoing]:
    now = datetime.now(UTC)
    step = timedelta(seconds=1 / config.rate)
    readings = []
    faults = []
    for k in range(config.batch):
        ts, fault = injector.shift_time(now - step * (config.batch - 1 - k))
        metrics = profile.reading(ts)
        distorted = injector.distort(metrics, profile.metrics)
        faults += [f for f in (fault, distorted) if f]
        readings.append({"ts": ts.isoformat(), "metrics": metrics})
    payload = orjson.dumps(readings[0] if config.batch == 1 else readings)
    return injector.mangle(
        Outgoing(device.topic, payload, len(readings), faults[0] if faults else None)
    )
