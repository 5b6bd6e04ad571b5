"""The benchmarks count right: a tiny run of each, checked against what it published."""

from __future__ import annotations

from typing import Any

from benchmarks.ingest import run_ingest_bench
from benchmarks.read_models import run_aggregate_bench, run_query_bench
from iotp.settings import Settings


def test_tiny_ingest_bench_counts_every_reading(settings: Settings) -> None:
    report: dict[str, Any] = run_ingest_bench(
        settings, devices=4, readings=200, batch=10, publishers=1, timeout=60
    )
    for name, readings, messages in (
        ("single", 200, 200),
        ("batched", 1000, 100),
        ("live", 200, 200),
    ):
        run = report[name]
        assert run["readings_published"] == readings, name
        assert run["messages_published"] == messages, name
        assert run["readings_stored"] == readings and run["readings_lost"] == 0, name
        assert run["events_published"] == messages, name
        assert run["readings_per_s_stored"] > 0 and run["peak_rss_mb"] > 0, name
        assert set(run["cpu_cores"]) >= {"ingest", "broker", "postgresql", "redis"}


def test_tiny_read_side_benches(settings: Settings) -> None:
    aggregate = run_aggregate_bench(settings, events=500, devices=10, timeout=60)
    assert aggregate["events_applied"] == 500 and aggregate["pending_at_end"] == 0
    query = run_query_bench(settings, devices=50, days=1, requests=3)
    assert set(query["endpoints"]) >= {"GET /devices", "GET /fleet", "GET /pipeline"}
    assert all(v["p95_ms"] >= v["p50_ms"] > 0 for v in query["endpoints"].values())


def test_tiny_freshness_bench_sees_every_reading(settings: Settings) -> None:
    from benchmarks.freshness import run_freshness_bench

    report = run_freshness_bench(settings, rate=50, seconds=2, devices=5)
    assert report["readings_published"] >= 90
    assert report["readings_seen"] == report["readings_published"]
    assert 0 < report["p50_ms"] <= report["p95_ms"] <= report["p99_ms"] <= report["max_ms"]


def test_tiny_rebuild_bench_rebuilds_every_row(settings: Settings) -> None:
    from benchmarks.read_models import run_rebuild_bench

    report = run_rebuild_bench(settings, devices=3, rows_per_device=30)
    assert report["rows"] == 90
    assert report["metric_series"] == 9 and report["rows_per_s"] > 0
