"""`iotp bench scale` counts right: a tiny run on a real local Redis Cluster, k = 1 and 2.

The figures themselves are machine-dependent; what is checked is that every reading was
stored and applied once, that each run reports its per-process figures, and that the
cluster the bench makes is gone when it ends.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psutil
import pytest
from typer.testing import CliRunner

from benchmarks.commands import bench
from benchmarks.scale import BENCH_COMMANDS, ScalePlan, command_delta, parse_ks, run_scale_bench
from iotp.event_shards import telemetry_streams
from iotp.settings import Settings
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
}


def test_tiny_scale_bench_loses_nothing_and_reports_per_process(settings: Settings) -> None:
    report: dict[str, Any] = run_scale_bench(settings, ScalePlan(4, 200, 6, (1, 2), 60))
    assert [run["k"] for run in report["runs"]] == [1, 2]
    assert report["redis"] == {"cluster_masters": 3, "event_shards": 6}
    for run in report["runs"]:
        k = run["k"]
        assert set(run) >= PER_RUN, k
        assert run["readings_stored"] == 200 and run["readings_lost"] == 0, k
        assert run["events_published"] == run["events_applied"] == 200, k
        assert run["readings_per_s_stored"] > 0 and run["readings_per_s_applied"] > 0, k
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


def test_the_command_refuses_bad_ks_before_starting_anything() -> None:
    result = CliRunner().invoke(bench, ["scale", "--ks", "1,x"])
    assert result.exit_code == 2
    assert "--ks" in result.output
