"""The benchmarks count right: a tiny run of each, checked against what it published."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.chart import ingest_chart
from benchmarks.ingest import Deployment, DrainPlan, run_ingest_bench
from benchmarks.read_models import run_aggregate_bench, run_query_bench
from iotp.settings import Settings


def tiny_drains(readings: int, deployment: Deployment) -> DrainPlan:
    """Four devices, ten readings a batched message, one publisher."""
    return DrainPlan(4, readings, batch=10, publishers=1, timeout=60, deployment=deployment)


def test_tiny_ingest_bench_counts_every_reading(settings: Settings, tmp_path: Path) -> None:
    plan = tiny_drains(200, Deployment(ingests=2, aggregators=2))
    report: dict[str, Any] = run_ingest_bench(settings, plan)
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
        assert run["events_applied"] == messages, name
        # A drain's clock starts once every ingest is up; a session resumed with a backlog is
        # read from its CONNACK, so a tiny backlog may be stored before then (a rate of 0).
        assert run["readings_per_s_stored"] >= 0 and run["peak_rss_mb"] > 0, name
        assert run["readings_per_s_applied"] >= 0 and run["aggregator_peak_rss_mb"] > 0, name
        assert run["seconds_stored"] <= run["seconds_applied"], name
        assert set(run["cpu_cores"]) >= {
            *("ingest", "ingest-1", "aggregator", "aggregator-1"),
            *("broker", "postgresql", "redis"),
        }
        # CPU comes in clock ticks (10 ms): a tiny run may take none, never less than none.
        assert run["cpu_ms_per_1k_readings"] >= 0, name
        # The timeline counts up to everything stored and applied, never past it.
        seconds, stored, applied = zip(*run["timeline"], strict=True)
        assert list(seconds) == sorted(seconds) and max(stored) <= readings, name
        assert all(a <= readings for a in applied), name
    assert report["live"]["stored_fraction_of_publish_rate"] > 0
    assert report["live"]["readings_per_s_stored"] > 0
    assert report["live"]["readings_per_s_applied"] > 0
    assert sum(report[name]["cpu_ms_per_1k_readings"] for name in ("single", "batched", "live")) > 0
    assert report["single"]["stored_fraction_of_publish_rate"] is None
    chart = tmp_path / "ingest.png"
    ingest_chart(report, chart)
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_tiny_limits_bench_counts_what_each_ceiling_received(settings: Settings) -> None:
    from benchmarks.limits import run_limits_bench

    report = run_limits_bench(settings, tiny_drains(400, Deployment()))
    assert report["database_copy"]["data_points"] == 2000 * 3
    for part in ("no_index", "unique_key"):
        assert report["database_copy"][part]["readings_per_s"] > 0
    for name, messages in (("single", 400), ("batched", 200)):
        run = report[name]
        assert run["iotp"]["readings_lost"] == 0, name
        counters = ("broker_paho", "broker_paho_as_ingest", "ingest_receive_path")
        for broker in ("broker_mosquitto_sub", *counters):
            assert run[broker]["messages"] == messages, (name, broker)
            assert run[broker]["subscriber_cpu_ms_per_1k_messages"] > 0, (name, broker)
        for broker in counters:
            assert run[broker]["fraction_of_broker_mosquitto_sub"] > 0, (name, broker)
        expected = run["iotp"]["readings_per_s_stored"] / run["broker_paho"]["readings_per_s"]
        assert abs(run["fraction_of_broker_paho"] - expected) < 0.001


def test_tiny_burst_bench_loses_nothing_and_measures_the_drain(settings: Settings) -> None:
    from benchmarks.burst import BurstPlan, run_burst_bench

    # Four devices at 50 messages/s: a 1 s burst of ten times that, after 0.5 s and before 1 s.
    plan = BurstPlan(4, 50, 10, 1, 0.5, 1, timeout=60, deployment=Deployment())
    report = run_burst_bench(settings, plan)
    messages = report["messages_published"]
    assert 500 <= messages <= 700  # 25 + 500 + 50 asked
    assert report["readings_stored"] == messages and report["readings_lost"] == 0
    assert report["events_applied"] == messages
    assert report["drain_seconds_after_burst"] is not None
    assert report["peak_rss_mb"]["ingest"] > 0 and report["peak_rss_mb"]["aggregator"] > 0
    published = [sample[1] for sample in report["timeline"]]
    assert published == sorted(published) and published[-1] == messages


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


def test_tiny_growth_bench_folds_packs_and_expires(settings: Settings) -> None:
    from benchmarks.growth import run_growth_bench

    report = run_growth_bench(
        settings,
        devices=2,
        days=9,
        raw_devices=1,
        query_devices=20,
        requests=3,
        idle_seconds=0.5,
    )
    assert report["readings_folded"] == 2 * 9 * 1440
    rows = report["retention"]["rows"]
    # Everything past the minute tier's grace is packed; 2 of the 9 days are past its 7.
    assert rows["packed minute buckets"] >= 2 * 3 * (9 * 1440 - 120)
    assert rows["expired minute periods"] >= 2 * 3 * 24
    before, after = report["read_store_bytes_before"], report["read_store_bytes_after"]
    assert after < before
    packed, row = report["bytes_per_bucket"]["packed"], report["bytes_per_bucket"]["row"]
    assert packed["minute"] < row["minute"] / 3
    assert report["steady_state"]["total_gb"] > 0
    assert report["raw_telemetry_plain"]["rows"] == 9 * 1440 * 3
    assert all(v["p95_ms"] >= v["p50_ms"] > 0 for v in report["queries"]["endpoints"].values())
    assert "Device (90 d, day buckets)" in report["queries"]["dashboard_pages"]
    waits = report["retention"]["aggregator_batch_ms_during_retention"]
    assert waits["batches"] > 0 and waits["longest_lock_wait_ms"] >= 0


def test_tiny_write_path_bench_times_both_sides_and_keeps_what_ingest_wrote(
    settings: Settings,
) -> None:
    import psycopg

    from benchmarks.ingest import bench_settings
    from benchmarks.write_path import run_write_path_bench

    report = run_write_path_bench(settings, messages=5, rounds=3)
    for side in ("ingest_write", "aggregator"):
        assert report[side]["cpu_us_per_batch"] > 0
        assert report[side]["wall_ms_per_batch"] > 0
    assert report["aggregator"]["fold_cpu_us_per_message"] >= 0
    # every batch stored (the warm-up's included) and the ledger forgot all but the last
    with psycopg.connect(bench_settings(settings).database_url) as conn:
        assert conn.execute("SELECT count(*) FROM telemetry").fetchone() == (4 * 5 * 3,)
        assert conn.execute("SELECT count(*) FROM ingest_ledger").fetchone() == (1,)
    with psycopg.connect(bench_settings(settings).read_url()) as conn:
        assert conn.execute("SELECT count(*) FROM read_models.metric_stats").fetchone() == (0,)
