"""`iotp bench growth --timescale-url`: the rollup tiers as TimescaleDB keeps them, measured
through the retention job itself (packed into the columnar hypertables, compressed).

The rest of the bench runs in tests/integration/test_bench.py; here only its TimescaleDB
sample, on buckets folded by the bench's own fold."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from iotp.settings import Settings
from tests.support.timescale import unprepared_retention

pytestmark = pytest.mark.timescaledb


def test_the_growth_bench_measures_the_columnar_tiers(
    settings: Settings,
    db: psycopg.Connection[Any],
    timescale_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from benchmarks.growth import _timescale_rollups, fold_backdated, steady_state

    unprepared_retention(monkeypatch)
    now = datetime.now(UTC)
    fold_backdated(db, ["growth-a", "growth-b"], 2, now, "noise")
    tiers = _timescale_rollups(db, timescale_url, now, settings)
    # 6 series through every minute of 2 days (and the hour the fold starts in).
    assert 6 * 2 * 1440 <= tiers["minute"]["buckets"] <= 6 * 3 * 1440
    assert tiers["hour"]["buckets"] >= 6 * 2 * 24
    for name, figures in tiers.items():
        # Every value the bench sends is a decimal: kept as scaled integers, compressed.
        assert figures["scaled_share"] == 1.0, name
        assert figures["batches"] > 0, name
        assert 0 < figures["bytes_per_bucket_compressed"] < 155, name
    # The steady state costs the chunks being filled as rows, on top of the compressed.
    compressed = {name: f["bytes_per_bucket_compressed"] for name, f in tiers.items()}
    chunks = {name: f["chunk_hours"] for name, f in tiers.items()}
    rows = dict.fromkeys(tiers, 155.0)
    without = steady_state(rows, compressed, {}, 2, settings)["total_gb"]
    assert steady_state(rows, compressed, {}, 2, settings, chunks)["total_gb"] > without > 0
