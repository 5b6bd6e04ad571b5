"""The long-running services: each command loads settings and calls its part's wiring.

Every wiring function does its own pre-start checks (database migrated, services
answering); the commands only turn options into settings.
"""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path
from typing import Annotated

import typer
from pydantic import SecretStr

from iotp.command_line import (
    command,
    load_settings,
    print_report,
    run_until_signalled,
    stop_on_signals,
)
from iotp.settings import Settings, token_problem

commands = typer.Typer()


@command(commands)
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
    from command_api.service import run_api

    settings = load_settings()
    if dev and token_problem(settings.api_token) is not None:
        token = secrets.token_urlsafe(24)
        settings = settings.model_copy(update={"api_token": SecretStr(token)})
        typer.echo(f"dev mode: API token for this run is {token}")
    run_api(settings, host, port, relay)


@command(commands)
def relay() -> None:
    """Run the outbox relay alone: device events from PostgreSQL to Redis Streams."""
    from command_api.service import serve_relay

    settings = load_settings()
    run_until_signalled(lambda stop: serve_relay(settings, stop))


@command(commands)
def ingest(
    instance: Annotated[
        str | None,
        typer.Option(
            help="Instance name, part of the stable MQTT client id (IOTP_INGEST_INSTANCE)."
        ),
    ] = None,
    retire: Annotated[
        str | None,
        typer.Option(
            metavar="INSTANCE",
            help="Instead of ingesting: take over the session of INSTANCE (an instance name"
            " or a client id from `iotp status`), which crashed and will not return; store"
            " what is parked there, end the session and exit.",
        ),
    ] = None,
) -> None:
    """Ingest MQTT telemetry into the telemetry table and TelemetryRecorded events."""
    from ingest.presence import CannotRetire
    from ingest.service import retire_ingest, run_ingest

    settings = load_settings()
    if instance is not None:
        settings = settings.model_copy(update={"ingest_instance": instance})
    if retire is None:
        run_ingest(settings, stop_on_signals())
        return
    try:
        retirement = retire_ingest(settings, retire, stop_on_signals())
    except CannotRetire as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(retirement.summary())
    if not retirement.ended:
        raise typer.Exit(1)


@command(commands, "broker-sync")
def broker_sync() -> None:
    """Keep the broker's password and ACL files in step with the device events."""
    from broker_identity.service import run_broker_sync

    run_broker_sync(load_settings(), stop_on_signals())


@command(commands)
def aggregate(
    instance: Annotated[
        str | None,
        typer.Option(help="Instance name, part of the consumer name (IOTP_AGGREGATOR_INSTANCE)."),
    ] = None,
) -> None:
    """Build the read models from the event streams (consumer group iotp-aggregators)."""
    from read_models.service import run_aggregator

    settings = load_settings()
    if instance is not None:
        settings = settings.model_copy(update={"aggregator_instance": instance})
    run_aggregator(settings, stop_on_signals())


@command(commands)
def alarms() -> None:
    """Raise and clear alarms from the telemetry events (consumer group iotp-alarms)."""
    from alarms.service import run_alarms

    run_alarms(load_settings(), stop_on_signals())


@command(commands)
def notify(
    instance: Annotated[
        str | None,
        typer.Option(help="Instance name, part of the consumer name (IOTP_NOTIFY_INSTANCE)."),
    ] = None,
) -> None:
    """Post alarm events to the registered webhooks (consumer group iotp-notifier)."""
    from notifications.service import run_notifier

    settings = load_settings()
    if instance is not None:
        settings = settings.model_copy(update={"notify_instance": instance})
    run_notifier(settings, stop_on_signals())


@command(commands)
def audit(
    instance: Annotated[
        str | None,
        typer.Option(help="Instance name, part of the consumer name (IOTP_AUDIT_INSTANCE)."),
    ] = None,
) -> None:
    """Record who issued each command in the audit log (consumer group iotp-audit)."""
    from read_models.audit_service import run_audit

    settings = load_settings()
    if instance is not None:
        settings = settings.model_copy(update={"audit_instance": instance})
    run_audit(settings, stop_on_signals())


@command(commands, "query-api")
def query_api(
    host: Annotated[str | None, typer.Option(help="Bind address (IOTP_QUERY_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (IOTP_QUERY_PORT).")] = None,
) -> None:
    """Run the query API (HTTP reads of the read models)."""
    from read_models.app import run_query_api

    run_query_api(load_settings(), host, port)


@command(commands)
def dashboard(
    host: Annotated[str | None, typer.Option(help="Bind address (IOTP_DASHBOARD_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (IOTP_DASHBOARD_PORT).")] = None,
) -> None:
    """Run the Streamlit dashboard over the read models."""
    import dashboard as package
    from iotp.preflight import require_read_replica

    settings = load_settings()
    require_read_replica(settings)  # a primary there would be a read store nobody updates
    app_path = Path(package.__file__).parent / "app.py"
    argv = [
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
    os.execv(sys.executable, argv)  # noqa: S606 - our interpreter, our app


@command(commands)
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
        typer.Option(
            help="Multiplex devices over this many connections, for load (default: one each);"
            " a broker with per-device ACLs refuses devices published on another's connection."
        ),
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
    payload_format: Annotated[
        str,
        typer.Option(
            "--format",
            help="Payload format: iotp, senml+json, json-map (Tasmota-like) or plain"
            " (ESPHome-like); the devices are registered with a matching profile.",
        ),
    ] = "iotp",
    transport: Annotated[
        str, typer.Option(help="mqtt, or http: POST to ingest's HTTP telemetry endpoint.")
    ] = "mqtt",
    http_url: Annotated[
        str | None,
        typer.Option(
            help="Ingest's HTTP endpoint (default http://IOTP_INGEST_HTTP_HOST:"
            "IOTP_INGEST_HTTP_PORT)."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Simulated devices: register through the API, then publish readings (MQTT or HTTP)."""
    from device_simulator.faults import FaultRates
    from device_simulator.progress import run_with_progress
    from device_simulator.runner import SimulationConfig
    from iotp.mqtt_url import parse_mqtt_url, tls_context

    settings = load_settings()
    problem = token_problem(settings.api_token)
    if problem is not None or settings.api_token is None:
        typer.echo(f"error: {problem}: the simulator registers devices through the API", err=True)
        raise typer.Exit(2)
    try:
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
            faults=FaultRates.parse(faults),
            protocol=settings.mqtt_protocol,
            tls=tls_context(parse_mqtt_url(settings.mqtt_url), settings),
            payload_format=payload_format,
            transport=transport,
            http_url=http_url or _ingest_http_url(settings),
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    summary = run_with_progress(config, stop_on_signals(), quiet=as_json)
    if as_json:
        print_report(summary.as_dict(), as_json=True)
    if summary.failures:
        raise typer.Exit(1)


def _ingest_http_url(settings: Settings) -> str:
    """Where this machine reaches ingest's HTTP telemetry ("" when it is off)."""
    if not settings.ingest_http_port:
        return ""
    host = settings.ingest_http_host
    host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host  # noqa: S104 - not a bind
    host = f"[{host}]" if ":" in host else host  # an IPv6 address
    return f"http://{host}:{settings.ingest_http_port}"
