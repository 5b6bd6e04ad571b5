"""`iotp bench aggregate` and `iotp bench query`: the read side's throughput and latency."""

from __future__ import annotations

import functools
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg

from benchmarks.ingest import bench_settings
from benchmarks.platform import STOP_GRACE_SECONDS, BenchProcess, start_service
from benchmarks.processes import CpuMeter
from benchmarks.stores import BENCH_TOKEN, register, reset
from ingest.publisher import StreamPublisher
from iotp.events import telemetry_recorded_fields
from iotp.names import TELEMETRY_EVENTS_STREAM
from iotp.redis_client import redis_for
from iotp.settings import Settings
from local_platform.broker import free_port


def run_aggregate_bench(
    settings: Settings, events: int, devices: int, timeout: float
) -> dict[str, Any]:
    """Fill the telemetry stream with ``events`` events, then time one aggregator on it."""
    settings = bench_settings(settings)
    reset(settings)
    client = redis_for(settings.redis_url, settings.redis_cluster)
    publisher = StreamPublisher(client, 10 * events, 1000)
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
    chunk: list[dict[str, str]] = []
    for n in range(events):
        ts = start + timedelta(seconds=n // devices)
        chunk.append(
            telemetry_recorded_fields(
                f"bench-{n % devices:05d}",
                [(ts, {"temperature": 20 + n % 7, "humidity": 40 + n % 11, "battery": 90.0}, ())],
                ts,
                ts,
            )
        )
        if len(chunk) == 5000:
            publisher.publish(chunk)
            chunk = []
    publisher.publish(chunk)
    with tempfile.TemporaryDirectory(prefix="iotp-bench-") as tmp:
        child = start_service(settings, ["aggregate"], Path(tmp) / "aggregate.log")
        try:
            meter = CpuMeter()
            meter.add("aggregator", child.family())
            meter.add_named("postgresql", "postgres", "postgresql")
            meter.add_named("redis", "redis-server")
            meter.start()
            started = time.perf_counter()
            applied = _wait_applied(settings, events, timeout, child)
            seconds = time.perf_counter() - started
            cpu = meter.stop(seconds)
            rss = child.peak_rss_mb()
            info: Any = client.xinfo_groups(TELEMETRY_EVENTS_STREAM)
        finally:
            child.stop(STOP_GRACE_SECONDS)
    group = info[0] if info else {}
    return {
        "events": events,
        "events_applied": applied,
        "data_points_applied": applied * 3,
        "seconds": round(seconds, 3),
        "events_per_s_applied": round(applied / seconds, 1),
        "data_points_per_s_applied": round(applied * 3 / seconds, 1),
        "lag_at_end": group.get("lag"),
        "pending_at_end": group.get("pending"),
        "peak_rss_mb": rss,
        "cpu_cores": cpu,
        "note": "aggregator started after the stream was filled; time includes its start",
    }


def _wait_applied(settings: Settings, events: int, timeout: float, child: BenchProcess) -> int:
    """Events the read models applied once they reach ``events``, or at the timeout."""
    started = time.perf_counter()
    applied = 0
    with psycopg.connect(settings.read_url(), autocommit=True) as conn:
        while time.perf_counter() - started < timeout:
            row = conn.execute("SELECT count(*) FROM read_models.applied_events").fetchone()
            applied = int(row[0]) if row else 0
            if applied >= events:
                break
            child.check()
            time.sleep(0.05)
    return applied


def seed_query_store(settings: Settings, devices: int, days: int) -> str:
    """``devices`` devices with stats, and ``days`` of minute rollups for one of them."""
    reset(settings)
    shown = "bench-00000"
    with psycopg.connect(settings.read_url(), autocommit=True) as conn:
        conn.execute(
            """
            INSERT INTO read_models.devices (device_id, name, kind, status, registered_at,
                updated_at, attrs_at, metrics)
            SELECT format('bench-%%s', lpad(n::text, 5, '0')), format('Sensor %%s', n),
                   (ARRAY['thermostat', 'tracker', 'meter'])[1 + n %% 3],
                   CASE WHEN n %% 50 = 49 THEN 'decommissioned' ELSE 'active' END,
                   now() - interval '40 days', now(), now(), '[]'::jsonb
            FROM generate_series(0, %s - 1) AS n
            """,
            (devices,),
        )
        conn.execute(
            """
            INSERT INTO read_models.device_activity (device_id, last_seen, readings)
            SELECT device_id, now() - (random() * interval '20 minutes'), 1000
            FROM read_models.devices WHERE random() < 0.9
            """
        )
        conn.execute(
            """
            INSERT INTO read_models.metric_stats (device_id, metric, count, sum, min, min_ts,
                max, max_ts, first_ts, last_ts, last_value, last_out_of_range, breaches)
            SELECT d.device_id, m, 1000, 20000, 1, now(), 40, now(), now() - interval '30 days',
                   now(), 20, random() < 0.01, 3
            FROM read_models.devices d, unnest(ARRAY['temperature', 'humidity', 'battery']) m
            """
        )
        conn.execute(
            """
            INSERT INTO read_models.rollup_minute_recent (device_id, metric, bucket, count,
                sum, min, max)
            SELECT %s, m, b, 4, 80, 19, 21
            FROM unnest(ARRAY['temperature', 'humidity', 'battery']) m,
                 generate_series(date_trunc('minute', now()) - %s * interval '1 day',
                                 date_trunc('minute', now()), interval '1 minute') b
            """,
            (shown, days),
        )
        conn.execute(
            """
            INSERT INTO read_models.rollup_hour_recent (device_id, metric, bucket, count, sum,
                min, max)
            SELECT device_id, metric, date_trunc('hour', bucket), sum(count), sum(sum),
                   min(min), max(max)
            FROM read_models.rollup_minute_recent GROUP BY 1, 2, 3
            """
        )
        conn.execute(
            """
            INSERT INTO read_models.fleet_minute (bucket, readings)
            SELECT b, 30000 FROM generate_series(date_trunc('minute', now()) - interval '1 hour',
                date_trunc('minute', now()), interval '1 minute') b
            """
        )
        conn.execute("ANALYZE")
    return shown


def run_query_bench(settings: Settings, devices: int, days: int, requests: int) -> dict[str, Any]:
    """Latency of every query API endpoint, and of the queries behind each dashboard page."""
    settings = bench_settings(settings)
    shown = seed_query_store(settings, devices, days)
    with (
        tempfile.TemporaryDirectory(prefix="iotp-bench-") as tmp,
        _query_api(settings, tmp) as http,
    ):
        results = {
            name: _time_endpoint(http, path, params, requests)
            for name, (path, params) in _endpoints(shown).items()
        }
    return {
        "devices": devices,
        "rollup_days": days,
        "endpoints": results,
        "dashboard_pages": _time_pages(settings, shown, requests),
    }


def series_request(
    shown: str, now: datetime, span: timedelta, bucket: str
) -> tuple[str, dict[str, Any]]:
    """The temperature series of ``shown`` over ``span`` up to ``now``, in ``bucket``s."""
    window = {"from": (now - span).isoformat(), "to": now.isoformat(), "bucket": bucket}
    return f"/devices/{shown}/series", {"metric": "temperature", **window}


def _endpoints(
    shown: str, kind: str = "tracker", now: datetime | None = None
) -> dict[str, tuple[str, dict[str, Any]]]:
    """Each timed request: its name in the report, its path and its query parameters."""
    at = now or datetime.now(UTC)

    def series(span: timedelta, bucket: str) -> tuple[str, dict[str, Any]]:
        return series_request(shown, at, span, bucket)

    filtered = {"status": "active", "kind": kind, "sort": "last_seen", "order": "desc"}
    return {
        "GET /devices": ("/devices", {}),
        "GET /devices (filtered, sorted)": ("/devices", {**filtered, "limit": 100}),
        "GET /devices (page 50)": ("/devices", {"offset": 2500, "limit": 50}),
        "GET /devices/{id}": (f"/devices/{shown}", {}),
        "GET /devices/{id}/stats": (f"/devices/{shown}/stats", {}),
        "GET /devices/{id}/series 1h@1m": series(timedelta(hours=1), "1m"),
        "GET /devices/{id}/series 24h@1m": series(timedelta(days=1), "1m"),
        "GET /devices/{id}/series 7d@1h": series(timedelta(days=7), "1h"),
        "GET /devices/{id}/series 30d@1h": series(timedelta(days=30), "1h"),
        "GET /fleet": ("/fleet", {}),
        "GET /pipeline": ("/pipeline", {}),
    }


@contextmanager
def _query_api(settings: Settings, workdir: str) -> Iterator[httpx.Client]:
    """`iotp query-api` on a free port, and a client of it once it answers."""
    port = free_port()
    log = Path(workdir) / "query.log"
    process = start_service(settings, ["query-api", "--port", str(port)], log, log_level="WARNING")
    headers = {"Authorization": f"Bearer {BENCH_TOKEN}"}
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=30) as http:
            deadline = time.monotonic() + 30
            while not _healthy(http):
                if time.monotonic() > deadline or not process.running():
                    raise RuntimeError(f"query API did not start:\n{process.output()}")
                time.sleep(0.1)
            yield http
    finally:
        process.stop(STOP_GRACE_SECONDS)


def _healthy(http: httpx.Client) -> bool:
    try:
        return http.get("/healthz").status_code == 200
    except httpx.HTTPError:
        return False


def _time_endpoint(
    http: httpx.Client, path: str, params: dict[str, Any], requests: int
) -> dict[str, Any]:
    for _ in range(5):  # warm the pool and the caches
        http.get(path, params=params).raise_for_status()
    responses: list[httpx.Response] = []
    timings = _latencies(lambda: responses.append(http.get(path, params=params)), requests)
    for response in responses:
        response.raise_for_status()
    return {
        **_percentiles(timings),
        "max_ms": round(timings[-1], 2),
        "requests": requests,
        "bytes": len(responses[-1].content),
    }


def _latencies(call: Callable[[], object], requests: int) -> list[float]:
    """Milliseconds that each of ``requests`` calls took, fastest first."""
    timings = []
    for _ in range(requests):
        started = time.perf_counter()
        call()
        timings.append((time.perf_counter() - started) * 1000)
    return sorted(timings)


def _percentiles(timings: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(statistics.median(timings), 2),
        "p95_ms": round(timings[int(0.95 * (len(timings) - 1))], 2),
    }


def _time_pages(settings: Settings, shown: str, requests: int) -> dict[str, Any]:
    """The read-model queries behind each dashboard page, called as the pages call them."""
    from read_models import queries
    from read_models.health import pipeline_health

    rule = queries.LivenessRule.from_settings(settings)
    client = redis_for(settings.redis_url, settings.redis_cluster)
    now = datetime.now(UTC)

    def fleet(conn: queries.Conn) -> None:
        queries.fleet(conn, rule)
        pipeline_health(conn, client)
        queries.kinds(conn)  # the kind filter's choices
        queries.list_devices(conn, rule, sort="name", limit=settings.dashboard_page_size)

    def device(conn: queries.Conn, span: timedelta, bucket: str) -> None:
        queries.get_device(conn, rule, shown)
        for stat in queries.device_stats(conn, shown):
            queries.series(conn, shown, stat.metric, now - span, now, bucket)  # type: ignore[arg-type]

    pages: dict[str, Callable[[queries.Conn], object]] = {
        "Fleet": fleet,
        "Device (24 h, minute buckets)": lambda c: device(c, timedelta(days=1), "1m"),
        "Device (7 d, hour buckets)": lambda c: device(c, timedelta(days=7), "1h"),
        "Device (90 d, day buckets)": lambda c: device(c, timedelta(days=90), "1d"),
        "Pipeline": lambda c: pipeline_health(c, client),
    }
    with psycopg.connect(settings.read_url(), autocommit=True) as conn:
        return {
            name: _percentiles(_latencies(functools.partial(load, conn), requests))
            for name, load in pages.items()
        }


def run_rebuild_bench(settings: Settings, devices: int, rows_per_device: int) -> dict[str, Any]:
    """Rows of the write store recomputed into the read models per second by `iotp rebuild`."""
    from read_models.rebuild import rebuild

    settings = bench_settings(settings)
    ids = [f"rebuild-{n:05d}" for n in range(devices)]
    reset(settings)
    register(settings, ids, "counter", [])
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=2)
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        # A reading of three metrics every 10 s per device, generated by PostgreSQL itself.
        conn.execute(
            """
            INSERT INTO telemetry (device_id, ts, metric, value, received_at)
            SELECT d.device_id, t.ts, m.metric, m.value, t.ts
            FROM unnest(%s::text[]) AS d(device_id),
                 generate_series(0, %s - 1) AS n,
                 LATERAL (SELECT %s::timestamptz + n * interval '10 seconds' AS ts) AS t,
                 LATERAL (VALUES ('temperature', 20 + n %% 9), ('humidity', 40 + n %% 5),
                                 ('battery', 90)) AS m(metric, value)
            """,
            (ids, rows_per_device // 3, start),
        )
        row = conn.execute("SELECT count(*) FROM telemetry").fetchone()
        rows = int(row[0]) if row else 0
    started = time.perf_counter()
    report = rebuild(settings)
    seconds = time.perf_counter() - started
    return {
        "devices": devices,
        "rows": rows,
        "seconds": round(seconds, 3),
        "rows_per_s": round(rows / seconds, 1),
        "metric_series": report.metric_series,
        "minute_buckets": report.minute_buckets,
        "hour_buckets": report.hour_buckets,
    }
