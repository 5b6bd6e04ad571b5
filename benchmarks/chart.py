"""Throughput over time of an ingest benchmark, as a PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any

RUNS = ("single", "batched", "live")
WINDOW_SECONDS = 1.0


def rates(timeline: list[list[float]], column: int) -> tuple[list[float], list[float]]:
    """Readings/s over a sliding window, from cumulative counts sampled over time."""
    times: list[float] = []
    values: list[float] = []
    start = 0
    for end in range(1, len(timeline)):
        while timeline[end][0] - timeline[start][0] > WINDOW_SECONDS and start < end - 1:
            start += 1
        span = timeline[end][0] - timeline[start][0]
        if span > 0:
            times.append(timeline[end][0])
            values.append((timeline[end][column] - timeline[start][column]) / span)
    return times, values


def ingest_chart(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(len(RUNS), 1, figsize=(9, 9), sharex=False)
    for ax, name in zip(axes, RUNS, strict=True):
        run = report[name]
        for column, label in ((1, "stored"), (2, "applied to read models")):
            times, values = rates(run["timeline"], column)
            ax.plot(times, values, label=label)
        if run["mode"] == "live":
            ax.axhline(
                run["publish_rate_msgs_per_s"] * run["per_message"],
                color="grey",
                linestyle="--",
                label="publish rate (mean)",
            )
        ax.set_title(
            f"{name}: {run['mode']}, {run['per_message']} reading(s) a message, "
            f"{run['readings_published']:,} readings"
        )
        ax.set_ylabel("readings/s")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize="small")
    axes[-1].set_xlabel("seconds since start")
    cores = report["machine"]["cores"]
    figure.suptitle(f"iotp bench ingest: throughput over time ({cores} cores, all on one machine)")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
