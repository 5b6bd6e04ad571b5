"""`iotp bench growth --timescale-url`: the rollup tiers as TimescaleDB keeps them, measured
through the retention job itself (packed into the columnar hypertables, compressed)."""

from __future__ import annotations

import pytest

from iotp.settings import Settings
from tests.support.timescale import unprepared_retention

pytestmark = pytest.mark.timescaledb


def test_tiny_growth_bench_measures_the_columnar_tiers(
    settings: Settings, timescale_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    signal = "noise"  # the worst case; the plain growth bench test runs the default signal
    from benchmarks.growth import run_growth_bench

    unprepared_retention(monkeypatch)

    report = run_growth_bench(
        settings,
        devices=2,
        days=3,
        raw_devices=1,
        query_devices=10,
        requests=2,
        timescale_url=timescale_url,
        idle_seconds=0.2,
        signal=signal,  # type: ignore[arg-type]
    )
    assert report["signal"] == signal
    tiers = report["rollups_timescaledb"]
    # 6 series, the minute tier through every minute of 3 days (and the bench's late ones).
    assert tiers["minute"]["buckets"] >= 6 * 3 * 1440
    for name, figures in tiers.items():
        # Every value the bench sends is a decimal: kept as scaled integers, compressed.
        assert figures["scaled_share"] == 1.0, name
        assert figures["batches"] > 0, name
        assert 0 < figures["bytes_per_bucket_compressed"] < report["bytes_per_bucket"]["row"][name]
    assert report["steady_state_timescaledb"]["total_gb"] > 0
