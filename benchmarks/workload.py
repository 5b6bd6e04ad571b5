"""A fixed, seeded telemetry workload, and publisher processes that send it at full speed."""

from __future__ import annotations

import multiprocessing
import random
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from iotp.mqtt_url import parse_mqtt_url
from iotp.names import telemetry_topic

METRICS = ("temperature", "humidity", "battery")
DECLARED = [
    {"name": "temperature", "unit": "C", "min": -40, "max": 85},
    {"name": "humidity", "unit": "%", "min": 0, "max": 100},
    {"name": "battery", "unit": "%", "min": 0, "max": 100},
]
Message = tuple[str, bytes]


@dataclass(frozen=True)
class Workload:
    devices: int
    readings: int  # timestamped readings in all, each of len(METRICS) data points
    per_message: int  # readings per MQTT message (1: one reading per message)
    seed: int = 7

    @property
    def data_points(self) -> int:
        return self.readings * len(METRICS)

    @property
    def messages(self) -> int:
        per_device = self.readings // self.devices
        return self.devices * -(-per_device // self.per_message)

    def device_ids(self) -> list[str]:
        return [f"bench-{n:05d}" for n in range(self.devices)]


def build_messages(workload: Workload, part: int, parts: int) -> list[Message]:
    """The messages of devices ``part::parts``: the same bytes for the same seed."""
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=6)
    per_device = workload.readings // workload.devices
    messages: list[Message] = []
    for index, device_id in enumerate(workload.device_ids()):
        if index % parts != part:
            continue
        rng = random.Random(workload.seed * 1_000_003 + index)
        topic = telemetry_topic(device_id)
        readings = [
            {
                "ts": int((start + timedelta(milliseconds=250 * i)).timestamp() * 1000),
                "metrics": {
                    "temperature": round(rng.gauss(21, 3), 2),
                    "humidity": round(rng.uniform(30, 60), 1),
                    "battery": round(100 - i * 0.001, 3),
                },
            }
            for i in range(per_device)
        ]
        if workload.per_message == 1:
            messages += [(topic, orjson.dumps(r)) for r in readings]
        else:
            messages += [
                (topic, orjson.dumps(readings[i : i + workload.per_message]))
                for i in range(0, per_device, workload.per_message)
            ]
    # Interleave devices the way a fleet publishes, not one device after another.
    random.Random(workload.seed).shuffle(messages)
    return messages


@dataclass(frozen=True)
class PublishResult:
    messages: int
    seconds: float
    cpu_seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds else 0.0


PUBLISH_WINDOW = 30_000
# paho walks its list of in-flight messages on every PUBACK, looking for a queued one to send
# (Client._update_inflight): with 1,000 in flight a publisher spent twice the CPU a message
# and sent half as many (docs/benchmarks.md, issue 14's third session).
PUBLISH_INFLIGHT = 100


def _acknowledged(info: mqtt.MQTTMessageInfo) -> None:
    info.wait_for_publish(timeout=120)
    if not info.is_published():
        raise RuntimeError("the broker did not acknowledge a message within 120 s")


def _publish_part(mqtt_url: str, workload: Workload, part: int, parts: int) -> PublishResult:
    messages = build_messages(workload, part, parts)
    cpu_started = time.process_time()
    broker = parse_mqtt_url(mqtt_url)
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"iotp-bench-pub-{part}", protocol=mqtt.MQTTv5
    )
    client.max_inflight_messages_set(PUBLISH_INFLIGHT)
    client.max_queued_messages_set(0)
    client.connect(broker.host, broker.port)
    client.loop_start()
    started = time.perf_counter()
    # paho numbers the messages it holds with 16-bit ids: past 65,535 unacknowledged ones it
    # refuses more (ERR_QUEUE_SIZE), so at most PUBLISH_WINDOW wait for their PUBACK at once.
    waiting: deque[mqtt.MQTTMessageInfo] = deque()
    for topic, payload in messages:
        if len(waiting) >= PUBLISH_WINDOW:
            _acknowledged(waiting.popleft())
        waiting.append(client.publish(topic, payload, qos=1))
    for info in waiting:
        _acknowledged(info)
    elapsed = time.perf_counter() - started
    client.disconnect()
    client.loop_stop()
    return PublishResult(len(messages), elapsed, time.process_time() - cpu_started)


def publish_all(mqtt_url: str, workload: Workload, processes: int) -> PublishResult:
    """Publish the whole workload from ``processes`` processes; waits for every PUBACK."""
    context = multiprocessing.get_context("fork")
    started = time.perf_counter()
    with context.Pool(processes) as pool:
        results = pool.starmap(
            _publish_part, [(mqtt_url, workload, part, processes) for part in range(processes)]
        )
    return combine(results, time.perf_counter() - started)


def combine(results: list[PublishResult], seconds: float) -> PublishResult:
    return PublishResult(
        sum(r.messages for r in results), seconds, sum(r.cpu_seconds for r in results)
    )


def start_publishers(
    mqtt_url: str, workload: Workload, processes: int
) -> multiprocessing.pool.AsyncResult[list[PublishResult]]:
    """Publish in the background; ``.get()`` the per-process results."""
    context = multiprocessing.get_context("fork")
    pool = context.Pool(processes)
    result = pool.starmap_async(
        _publish_part, [(mqtt_url, workload, part, processes) for part in range(processes)]
    )
    pool.close()
    return result
