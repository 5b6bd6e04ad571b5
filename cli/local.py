"""`iotp up`: the whole platform on this machine (needs the local_platform package)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from iotp.command_line import command, load_settings, stop_on_signals

commands = typer.Typer()


@command(commands)
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
        str,
        typer.Option(help="Its own broker: auto or mosquitto (amqtt is refused: no identity)."),
    ] = "auto",
    own_broker: Annotated[
        bool | None,
        typer.Option(
            "--own-broker",
            help="Run its own Mosquitto (device identity enforced) even when a broker answers"
            " on the MQTT port (IOTP_UP_OWN_BROKER).",
        ),
    ] = None,
) -> None:
    """Run the whole platform (migrate, APIs, ingest, aggregators, dashboard), supervised."""
    from local_platform.up import UpOptions, run_up

    settings = load_settings()
    if mqtt_broker not in ("auto", "mosquitto", "amqtt"):
        raise typer.BadParameter("--mqtt-broker must be auto, mosquitto or amqtt")
    options = UpOptions(
        state_dir=Path(state_dir or settings.state_dir),
        api_port=api_port or settings.api_port,
        query_port=query_port or settings.query_port,
        dashboard_port=dashboard_port or settings.dashboard_port,
        simulate=simulate,
        embedded=embedded,
        mqtt_broker=mqtt_broker,
        own_broker=settings.up_own_broker if own_broker is None else own_broker,
    )
    run_up(settings, options, stop_on_signals(), typer.echo)
    typer.echo("stopped")
