"""Benchmark helpers without services: chart rates, and a missing Mosquitto client."""

from __future__ import annotations

import pytest

from benchmarks.chart import rates


def test_rates_are_counts_over_the_window() -> None:
    timeline = [[0.0, 0, 0], [0.5, 500, 100], [1.0, 1000, 600], [1.5, 1500, 1600]]
    times, stored = rates(timeline, 1)
    assert times == [0.5, 1.0, 1.5]
    assert stored == pytest.approx([1000, 1000, 1000])
    _, applied = rates(timeline, 2)
    assert applied == pytest.approx([200, 600, 1500])


def test_rates_of_a_single_sample_are_empty() -> None:
    assert rates([[0.0, 0, 0]], 1) == ([], [])


def test_a_missing_mosquitto_client_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    from benchmarks import burst, limits
    from iotp.errors import ConfigurationError

    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(ConfigurationError, match="mosquitto-clients"):
        limits._mosquitto_sub("mqtt://127.0.0.1:1883")
    with pytest.raises(ConfigurationError, match="mosquitto-clients"):
        burst.Devices("mqtt://127.0.0.1:1883", ["d"], [])


def test_cpu_per_thousand_readings_counts_only_iotp_processes() -> None:
    from benchmarks.ingest import cpu_ms_per_1k_readings

    cores = {"ingest": 0.5, "ingest-1": 0.25, "aggregator": 0.25, "postgresql": 1.0, "broker": 0.1}
    # 1 core for 10 s is 10,000 ms of CPU, over 20,000 readings: 500 ms per 1,000.
    assert cpu_ms_per_1k_readings(cores, 10.0, 20_000) == 500.0
    assert cpu_ms_per_1k_readings(cores, 10.0, 0) == 0.0


def test_ingest_path_bench_reports_each_step_per_message() -> None:
    from benchmarks.ingest_path import run_ingest_path_bench

    report = run_ingest_path_bench(200, 2)
    steps = report["us_per_message"]
    assert set(steps) == {"parse", "rows", "events", "total"}
    assert all(value > 0 for value in steps.values())
    assert steps["total"] == round(steps["parse"] + steps["rows"] + steps["events"], 2)
