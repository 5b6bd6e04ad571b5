"""`iotp bench burst`: ten times the sustained rate for a while, against a running platform.

Devices send ``rate`` readings/s in all, then ``factor`` x ``rate`` for ``burst_seconds``,
then ``rate`` again while the platform works off the backlog. The report says whether
anything was lost, the peak memory of every iotp process (the backlog must wait at the
broker, not in iotp's memory), the largest backlog, and how long after the burst everything
published up to its end had been applied to the read models.

Each device is a ``mosquitto_pub -l`` (C, QoS 1) fed line by line by a pacer thread here:
Python publishers on the same two cores could not send 10x beside the platform (four paho
processes reached 7.5x). A line written is a message handed to the device's client; each
client exits only once the broker acknowledged its last message.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import orjson
import psutil
import redis

from benchmarks.ingest import (
    Deployment,
    bench_settings,
    meter_for,
    running_platform,
    stored_data_points,
)
from benchmarks.platform import BenchProcess, event_counts
from benchmarks.processes import CpuMeter, machine, peak_rss_mb, reap
from benchmarks.stores import register, reset
from benchmarks.workload import DECLARED, METRICS
from iotp.errors import ConfigurationError
from iotp.mqtt_url import parse_mqtt_url
from iotp.names import telemetry_topic
from iotp.redis_client import redis_for
from iotp.settings import Settings
from local_platform.broker import local_mosquitto

TICK_SECONDS = 0.02
SAMPLE_SECONDS = 0.25


@dataclass(frozen=True)
class Phase:
    seconds: float
    rate: float  # messages/s of all devices together


class Devices:
    """One ``mosquitto_pub -l`` per device, and a pacer writing their lines on schedule."""

    def __init__(self, mqtt_url: str, device_ids: list[str], phases: list[Phase]) -> None:
        binary = shutil.which("mosquitto_pub")
        if binary is None:
            raise ConfigurationError(
                "mosquitto_pub is not installed (Debian: apt-get install mosquitto-clients)"
            )
        broker = parse_mqtt_url(mqtt_url)
        self.phases = phases
        self.sent = 0
        self.clients = [
            subprocess.Popen(  # noqa: S603 - mosquitto's own client
                [
                    binary,
                    "-h",
                    broker.host,
                    "-p",
                    str(broker.port),
                    "-q",
                    "1",
                    "-M",
                    "1000",
                    "-i",
                    f"iotp-burst-{device}",
                    "-t",
                    telemetry_topic(device),
                    "-l",
                ],
                stdin=subprocess.PIPE,
            )
            for device in device_ids
        ]
        self._thread = threading.Thread(target=self._pace, name="bench-burst-pacer", daemon=True)
        self.failure: BaseException | None = None

    def start(self) -> None:
        self._thread.start()

    def _pace(self) -> None:
        try:
            self._publish()
        except BaseException as exc:  # reported by wait()
            self.failure = exc
        finally:
            for client in self.clients:
                if client.stdin is not None:
                    client.stdin.close()

    def _publish(self) -> None:
        base_ms = int((datetime.now(UTC) - timedelta(hours=1)).timestamp() * 1000)
        pipes: list[IO[bytes]] = [c.stdin for c in self.clients if c.stdin is not None]
        count = len(pipes)
        metrics = {"temperature": 21.5, "humidity": 40.0, "battery": 90.0}
        phase_start = time.perf_counter()
        for phase in self.phases:
            first = self.sent
            while (elapsed := time.perf_counter() - phase_start) < phase.seconds:
                due = first + int(elapsed * phase.rate)
                lines: list[list[bytes]] = [[] for _ in range(count)]
                for n in range(self.sent, due):
                    # One reading per device per millisecond of a synthetic clock: unique keys.
                    lines[n % count].append(
                        orjson.dumps({"ts": base_ms + n // count, "metrics": metrics}) + b"\n"
                    )
                for pipe, chunk in zip(pipes, lines, strict=True):
                    if chunk:
                        pipe.write(b"".join(chunk))
                        pipe.flush()
                self.sent = due
                time.sleep(TICK_SECONDS)
            phase_start += phase.seconds

    def done(self) -> bool:
        """Every client has exited (looked at without reaping, so wait() gets their CPU)."""
        if self._thread.is_alive():
            return False
        flags = os.WEXITED | os.WNOHANG | os.WNOWAIT
        return all(os.waitid(os.P_PID, c.pid, flags) is not None for c in self.clients)

    def wait(self) -> tuple[int, float]:
        """(messages the broker acknowledged, publishers' CPU seconds) once all exited."""
        self._thread.join()
        cpu = 0.0
        for client in self.clients:
            cpu += reap(client)
        if self.failure is not None:
            raise RuntimeError(f"the pacer failed: {self.failure}")
        failed = [c.returncode for c in self.clients if c.returncode != 0]
        if failed:
            raise RuntimeError(f"{len(failed)} mosquitto_pub clients failed: {failed[:5]}")
        return self.sent, cpu

    def kill(self) -> None:
        for client in self.clients:
            if client.poll() is None:
                client.kill()


@dataclass(frozen=True)
class BurstPlan:
    """The sustained rate, the burst, and the platform that takes them."""

    devices: int
    rate: float  # messages/s of all devices together, before and after the burst
    factor: float  # the burst is this many times the rate
    burst_seconds: float
    before_seconds: float
    after_seconds: float
    timeout: float
    deployment: Deployment

    def phases(self) -> list[Phase]:
        return [
            Phase(self.before_seconds, self.rate),
            Phase(self.burst_seconds, self.rate * self.factor),
            Phase(self.after_seconds, self.rate),
        ]

    @property
    def burst_end(self) -> float:
        """Seconds from the publishers' start to the end of the burst."""
        return self.before_seconds + self.burst_seconds


@dataclass
class BurstRun:
    """What the run saw, sampled every SAMPLE_SECONDS from the publishers' start."""

    samples: list[tuple[float, int, int, int]] = field(default_factory=list)  # s, pub, sto, app
    published_at_burst_end: int | None = None
    drained_at: float | None = None  # everything published up to the burst's end applied
    messages: int | None = None  # published in all, once every publisher has exited
    publisher_cpu: float = 0.0
    seconds: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)
    rss: dict[str, float] = field(default_factory=dict)

    def sample(
        self, now: float, published: int, stored: int, applied: int, plan: BurstPlan
    ) -> None:
        self.samples.append((round(now, 2), published, stored, applied))
        if self.published_at_burst_end is None and now >= plan.burst_end:
            self.published_at_burst_end = published
        if (
            self.published_at_burst_end is not None
            and self.drained_at is None
            and applied >= self.published_at_burst_end
        ):
            self.drained_at = now


def run_burst_bench(settings: Settings, plan: BurstPlan) -> dict[str, Any]:
    settings = bench_settings(settings)
    device_ids = [f"burst-{n:05d}" for n in range(plan.devices)]
    reset(settings)
    register(settings, device_ids, "thermostat", DECLARED)
    client = redis_for(settings.redis_url, settings.redis_cluster)
    with (
        tempfile.TemporaryDirectory(prefix="iotp-bench-") as tmp,
        local_mosquitto(Path(tmp) / "broker") as broker,
        running_platform(settings, broker.url, "burst", Path(tmp), plan.deployment) as children,
    ):
        publishers = Devices(broker.url, device_ids, plan.phases())
        try:
            time.sleep(0.5)  # the clients connect
            run = _follow(plan, publishers, client, children, meter_for(children, broker.pid))
            run.rss = {name: child.peak_rss_mb() for name, child in children.items()}
            run.rss["broker (not iotp: holds the backlog)"] = peak_rss_mb(
                psutil.Process(broker.pid)
            )
        finally:
            publishers.kill()
    return _report(settings, plan, run, client)


def _follow(
    plan: BurstPlan,
    publishers: Devices,
    client: redis.Redis,
    children: dict[str, BenchProcess],
    meter: CpuMeter,
) -> BurstRun:
    """Start the publishers; sample until all they sent is applied, or the timeout."""
    run = BurstRun()
    started = time.perf_counter()
    meter.start()
    publishers.start()
    while True:
        now = time.perf_counter() - started
        published = publishers.sent
        stored, applied = event_counts(client)
        run.sample(now, published, stored, applied, plan)
        if run.messages is None and publishers.done():
            run.messages, run.publisher_cpu = publishers.wait()
        if (run.messages is not None and applied >= run.messages) or now > plan.timeout:
            break
        for child in children.values():
            child.check()
        threading.Event().wait(SAMPLE_SECONDS)
    run.seconds = time.perf_counter() - started
    run.cpu = meter.stop(run.seconds)
    return run


def _report(
    settings: Settings, plan: BurstPlan, run: BurstRun, client: redis.Redis
) -> dict[str, Any]:
    if run.messages is None:
        raise RuntimeError(f"the publishers did not finish within {plan.timeout} s")
    messages = run.messages
    cpu = {**run.cpu, "publishers": round(run.publisher_cpu / run.seconds, 2)}
    readings_stored = stored_data_points(settings) // len(METRICS)
    events, applied = event_counts(client)
    burst = [s for s in run.samples if plan.before_seconds <= s[0] <= plan.burst_end]
    burst_rate = (
        (burst[-1][1] - burst[0][1]) / (burst[-1][0] - burst[0][0]) if len(burst) > 1 else 0.0
    )
    return {
        "machine": machine(),
        "devices": plan.devices,
        "publishers": f"{plan.devices} x mosquitto_pub -l (QoS 1), one per device",
        "deployment": asdict(plan.deployment),
        "rate_asked_msgs_per_s": plan.rate,
        "burst_rate_asked_msgs_per_s": plan.rate * plan.factor,
        "burst_rate_published_msgs_per_s": round(burst_rate, 1),
        "phases_seconds": [p.seconds for p in plan.phases()],
        "messages_published": messages,
        "readings_stored": readings_stored,
        "readings_lost": messages - readings_stored,
        "events_published": events,
        "events_applied": applied,
        "backlog_peak_messages": max((p - a for _, p, _, a in run.samples), default=0),
        "drain_seconds_after_burst": (
            None if run.drained_at is None else round(run.drained_at - plan.burst_end, 2)
        ),
        "peak_rss_mb": run.rss,
        "cpu_cores": cpu,
        "timeline": run.samples,
    }
