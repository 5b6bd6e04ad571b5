"""`iotp bench`: one command per benchmark, each declared the same way.

Every command takes its options (shared ones through the aliases below), loads the
settings, runs its benchmark and prints the report: one JSON document with ``--json``, else
a table. The benchmark modules are imported only when their command runs, so that
``iotp --help`` needs none of the bench extras.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from iotp.command_line import command, load_settings, print_report

Report = dict[str, Any]

bench = typer.Typer(help="Reproducible measurements on this machine.", no_args_is_help=True)

# The options that several benches share: the same fleet, workload, publishers and deployment.
DevicesOption = Annotated[int, typer.Option(help="Simulated devices.")]
ReadingsOption = Annotated[
    int, typer.Option(help="Readings of the one-reading-per-message runs (x5 batched).")
]
BatchOption = Annotated[int, typer.Option(help="Readings per message in the batched run.")]
PublishersOption = Annotated[int, typer.Option(help="Publisher processes.")]
IngestsOption = Annotated[
    int, typer.Option("--ingests", help="Ingest processes on the shared subscription.")
]
AggregatorsOption = Annotated[
    int, typer.Option("--aggregators", help="Aggregators in the consumer group.")
]
TimeoutOption = Annotated[float, typer.Option(help="Give up on a run after this many s.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document.")]


def show(report: Report, as_json: bool, table: Callable[[Report], None] | None = None) -> None:
    """The report as JSON with ``--json``; else the bench's own table, or pretty-printed."""
    if table is None or as_json:
        print_report(report, as_json)
    else:
        table(report)


@command(bench, "ingest")
def bench_ingest(
    devices: DevicesOption = 100,
    readings: ReadingsOption = 60_000,
    batch: BatchOption = 50,
    publishers: PublishersOption = 2,
    ingests: IngestsOption = 2,
    aggregators: AggregatorsOption = 1,
    timeout: TimeoutOption = 300,
    chart: Annotated[
        Path | None, typer.Option(help="Also draw throughput over time into this PNG.")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Ingest throughput with zero loss: drain (single, batched) and live runs."""
    from benchmarks.chart import ingest_chart
    from benchmarks.ingest import Deployment, DrainPlan, run_ingest_bench
    from benchmarks.report import print_ingest_report

    deployment = Deployment(ingests, aggregators)
    plan = DrainPlan(devices, readings, batch, publishers, timeout, deployment)
    report = run_ingest_bench(load_settings(), plan)
    if chart is not None:
        ingest_chart(report, chart)
    show(report, as_json, print_ingest_report)


@command(bench, "limits")
def bench_limits(
    devices: DevicesOption = 100,
    readings: ReadingsOption = 60_000,
    batch: BatchOption = 50,
    publishers: PublishersOption = 2,
    ingests: IngestsOption = 2,
    aggregators: AggregatorsOption = 1,
    timeout: TimeoutOption = 300,
    as_json: JsonOption = False,
) -> None:
    """iotp's drain throughput as a fraction of the broker's and the database's ceilings."""
    from benchmarks.ingest import Deployment, DrainPlan
    from benchmarks.limits import run_limits_bench
    from benchmarks.report import print_limits_report

    deployment = Deployment(ingests, aggregators)
    plan = DrainPlan(devices, readings, batch, publishers, timeout, deployment)
    show(run_limits_bench(load_settings(), plan), as_json, print_limits_report)


@command(bench, "burst")
def bench_burst(
    rate: Annotated[float, typer.Option(help="Sustained rate, readings/s (1 a message).")] = 1000,
    factor: Annotated[float, typer.Option(help="The burst is this many times the rate.")] = 10,
    burst_seconds: Annotated[float, typer.Option("--burst-seconds")] = 30,
    before_seconds: Annotated[float, typer.Option("--before-seconds")] = 5,
    after_seconds: Annotated[
        float, typer.Option("--after-seconds", help="Sustained rate after the burst.")
    ] = 30,
    devices: DevicesOption = 100,
    ingests: IngestsOption = 2,
    aggregators: AggregatorsOption = 1,
    timeout: TimeoutOption = 600,
    as_json: JsonOption = False,
) -> None:
    """A burst against a running platform: loss, peak memory, backlog and drain time."""
    from benchmarks.burst import BurstPlan, run_burst_bench
    from benchmarks.ingest import Deployment

    deployment = Deployment(ingests, aggregators)
    plan = BurstPlan(
        devices, rate, factor, burst_seconds, before_seconds, after_seconds, timeout, deployment
    )
    report = run_burst_bench(load_settings(), plan)
    if not as_json:
        report = {k: v for k, v in report.items() if k != "timeline"}
    show(report, as_json)


@command(bench, "aggregate")
def bench_aggregate(
    events: Annotated[int, typer.Option(help="TelemetryRecorded events to apply.")] = 50_000,
    devices: Annotated[int, typer.Option(help="Devices the events spread over.")] = 1000,
    timeout: TimeoutOption = 300,
    as_json: JsonOption = False,
) -> None:
    """Events/s applied to the read models by one aggregator, and the lag left."""
    from benchmarks.read_models import run_aggregate_bench

    show(run_aggregate_bench(load_settings(), events, devices, timeout), as_json)


@command(bench, "query")
def bench_query(
    devices: Annotated[int, typer.Option(help="Devices in the read store.")] = 10_000,
    days: Annotated[int, typer.Option(help="Days of minute rollups for the shown device.")] = 30,
    requests: Annotated[int, typer.Option(help="Requests per endpoint.")] = 200,
    as_json: JsonOption = False,
) -> None:
    """Latency (p50/p95) of every query API endpoint over a large read store."""
    from benchmarks.read_models import run_query_bench

    show(run_query_bench(load_settings(), devices, days, requests), as_json)


@command(bench, "freshness")
def bench_freshness(
    rate: Annotated[float, typer.Option(help="Readings per second, in all.")] = 2000,
    seconds: Annotated[float, typer.Option(help="How long to publish.")] = 20,
    devices: Annotated[int, typer.Option(help="Devices the readings spread over.")] = 100,
    as_json: JsonOption = False,
) -> None:
    """Publish-to-visible latency in the read models at a steady rate (p50/p95/p99/max)."""
    from benchmarks.freshness import run_freshness_bench

    show(run_freshness_bench(load_settings(), rate, seconds, devices), as_json)


@command(bench, "ingest-path")
def bench_ingest_path(
    messages: Annotated[int, typer.Option(help="Messages in the batch.")] = 2000,
    rounds: Annotated[int, typer.Option(help="Batches timed; the best is reported.")] = 30,
    as_json: JsonOption = False,
) -> None:
    """CPU microseconds per message of ingest's own steps (parse, rows, events), no I/O."""
    from benchmarks.ingest_path import run_ingest_path_bench

    show(run_ingest_path_bench(messages, rounds), as_json)


@command(bench, "write-path")
def bench_write_path(
    messages: Annotated[int, typer.Option(help="One-reading messages in a batch.")] = 50,
    rounds: Annotated[int, typer.Option(help="Batches timed; the mean is reported.")] = 400,
    as_json: JsonOption = False,
) -> None:
    """Client CPU a batch's database work costs ingest and the aggregator, per batch."""
    from benchmarks.write_path import run_write_path_bench

    show(run_write_path_bench(load_settings(), messages, rounds), as_json)


@command(bench, "rebuild")
def bench_rebuild(
    devices: Annotated[int, typer.Option(help="Devices in the write store.")] = 200,
    rows: Annotated[int, typer.Option(help="Telemetry rows per device.")] = 3000,
    as_json: JsonOption = False,
) -> None:
    """Rows/s `iotp rebuild` recomputes from the write store into the read models."""
    from benchmarks.read_models import run_rebuild_bench

    show(run_rebuild_bench(load_settings(), devices, rows), as_json)


@command(bench, "growth")
def bench_growth(
    devices: Annotated[int, typer.Option(help="Devices whose readings are folded.")] = 1000,
    days: Annotated[int, typer.Option(help="Days of minutely readings of each.")] = 30,
    raw_devices: Annotated[
        int, typer.Option(help="Devices whose raw telemetry is stored, for its bytes.")
    ] = 20,
    query_devices: Annotated[
        int, typer.Option(help="Devices in the read store the queries are timed on.")
    ] = 10_000,
    requests: Annotated[int, typer.Option(help="Requests per endpoint.")] = 100,
    timescale_url: Annotated[
        str | None,
        typer.Option(help="A throw-away TimescaleDB: also measure raw telemetry compressed."),
    ] = None,
    signal: Annotated[
        str,
        typer.Option(
            help="The readings' values: sensor (a daily swing, drift and a little noise) or"
            " noise (independent draws every minute, the worst case for compression)."
        ),
    ] = "sensor",
    reading_seconds: Annotated[
        int,
        typer.Option(
            help="Seconds between a device's readings of a metric (a divisor of 60). The"
            " default, a minute, is the least that fills every minute bucket."
        ),
    ] = 60,
    as_json: JsonOption = False,
) -> None:
    """Bytes per device-day of each read model before and after retention, raw telemetry's,
    Redis bytes per device, the steady-state read store of 10,000 devices, and query p95s."""
    from benchmarks.growth import SIGNALS, run_growth_bench

    if signal not in SIGNALS:
        raise typer.BadParameter(f"--signal must be one of {', '.join(SIGNALS)}")
    if not 1 <= reading_seconds <= 60 or 60 % reading_seconds:
        raise typer.BadParameter("--reading-seconds must divide 60 (1, 2, 3, 4, 5, 6, 10 ...)")
    report = run_growth_bench(
        load_settings(),
        devices,
        days,
        raw_devices,
        query_devices,
        requests,
        timescale_url,
        signal=signal,
        reading_seconds=reading_seconds,
    )
    show(report, as_json)


@command(bench, "scale")
def bench_scale(
    devices: DevicesOption = 100,
    readings: Annotated[int, typer.Option(help="Readings of each run (one a message).")] = 20_000,
    shards: Annotated[int, typer.Option(help="Telemetry event streams over the cluster.")] = 6,
    ks: Annotated[
        str, typer.Option(help="Runs of k ingests and k aggregators, e.g. 1,2,4.")
    ] = "1,2,4",
    timeout: TimeoutOption = 300,
    timescale_url: Annotated[
        str | None,
        typer.Option(help="A throw-away TimescaleDB: also measure bytes per reading compressed."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Per-process cost of k ingests and k aggregators on a local 3-master Redis Cluster."""
    from benchmarks.report import print_scale_report
    from benchmarks.scale import ScalePlan, parse_ks, run_scale_bench

    try:
        plan = ScalePlan(devices, readings, shards, parse_ks(ks), timeout)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--ks") from None
    show(run_scale_bench(load_settings(), plan, timescale_url), as_json, print_scale_report)
