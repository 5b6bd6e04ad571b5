"""`iotp bench burst`: ten times the sustained rate for a while, against a running platform.

Publishers send ``rate`` readings/s, then ``factor`` x ``rate`` for ``burst_seconds``, then
``rate`` again while the platform works off the backlog. The report says whether anything
was lost, the peak memory of every iotp process (the backlog must wait at the broker, not
in iotp's memory), the largest backlog, and how long after the burst everything published
up to its end had been applied to the read models.
"""

from __future__ import annotations

import multiprocessing
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt
import psutil
import redis
from paho.mqtt.enums import CallbackAPIVersion

from benchmarks.ingest import (
    Deployment,
    bench_settings,
    meter_for,
    start_platform,
    stored_data_points,
)
from benchmarks.platform import event_counts
from benchmarks.processes import machine, peak_rss_mb
from benchmarks.stores import register, reset
from benchmarks.workload import DECLARED, METRICS
from iotp.local_broker import local_mosquitto
from iotp.mqtt_url import parse_mqtt_url
from iotp.names import telemetry_topic
from iotp.settings import Settings

TICK_SECONDS = 0.005
SAMPLE_SECONDS = 0.25
MAX_UNACKED = 2000


@dataclass(frozen=True)
class Phase:
    seconds: float
    rate: float  # messages/s of all publishers together


def _publish_phases(
    url: str,
    device_ids: list[str],
    phases: list[Phase],
    part: int,
    parts: int,
    acked: Any,  # multiprocessing.Value: messages this process got a PUBACK for
    result: Any,  # multiprocessing.Array: (messages sent, CPU seconds) once done
    started_at: float,
) -> None:
    """Publish this process's share of each phase at its own pace."""
    mine = [d for n, d in enumerate(device_ids) if n % parts == part]
    broker = parse_mqtt_url(url)
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"iotp-bench-burst-{part}", protocol=mqtt.MQTTv5
    )
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)

    def on_publish(*args: Any) -> None:
        acked.value += 1

    client.on_publish = on_publish
    client.connect(broker.host, broker.port)
    client.loop_start()
    cpu_started = time.process_time()
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    base_ms = int(base.timestamp() * 1000)
    sent = 0
    infos = []
    while time.time() < started_at:
        time.sleep(0.001)
    phase_start = time.perf_counter()
    for phase in phases:
        share = phase.rate / parts
        first = sent
        while (elapsed := time.perf_counter() - phase_start) < phase.seconds:
            due = first + int(elapsed * share)
            # Send at most what the broker keeps up with, and never past the phase's end: a
            # publisher short of CPU sends less, it does not stretch the burst.
            while sent < due and sent - acked.value < MAX_UNACKED:
                device = mine[sent % len(mine)]
                # One reading per device every millisecond of a synthetic clock: unique keys.
                ts = base_ms + sent // len(mine)
                payload = orjson.dumps(
                    {"ts": ts, "metrics": {"temperature": 21.5, "humidity": 40.0, "battery": 90.0}}
                )
                infos.append(client.publish(telemetry_topic(device), payload, qos=1))
                sent += 1
                if sent % 100 == 0 and time.perf_counter() - phase_start >= phase.seconds:
                    break
            time.sleep(TICK_SECONDS)
        phase_start += phase.seconds
    for info in infos:
        info.wait_for_publish(timeout=120)
    client.disconnect()
    client.loop_stop()
    result[0], result[1] = sent, time.process_time() - cpu_started


def run_burst_bench(
    settings: Settings,
    devices: int,
    rate: float,
    factor: float,
    burst_seconds: float,
    before_seconds: float,
    after_seconds: float,
    publishers: int,
    timeout: float,
    deployment: Deployment,
) -> dict[str, Any]:
    settings = bench_settings(settings)
    device_ids = [f"burst-{n:05d}" for n in range(devices)]
    reset(settings)
    register(settings, device_ids, "thermostat", DECLARED)
    phases = [
        Phase(before_seconds, rate),
        Phase(burst_seconds, rate * factor),
        Phase(after_seconds, rate),
    ]
    burst_end = before_seconds + burst_seconds
    client = redis.Redis.from_url(settings.redis_url)
    context = multiprocessing.get_context("fork")
    counters = [context.Value("q", 0) for _ in range(publishers)]
    results = [context.Array("d", 2) for _ in range(publishers)]
    with (
        tempfile.TemporaryDirectory(prefix="iotp-bench-") as tmp,
        local_mosquitto(Path(tmp) / "broker") as broker,
    ):
        children = start_platform(settings, broker.url, "burst", Path(tmp), deployment)
        meter = meter_for(children, broker.pid)
        starts_at = time.time() + 1.0
        processes = [
            context.Process(
                target=_publish_phases,
                args=(
                    broker.url,
                    device_ids,
                    phases,
                    part,
                    publishers,
                    counters[part],
                    results[part],
                    starts_at,
                ),
                daemon=True,
            )
            for part in range(publishers)
        ]
        for process in processes:
            process.start()
        while time.time() < starts_at:
            time.sleep(0.001)
        started = time.perf_counter()
        meter.start()
        samples: list[tuple[float, int, int, int]] = []
        published_at_burst_end: int | None = None
        drained_at: float | None = None
        finished: list[tuple[int, float]] | None = None
        try:
            while True:
                now = time.perf_counter() - started
                published = sum(c.value for c in counters)
                stored, applied = event_counts(client)
                samples.append((round(now, 2), published, stored, applied))
                if published_at_burst_end is None and now >= burst_end:
                    published_at_burst_end = published
                if (
                    published_at_burst_end is not None
                    and drained_at is None
                    and applied >= published_at_burst_end
                ):
                    drained_at = now
                if finished is None and not any(p.is_alive() for p in processes):
                    finished = [(int(r[0]), r[1]) for r in results]
                if finished is not None and applied >= sum(n for n, _ in finished):
                    break
                if now > timeout:
                    break
                for child in children.values():
                    child.check()
                threading.Event().wait(SAMPLE_SECONDS)
            seconds = time.perf_counter() - started
            cpu = meter.stop(seconds)
            rss = {name: child.peak_rss_mb() for name, child in children.items()}
            rss["broker (not iotp: holds the backlog)"] = peak_rss_mb(psutil.Process(broker.pid))
        finally:
            for process in processes:
                process.kill()
            for child in children.values():
                child.stop()
    if finished is None:
        raise RuntimeError(f"the publishers did not finish within {timeout} s")
    messages = sum(n for n, _ in finished)
    cpu["publishers"] = round(sum(c for _, c in finished) / seconds, 2)
    readings_stored = stored_data_points(settings) // len(METRICS)
    events, applied = event_counts(client)
    burst_samples = [s for s in samples if before_seconds <= s[0] <= burst_end]
    burst_rate = (
        (burst_samples[-1][1] - burst_samples[0][1]) / (burst_samples[-1][0] - burst_samples[0][0])
        if len(burst_samples) > 1
        else 0.0
    )
    return {
        "machine": machine(),
        "devices": devices,
        "deployment": asdict(deployment),
        "rate_asked_msgs_per_s": rate,
        "burst_rate_asked_msgs_per_s": rate * factor,
        "burst_rate_published_msgs_per_s": round(burst_rate, 1),
        "phases_seconds": [p.seconds for p in phases],
        "messages_published": messages,
        "readings_stored": readings_stored,
        "readings_lost": messages - readings_stored,
        "events_published": events,
        "events_applied": applied,
        "backlog_peak_messages": max((p - a for _, p, _, a in samples), default=0),
        "drain_seconds_after_burst": (
            None if drained_at is None else round(drained_at - burst_end, 2)
        ),
        "peak_rss_mb": rss,
        "cpu_cores": cpu,
        "timeline": samples,
    }
