"""`iotp bench ingest`: readings/s stored (and published as events) with zero loss.

Two ways of running, each for one-reading and batched messages:
- drain: the workload is queued at the broker for ingest's persistent session while ingest
  is stopped; ingest is then started and timed until every reading is stored. This is the
  catch-up after an outage, and shows ingest's own ceiling (publishers are not in the way).
- live: publishers and ingest run at once; ingest must keep up with the publish rate.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psutil
import psycopg
from pydantic import SecretStr

from benchmarks.platform import (
    INGEST_READY,
    INSTANCE,
    STOP_GRACE_SECONDS,
    BenchProcess,
    Progress,
    event_counts,
    start_aggregator,
    start_ingest,
    wait_logged,
    wait_started,
)
from benchmarks.processes import CpuMeter, MachineCpu, machine
from benchmarks.stores import BENCH_TOKEN, READ_TABLES, register, reset
from benchmarks.workload import (
    DECLARED,
    METRICS,
    PublishResult,
    Workload,
    combine,
    publish_all,
    start_publishers,
)
from iotp.event_shards import telemetry_streams, trims_key
from iotp.names import INGEST_STATS_KEY_PREFIX, TELEMETRY_DEADLETTER_STREAM
from iotp.processes import stop_all
from iotp.redis_client import redis_for
from iotp.settings import Settings
from local_platform.broker import local_mosquitto

BENCH_DATABASE = "iotp_bench"
BENCH_REDIS_DB = 14


@dataclass(frozen=True)
class Deployment:
    """How many of each iotp process run: ingests share the MQTT subscription, aggregators
    the Redis consumer group (docker-compose.yml runs two ingests and one aggregator)."""

    ingests: int = 2
    aggregators: int = 1


@dataclass(frozen=True)
class DrainPlan:
    """What `iotp bench ingest` and `iotp bench limits` run: the same workloads, publishers
    and deployment."""

    devices: int
    readings: int  # of the one-reading-per-message workload; the batched one has five times more
    batch: int  # readings per message of the batched workload
    publishers: int  # publisher processes
    timeout: float  # seconds a run may take
    deployment: Deployment

    def workloads(self) -> dict[str, Workload]:
        """The two drains: one reading a message, and batched (x5)."""
        return {
            "single": Workload(self.devices, self.readings, 1),
            "batched": Workload(self.devices, self.readings * 5, self.batch),
        }

    def header(self) -> dict[str, Any]:
        """The start of the report: this machine, the workload and the deployment."""
        return {
            "machine": machine(),
            "workload": {
                "devices": self.devices,
                "metrics_per_reading": len(METRICS),
                "batch": self.batch,
            },
            "deployment": asdict(self.deployment),
        }


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
    events_applied: int
    seconds_stored: float | None  # None: not everything was stored within the timeout
    seconds_applied: float | None
    readings_per_s_stored: float
    data_points_per_s_stored: float
    readings_per_s_applied: float
    # drain only: the applied rate over the middle half of the work (from a quarter applied
    # to three quarters), from the timeline: the run's rate without its start and its tail
    # (a live run's rate is the publishers').
    readings_per_s_applied_middle: float | None
    # live only: stored rate over the publish rate (both from the publishers' start)
    stored_fraction_of_publish_rate: float | None
    peak_rss_mb: float  # ingest
    aggregator_peak_rss_mb: float
    cpu_cores: dict[str, float] = field(default_factory=dict)
    # The whole machine over the run (every process, the bench and publishers too), of
    # machine.cores: how much was left for anything to go faster.
    machine_cores_busy: float | None = None
    machine_cores_stolen: float | None = None
    cpu_ms_per_1k_readings: float = 0.0  # ingests and aggregators together
    readings_stored_before_the_clock: int = 0  # by an ingest that connected before the others
    # (seconds, readings stored, readings applied), sampled every SAMPLE_SECONDS
    timeline: list[tuple[float, int, int]] = field(default_factory=list)


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


def prepare(settings: Settings, plan: DrainPlan) -> Settings:
    """The bench's own stores, emptied, with the workload's devices registered."""
    settings = bench_settings(settings)
    reset(settings)
    register(settings, plan.workloads()["single"].device_ids(), "thermostat", DECLARED)
    return settings


def reset_telemetry(settings: Settings) -> None:
    """Forget the previous run's readings, events and read models; keep the devices."""
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        conn.execute("TRUNCATE telemetry, ingest_ledger")
    with psycopg.connect(settings.read_url(), autocommit=True) as conn:
        kept = {"devices"}
        conn.execute(
            "TRUNCATE " + ", ".join(f"read_models.{t}" for t in READ_TABLES if t not in kept)
        )
    client = redis_for(settings.redis_url, settings.redis_cluster)
    # One key at a time: on a cluster the shards live in different hash slots.
    for stream in (*telemetry_streams(settings.event_shards), TELEMETRY_DEADLETTER_STREAM):
        client.delete(stream, trims_key(stream))
    for key in client.scan_iter(f"{INGEST_STATS_KEY_PREFIX}*"):
        client.delete(key)


def stored_data_points(settings: Settings) -> int:
    with psycopg.connect(settings.database_url) as conn:
        row = conn.execute("SELECT count(*) FROM telemetry").fetchone()
    return int(row[0]) if row else 0


def meter_for(children: dict[str, BenchProcess], broker_pid: int) -> CpuMeter:
    meter = CpuMeter()
    for name, child in children.items():
        meter.add(name, child.family())
    meter.add("broker", [psutil.Process(broker_pid)])
    meter.add_named("postgresql", "postgres", "postgresql")
    meter.add_named("redis", "redis-server")
    return meter


@dataclass
class Measured:
    """What a run saw, before it is turned into a RunResult."""

    published: PublishResult
    stored_at: float | None
    applied_at: float | None
    cpu: dict[str, float]
    rss: dict[str, float]
    samples: list[tuple[float, int, int]]
    cpu_seconds: float = 0.0  # the span the CPU meter divided by
    machine: MachineCpu | None = None


IOTP_PROCESSES = ("ingest", "aggregator")


def cpu_ms_per_1k_readings(cpu_cores: dict[str, float], seconds: float, readings: int) -> float:
    """CPU of iotp's own processes (every ingest and aggregator) per 1,000 readings, in ms."""
    iotp = sum(cores for name, cores in cpu_cores.items() if name.startswith(IOTP_PROCESSES))
    return round(iotp * seconds * 1000 / (readings / 1000), 1) if readings else 0.0


def middle_rate(
    samples: list[tuple[float, int, int]], messages: int, per_message: int
) -> float | None:
    """Readings/s applied between the first samples with a quarter and with three quarters
    of ``messages`` applied; None when the timeline is too coarse to tell."""
    quarter = next((s for s in samples if s[2] >= messages / 4), None)
    three = next((s for s in samples if s[2] >= messages * 3 / 4), None)
    if quarter is None or three is None or three[0] <= quarter[0]:
        return None
    return round((three[2] - quarter[2]) * per_message / (three[0] - quarter[0]), 1)


def _result(mode: str, workload: Workload, settings: Settings, seen: Measured) -> RunResult:
    stored = stored_data_points(settings)
    client = redis_for(settings.redis_url, settings.redis_cluster)
    events, applied = event_counts(client, settings.event_shards)
    readings_stored = stored // len(METRICS)
    end = seen.samples[-1][0] if seen.samples else 1.0
    stored_seconds = seen.stored_at or end
    applied_seconds = seen.applied_at or end
    per = workload.per_message
    # Several ingests start one after another, and the first to connect drains part of its
    # share before the clock starts: rates and CPU count only what was done on the clock.
    _, stored_before, applied_before = seen.samples[0] if seen.samples else (0.0, 0, 0)
    timed_stored = readings_stored - stored_before * per
    timed_applied = (applied - applied_before) * per
    return RunResult(
        mode=mode,
        per_message=per,
        messages_published=seen.published.messages,
        readings_published=workload.readings,
        data_points_published=workload.data_points,
        publish_rate_msgs_per_s=round(seen.published.rate, 1),
        readings_stored=readings_stored,
        readings_lost=workload.readings - readings_stored,
        events_published=events,
        events_applied=applied,
        seconds_stored=None if seen.stored_at is None else round(seen.stored_at, 3),
        seconds_applied=None if seen.applied_at is None else round(seen.applied_at, 3),
        readings_per_s_stored=round(timed_stored / stored_seconds, 1),
        data_points_per_s_stored=round(timed_stored * len(METRICS) / stored_seconds, 1),
        readings_per_s_applied=round(timed_applied / applied_seconds, 1),
        readings_per_s_applied_middle=(
            middle_rate(seen.samples, workload.messages, per) if mode == "drain" else None
        ),
        stored_fraction_of_publish_rate=(
            round(timed_stored / stored_seconds / (seen.published.rate * per), 3)
            if mode == "live" and seen.published.rate
            else None
        ),
        peak_rss_mb=seen.rss.get("ingest", 0.0),
        aggregator_peak_rss_mb=seen.rss.get("aggregator", 0.0),
        cpu_cores={name: round(cores, 2) for name, cores in seen.cpu.items()},
        machine_cores_busy=seen.machine.busy if seen.machine else None,
        machine_cores_stolen=seen.machine.steal if seen.machine else None,
        cpu_ms_per_1k_readings=cpu_ms_per_1k_readings(seen.cpu, seen.cpu_seconds, timed_stored),
        readings_stored_before_the_clock=stored_before * per,
        timeline=[(round(t, 2), s * per, a * per) for t, s, a in seen.samples],
    )


def _measure(
    settings: Settings,
    workload: Workload,
    children: dict[str, BenchProcess],
    broker_pid: int,
    publish: Callable[[], PublishResult],
    timeout: float,
) -> Measured:
    """From now: run ``publish``, then wait until every message is stored and applied."""
    meter = meter_for(children, broker_pid)
    progress = Progress(settings.redis_url, settings.redis_cluster, settings.event_shards)
    meter.start()
    progress.start()
    published = publish()
    messages = published.messages
    stored_at, applied_at = progress.wait(messages, messages, timeout, list(children.values()))
    seconds = applied_at or stored_at or timeout
    cpu = meter.stop(seconds, digits=6)  # rounded when reported: a short run is a few ms
    machine = meter.machine(seconds)
    samples = progress.stop()
    rss = {name: child.peak_rss_mb() for name, child in children.items()}  # high-water marks
    return Measured(published, stored_at, applied_at, cpu, rss, samples, seconds, machine)


def run_drain(settings: Settings, plan: DrainPlan, workload: Workload, workdir: Path) -> RunResult:
    """Queue the workload for ingest's session while it is stopped, then time the catch-up.

    The clock starts once the first ingest has connected (its interpreter start-up is not
    counted; the others' start-ups, under way, are); the aggregator is already running.
    With several ingest processes, they share the subscription (as `ingest-a` and
    `ingest-b` do in docker-compose.yml) and the broker splits the queued messages between
    their sessions.
    """
    reset_telemetry(settings)
    name = f"drain-{workload.per_message}"
    with local_mosquitto(workdir / f"broker-{name}") as broker:
        for n in range(plan.deployment.ingests):  # creates the persistent sessions
            log = workdir / f"ingest-{name}-{n}.log"
            start_ingest(settings, broker.url, log, ingest_instance=f"{INSTANCE}-{n}").stop(
                STOP_GRACE_SECONDS
            )
        published = publish_all(broker.url, workload, plan.publishers)
        with running_platform(
            settings, broker.url, name, workdir, plan.deployment, all_ready=False
        ) as children:
            seen = _measure(
                settings, workload, children, broker.pid, lambda: published, plan.timeout
            )
    return _result("drain", workload, settings, seen)


@contextmanager
def running_platform(
    settings: Settings,
    mqtt_url: str,
    name: str,
    workdir: Path,
    deployment: Deployment,
    all_ready: bool = True,
) -> Iterator[dict[str, BenchProcess]]:
    """Aggregators first (they wait for events), then ingest: named ingest, ingest-1 ...;
    all stopped when the block ends, also the ones started before a start failed.

    The ingests start together, as a deployment starts them. The block begins once all
    have started (:func:`wait_started`), or (not ``all_ready``) once the first has
    subscribed: a queued workload is then timed from when its draining starts (waiting for
    the last, the first drained a third of it alone before the clock, and the clock timed
    one ingest's drain of its share).
    """
    children: dict[str, BenchProcess] = {}
    try:
        for n in range(deployment.aggregators):
            children["aggregator" if n == 0 else f"aggregator-{n}"] = start_aggregator(
                settings,
                workdir / f"aggregate-{name}-{n}.log",
                aggregator_instance=f"{INSTANCE}-{n}",
            )
        ingests = [f"ingest-{n}" if n else "ingest" for n in range(deployment.ingests)]
        for n, ingest in enumerate(ingests):
            children[ingest] = start_ingest(
                settings,
                mqtt_url,
                workdir / f"ingest-{name}-{n}.log",
                wait=False,
                ingest_instance=f"{INSTANCE}-{n}",
            )
        if all_ready:
            for ingest in ingests:
                wait_started(children[ingest])
        else:
            wait_logged([children[ingest] for ingest in ingests], (INGEST_READY,))
        yield children
    finally:
        stop_all(children.values(), STOP_GRACE_SECONDS)


def run_live(settings: Settings, plan: DrainPlan, workload: Workload, workdir: Path) -> RunResult:
    """Publishers and the platform at once; the clock starts with the publishers."""
    reset_telemetry(settings)
    name = f"live-{workload.per_message}"
    with (
        local_mosquitto(workdir / f"broker-{name}") as broker,
        running_platform(settings, broker.url, name, workdir, plan.deployment) as children,
    ):

        def publish() -> PublishResult:
            started = time.perf_counter()
            publishers = start_publishers(broker.url, workload, plan.publishers)
            results = publishers.get(timeout=plan.timeout)
            return combine(results, time.perf_counter() - started)

        seen = _measure(settings, workload, children, broker.pid, publish, plan.timeout)
    seconds = seen.applied_at or seen.stored_at or plan.timeout
    seen.cpu["publishers"] = round(seen.published.cpu_seconds / seconds, 2)
    return _result("live", workload, settings, seen)


def run_ingest_bench(settings: Settings, plan: DrainPlan) -> dict[str, Any]:
    """Drain runs of single and batched messages, then a live run of single ones."""
    settings = prepare(settings, plan)
    workloads = plan.workloads()
    with tempfile.TemporaryDirectory(prefix="iotp-bench-") as tmp:
        workdir = Path(tmp)
        runs = {
            "single": run_drain(settings, plan, workloads["single"], workdir),
            "batched": run_drain(settings, plan, workloads["batched"], workdir),
            "live": run_live(settings, plan, workloads["single"], workdir),
        }
    return {**plan.header(), **{name: asdict(run) for name, run in runs.items()}}
