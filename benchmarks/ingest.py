"""`iotp bench ingest`: readings/s stored (and published as events) with zero loss.

Two ways of running, each for one-reading and batched messages:
- drain: the workload is queued at the broker for ingest's persistent session while ingest
  is stopped; ingest is then started and timed until every reading is stored. This is the
  catch-up after an outage, and shows ingest's own ceiling (publishers are not in the way).
- live: publishers and ingest run at once; ingest must keep up with the publish rate.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psutil
import psycopg
import redis
from pydantic import SecretStr

from benchmarks.processes import CpuMeter, peak_rss_mb
from benchmarks.stores import BENCH_TOKEN, child_env, register, reset
from benchmarks.workload import DECLARED, Workload, combine, publish_all, start_publishers
from iotp.local_broker import local_mosquitto
from iotp.names import (
    INGEST_STATS_KEY_PREFIX,
    TELEMETRY_DEADLETTER_STREAM,
    TELEMETRY_EVENTS_STREAM,
)
from iotp.settings import Settings

BENCH_DATABASE = "iotp_bench"
BENCH_REDIS_DB = 14
INSTANCE = "bench"


@dataclass
class RunResult:
    mode: str
    per_message: int
    messages_published: int
    readings_published: int
    data_points_published: int
    publish_rate_msgs_per_s: float
    readings_stored: int
    readings_lost: int
    events_published: int
    seconds: float
    readings_per_s_stored: float
    data_points_per_s_stored: float
    readings_per_s_applied: float | None  # needs the aggregators (read models)
    peak_rss_mb: float
    cpu_cores: dict[str, float] = field(default_factory=dict)


def bench_settings(settings: Settings) -> Settings:
    """The same servers, but a database and a Redis database of the benchmark's own."""
    db = urlsplit(settings.database_url)
    rd = urlsplit(settings.redis_url)
    return settings.model_copy(
        update={
            "database_url": urlunsplit(db._replace(path=f"/{BENCH_DATABASE}")),
            "redis_url": urlunsplit(rd._replace(path=f"/{BENCH_REDIS_DB}")),
            "api_token": SecretStr(BENCH_TOKEN),
            "ingest_instance": INSTANCE,
            "ingest_metrics_port": 0,
        }
    )


def prepare(settings: Settings, workload: Workload) -> None:
    """Empty the bench's stores and register the workload's devices."""
    reset(settings)
    register(settings, workload.device_ids(), "thermostat", DECLARED)


def _reset(settings: Settings) -> None:
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        conn.execute("TRUNCATE telemetry, ingest_ledger")
    client = redis.Redis.from_url(settings.redis_url)
    client.delete(TELEMETRY_EVENTS_STREAM, TELEMETRY_DEADLETTER_STREAM)
    for key in client.scan_iter(f"{INGEST_STATS_KEY_PREFIX}*"):
        client.delete(key)


class IngestChild:
    def __init__(self, settings: Settings, mqtt_url: str, log: Path) -> None:
        env = child_env(
            settings,
            mqtt_url=mqtt_url,
            ingest_instance=INSTANCE,
            ingest_metrics_port="0",
            log_level=os.environ.get("IOTP_BENCH_INGEST_LOG_LEVEL", "INFO"),
        )
        self.log = log
        handle = log.open("ab")
        self.before = log.read_text().count("subscribed to")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "iotp.cli", "ingest"],
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
        self.ps = psutil.Process(self.process.pid)

    def wait_subscribed(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.log.read_text().count("subscribed to") <= self.before:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ingest did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _counts(settings: Settings) -> tuple[int, int]:
    with psycopg.connect(settings.database_url) as conn:
        row = conn.execute("SELECT count(*) FROM telemetry").fetchone()
    events = redis.Redis.from_url(settings.redis_url).xlen(TELEMETRY_EVENTS_STREAM)
    return (int(row[0]) if row else 0), int(events)


def _wait_until_stored(
    settings: Settings, data_points: int, messages: int, timeout: float, child: IngestChild
) -> float:
    """Seconds until every data point is stored and every message's event is published."""
    started = time.perf_counter()
    while True:
        stored, events = _counts(settings)
        if stored >= data_points and events >= messages:
            return time.perf_counter() - started
        if child.process.poll() is not None:
            raise RuntimeError(f"ingest died:\n{child.log.read_text()[-3000:]}")
        if time.perf_counter() - started > timeout:
            return time.perf_counter() - started
        time.sleep(0.02)


def _meter(child: IngestChild, broker_pid: int) -> CpuMeter:
    meter = CpuMeter()
    meter.add("ingest", [child.ps])
    meter.add("broker", [psutil.Process(broker_pid)])
    meter.add_named("postgresql", "postgres", "postgresql")
    meter.add_named("redis", "redis-server")
    return meter


def _result(
    mode: str,
    workload: Workload,
    settings: Settings,
    published: int,
    publish_rate: float,
    seconds: float,
    rss: float,
    cpu: dict[str, float],
) -> RunResult:
    stored, events = _counts(settings)
    readings_stored = stored // 3
    return RunResult(
        mode=mode,
        per_message=workload.per_message,
        messages_published=published,
        readings_published=workload.readings,
        data_points_published=workload.data_points,
        publish_rate_msgs_per_s=round(publish_rate, 1),
        readings_stored=readings_stored,
        readings_lost=workload.readings - readings_stored,
        events_published=events,
        seconds=round(seconds, 3),
        readings_per_s_stored=round(readings_stored / seconds, 1),
        data_points_per_s_stored=round(stored / seconds, 1),
        readings_per_s_applied=None,
        peak_rss_mb=rss,
        cpu_cores=cpu,
    )


def run_drain(
    settings: Settings, workload: Workload, publishers: int, timeout: float, workdir: Path
) -> RunResult:
    _reset(settings)
    with local_mosquitto(workdir / f"broker-drain-{workload.per_message}") as broker:
        log = workdir / f"ingest-drain-{workload.per_message}.log"
        first = IngestChild(settings, broker.url, log)
        first.wait_subscribed()  # creates the persistent session and its subscription
        first.stop()
        published = publish_all(broker.url, workload, publishers)
        child = IngestChild(settings, broker.url, log)
        meter = _meter(child, broker.pid)
        meter.start()
        seconds = _wait_until_stored(
            settings, workload.data_points, published.messages, timeout, child
        )
        cpu = meter.stop(seconds)
        rss = peak_rss_mb(child.ps)
        child.stop()
    return _result(
        "drain", workload, settings, published.messages, published.rate, seconds, rss, cpu
    )


def run_live(
    settings: Settings, workload: Workload, publishers: int, timeout: float, workdir: Path
) -> RunResult:
    _reset(settings)
    with local_mosquitto(workdir / f"broker-live-{workload.per_message}") as broker:
        child = IngestChild(
            settings, broker.url, workdir / f"ingest-live-{workload.per_message}.log"
        )
        child.wait_subscribed()
        meter = _meter(child, broker.pid)
        meter.start()
        started = time.perf_counter()
        pending = start_publishers(broker.url, workload, publishers)
        results = pending.get(timeout=timeout)
        published = combine(results, time.perf_counter() - started)
        _wait_until_stored(settings, workload.data_points, published.messages, timeout, child)
        seconds = time.perf_counter() - started
        cpu = meter.stop(seconds)
        cpu["publishers"] = round(published.cpu_seconds / seconds, 2)
        rss = peak_rss_mb(child.ps)
        child.stop()
    return _result(
        "live", workload, settings, published.messages, published.rate, seconds, rss, cpu
    )


def run_ingest_bench(
    settings: Settings, devices: int, readings: int, batch: int, publishers: int, timeout: float
) -> dict[str, Any]:
    settings = bench_settings(settings)
    single = Workload(devices, readings, 1)
    batched = Workload(devices, readings * 5, batch)
    prepare(settings, single)
    with tempfile.TemporaryDirectory(prefix="iotp-bench-") as tmp:
        workdir = Path(tmp)
        runs = {
            "single": run_drain(settings, single, publishers, timeout, workdir),
            "batched": run_drain(settings, batched, publishers, timeout, workdir),
            "live": run_live(settings, single, publishers, timeout, workdir),
        }
    return {
        "machine": {
            "cores": os.cpu_count(),
            "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        },
        "workload": {"devices": devices, "metrics_per_reading": 3, "batch": batch},
        **{name: asdict(run) for name, run in runs.items()},
    }
