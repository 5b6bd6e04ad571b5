"""`iotp bench scale`: what one ingest and one aggregator cost, on a local Redis Cluster.

For each k of ``--ks``, k ingests share the MQTT subscription and k aggregators share the
consumer group of every telemetry shard, against a 3-master Redis Cluster made for the
bench (telemetry events sharded over ``--shards`` streams); each k runs the drain of
`iotp bench ingest` (one reading a message) and must lose nothing. Every figure is per
process or per unit of work: readings per ingest CPU-second, events per aggregator
CPU-second, Redis commands per event, PostgreSQL CPU per 1,000 rows, bytes per reading.
On a machine with fewer cores than processes the k processes share the same cores: the
runs measure what each process costs, not how much faster k of them are.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psutil
import psycopg

from benchmarks.ingest import Deployment, DrainPlan, RunResult, bench_settings, run_drain
from benchmarks.processes import machine
from benchmarks.stores import register, reset
from benchmarks.workload import DECLARED, METRICS, Workload
from iotp.errors import ConfigurationError, first_line
from iotp.migrate import migrate
from iotp.settings import Settings
from local_platform.redis_cluster import LocalCluster, local_redis_cluster
from read_models.schema import READ_STORE_MIGRATIONS

MASTERS = 3
# Its own database: `iotp bench ingest` (and its test) may run beside it on iotp_bench.
SCALE_DATABASE = "iotp_bench_scale"
# What the bench itself sends (progress polling) or a client sends to find the cluster's
# slots: not part of what the platform costs per event.
BENCH_COMMANDS = ("xinfo", "info", "cluster", "command", "config")
NOTE = (
    "k ingests and k aggregators share this machine's {cores} cores: these runs measure "
    "what each process costs per reading or event (per CPU-second), not a speed-up with k."
)


@dataclass(frozen=True)
class ScalePlan:
    devices: int
    readings: int  # one reading (3 metrics) a message
    shards: int  # telemetry event streams over the cluster's masters
    ks: tuple[int, ...]  # ingests (and as many aggregators) of each run
    timeout: float  # seconds a run may take
    publishers: int = 2
    database: str = SCALE_DATABASE  # on the configured server; emptied before the runs

    def workload(self) -> Workload:
        return Workload(self.devices, self.readings, 1)

    def drain(self, k: int) -> DrainPlan:
        return DrainPlan(
            self.devices, self.readings, 1, self.publishers, self.timeout, Deployment(k, k)
        )


def parse_ks(text: str) -> tuple[int, ...]:
    """``"1,2,4"`` as (1, 2, 4); ValueError unless every one is a whole number from 1 to 64."""
    try:
        ks = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"expected whole numbers separated by commas, got {text!r}") from None
    if not all(1 <= k <= 64 for k in ks):
        raise ValueError(f"each k must be from 1 to 64, got {text!r}")
    return ks


def scale_settings(settings: Settings, cluster: LocalCluster, plan: ScalePlan) -> Settings:
    """The bench's stores (``plan.database``), with Redis on ``cluster``."""
    settings = bench_settings(settings)
    db = urlsplit(settings.database_url)
    return settings.model_copy(
        update={
            "database_url": urlunsplit(db._replace(path=f"/{plan.database}")),
            "read_database_url": None,
            "redis_url": cluster.url,
            "redis_cluster": True,
            "event_shards": plan.shards,
        }
    )


def run_scale_bench(
    settings: Settings, plan: ScalePlan, timescale_url: str | None = None
) -> dict[str, Any]:
    """One drain per k on a cluster made for the bench; the storage cost of a reading."""
    if timescale_url is not None:
        check_timescale(timescale_url)  # before minutes of drains, not after
    with tempfile.TemporaryDirectory(prefix="iotp-bench-scale-") as tmp:
        workdir = Path(tmp)
        with local_redis_cluster(workdir / "redis-cluster", MASTERS) as cluster:
            settings = scale_settings(settings, cluster, plan)
            reset(settings)
            register(settings, plan.workload().device_ids(), "thermostat", DECLARED)
            runs = [_run(settings, plan, k, cluster, workdir) for k in plan.ks]
            storage = stored_bytes(settings)
    report: dict[str, Any] = {
        "machine": machine(),
        "workload": {
            "devices": plan.devices,
            "readings": plan.readings,
            "metrics_per_reading": len(METRICS),
            "per_message": 1,
        },
        "redis": {"cluster_masters": MASTERS, "event_shards": plan.shards},
        "runs": runs,
        "storage": storage,
        "note": NOTE.format(cores=machine()["cores"]),
    }
    if timescale_url is not None:
        report["storage"]["timescaledb"] = timescale_compression(timescale_url, plan.devices)
    return report


def _run(
    settings: Settings, plan: ScalePlan, k: int, cluster: LocalCluster, root: Path
) -> dict[str, Any]:
    before, cpu_before = cluster.command_calls(), cpu_seconds(cluster.pids)
    result = run_drain(settings, plan.drain(k), plan.workload(), root / f"k{k}")
    after, cpu_after = cluster.command_calls(), cpu_seconds(cluster.pids)
    figures = per_process(result, k, command_delta(before, after))
    # The nodes' CPU over the whole run, the bench's own polling included: an upper bound.
    figures["redis_cluster_cpu_ms_per_1k_events"] = _share(
        (cpu_after - cpu_before) * 1e6, result.events_published
    )
    return figures


def cpu_seconds(pids: tuple[int, ...]) -> float:
    """User and system CPU seconds the processes ``pids`` have used so far."""
    total = 0.0
    for pid in pids:
        times = psutil.Process(pid).cpu_times()
        total += times.user + times.system
    return total


def command_delta(
    before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]
) -> dict[str, tuple[int, int]]:
    """(calls, microseconds) of each command between two readings of INFO commandstats."""
    delta = {}
    for name, (calls, usec) in after.items():
        was_calls, was_usec = before.get(name, (0, 0))
        if calls > was_calls:
            delta[name] = (calls - was_calls, usec - was_usec)
    return delta


def _share(part: float, whole: float, digits: int = 1) -> float | None:
    return round(part / whole, digits) if whole > 0 else None


def _rate(work: float, whole: float) -> float | None:
    """Work per second or per CPU-second; None when none was done on the clock."""
    return _share(work, whole) if work > 0 else None


def per_process(run: RunResult, k: int, commands: dict[str, tuple[int, int]]) -> dict[str, Any]:
    """One run's figures per process and per unit of work, from its drain and Redis's stats.

    The drain's clock (and its CPU meter) starts once the last ingest has connected; the
    ones that connected first have drained part of their share by then. Rates and costs
    are therefore of the work done on the clock: what was stored and applied after the
    first progress sample, over the CPU used after it.
    """
    seconds = run.seconds_applied or run.seconds_stored or 0.0
    cores = run.cpu_cores
    ingest = sum(v for name, v in cores.items() if name.startswith("ingest"))
    aggregator = sum(v for name, v in cores.items() if name.startswith("aggregator"))
    _, stored_before, applied_before = run.timeline[0] if run.timeline else (0.0, 0, 0)
    stored = run.readings_stored - stored_before
    applied = run.events_applied - applied_before  # one reading an event
    return {
        "k": k,
        "ingests": k,
        "aggregators": k,
        "readings_published": run.readings_published,
        "readings_stored": run.readings_stored,
        "readings_lost": run.readings_lost,
        "events_published": run.events_published,
        "events_applied": run.events_applied,
        "readings_stored_before_the_clock": stored_before,
        "events_applied_before_the_clock": applied_before,
        "seconds_stored": run.seconds_stored,
        "seconds_applied": run.seconds_applied,
        "readings_per_s_stored": _rate(stored, run.seconds_stored or 0.0),
        "readings_per_s_applied": _rate(applied, run.seconds_applied or 0.0),
        "cpu_cores": cores,
        "ingest_cores": round(ingest, 2),
        "aggregator_cores": round(aggregator, 2),
        "readings_per_s_per_ingest_core": _rate(stored, ingest * seconds),
        "events_per_s_per_aggregator_core": _rate(applied, aggregator * seconds),
        **redis_cost(commands, run.events_published),
        "postgresql_cpu_ms_per_1k_rows": _share(
            cores.get("postgresql", 0) * seconds, stored * len(METRICS) / 1e6
        ),
    }


def redis_cost(commands: dict[str, tuple[int, int]], events: int) -> dict[str, Any]:
    """Redis commands (and their execution time) per event, over the whole run: without the
    bench's own polling, with it, and by command."""
    named = {name.removeprefix("cmdstat_"): figures for name, figures in commands.items()}
    platform = {n: f for n, f in named.items() if not n.startswith(BENCH_COMMANDS)}
    calls = Counter({name: c for name, (c, _) in platform.items()})
    return {
        "redis_commands_per_event": _share(sum(calls.values()), events, 2),
        "redis_commands_per_event_with_bench_polling": _share(
            sum(c for c, _ in named.values()), events, 2
        ),
        "redis_commands_per_event_by_command": {
            name: _share(c, events, 3) for name, c in calls.most_common()
        },
        "redis_command_usec_per_event": _share(sum(u for _, u in platform.values()), events, 1),
    }


def stored_bytes(settings: Settings) -> dict[str, Any]:
    """Bytes a reading takes in ``telemetry`` on this PostgreSQL (heap, indexes, TOAST)."""
    with psycopg.connect(settings.database_url) as conn:
        row = conn.execute(
            "SELECT pg_total_relation_size('telemetry'), pg_relation_size('telemetry'),"
            " (SELECT count(*) FROM telemetry)"
        ).fetchone()
    total, heap, rows = row if row else (0, 0, 0)
    return {
        "postgresql": {
            "rows": rows,
            "total_bytes": total,
            "heap_bytes": heap,
            "bytes_per_row": _share(total, rows),
            "bytes_per_reading": _share(total * len(METRICS), rows),
        }
    }


# One day of the bench workload's signals at one reading every 10 s, made in the server: a
# noisy temperature (the hardest to compress), humidity to 0.1 and a slowly draining battery.
GENERATE_DAY = """
INSERT INTO telemetry (device_id, ts, metric, value, received_at)
SELECT 'bench-' || lpad(d::text, 5, '0'), ts, m.metric,
  CASE m.metric WHEN 'temperature' THEN round((21 + 3 * random_normal())::numeric, 2)
                WHEN 'humidity' THEN round((30 + 30 * random())::numeric, 1)
                ELSE round((100 - i * 0.001)::numeric, 3) END,
  ts + (50 + 30 * random()) * interval '1 millisecond'
FROM generate_series(0, %(devices)s - 1) d,
     generate_series(0, 8640 - 1) i,
     LATERAL (SELECT timestamptz '2026-01-01' + i * interval '10 seconds' AS ts) t,
     (VALUES ('temperature'), ('humidity'), ('battery')) m(metric)
"""


def check_timescale(url: str) -> None:
    """ConfigurationError unless ``url`` answers and offers the timescaledb extension."""
    try:
        with psycopg.connect(url, connect_timeout=5) as conn:
            row = conn.execute(
                "SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'"
            ).fetchone()
    except psycopg.Error as exc:
        raise ConfigurationError(f"--timescale-url does not answer: {first_line(exc)}") from None
    if row is None:
        raise ConfigurationError("--timescale-url: that server has no timescaledb extension")


def timescale_compression(url: str, devices: int) -> dict[str, Any]:
    """Bytes per reading of one generated day on a TimescaleDB, before and after compression.

    ``url`` must be a throw-away TimescaleDB database: its telemetry table is emptied.
    """
    migrate(Settings(database_url=url, timescaledb="on"), READ_STORE_MIGRATIONS)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE telemetry")
        conn.execute(GENERATE_DAY, {"devices": devices})
        rows = _one(conn, "SELECT count(*) FROM telemetry")
        before = _one(conn, "SELECT total_bytes FROM hypertable_detailed_size('telemetry')")
        conn.execute("SELECT compress_chunk(c) FROM show_chunks('telemetry') c")
        after = _one(conn, "SELECT total_bytes FROM hypertable_detailed_size('telemetry')")
        version = conn.execute(
            "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'"
        ).fetchone()
    return {
        "timescaledb_version": version[0] if version else None,
        "devices": devices,
        "interval_seconds": 10,
        "rows": rows,
        "uncompressed_bytes": before,
        "compressed_bytes": after,
        "bytes_per_reading_uncompressed": _share(before * len(METRICS), rows),
        "bytes_per_reading_compressed": _share(after * len(METRICS), rows),
        "compression_ratio": _share(before, after),
    }


def _one(conn: psycopg.Connection[Any], sql: str) -> int:
    row = conn.execute(sql).fetchone()
    return int(row[0]) if row else 0
