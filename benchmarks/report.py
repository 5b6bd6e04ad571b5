"""Tables for benchmark reports."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

RUNS = ("single", "batched", "live")


def print_ingest_report(report: dict[str, Any]) -> None:
    console = Console()
    table = Table(
        title=f"iotp bench ingest ({report['machine']['cores']} cores, "
        f"{report['workload']['devices']} devices, 3 metrics a reading)"
    )
    table.add_column("run")
    for name in RUNS:
        run = report[name]
        table.add_column(f"{name} ({run['mode']}, {run['per_message']}/msg)", justify="right")
    rows = [
        ("messages published", "messages_published"),
        ("readings published", "readings_published"),
        ("publish rate, msg/s", "publish_rate_msgs_per_s"),
        ("readings stored", "readings_stored"),
        ("readings lost", "readings_lost"),
        ("events published", "events_published"),
        ("events applied", "events_applied"),
        ("seconds to store all", "seconds_stored"),
        ("seconds to apply all", "seconds_applied"),
        ("readings/s stored", "readings_per_s_stored"),
        ("data points/s stored", "data_points_per_s_stored"),
        ("readings/s applied", "readings_per_s_applied"),
        ("readings/s applied, middle half of the work", "readings_per_s_applied_middle"),
        ("stored rate / publish rate (live)", "stored_fraction_of_publish_rate"),
        ("ingest peak RSS, MB", "peak_rss_mb"),
        ("aggregator peak RSS, MB", "aggregator_peak_rss_mb"),
        ("machine: cores busy (every process)", "machine_cores_busy"),
        ("machine: cores stolen by the host", "machine_cores_stolen"),
    ]
    for label, key in rows:
        table.add_row(
            label,
            *(
                f"{report[name][key]:,}"
                if isinstance(report[name][key], int | float)
                else str(report[name][key])
                for name in RUNS
            ),
        )
    processes = sorted({p for name in RUNS for p in report[name]["cpu_cores"]})
    for process in processes:
        table.add_row(
            f"CPU cores: {process}",
            *(str(report[name]["cpu_cores"].get(process, "")) for name in RUNS),
        )
    console.print(table)


# The counting subscribers of `iotp bench limits`: the C client first, then the Python ones.
BROKER_COUNTERS = (
    ("mosquitto_sub counting", "broker_mosquitto_sub"),
    ("paho counting", "broker_paho"),
    ("paho counting, acking as ingest", "broker_paho_as_ingest"),
    ("ingest receive path (Mqtt5Source)", "ingest_receive_path"),
)


def print_limits_report(report: dict[str, Any]) -> None:
    table = Table(
        title=f"iotp bench limits ({report['machine']['cores']} cores, "
        f"{report['workload']['devices']} devices): drain throughput, readings/s"
    )
    table.add_column("consumer")
    table.add_column("single (1/msg)", justify="right")
    table.add_column(f"batched ({report['workload']['batch']}/msg)", justify="right")
    database = report["database_copy"]
    rows = [
        ("iotp, stored", "iotp", "readings_per_s_stored"),
        ("iotp, applied to read models", "iotp", "readings_per_s_applied"),
        *((f"broker: {label}", part, "readings_per_s") for label, part in BROKER_COUNTERS),
    ]
    for label, part, key in rows:
        table.add_row(label, *(f"{report[name][part][key]:,.0f}" for name in ("single", "batched")))
    for label, part in (("no index", "no_index"), ("unique key", "unique_key")):
        value = f"{database[part]['readings_per_s']:,.0f}"
        table.add_row(f"database: binary COPY, {label}", value, value)
    for key in (
        "fraction_of_broker_mosquitto_sub",
        "fraction_of_broker_paho",
        "fraction_of_broker_paho_as_ingest",
        "fraction_of_ingest_receive_path",
        "fraction_of_database_copy_no_index",
        "fraction_of_database_copy_unique_key",
    ):
        table.add_row(
            f"iotp stored / {key.removeprefix('fraction_of_').replace('_', ' ')}",
            *(f"{report[name][key]:.1%}" for name in ("single", "batched")),
        )
    # Each Python counter's drain rate against the broker's ceiling, the C client.
    for label, part in BROKER_COUNTERS[1:]:
        table.add_row(
            f"{label} / mosquitto_sub, msg/s",
            *(
                f"{report[name][part]['fraction_of_broker_mosquitto_sub']:.1%}"
                for name in ("single", "batched")
            ),
        )
    # CPU per message: ingests and aggregators together, beside what each counter alone takes.
    cpu_rows = [
        ("CPU ms per 1,000 readings: iotp", "iotp", "cpu_ms_per_1k_readings"),
        *(
            (f"CPU ms per 1,000 messages: {label}", part, "subscriber_cpu_ms_per_1k_messages")
            for label, part in BROKER_COUNTERS
        ),
    ]
    for label, part, key in cpu_rows:
        table.add_row(label, *(f"{report[name][part][key]:.1f}" for name in ("single", "batched")))
    Console().print(table)


SCALE_ROWS = (
    ("readings stored", "readings_stored"),
    ("readings lost", "readings_lost"),
    ("events applied", "events_applied"),
    ("readings stored before the clock", "readings_stored_before_the_clock"),
    ("readings/s stored (on the clock)", "readings_per_s_stored"),
    ("readings/s applied", "readings_per_s_applied"),
    ("CPU cores: all ingests", "ingest_cores"),
    ("CPU cores: all aggregators", "aggregator_cores"),
    ("readings/s per ingest core", "readings_per_s_per_ingest_core"),
    ("events/s per aggregator core", "events_per_s_per_aggregator_core"),
    ("Redis commands per event", "redis_commands_per_event"),
    ("Redis cluster CPU ms per 1,000 events", "redis_cluster_cpu_ms_per_1k_events"),
    ("PostgreSQL CPU ms per 1,000 rows", "postgresql_cpu_ms_per_1k_rows"),
)


def print_scale_report(report: dict[str, Any]) -> None:
    redis = report["redis"]
    table = Table(
        title=f"iotp bench scale ({report['machine']['cores']} cores, "
        f"{report['workload']['devices']} devices, Redis Cluster of "
        f"{redis['cluster_masters']} masters, {redis['event_shards']} shards)"
    )
    table.add_column("k ingests + k aggregators")
    runs = report["runs"]
    for run in runs:
        table.add_column(f"k = {run['k']}", justify="right")
    for label, key in SCALE_ROWS:
        table.add_row(label, *(_cell(run[key]) for run in runs))
    processes = sorted({p for run in runs for p in run["cpu_cores"]})
    for process in processes:
        table.add_row(
            f"CPU cores: {process}", *(str(run["cpu_cores"].get(process, "")) for run in runs)
        )
    console = Console()
    console.print(table)
    for engine, figures in report["storage"].items():
        console.print(f"storage, {engine}: {figures}")
    console.print(report["note"])


def _cell(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int | float) else str(value)
