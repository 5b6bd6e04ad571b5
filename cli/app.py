"""The ``iotp`` command line. Each command imports its part only when it runs."""

from __future__ import annotations

import asyncio
import secrets
import signal
import sys
import threading
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import SecretStr, ValidationError

from iotp.errors import ConfigurationError, ServiceUnavailable
from iotp.logs import configure_logging
from iotp.settings import Settings, get_settings, token_problem

app = typer.Typer(
    name="iotp",
    help="iotp: an IoT telemetry platform (MQTT ingest, TimescaleDB, CQRS read models).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@contextmanager
def _clear_errors() -> Iterator[None]:
    """Turn the errors a user can fix into one line on stderr and exit code 2."""
    try:
        yield
    except (ServiceUnavailable, ConfigurationError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except ValidationError as exc:
        typer.echo(f"error: invalid IOTP_ setting: {exc}", err=True)
        raise typer.Exit(2) from None


def _settings() -> Settings:
    with _clear_errors():
        return get_settings()


@app.callback()
def main(
    log_level: Annotated[
        str | None, typer.Option(help="Log level (default: IOTP_LOG_LEVEL or INFO).")
    ] = None,
) -> None:
    """iotp command line."""
    configure_logging(log_level or _settings().log_level)


@app.command()
def up(
    simulate: Annotated[
        int | None, typer.Option(help="Also run a simulator with this many devices.")
    ] = None,
    api_port: Annotated[int | None, typer.Option(help="Command API port (8000).")] = None,
    query_port: Annotated[int | None, typer.Option(help="Query API port (8001).")] = None,
    dashboard_port: Annotated[int | None, typer.Option(help="Dashboard port (8501).")] = None,
    state_dir: Annotated[
        str | None, typer.Option(help="Data of embedded services (IOTP_STATE_DIR, .iotp).")
    ] = None,
    embedded: Annotated[
        bool, typer.Option("--embedded", help="Start embedded services even if others answer.")
    ] = False,
    mqtt_broker: Annotated[
        str, typer.Option(help="Embedded broker: auto (mosquitto if on PATH), mosquitto, amqtt.")
    ] = "auto",
) -> None:
    """Run the whole platform (migrate, APIs, ingest, aggregators, dashboard), supervised."""
    from pathlib import Path

    from iotp.migrate import migrate as run_migrations
    from local_platform import up as platform

    settings = _settings()
    state = Path(state_dir or settings.state_dir).resolve()
    state.mkdir(parents=True, exist_ok=True)
    ports = (
        api_port or settings.api_port,
        query_port or settings.query_port,
        dashboard_port or settings.dashboard_port,
    )
    stop = _stop_on_signals()
    if mqtt_broker not in ("auto", "mosquitto", "amqtt"):
        raise typer.BadParameter("--mqtt-broker must be auto, mosquitto or amqtt")
    with _clear_errors(), platform.services(settings, state, embedded, mqtt_broker) as resolved:
        for started in resolved.started:
            typer.echo(f"started {started}")
        token = platform.api_token(settings, state)
        env = platform.child_env(settings, resolved, token, *ports)
        run_migrations(
            settings.model_copy(
                update={"database_url": resolved.database_url, "read_database_url": None}
            )
        )
        typer.echo(f"command API  http://127.0.0.1:{ports[0]}/docs")
        typer.echo(f"query API    http://127.0.0.1:{ports[1]}/docs")
        typer.echo(f"dashboard    http://127.0.0.1:{ports[2]}/")
        typer.echo(f"API token    {token}")
        typer.echo(f"MQTT         {resolved.mqtt_url} (topic devices/<id>/telemetry)")
        typer.echo(f"logs         {state / 'logs'}  (Ctrl-C stops everything)")
        platform.supervise(platform.children(*ports, simulate), env, state / "logs", stop)
    typer.echo("stopped")


@app.command()
def migrate() -> None:
    """Create the database if needed and apply schema migrations (idempotent)."""
    from iotp.migrate import migrate as run_migrations

    settings = _settings()
    with _clear_errors():
        report = run_migrations(settings)
    if report.database_created:
        typer.echo("created database")
    mode = "TimescaleDB" if report.timescaledb else "plain PostgreSQL"
    typer.echo(f"mode: {mode} ({report.mode_reason})")
    for name in report.applied:
        typer.echo(f"applied {name}")
    for name in report.read_store_applied:
        typer.echo(f"applied read store {name}")
    if not report.applied and not report.read_store_applied:
        typer.echo("schema up to date, nothing to apply")
    for policy in report.policies:
        typer.echo(f"policy: {policy}")
    for warning in report.warnings:
        typer.echo(f"warning: {warning}", err=True)


@app.command()
def api(
    host: Annotated[str | None, typer.Option(help="Bind address (IOTP_API_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (IOTP_API_PORT).")] = None,
    dev: Annotated[
        bool, typer.Option("--dev", help="Generate a throw-away API token and print it.")
    ] = False,
    relay: Annotated[
        bool, typer.Option(help="Run the outbox relay inside the API process.")
    ] = True,
) -> None:
    """Run the command API (HTTP device registration) with its outbox relay."""
    import uvicorn

    from command_api.app import create_app

    settings = _settings()
    if dev and token_problem(settings.api_token) is not None:
        token = secrets.token_urlsafe(24)
        settings = settings.model_copy(update={"api_token": SecretStr(token)})
        typer.echo(f"dev mode: API token for this run is {token}")
    with _clear_errors():
        _preflight(settings)
        application = create_app(settings, run_relay_task=relay)
    uvicorn.run(
        application,
        host=host or settings.api_host,
        port=port or settings.api_port,
        log_level=settings.log_level.lower(),
    )


@app.command()
def relay() -> None:
    """Run the outbox relay alone: device events from PostgreSQL to Redis Streams."""
    from command_api.relay import run_relay
    from iotp.db import open_pool
    from iotp.redis_client import open_redis

    settings = _settings()
    with _clear_errors():
        _preflight(settings)

    async def run(stop: asyncio.Event) -> None:
        pool = await open_pool(settings.database_url, max_size=2)
        client = await open_redis(settings.redis_url)
        try:
            await run_relay(pool, client, settings, stop)
        finally:
            await client.aclose()
            await pool.close()

    with _clear_errors():
        _run_until_signalled(run)


@app.command()
def ingest(
    instance: Annotated[
        str | None,
        typer.Option(
            help="Instance name, part of the stable MQTT client id (IOTP_INGEST_INSTANCE)."
        ),
    ] = None,
) -> None:
    """Ingest MQTT telemetry into the telemetry table and TelemetryRecorded events."""
    from ingest.service import run_ingest

    settings = _settings()
    if instance is not None:
        settings = settings.model_copy(update={"ingest_instance": instance})
    stop = _stop_on_signals()
    with _clear_errors():
        _preflight(settings)
        run_ingest(settings, stop)


@app.command("query-api")
def query_api(
    host: Annotated[str | None, typer.Option(help="Bind address (IOTP_QUERY_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (IOTP_QUERY_PORT).")] = None,
) -> None:
    """Run the query API (HTTP reads of the read models)."""
    import uvicorn

    from read_models.api import create_query_app

    settings = _settings()
    with _clear_errors():
        from iotp.db import connect

        connect(settings.read_url(), setting="IOTP_READ_DATABASE_URL").close()
        application = create_query_app(settings)
    uvicorn.run(
        application,
        host=host or settings.query_host,
        port=port or settings.query_port,
        log_level=settings.log_level.lower(),
    )


@app.command()
def dashboard(
    host: Annotated[str | None, typer.Option(help="Bind address (IOTP_DASHBOARD_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (IOTP_DASHBOARD_PORT).")] = None,
) -> None:
    """Run the Streamlit dashboard over the read models."""
    import os
    from pathlib import Path

    import dashboard

    settings = _settings()
    app_path = Path(dashboard.__file__).parent / "app.py"
    command = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(app_path),
        "--server.headless",
        "true",
        "--server.address",
        host or settings.dashboard_host,
        "--server.port",
        str(port or settings.dashboard_port),
        "--browser.gatherUsageStats",
        "false",
        "--client.toolbarMode",
        "minimal",
    ]
    os.execv(sys.executable, command)  # noqa: S606 - our interpreter, our app


@app.command()
def simulate(
    devices: Annotated[int, typer.Option(help="Simulated devices.")] = 10,
    rate: Annotated[float, typer.Option(help="Readings per second per device.")] = 1.0,
    duration: Annotated[
        float | None, typer.Option(help="Seconds to run (default 60 unless --count).")
    ] = None,
    count: Annotated[int | None, typer.Option(help="Stop after this many readings.")] = None,
    profile: Annotated[str, typer.Option(help="thermostat, tracker, or mixed.")] = "mixed",
    batch: Annotated[int, typer.Option(help="Readings per message (1: one per message).")] = 1,
    qos: Annotated[int, typer.Option(help="MQTT QoS, 0 or 1.")] = 1,
    connections: Annotated[
        int | None,
        typer.Option(help="Multiplex devices over this many connections (default: one each)."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed for reproducible runs.")] = 42,
    prefix: Annotated[str, typer.Option(help="Device id prefix (ids are PREFIX-00000...).")] = (
        "sim"
    ),
    faults: Annotated[
        str,
        typer.Option(
            help="Fault rates, e.g. malformed=0.01,out_of_range=0.02,unknown_device="
            "0.01,duplicate=0.05,out_of_order=0.05,late=0.02,silence=0.001"
        ),
    ] = "",
    api_url: Annotated[
        str | None, typer.Option(help="Command API (default http://IOTP_API_HOST:IOTP_API_PORT).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Simulated devices: register through the API, then publish readings over MQTT."""
    from device_simulator.faults import FaultRates
    from device_simulator.progress import run_with_progress
    from device_simulator.runner import SimulationConfig

    settings = _settings()
    if profile not in ("thermostat", "tracker", "mixed"):
        raise typer.BadParameter("profile must be thermostat, tracker or mixed")
    if qos not in (0, 1) or batch < 1 or devices < 1 or rate <= 0:
        raise typer.BadParameter("need qos 0 or 1, batch >= 1, devices >= 1, rate > 0")
    problem = token_problem(settings.api_token)
    if problem is not None or settings.api_token is None:
        typer.echo(f"error: {problem}: the simulator registers devices through the API", err=True)
        raise typer.Exit(2)
    try:
        rates = FaultRates.parse(faults)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    config = SimulationConfig(
        api_url=api_url or f"http://{settings.api_host}:{settings.api_port}",
        api_token=settings.api_token.get_secret_value(),
        mqtt_url=settings.mqtt_url,
        devices=devices,
        rate=rate,
        duration=duration if duration is not None or count is not None else 60.0,
        count=count,
        profile=profile,
        batch=batch,
        qos=qos,
        connections=connections,
        seed=seed,
        prefix=prefix,
        faults=rates,
        protocol=settings.mqtt_protocol,
    )
    stop = _stop_on_signals()
    with _clear_errors():
        summary = run_with_progress(config, stop, quiet=as_json)
    if as_json:
        import orjson

        typer.echo(orjson.dumps(summary.as_dict(), option=orjson.OPT_INDENT_2).decode())
    if summary.failures:
        raise typer.Exit(1)


@app.command()
def aggregate(
    instance: Annotated[
        str | None,
        typer.Option(help="Instance name, part of the consumer name (IOTP_AGGREGATOR_INSTANCE)."),
    ] = None,
) -> None:
    """Build the read models from the event streams (consumer group iotp-aggregators)."""
    from read_models.service import run_aggregator

    settings = _settings()
    if instance is not None:
        settings = settings.model_copy(update={"aggregator_instance": instance})
    stop = _stop_on_signals()
    with _clear_errors():
        run_aggregator(settings, stop)


@app.command()
def rebuild() -> None:
    """Recompute every read model from the write store, then hand over to the aggregators."""
    from rich.progress import Progress

    from read_models.rebuild import rebuild as run_rebuild

    settings = _settings()
    with _clear_errors(), Progress() as bar:
        task = bar.add_task("rebuilding read models", total=None)
        report = run_rebuild(
            settings, progress=lambda done, total: bar.update(task, completed=done, total=total)
        )
    typer.echo(
        f"rebuilt {report.devices} devices, {report.metric_series} metric series,"
        f" {report.minute_buckets} minute and {report.hour_buckets} hour buckets;"
        f" handed over {report.window_events} events published during the rebuild"
        f" ({report.window_applied} applied)"
    )


@app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
    """Show ingest counters, stream lengths and the outbox backlog."""
    from cli.status import collect_status, render_status

    settings = _settings()
    with _clear_errors():
        report = collect_status(settings)
    if as_json:
        import orjson

        typer.echo(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    else:
        render_status(report)


bench = typer.Typer(help="Reproducible measurements on this machine.", no_args_is_help=True)
app.add_typer(bench, name="bench", help="Benchmarks: throughput and latency on this machine.")


# Options that the ingest and limits benches share: the same workload, the same publishers.
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


@bench.command("ingest")
def bench_ingest(
    devices: DevicesOption = 100,
    readings: ReadingsOption = 60_000,
    batch: BatchOption = 50,
    publishers: PublishersOption = 2,
    ingests: IngestsOption = 2,
    aggregators: AggregatorsOption = 1,
    timeout: Annotated[float, typer.Option(help="Give up on a run after this many s.")] = 300,
    chart: Annotated[
        Path | None, typer.Option(help="Also draw throughput over time into this PNG.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
) -> None:
    """Ingest throughput with zero loss: drain (single, batched) and live runs."""
    from benchmarks.ingest import Deployment, run_ingest_bench
    from benchmarks.report import print_ingest_report

    settings = _settings()
    with _clear_errors():
        report = run_ingest_bench(
            settings,
            devices,
            readings,
            batch,
            publishers,
            timeout,
            Deployment(ingests, aggregators),
        )
    if chart is not None:
        from benchmarks.chart import ingest_chart

        ingest_chart(report, chart)
    if as_json:
        _print_report(report, as_json)
    else:
        print_ingest_report(report)


@bench.command("limits")
def bench_limits(
    devices: DevicesOption = 100,
    readings: ReadingsOption = 60_000,
    batch: BatchOption = 50,
    publishers: PublishersOption = 2,
    ingests: IngestsOption = 2,
    aggregators: AggregatorsOption = 1,
    timeout: Annotated[float, typer.Option(help="Give up on a run after this many s.")] = 300,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
) -> None:
    """iotp's drain throughput as a fraction of the broker's and the database's ceilings."""
    from benchmarks.ingest import Deployment
    from benchmarks.limits import run_limits_bench
    from benchmarks.report import print_limits_report

    settings = _settings()
    with _clear_errors():
        report = run_limits_bench(
            settings,
            devices,
            readings,
            batch,
            publishers,
            timeout,
            Deployment(ingests, aggregators),
        )
    if as_json:
        _print_report(report, as_json)
    else:
        print_limits_report(report)


@bench.command("burst")
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
    timeout: Annotated[float, typer.Option(help="Give up after this many s.")] = 600,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
) -> None:
    """A burst against a running platform: loss, peak memory, backlog and drain time."""
    from benchmarks.burst import run_burst_bench
    from benchmarks.ingest import Deployment

    settings = _settings()
    with _clear_errors():
        report = run_burst_bench(
            settings,
            devices,
            rate,
            factor,
            burst_seconds,
            before_seconds,
            after_seconds,
            timeout,
            Deployment(ingests, aggregators),
        )
    if not as_json:
        report = {k: v for k, v in report.items() if k != "timeline"}
    _print_report(report, as_json)


@bench.command("aggregate")
def bench_aggregate(
    events: Annotated[int, typer.Option(help="TelemetryRecorded events to apply.")] = 50_000,
    devices: Annotated[int, typer.Option(help="Devices the events spread over.")] = 1000,
    timeout: Annotated[float, typer.Option(help="Give up after this many s.")] = 300,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Events/s applied to the read models by one aggregator, and the lag left."""
    from benchmarks.read_models import run_aggregate_bench

    settings = _settings()
    with _clear_errors():
        report = run_aggregate_bench(settings, events, devices, timeout)
    _print_report(report, as_json)


@bench.command("query")
def bench_query(
    devices: Annotated[int, typer.Option(help="Devices in the read store.")] = 10_000,
    days: Annotated[int, typer.Option(help="Days of minute rollups for the shown device.")] = 30,
    requests: Annotated[int, typer.Option(help="Requests per endpoint.")] = 200,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Latency (p50/p95) of every query API endpoint over a large read store."""
    from benchmarks.read_models import run_query_bench

    settings = _settings()
    with _clear_errors():
        report = run_query_bench(settings, devices, days, requests)
    _print_report(report, as_json)


@bench.command("freshness")
def bench_freshness(
    rate: Annotated[float, typer.Option(help="Readings per second, in all.")] = 2000,
    seconds: Annotated[float, typer.Option(help="How long to publish.")] = 20,
    devices: Annotated[int, typer.Option(help="Devices the readings spread over.")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Publish-to-visible latency in the read models at a steady rate (p50/p95/p99/max)."""
    from benchmarks.freshness import run_freshness_bench

    settings = _settings()
    with _clear_errors():
        report = run_freshness_bench(settings, rate, seconds, devices)
    _print_report(report, as_json)


@bench.command("rebuild")
def bench_rebuild(
    devices: Annotated[int, typer.Option(help="Devices in the write store.")] = 200,
    rows: Annotated[int, typer.Option(help="Telemetry rows per device.")] = 3000,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Rows/s `iotp rebuild` recomputes from the write store into the read models."""
    from benchmarks.read_models import run_rebuild_bench

    settings = _settings()
    with _clear_errors():
        report = run_rebuild_bench(settings, devices, rows)
    _print_report(report, as_json)


def _print_report(report: dict[str, Any], as_json: bool) -> None:
    import orjson

    if as_json:
        typer.echo(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
        return
    from rich.console import Console
    from rich.pretty import Pretty

    Console().print(Pretty(report))


def _stop_on_signals() -> threading.Event:
    """An event that SIGINT and SIGTERM set, for commands that stop cleanly between steps."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def _preflight(settings: Settings) -> None:
    """Fail with one clear line when the database is unreachable or not migrated."""
    from iotp.db import connect
    from iotp.migrate import pending_migrations

    with connect(settings.database_url) as conn:
        pending = pending_migrations(conn)
    if pending:
        raise ConfigurationError(
            f"the database schema is not up to date (pending: {', '.join(pending)}):"
            " run `iotp migrate` first"
        )
    _warn_if_redis_down(settings)


def _warn_if_redis_down(settings: Settings) -> None:
    import redis

    from iotp.redis_client import redis_unavailable

    client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=3)
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        typer.echo(
            f"warning: {redis_unavailable(settings.redis_url, exc)};"
            " events wait in the outbox until it answers",
            err=True,
        )
    finally:
        client.close()


def _run_until_signalled(main: Callable[[asyncio.Event], Coroutine[Any, Any, None]]) -> None:
    """Run ``main(stop)`` until it ends; SIGINT or SIGTERM set ``stop`` for a clean exit."""

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    asyncio.run(runner())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
