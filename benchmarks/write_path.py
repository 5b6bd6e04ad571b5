"""`iotp bench write-path`: the client CPU of one batch's database work, ingest's and the
aggregator's.

A batch's fixed cost is mostly its round trips (each about 40 µs of client CPU on a
microVM), the rest grows with its rows. Measured with ``time.process_time`` of this process
alone, over many batches against the bench's own database: ``TelemetryStore.write`` as
ingest calls it, and the aggregator's decode, fold and ``store.apply_deltas`` (rolled back,
so that every round writes the same rows).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from benchmarks.ingest import bench_settings
from benchmarks.processes import machine
from benchmarks.stores import reset
from ingest.store import StagedRow, StreamEntry, TelemetryStore
from iotp.events import from_fields_to_fold, new_event_ids, telemetry_recorded_fields
from iotp.settings import Settings
from read_models import store
from read_models.projection import fold

DEVICES = 100
METRICS = ("temperature", "humidity", "battery")


def run_write_path_bench(settings: Settings, messages: int, rounds: int) -> dict[str, Any]:
    """Client CPU a batch of ``messages`` one-reading messages (three metrics each) costs."""
    settings = bench_settings(settings)
    reset(settings)
    return {
        "machine": machine(),
        "messages_per_batch": messages,
        "rounds": rounds,
        "ingest_write": _ingest_write(settings, messages, rounds),
        "aggregator": _aggregator(settings, messages, rounds),
    }


def _per_batch(work: Callable[[int], object], rounds: int, messages: int) -> dict[str, float]:
    work(-1)  # connect, prepare
    cpu, wall = time.process_time(), time.perf_counter()
    for n in range(rounds):
        work(n)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return {
        "cpu_us_per_batch": round(cpu / rounds * 1e6, 1),
        "cpu_us_per_message": round(cpu / rounds / messages * 1e6, 2),
        "wall_ms_per_batch": round(wall / rounds * 1e3, 2),
    }


def _ingest_write(settings: Settings, messages: int, rounds: int) -> dict[str, float]:
    writer = TelemetryStore(settings.database_url, "bench-write-path")
    start = datetime.now(UTC) - timedelta(days=1)
    now = datetime.now(UTC)
    reading = (now, dict.fromkeys(METRICS, 1.5), ())
    entry = telemetry_recorded_fields("dev-0000", [reading], now, now)
    entries: list[StreamEntry] = [entry] * messages
    published: list[Any] = []

    def batch(n: int) -> None:
        rows: list[StagedRow] = []
        for m in range(messages):
            ts = start + timedelta(microseconds=(n + 1) * messages + m)
            device = f"dev-{m % DEVICES:04d}"
            rows += [(m * 3 + k, device, ts, metric, 1.5, now) for k, metric in enumerate(METRICS)]
        committed = writer.write(rows, lambda new: entries, published[-1:])
        published.append(committed.batch_id)

    try:
        return _per_batch(batch, rounds, messages)
    finally:
        writer.close()


def _aggregator(settings: Settings, messages: int, rounds: int) -> dict[str, float]:
    rng = random.Random(7)
    now = datetime.now(UTC).replace(microsecond=0)
    raw = []
    for m, event_id in enumerate(new_event_ids(messages)):
        metrics = {name: round(rng.gauss(21, 3), 2) for name in METRICS}
        ts = now - timedelta(milliseconds=10 * (messages - m))
        fields = telemetry_recorded_fields(
            f"dev-{m % DEVICES:04d}", [(ts, metrics, ())], now, now, event_id
        )
        raw.append({k.encode(): v.encode() for k, v in fields.items()})
    spent = {"decode": 0.0, "fold": 0.0}
    with psycopg.connect(settings.read_url()) as conn:

        def batch(n: int) -> None:
            started = time.process_time()
            events = [from_fields_to_fold(fields) for fields in raw]
            decoded = time.process_time()
            deltas = fold(events)
            folded = time.process_time()
            if n >= 0:
                spent["decode"] += decoded - started
                spent["fold"] += folded - decoded
            with conn.transaction(force_rollback=True):
                store.apply_deltas(conn, deltas)

        report: dict[str, float] = _per_batch(batch, rounds, messages)
    for step, seconds in spent.items():
        report[f"{step}_cpu_us_per_message"] = round(seconds / rounds / messages * 1e6, 2)
    return report
