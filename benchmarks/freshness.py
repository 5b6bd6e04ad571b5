"""`iotp bench freshness`: time from publish to the reading being visible in the read models."""

from __future__ import annotations

import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion

from benchmarks.ingest import bench_settings, cpu_ms_per_1k_readings
from benchmarks.platform import STOP_GRACE_SECONDS, start_aggregator, start_ingest
from benchmarks.processes import CpuMeter
from benchmarks.stores import register, reset
from iotp.mqtt_url import parse_mqtt_url
from iotp.names import telemetry_topic
from iotp.processes import stop_all
from iotp.settings import Settings
from local_platform.broker import local_mosquitto

POLL_SECONDS = 0.01


def run_freshness_bench(
    settings: Settings, rate: float, seconds: float, devices: int
) -> dict[str, Any]:
    """Publish ``rate`` readings/s for ``seconds``; poll the read models for each one.

    Also the CPU ingest and the aggregator used while the readings were published: what
    the freshness costs (the lingers and gathers trade one for the other).
    """
    settings = bench_settings(settings)
    ids = [f"fresh-{n:04d}" for n in range(devices)]
    reset(settings)
    register(settings, ids, "counter", [])
    published: dict[tuple[str, int], float] = {}
    seen: dict[tuple[str, int], float] = {}
    with (
        tempfile.TemporaryDirectory(prefix="iotp-bench-") as tmp,
        local_mosquitto(Path(tmp) / "broker") as broker,
    ):
        children = [start_ingest(settings, broker.url, Path(tmp) / "ingest.log")]
        done = threading.Event()
        poller = threading.Thread(target=_poll, args=(settings, published, seen, done))
        try:
            children.append(
                start_aggregator(settings, Path(tmp) / "aggregate.log", aggregator_block_ms="20")
            )
            poller.start()
            meter = CpuMeter()
            meter.add("ingest", children[0].family())
            meter.add("aggregator", children[1].family())
            meter.start()
            sent, elapsed = _publish(broker.url, ids, rate, seconds, published)
            cpu = meter.stop(elapsed, digits=3)
            machine = meter.machine(elapsed)
            deadline = time.monotonic() + 30
            while len(seen) < len(published) and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            done.set()
            if poller.is_alive():
                poller.join()
            stop_all(children, STOP_GRACE_SECONDS)
    latencies = sorted((seen[key] - published[key]) * 1000 for key in seen if key in published)

    def pct(q: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(q * len(latencies)))], 1)

    return {
        "rate_asked": rate,
        "rate_published": round(sent / elapsed, 1),
        "readings_published": sent,
        "readings_seen": len(latencies),
        "p50_ms": pct(0.50) if latencies else None,
        "p95_ms": pct(0.95) if latencies else None,
        "p99_ms": pct(0.99) if latencies else None,
        "max_ms": round(latencies[-1], 1) if latencies else None,
        "mean_ms": round(statistics.fmean(latencies), 1) if latencies else None,
        "poll_interval_ms": POLL_SECONDS * 1000,
        "cpu_cores": cpu,
        # per 1,000 readings published
        "cpu_ms_per_1k_readings": cpu_ms_per_1k_readings(cpu, elapsed, sent) if sent else None,
        "machine_cores_busy": machine.busy,
    }


def _publish(
    url: str, ids: list[str], rate: float, seconds: float, published: dict[tuple[str, int], float]
) -> tuple[int, float]:
    broker = parse_mqtt_url(url)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(1000)
    client.connect(broker.host, broker.port)
    client.loop_start()
    counters = dict.fromkeys(ids, 0)
    started = time.monotonic()
    sent = 0
    last: mqtt.MQTTMessageInfo | None = None
    while (now := time.monotonic()) - started < seconds:
        due = int((now - started) * rate) + 1
        while sent < due:
            device = ids[sent % len(ids)]
            counters[device] += 1
            seq = counters[device]
            published[(device, seq)] = time.time()
            payload = orjson.dumps(
                {"ts": int(time.time() * 1000) * 1000 // 1000, "metrics": {"seq": seq}}
            )
            last = client.publish(telemetry_topic(device), payload, qos=1)
            sent += 1
        time.sleep(0.001)
    elapsed = time.monotonic() - started
    # Acknowledged before DISCONNECT: paho may not have sent the last ones yet, and a
    # message the broker never got would look like one iotp did not show. The broker
    # acknowledges a connection's messages in order: the last one's answer covers all.
    # (Keeping every message's info instead slowed this process's poller: its collector.)
    if last is not None:
        last.wait_for_publish(timeout=30)
    client.disconnect()
    client.loop_stop()
    return sent, elapsed


def _poll(
    settings: Settings,
    published: dict[tuple[str, int], float],
    seen: dict[tuple[str, int], float],
    done: threading.Event,
) -> None:
    last: dict[str, int] = {}
    with psycopg.connect(settings.read_url(), autocommit=True) as conn:
        while not done.is_set():
            rows = conn.execute(
                "SELECT device_id, max::int8 FROM read_models.metric_stats WHERE metric = 'seq'"
            ).fetchall()
            now = time.time()
            for device, highest in rows:
                for seq in range(last.get(device, 0) + 1, highest + 1):
                    if (device, seq) in published:
                        seen[(device, seq)] = now
                last[device] = max(last.get(device, 0), highest)
            time.sleep(POLL_SECONDS)
