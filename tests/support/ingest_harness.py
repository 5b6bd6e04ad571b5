"""Publishing readings to `iotp ingest` for real, and reading what it wrote."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import orjson
import paho.mqtt.client as mqtt
import psycopg
import redis
from paho.mqtt.enums import CallbackAPIVersion

from iotp.event_shards import telemetry_streams
from iotp.events import TelemetryRecorded, from_fields
from iotp.mqtt_url import parse_mqtt_url
from iotp.names import TELEMETRY_DEADLETTER_STREAM
from tests.support.waiting import wait_for

if TYPE_CHECKING:
    from tests.support.platform import Platform

ReadingKey = tuple[str, str, datetime]


def publish(
    mqtt_url: str,
    messages: Iterable[tuple[str, bytes]],
    qos: int = 1,
    stop: threading.Event | None = None,
    protocol: mqtt.MQTTProtocolVersion = mqtt.MQTTv5,
) -> int:
    """Publish and wait for the broker's acknowledgement of each; how many were published."""
    broker = parse_mqtt_url(mqtt_url)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=protocol)
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


def telemetry_events(client: redis.Redis, shards: int = 1) -> list[TelemetryRecorded]:
    """Every TelemetryRecorded on the telemetry stream (on each of its ``shards``)."""
    events = []
    for stream in telemetry_streams(shards):
        for _, fields in client.xrange(stream):  # type: ignore[union-attr]
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
