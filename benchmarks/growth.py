"""`iotp bench growth`: what the stores take per device-day, before and after retention, and
how the query API answers at a fleet's scale.

The workload goes through the real paths: backdated readings, one a minute per device and
metric (rollup volume depends on the minutes with data, not on the reading rate), folded by
the aggregator's own fold and store into the read models, in batches; raw telemetry is
written by ingest's own store. Nothing is inserted by hand.
"""

from __future__ import annotations

import math
import random
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import psycopg

from benchmarks.ingest import bench_settings
from benchmarks.read_models import _endpoints as query_endpoints
from benchmarks.read_models import _query_api, _time_endpoint, _time_pages, series_request
from benchmarks.stores import register, reset
from ingest.store import StagedRow, TelemetryStore
from iotp.events import RecordedReading, TelemetryRecorded
from iotp.redis_client import redis_for
from iotp.settings import Settings
from read_models import store
from read_models.projection import fold
from read_models.rebuild import rebuild
from read_models.retention import run_retention
from read_models.rollup_tiers import DAY, EPOCH, HOUR, MINUTE, PARTS, TIERS

METRICS = ("temperature", "humidity", "battery")
EVENTS_PER_BATCH = 100  # device-hours per aggregator batch: 6,000 readings
READ_STORE_TABLES = (
    *(f"rollup_{tier.name}_{part}" for tier in TIERS for part in PARTS),
    "metric_stats",
    "device_activity",
    "fleet_minute",
    "devices",
)


Signal = Literal["sensor", "noise"]
SIGNALS: tuple[Signal, ...] = ("sensor", "noise")


def _hours(
    devices: list[str],
    start: datetime,
    hours: int,
    rng: random.Random,
    signal: Signal,
    reading_seconds: int = 60,
) -> Iterator[TelemetryRecorded]:
    """One event per device and hour holding that hour's readings of every metric, one every
    ``reading_seconds`` (a divisor of 60), at each metric's resolution as a device sends it.

    ``sensor``: what sensors measure, a daily swing, a slow drift and a little noise (a
    temperature to 0.01, a humidity to 0.1). ``noise``: readings drawn independently around
    a mean every reading (sigma 2 degrees, 5 %), the hardest to compress: the worst case.
    The battery drains slowly in both.
    """
    per_minute = 60 // reading_seconds
    step = 0.02 / math.sqrt(per_minute)  # the same walk a minute whatever the reading rate
    drift = dict.fromkeys(devices, 0.0)
    for hour in range(hours):
        at = start + timedelta(hours=hour)
        for n, device in enumerate(devices):
            readings = []
            for m in range(60):
                for k in range(per_minute):
                    if signal == "noise":
                        temperature = 20 + rng.gauss(0, 2)
                        humidity = 45 + rng.gauss(0, 5)
                    else:
                        drift[device] += rng.gauss(0, step)
                        day = math.sin(
                            2 * math.pi * ((hour + (m + k / per_minute) / 60) / 24 + n / 7)
                        )
                        temperature = 20 + 3 * day + drift[device] + rng.gauss(0, 0.05)
                        humidity = 45 - 8 * day + rng.gauss(0, 0.3)
                    metrics = {
                        "temperature": round(temperature, 2),
                        "humidity": round(humidity, 1),
                        "battery": round(100.0 - hour / 100, 2),
                    }
                    second = k * reading_seconds + rng.randrange(reading_seconds)
                    ts = at + timedelta(minutes=m, seconds=second)
                    readings.append(RecordedReading(ts=ts, metrics=metrics))
            yield TelemetryRecorded(device_id=device, readings=tuple(readings), ingested_at=at)


def fold_backdated(
    conn: psycopg.Connection[Any],
    devices: list[str],
    days: int,
    now: datetime,
    signal: Signal = "sensor",
    reading_seconds: int = 60,
) -> float:
    """Fold ``days`` of ``devices``' readings, one every ``reading_seconds``, into the read
    models; seconds taken."""
    rng = random.Random(24)
    start = (now - timedelta(days=days)).replace(minute=0, second=0, microsecond=0)
    started = time.perf_counter()
    batch: list[TelemetryRecorded] = []
    for event in _hours(devices, start, days * 24, rng, signal, reading_seconds):
        batch.append(event)
        if len(batch) == EVENTS_PER_BATCH:
            _apply(conn, batch)
            batch = []
    _apply(conn, batch)
    return time.perf_counter() - started


def _apply(conn: psycopg.Connection[Any], events: list[TelemetryRecorded]) -> None:
    if events:
        with conn.transaction():
            store.lock_for_batch(conn)
            store.apply_deltas(conn, fold(events))


def _aggregating(
    settings: Settings, devices: list[str], days: int, now: datetime, meanwhile: Any
) -> dict[str, float]:
    """How long an aggregator's batches take while ``meanwhile`` runs: batches of current
    readings, and of late ones for the hours being packed or expired (the rows the job
    locks), back to back; their p50, p99 and max in ms, and the longest time the
    aggregator's session waited on a lock (sampled every 2 ms from pg_stat_activity), which
    tells a wait on the job from a stall of the machine (a checkpoint's writes, say)."""
    stop = threading.Event()
    durations: list[float] = []
    backend: list[int] = []

    def aggregate() -> None:
        rng = random.Random(99)
        with psycopg.connect(settings.read_url(), autocommit=True) as conn:
            backend.append(conn.info.backend_pid)
            while not stop.is_set():
                events = []
                for _ in range(50):
                    device = rng.choice(devices)
                    age = timedelta(seconds=rng.randrange(days * 86400))
                    ts = now - (age if rng.random() < 0.5 else timedelta(seconds=rng.random()))
                    metrics = {
                        m: round(rng.random() * 40, 2) for m in METRICS
                    }  # as devices send them
                    reading = RecordedReading(ts=ts, metrics=metrics)
                    events.append(
                        TelemetryRecorded(device_id=device, readings=(reading,), ingested_at=now)
                    )
                started = time.perf_counter()
                _apply(conn, events)
                durations.append((time.perf_counter() - started) * 1000)

    waits: list[float] = [0.0]

    def sample() -> None:
        waiting_since: float | None = None
        with psycopg.connect(settings.read_url(), autocommit=True) as conn:
            while not stop.is_set():
                if backend:
                    row = conn.execute(
                        "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s",
                        (backend[0],),
                    ).fetchone()
                    now_s = time.perf_counter()
                    if row is not None and row[0] == "Lock":
                        waiting_since = waiting_since or now_s
                        waits[0] = max(waits[0], (now_s - waiting_since) * 1000)
                    else:
                        waiting_since = None
                time.sleep(0.002)

    threads = [
        threading.Thread(target=aggregate, name="bench-aggregator"),
        threading.Thread(target=sample, name="bench-lock-sampler"),
    ]
    for thread in threads:
        thread.start()
    try:
        meanwhile()
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    durations.sort()
    return {
        "batches": len(durations),
        "p50": round(durations[len(durations) // 2], 1),
        "p99": round(durations[int(0.99 * (len(durations) - 1))], 1),
        "max": round(durations[-1], 1),
        "longest_lock_wait_ms": round(waits[0], 1),
    }


def _sizes(conn: psycopg.Connection[Any]) -> dict[str, int]:
    # What the rows take, not the space deleted rows left for reuse (VACUUM FULL): the
    # recent halves stay small in a steady state, as their freed pages are filled again.
    conn.execute("VACUUM FULL")
    conn.execute("ANALYZE")
    return {
        table: _one(conn, f"SELECT pg_total_relation_size('read_models.{table}')")
        for table in READ_STORE_TABLES
    }


def _one(conn: psycopg.Connection[Any], sql: str, *params: Any) -> int:
    row = conn.execute(sql.encode(), params or None).fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def _per_tier(sizes: dict[str, int]) -> dict[str, int]:
    """Bytes of each read model, the two halves of a rollup tier together."""
    merged: dict[str, int] = {}
    for table, size in sizes.items():
        name = table.rsplit("_", 1)[0] if table.startswith("rollup_") else table
        merged[name] = merged.get(name, 0) + size
    return merged


def _per_device_day(sizes: dict[str, int], device_days: int) -> dict[str, float]:
    return {name: round(size / device_days, 1) for name, size in _per_tier(sizes).items()}


def _raw_bytes(
    settings: Settings, devices: list[str], days: int, now: datetime, signal: Signal
) -> dict[str, Any]:
    """Raw telemetry of ``devices`` over ``days`` (every minute, three metrics), written by
    ingest's store; bytes per device-day on this server."""
    writer = TelemetryStore(settings.database_url, "bench-growth")
    rng = random.Random(24)
    start = (now - timedelta(days=days)).replace(minute=0, second=0, microsecond=0)
    try:
        rows: list[StagedRow] = []
        seq = 0
        for event in _hours(devices, start, days * 24, rng, signal):
            for reading in event.readings:
                for metric, value in reading.metrics.items():
                    rows.append((seq, event.device_id, reading.ts, metric, value, reading.ts))
                    seq += 1
            if len(rows) >= 50_000:
                writer.write(rows, lambda _new: [])
                rows = []
        if rows:
            writer.write(rows, lambda _new: [])
    finally:
        writer.close()
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE telemetry")
        size = _one(conn, "SELECT pg_total_relation_size('telemetry')")
        count = _one(conn, "SELECT count(*) FROM telemetry")
    return {
        "devices": len(devices),
        "days": days,
        "rows": count,
        "bytes": size,
        "bytes_per_device_day": round(size / (len(devices) * days), 1),
        "bytes_per_row": round(size / max(count, 1), 1),
    }


def _redis_per_device(settings: Settings, devices: list[str]) -> dict[str, Any]:
    """Redis memory per device: every key that names one of ``devices``, by MEMORY USAGE."""
    client = redis_for(settings.redis_url, settings.redis_cluster)
    total = keys = 0
    wanted = set(devices)
    for key in client.scan_iter(count=1000):
        name = key.decode() if isinstance(key, bytes) else str(key)
        if any(part in wanted for part in name.split(":")):
            total += int(client.memory_usage(key) or 0)
            keys += 1
    used: Any = client.info("memory")
    return {
        "device_keys": keys,
        "bytes_per_device": round(total / max(len(devices), 1), 1),
        "used_memory": int(used["used_memory"]),
    }


def run_growth_bench(
    settings: Settings,
    devices: int,
    days: int,
    raw_devices: int,
    query_devices: int,
    requests: int,
    timescale_url: str | None = None,
    idle_seconds: float = 10.0,
    signal: Signal = "sensor",
    reading_seconds: int = 60,
) -> dict[str, Any]:
    """Bytes per device-day of every read model before and after retention; raw telemetry's;
    Redis's per device; and query p95s at ``query_devices`` devices.

    The issue's workload is a reading a minute (a row layout's bucket costs the same whatever
    it holds); ``reading_seconds`` folds more, for the compressed layouts, whose integers
    change by more when a bucket sums more readings."""
    settings = bench_settings(settings)
    now = datetime.now(UTC)
    reset(settings)
    ids = [f"growth-{n:05d}" for n in range(devices)]
    device_days = devices * days
    with psycopg.connect(settings.read_url(), autocommit=True) as conn:
        fold_seconds = fold_backdated(conn, ids, days, now, signal, reading_seconds)
        if timescale_url is not None:
            # Sampled before the lock workload below adds its late readings to these series.
            rollups_timescaledb = _timescale_rollups(conn, timescale_url, now, settings)
        readings = device_days * 1440 * (60 // reading_seconds)
        before = _sizes(conn)
        row_bytes = _bytes_per_bucket(conn, before, "recent")
        idle = _aggregating(settings, ids, days, now, lambda: time.sleep(idle_seconds))
        timed: dict[str, Any] = {}

        def retention_now() -> None:
            started = time.perf_counter()
            timed["report"] = run_retention(settings, now=now)
            timed["seconds"] = time.perf_counter() - started

        during = _aggregating(settings, ids, days, now, retention_now)
        report, retention_seconds = timed["report"], timed["seconds"]
        after = _sizes(conn)
    assert report is not None
    result: dict[str, Any] = {
        "devices": devices,
        "days": days,
        "metrics": len(METRICS),
        "signal": signal,
        "reading_seconds": reading_seconds,
        "readings_folded": readings,
        "fold_readings_per_s": round(readings / fold_seconds),
        "retention": {
            "minute_days": settings.rollup_minute_retention_days,
            "hour_days": settings.rollup_hour_retention_days,
            "seconds": round(retention_seconds, 1),
            "rows": report.rows,
            "longest_batch_ms": round(report.longest_batch_ms, 1),
            "longest_ms_by_step": {k: round(v, 1) for k, v in report.longest_ms.items()},
            "cancelled_rounds": report.cancelled_rounds,
            "aggregator_batch_ms_idle": idle,
            "aggregator_batch_ms_during_retention": during,
        },
        "bytes_per_device_day_before": _per_device_day(before, device_days),
        "bytes_per_device_day_after": _per_device_day(after, device_days),
        "read_store_bytes_before": sum(before.values()),
        "read_store_bytes_after": sum(after.values()),
        "raw_telemetry_plain": _raw_bytes(settings, ids[:raw_devices], days, now, signal),
    }
    if timescale_url is not None:
        from benchmarks.scale import timescale_compression

        compressed = timescale_compression(timescale_url, 20)
        compressed["bytes_per_device_day_compressed_at_1_per_minute"] = round(
            compressed["bytes_per_reading_compressed"] * 1440, 1
        )
        result["raw_telemetry_timescaledb"] = compressed
    with psycopg.connect(settings.read_url(), autocommit=True) as conn:
        keep_all = settings.model_copy(
            update={"rollup_minute_retention_days": 10**5, "rollup_hour_retention_days": 10**5}
        )
        run_retention(keep_all, now=now + timedelta(days=70))  # everything packed
        packed = _bytes_per_bucket(conn, _sizes(conn), "packed")
        if timescale_url is not None:
            result["rollups_timescaledb"] = rollups_timescaledb
    result["bytes_per_bucket"] = {"row": row_bytes, "packed": packed}
    result["steady_state"] = steady_state(row_bytes, packed, _per_tier(after), devices, settings)
    if timescale_url is not None:
        compressed = {
            name: figures["bytes_per_bucket_compressed"]
            for name, figures in result["rollups_timescaledb"].items()
        }
        chunks = {
            name: figures["chunk_hours"] for name, figures in result["rollups_timescaledb"].items()
        }
        result["steady_state_timescaledb"] = steady_state(
            row_bytes, compressed, _per_tier(after), devices, settings, chunks
        )
    result["queries"] = _queries(settings, query_devices, requests, now)
    result["redis"] = _redis_per_device(settings, [f"query-{n:05d}" for n in range(query_devices)])
    return result


def _timescale_rollups(
    conn: psycopg.Connection[Any], url: str, now: datetime, settings: Settings, series: int = 30
) -> dict[str, dict[str, float]]:
    """Bytes per bucket of the tiers as TimescaleDB keeps them: the first ``series``
    device-metric pairs' buckets as folded (minutes only as far back as their retention)
    put in a throw-away TimescaleDB's ``_recent`` tables (migrated, so its tables are the
    ones iotp makes), then packed into the columnar hypertables and compressed there by the
    retention job itself.

    A compressed chunk of a few series is mostly its fixed pages, which a fleet's chunk
    spreads over thousands of series; so the figure is the compressed rows' own bytes
    (each batch of a series' buckets, with its tuple header and line pointer) and their
    index entries, per bucket. The whole hypertable's bytes are reported beside it.
    """
    from iotp.migrate import migrate
    from read_models import retention
    from read_models.schema import READ_STORE_MIGRATIONS

    ts_settings = Settings(database_url=url, timescaledb="on")
    migrate(ts_settings, READ_STORE_MIGRATIONS)
    found: dict[str, dict[str, float]] = {}
    with psycopg.connect(url, autocommit=True, prepare_threshold=None) as target:
        for tier in TIERS:
            since = EPOCH  # all of it, but minutes only as far back as they are kept
            if tier is MINUTE:
                since = now - timedelta(days=settings.rollup_minute_retention_days)
            rows = conn.execute(
                f"SELECT v.* FROM {tier.view} v JOIN (SELECT DISTINCT device_id, metric"  # noqa: S608
                f" FROM {tier.view} ORDER BY 1, 2 LIMIT %s) s USING (device_id, metric)"
                " WHERE v.bucket >= %s",
                (series, since),
            ).fetchall()
            target.execute(f"TRUNCATE {tier.recent}, {tier.packed}, {tier.columnar}")
            for start in range(0, len(rows), 20_000):  # PGlite has no COPY
                part = [list(column) for column in zip(*rows[start : start + 20_000], strict=True)]
                target.execute(
                    f"INSERT INTO {tier.recent} SELECT * FROM unnest(%s::text[], %s::text[],"  # noqa: S608
                    " %s::timestamptz[], %s::int8[], %s::float8[], %s::float8[], %s::float8[])",
                    part,
                )
            found[tier.name] = {"buckets": len(rows)}

    keep_all = ts_settings.model_copy(
        update={"rollup_minute_retention_days": 10**5, "rollup_hour_retention_days": 10**5}
    )
    # The job's own connection is the only one here that prepares statements (PGlite keeps
    # one session behind all connections, where two connections' names would collide).
    retention.run_retention(keep_all, now=now + timedelta(days=70))
    with psycopg.connect(url, autocommit=True, prepare_threshold=None) as target:
        for tier in TIERS:
            figures = found[tier.name]
            name = tier.columnar.removeprefix("read_models.")
            chunks = target.execute(
                "SELECT format('%%I.%%I', c2.schema_name, c2.table_name)"
                " FROM _timescaledb_catalog.chunk c1"
                " JOIN _timescaledb_catalog.chunk c2 ON c2.id = c1.compressed_chunk_id"
                " JOIN _timescaledb_catalog.hypertable h ON h.id = c1.hypertable_id"
                " WHERE h.table_name = %s",
                (name,),
            ).fetchall()
            batches = row_bytes = index_bytes = 0
            for (chunk,) in chunks:
                # An index entry: its key columns (whichever the layout makes them), its
                # tuple header and line pointer.
                key = target.execute(
                    "SELECT string_agg(format('pg_column_size(c.%%I)', a.attname), ' + ')"
                    " FROM pg_index i JOIN pg_attribute a"
                    " ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)"
                    " WHERE i.indrelid = %s::regclass",
                    (chunk,),
                ).fetchone()
                sizes = target.execute(
                    "SELECT count(*), coalesce(sum(pg_column_size(c.*) + 28), 0),"  # noqa: S608
                    f" coalesce(sum({key[0] if key and key[0] else '0'} + 12), 0) FROM {chunk} c"
                ).fetchone()
                count, data, keys = sizes if sizes else (0, 0, 0)
                batches += count
                row_bytes += data
                index_bytes += keys
            scaled = _one(target, f"SELECT count(*) FROM {tier.columnar} WHERE scale IS NOT NULL")  # noqa: S608
            total = _one(
                target,
                "SELECT total_bytes FROM hypertable_detailed_size(%s::regclass)",
                tier.columnar,
            )
            buckets = max(int(figures["buckets"]), 1)
            interval = target.execute(
                "SELECT time_interval FROM timescaledb_information.dimensions"
                " WHERE hypertable_name = %s",
                (name,),
            ).fetchone()
            figures.update(
                {
                    "chunk_hours": interval[0].total_seconds() / 3600 if interval else 0.0,
                    "series": series,
                    "batches": batches,
                    "scaled_share": round(scaled / buckets, 3),
                    "bytes_per_bucket_compressed": round((row_bytes + index_bytes) / buckets, 2),
                    "hypertable_bytes_per_bucket_with_fixed_pages": round(total / buckets, 1),
                }
            )
    return found


def _bytes_per_bucket(
    conn: psycopg.Connection[Any], sizes: dict[str, int], half: str
) -> dict[str, float]:
    """Bytes per bucket of each tier's ``half`` (recent: rows; packed: arrays), with indexes."""
    found: dict[str, float] = {}
    for tier in TIERS:
        if half == "recent":
            buckets = _one(conn, f"SELECT count(*) FROM {tier.recent}")  # noqa: S608
        else:
            buckets = _one(
                conn,
                f"SELECT count(*) FROM {tier.packed}, unnest(counts) c WHERE c IS NOT NULL",  # noqa: S608
            )
        table = f"rollup_{tier.name}_{half}"
        if buckets:
            found[tier.name] = round(sizes[table] / buckets, 1)
    return found


def steady_state(
    row_bytes: dict[str, float],
    packed_bytes: dict[str, float],
    after: dict[str, int],
    devices: int,
    settings: Settings,
    uncompressed_hours: dict[str, float] | None = None,
) -> dict[str, Any]:
    """The read store of 10,000 devices x 3 metrics reporting every 10 s, a year on, with
    these tiers: buckets kept x measured bytes per bucket (a bucket costs the same whatever
    the readings in it, so minutely readings measure it), plus the recent halves (a tier's
    grace of rows), plus, with TimescaleDB, ``uncompressed_hours`` of rows by tier (a
    chunk being filled, at its fullest, costed as rows), and the per-series statistics."""
    series = 10_000 * len(METRICS)
    kept = {
        MINUTE: settings.rollup_minute_retention_days * 1440,
        HOUR: settings.rollup_hour_retention_days * 24,
        DAY: 365,
    }
    gigabytes: dict[str, float] = {}
    for tier, buckets in kept.items():
        recent = tier.grace / tier.bucket
        recent += (
            (uncompressed_hours or {}).get(tier.name, 0.0) * 3600 / tier.bucket.total_seconds()
        )
        per_series = buckets * packed_bytes.get(tier.name, 0.0) + recent * row_bytes.get(
            tier.name, 0.0
        )
        gigabytes[f"{tier.name} tier"] = round(series * per_series / 1e9, 2)
    per_device = (after.get("metric_stats", 0) + after.get("device_activity", 0)) / devices
    gigabytes["statistics and activity"] = round(10_000 * per_device / 1e9, 3)
    total = sum(gigabytes.values())
    return {
        "devices": 10_000,
        "metrics": len(METRICS),
        "minute_days": settings.rollup_minute_retention_days,
        "hour_days": settings.rollup_hour_retention_days,
        "gb": gigabytes,
        "total_gb": round(total, 2),
    }


def _queries(settings: Settings, devices: int, requests: int, now: datetime) -> dict[str, Any]:
    """p50/p95 of every query endpoint at ``devices`` devices: each with its statistics, the
    shown one with 30 days of minutely readings folded, then retention (7 days of minutes,
    30 days of hours kept)."""
    reset(settings)
    ids = [f"query-{n:05d}" for n in range(devices)]
    shown = ids[0]
    register(settings, ids, "thermostat", [{"name": m} for m in METRICS])
    with psycopg.connect(settings.read_url(), autocommit=True) as conn:
        rebuild(settings)  # the devices' rows, as the aggregators would have them
        rng = random.Random(7)
        one_each = [
            TelemetryRecorded(
                device_id=device,
                readings=(
                    RecordedReading(
                        ts=now - timedelta(minutes=rng.randrange(30)),
                        metrics={m: round(rng.random() * 40, 2) for m in METRICS},
                    ),
                ),
                ingested_at=now,
                received_at=now - timedelta(seconds=rng.randrange(900)),
            )
            for device in ids
        ]
        for start in range(0, len(one_each), 1000):
            _apply(conn, one_each[start : start + 1000])
        fold_backdated(conn, [shown], 30, now)
        run_retention(settings, now=now)
        conn.execute("VACUUM ANALYZE")
    endpoints = _endpoints(shown, now)
    with (
        tempfile.TemporaryDirectory(prefix="iotp-bench-") as tmp,
        _query_api(settings, tmp) as http,
    ):
        timed = {
            name: _time_endpoint(http, path, params, requests)
            for name, (path, params) in endpoints.items()
        }
    return {
        "devices": devices,
        "endpoints": timed,
        "dashboard_pages": _time_pages(settings, shown, requests),
    }


def _endpoints(shown: str, now: datetime) -> dict[str, tuple[str, dict[str, Any]]]:
    """`iotp bench query`'s requests, and those the tiers add: a week of minutes, a month of
    days, and the alarms."""

    return {
        **query_endpoints(shown, "thermostat", now),
        "GET /devices/{id}/series 7d@1m": series_request(shown, now, timedelta(days=7), "1m"),
        "GET /devices/{id}/series 30d@1d": series_request(shown, now, timedelta(days=30), "1d"),
        "GET /alarms": ("/alarms", {}),
    }
