"""`iotp bench scale` counts right: a tiny run on a real local Redis Cluster, k = 1 and 2.

The figures themselves are machine-dependent; what is checked is that every reading was
stored and applied once, that each run reports its per-process figures, and that the
cluster the bench makes is gone when it ends.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil
import pytest
from typer.testing import CliRunner

from benchmarks.commands import bench
from benchmarks.ingest import RunResult
from benchmarks.scale import (
    BENCH_COMMANDS,
    ScalePlan,
    command_delta,
    parse_ks,
    per_process,
    run_scale_bench,
)
from iotp.errors import ConfigurationError
from iotp.event_shards import telemetry_streams
from iotp.settings import Settings
from local_platform.broker import free_port
from local_platform.redis_cluster import BUS_PORT_OFFSET, local_redis_cluster

PER_RUN = {
    "k",
    "ingests",
    "aggregators",
    "readings_stored",
    "readings_lost",
    "events_applied",
    "readings_per_s_stored",
    "readings_per_s_applied",
    "cpu_cores",
    "readings_per_s_per_ingest_core",
    "events_per_s_per_aggregator_core",
    "redis_commands_per_event",
    "redis_commands_per_event_by_command",
    "postgresql_cpu_ms_per_1k_rows",
    "redis_cluster_cpu_ms_per_1k_events",
}


def test_tiny_scale_bench_loses_nothing_and_reports_per_process(settings: Settings) -> None:
    # In the test's own database: a real `iotp bench scale` may be running on its default one.
    database = urlsplit(settings.database_url).path.lstrip("/")
    plan = ScalePlan(4, 200, 6, (1, 2), 60, database=database)
    report: dict[str, Any] = run_scale_bench(settings, plan)
    assert [run["k"] for run in report["runs"]] == [1, 2]
    assert report["redis"] == {"cluster_masters": 3, "event_shards": 6}
    for run in report["runs"]:
        k = run["k"]
        assert set(run) >= PER_RUN, k
        assert run["readings_stored"] == 200 and run["readings_lost"] == 0, k
        assert run["events_published"] == run["events_applied"] == 200, k
        # At this size the first ingest may drain its share before the last one connects.
        assert 0 <= run["readings_stored_before_the_clock"] <= 200, k
        for rate in ("readings_per_s_stored", "readings_per_s_per_ingest_core"):
            assert run[rate] is None or run[rate] > 0, (k, rate)
        ingests = {n for n in run["cpu_cores"] if n.startswith("ingest")}
        aggregators = {n for n in run["cpu_cores"] if n.startswith("aggregator")}
        assert len(ingests) == len(aggregators) == k
        # Every event was added once and read, acknowledged: at least XADD and XACK each.
        by_command = run["redis_commands_per_event_by_command"]
        assert by_command["xadd"] >= 1 and by_command["xack"] > 0, by_command
        assert not any(name.startswith(BENCH_COMMANDS) for name in by_command)
        assert run["redis_commands_per_event"] >= by_command["xadd"]
        assert run["redis_commands_per_event_with_bench_polling"] > run["redis_commands_per_event"]
    postgresql = report["storage"]["postgresql"]
    assert postgresql["rows"] == 200 * 3 and postgresql["bytes_per_row"] > 0
    assert "not a speed-up" in report["note"]


def test_the_local_cluster_shards_and_stops(tmp_path: Path) -> None:
    with local_redis_cluster(tmp_path, masters=3) as cluster:
        assert len(cluster.ports) == len(cluster.pids) == 3
        assert all(port + BUS_PORT_OFFSET < 65536 for port in cluster.ports)
        client = cluster.client()
        masters = {client.get_node_from_key(s).name for s in telemetry_streams(6)}
        assert len(masters) > 1
        before = cluster.command_calls()
        for stream in telemetry_streams(6):  # on every master: the counts add up over nodes
            client.set(stream, "1")
        client.close()
        calls, _ = command_delta(before, cluster.command_calls())["cmdstat_set"]
        assert calls == 6
    assert not any(psutil.pid_exists(pid) for pid in cluster.pids)


def test_per_process_figures_count_only_the_work_on_the_clock() -> None:
    run = RunResult(
        **{**dict.fromkeys(RunResult.__dataclass_fields__, 0), "mode": "drain", "per_message": 1},
    )
    run.readings_stored = run.events_published = run.events_applied = 1000
    run.seconds_stored, run.seconds_applied = 1.5, 2.0
    run.cpu_cores = {"ingest": 0.2, "ingest-1": 0.3, "aggregator": 0.1, "postgresql": 0.6}
    run.timeline = [(0.0, 400, 100), (2.0, 1000, 1000)]
    commands = {
        "cmdstat_xadd": (1000, 5000),
        "cmdstat_xack": (10, 50),
        "cmdstat_xinfo|stream": (99, 9),
    }
    figures = per_process(run, 2, commands)
    assert figures["readings_per_s_stored"] == 400.0  # 600 on the clock, in 1.5 s
    assert figures["readings_per_s_per_ingest_core"] == 600.0  # 600 for 0.5 cores x 2 s
    assert figures["events_per_s_per_aggregator_core"] == 4500.0  # 900 for 0.1 x 2 s
    assert figures["postgresql_cpu_ms_per_1k_rows"] == round(1.2 * 1000 / 1.8, 1)
    assert figures["redis_commands_per_event"] == 1.01
    assert figures["redis_commands_per_event_with_bench_polling"] == 1.11
    assert figures["redis_commands_per_event_by_command"] == {"xadd": 1.0, "xack": 0.01}
    assert figures["redis_command_usec_per_event"] == 5.0


def test_per_process_figures_of_an_empty_run_are_none() -> None:
    run = RunResult(
        **{**dict.fromkeys(RunResult.__dataclass_fields__, 0), "mode": "drain", "per_message": 1},
    )
    run.cpu_cores, run.timeline = {}, []
    figures = per_process(run, 1, {})
    assert figures["readings_per_s_per_ingest_core"] is None
    assert figures["redis_commands_per_event"] is None


def test_command_delta_counts_only_what_ran_between() -> None:
    before = {"cmdstat_xadd": (10, 100), "cmdstat_get": (5, 5)}
    after = {"cmdstat_xadd": (15, 160), "cmdstat_get": (5, 5), "cmdstat_xack": (2, 4)}
    assert command_delta(before, after) == {"cmdstat_xadd": (5, 60), "cmdstat_xack": (2, 4)}


def test_ks_are_parsed() -> None:
    assert parse_ks("1,2,4") == (1, 2, 4)
    assert parse_ks("3") == (3,)


@pytest.mark.parametrize("text", ["", "1,,2", "one", "1.5", "0", "-1", "1,65", "2;4"])
def test_bad_ks_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="got"):
        parse_ks(text)


def test_a_timescale_url_without_timescaledb_is_refused_before_any_run(
    settings: Settings,
) -> None:
    # The suite's PostgreSQL has no timescaledb extension; tests/timescale serves one.
    with pytest.raises(ConfigurationError, match="no timescaledb extension"):
        run_scale_bench(settings, ScalePlan(4, 200, 6, (1,), 60), settings.database_url)


def test_a_timescale_url_that_does_not_answer_is_refused(settings: Settings) -> None:
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    with pytest.raises(ConfigurationError, match="does not answer"):
        run_scale_bench(settings, ScalePlan(4, 200, 6, (1,), 60), url)


def test_the_command_refuses_bad_ks_before_starting_anything() -> None:
    result = CliRunner().invoke(bench, ["scale", "--ks", "1,x"])
    assert result.exit_code == 2
    assert "--ks" in result.output
