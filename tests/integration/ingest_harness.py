"""Running `iotp ingest` for real, publishing to it, and reading what it wrote."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt
import psycopg
import redis
from paho.mqtt.enums import CallbackAPIVersion

from iotp.events import TelemetryRecorded, from_fields
from iotp.mqtt_url import parse_mqtt_url
from iotp.names import TELEMETRY_DEADLETTER_STREAM, TELEMETRY_EVENTS_STREAM
from iotp.settings import Settings
from tests.conftest import wait_for
from tests.integration.api_helpers import AUTH, running_api

ReadingKey = tuple[str, str, datetime]


def ingest_env(settings: Settings, mqtt_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IOTP_")}
    env.update(
        IOTP_DATABASE_URL=settings.database_url,
        IOTP_REDIS_URL=settings.redis_url,
        IOTP_MQTT_URL=mqtt_url,
        IOTP_INGEST_METRICS_PORT="0",
        IOTP_LOG_LEVEL="INFO",
    )
    env.update({f"IOTP_{k.upper()}": v for k, v in extra.items()})
    return env


class IngestProcess:
    """`iotp ingest` in a child process, its log in a file for the test's eyes."""

    def __init__(self, env: dict[str, str], log: Path, instance: str = "0") -> None:
        self.env, self.log, self.instance = env, log, instance
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> IngestProcess:
        handle = self.log.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cli", "ingest", "--instance", self.instance],
            env=self.env,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
        before = self.log.read_text().count("subscribed to")
        wait_for(
            lambda: self._alive() and self.log.read_text().count("subscribed to") > before,
            timeout=30,
        )
        return self

    def _alive(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(
                f"ingest exited {self.process.returncode}:\n{self.log.read_text()}"
            )
        return True

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise AssertionError(f"ingest ignored SIGTERM:\n{self.log.read_text()}") from None


def publish(
    mqtt_url: str,
    messages: Iterable[tuple[str, bytes]],
    qos: int = 1,
    stop: threading.Event | None = None,
) -> int:
    """Publish and wait for the broker's acknowledgement of each; how many were published."""
    broker = parse_mqtt_url(mqtt_url)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(200)
    client.max_queued_messages_set(0)
    client.connect(broker.host, broker.port)
    client.loop_start()
    sent = []
    try:
        for topic, payload in messages:
            if stop is not None and stop.is_set():
                break
            sent.append(client.publish(topic, payload, qos=qos))
        for info in sent:
            info.wait_for_publish(timeout=30)
            assert info.is_published()
    finally:
        client.disconnect()
        client.loop_stop()
    return len(sent)


def stored(db: psycopg.Connection[Any]) -> Counter[ReadingKey]:
    rows = db.execute("SELECT device_id, metric, ts FROM telemetry").fetchall()
    return Counter((d, m, ts) for d, m, ts in rows)


def stored_count(db: psycopg.Connection[Any]) -> int:
    row = db.execute("SELECT count(*) FROM telemetry").fetchone()
    return int(row[0]) if row else 0


def telemetry_events(client: redis.Redis) -> list[TelemetryRecorded]:
    events = []
    for _, fields in client.xrange(TELEMETRY_EVENTS_STREAM):  # type: ignore[union-attr]
        event = from_fields(fields)
        assert isinstance(event, TelemetryRecorded)
        events.append(event)
    return events


def event_readings(events: Iterable[TelemetryRecorded]) -> Counter[ReadingKey]:
    return Counter(
        (event.device_id, metric, reading.ts)
        for event in events
        for reading in event.readings
        for metric in reading.metrics
    )


def deadletters(client: redis.Redis) -> list[dict[str, str]]:
    return [fields for _, fields in client.xrange(TELEMETRY_DEADLETTER_STREAM)]  # type: ignore[union-attr]


BASE = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
METRICS = [
    {"name": "temp", "min": -40, "max": 60},
    {"name": "hum", "min": 0, "max": 100},
    {"name": "bat"},
]


@dataclass
class Platform:
    settings: Settings
    mqtt_url: str
    db: psycopg.Connection[Any]
    redis: redis.Redis
    tmp: Path
    children: list[Any] = field(default_factory=list)

    def ingest(self, instance: str = "0", **extra: str) -> IngestProcess:
        env = ingest_env(self.settings, self.mqtt_url, **extra)
        process = IngestProcess(env, self.tmp / f"ingest-{instance}.log", instance)
        self.children.append(process)
        return process.start()

    def stop_children(self) -> None:
        """Stop whatever a test started, even when it failed half-way."""
        for child in self.children:
            process = getattr(child, "process", None)
            if process is not None and process.poll() is None:
                process.kill()
                process.wait(timeout=10)

    def register(self, *device_ids: str, metrics: list[dict[str, Any]] | None = None) -> None:
        with running_api(self.settings) as client:
            for device_id in device_ids:
                body = {
                    "device_id": device_id,
                    "name": device_id,
                    "kind": "sensor",
                    "metrics": METRICS if metrics is None else metrics,
                }
                assert client.post("/devices", json=body, headers=AUTH).status_code == 201
            wait_for(
                lambda: (
                    self.db.execute("SELECT count(*) FROM outbox WHERE sent_at IS NULL").fetchone()
                    == (0,)
                )
            )


def reading(i: int, *, temp: float | None = None) -> dict[str, Any]:
    return {
        "ts": (BASE + timedelta(seconds=i)).isoformat(),
        "metrics": {"temp": 20.0 + i % 10 if temp is None else temp, "hum": 50.0, "bat": 99.0},
    }


def single_messages(device: str, start: int, count: int) -> list[tuple[str, bytes]]:
    return [
        (f"devices/{device}/telemetry", orjson.dumps(reading(i)))
        for i in range(start, start + count)
    ]


def batched_messages(device: str, start: int, count: int, per: int) -> list[tuple[str, bytes]]:
    return [
        (
            f"devices/{device}/telemetry",
            orjson.dumps([reading(i) for i in range(first, min(first + per, start + count))]),
        )
        for first in range(start, start + count, per)
    ]


def expected_keys(device: str, start: int, count: int) -> set[tuple[str, str, datetime]]:
    return {
        (device, metric, BASE + timedelta(seconds=i))
        for i in range(start, start + count)
        for metric in ("temp", "hum", "bat")
    }


def wait_stored(platform: Platform, rows: int, timeout: float = 60) -> None:
    wait_for(lambda: stored_count(platform.db) >= rows, timeout=timeout)
