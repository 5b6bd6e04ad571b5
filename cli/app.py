"""The ``iotp`` command line: one typer app made of the commands of each area.

Services and operator commands are always there. `iotp up` is registered when the
local-only package is installed and `iotp bench` when the benchmarks are, so that the
production image (which ships neither) offers only commands that work.
"""

from __future__ import annotations

from importlib.util import find_spec
from typing import Annotated

import typer

from cli import keys, operations, services, users
from iotp.command_line import load_settings
from iotp.logs import configure_logging

app = typer.Typer(
    name="iotp",
    help="iotp: an IoT telemetry platform (MQTT ingest, TimescaleDB, CQRS read models).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def main(
    log_level: Annotated[
        str | None, typer.Option(help="Log level (default: IOTP_LOG_LEVEL or INFO).")
    ] = None,
) -> None:
    """iotp command line."""
    configure_logging(log_level or load_settings().log_level)


def installed(*modules: str) -> bool:
    """Whether every module can be imported here (optional packages and extras)."""
    try:
        return all(find_spec(module) is not None for module in modules)
    except (ImportError, ValueError):
        return False


def _register() -> None:
    if installed("local_platform"):
        from cli import local

        app.add_typer(local.commands)
    app.add_typer(services.commands)
    app.add_typer(operations.commands)
    app.add_typer(keys.commands)
    app.add_typer(users.commands)
    if installed("benchmarks", "psutil"):
        from benchmarks.commands import bench

        app.add_typer(bench, name="bench", help="Benchmarks: throughput and latency here.")


_register()
