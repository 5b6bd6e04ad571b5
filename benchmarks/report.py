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
        ("seconds", "seconds"),
        ("readings/s stored", "readings_per_s_stored"),
        ("data points/s stored", "data_points_per_s_stored"),
        ("ingest peak RSS, MB", "peak_rss_mb"),
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
