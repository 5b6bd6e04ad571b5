"""Benchmark helpers without services: chart rates, a missing Mosquitto client, options."""

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


@pytest.mark.parametrize(
    ("option", "value"),
    [("--signal", "sine"), ("--reading-seconds", "7"), ("--reading-seconds", "0")],
)
def test_the_growth_bench_refuses_bad_options_before_starting_anything(
    option: str, value: str
) -> None:
    from typer.testing import CliRunner

    from benchmarks.commands import bench

    result = CliRunner().invoke(bench, ["growth", option, value])
    assert result.exit_code == 2
    assert option in result.output


@pytest.mark.parametrize("seconds", [60, 10, 1])
def test_the_growth_bench_sends_a_reading_every_reading_seconds(seconds: int) -> None:
    import random
    from datetime import UTC, datetime, timedelta

    from benchmarks.growth import METRICS, _hours

    start = datetime(2026, 1, 1, tzinfo=UTC)
    (event,) = _hours(["d"], start, 1, random.Random(1), "sensor", seconds)
    stamps = [reading.ts for reading in event.readings]
    assert len(stamps) == 3600 // seconds
    # One in each slot of ``seconds`` of the hour, every metric in each.
    assert [(ts - start) // timedelta(seconds=seconds) for ts in stamps] == list(
        range(3600 // seconds)
    )
    assert all(set(reading.metrics) == set(METRICS) for reading in event.readings)


def test_machine_cores_count_every_busy_second_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from collections import namedtuple

    import psutil

    from benchmarks.processes import CpuMeter

    Times = namedtuple("Times", "user nice system idle iowait irq softirq steal guest guest_nice")
    readings = iter(
        [
            Times(100.0, 0.0, 50.0, 900.0, 5.0, 0.0, 1.0, 2.0, 0.0, 0.0),
            # 10 s later: 12 s user (4 of them a guest's, also counted as user), 4 system,
            # 1 softirq, 2 iowait and 1 stolen; the rest idle
            Times(112.0, 0.0, 54.0, 901.0, 7.0, 0.0, 2.0, 3.0, 4.0, 0.0),
        ]
    )
    monkeypatch.setattr(psutil, "cpu_times", lambda: next(readings))
    monkeypatch.setattr(psutil, "cpu_count", lambda: 2)
    meter = CpuMeter()
    meter.start()
    machine = meter.machine(10.0)
    # busy: 12 user (the guest's 4 s counted there, not twice) + 4 system + 1 softirq
    assert machine.busy == pytest.approx(1.7)
    assert machine.steal == pytest.approx(0.1)
    assert machine.cores == 2


def test_the_middle_rate_leaves_out_the_start_and_the_tail() -> None:
    from benchmarks.ingest import middle_rate

    # 100 messages of 2 readings: a slow start (one ingest starting), then 100 messages/s
    samples = [(0.0, 0, 0), (1.0, 10, 10), (1.25, 35, 35), (1.5, 60, 60), (1.75, 85, 85)]
    assert middle_rate(samples, 100, 2) == pytest.approx(50 * 2 / 0.5)
    assert middle_rate(samples[:3], 100, 2) is None  # three quarters never reached
    assert middle_rate([(0.0, 0, 0), (0.5, 100, 100)], 100, 1) is None  # one sample holds both
