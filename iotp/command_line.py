"""What every `iotp` command shares: settings, errors a user can fix, signals, reports.

The composition root (``cli``) and the benchmarks declare their commands with
:func:`command`, so that a missing setting or an unreachable service is one line on stderr
and exit code 2 in every command, never a traceback.
"""

from __future__ import annotations

import asyncio
import functools
import signal
import threading
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, ParamSpec, TypeVar

import orjson
import typer
from pydantic import ValidationError

from iotp.errors import ConfigurationError, ServiceUnavailable
from iotp.settings import Settings, get_settings

P = ParamSpec("P")
R = TypeVar("R")


@contextmanager
def clear_errors() -> Iterator[None]:
    """Turn the errors a user can fix into one line on stderr and exit code 2."""
    try:
        yield
    except (ServiceUnavailable, ConfigurationError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except ValidationError as exc:
        typer.echo(f"error: invalid IOTP_ setting: {exc}", err=True)
        raise typer.Exit(2) from None


def load_settings() -> Settings:
    """The settings, or one clear line and exit 2 when the environment is wrong."""
    with clear_errors():
        return get_settings()


def command(
    app: typer.Typer, name: str | None = None
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Register a typer command whose body maps the user's errors to one line and exit 2."""

    def register(function: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(function)
        def run(*args: P.args, **kwargs: P.kwargs) -> R:
            with clear_errors():
                return function(*args, **kwargs)

        app.command(name)(run)
        return run

    return register


def stop_on_signals() -> threading.Event:
    """An event that SIGINT and SIGTERM set, for commands that stop cleanly between steps."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def run_until_signalled(main: Callable[[asyncio.Event], Coroutine[Any, Any, None]]) -> None:
    """Run ``main(stop)`` until it ends; SIGINT or SIGTERM set ``stop`` for a clean exit."""

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    asyncio.run(runner())


def print_report(report: Any, as_json: bool) -> None:
    """A report as indented JSON (``--json``), else pretty-printed for a terminal."""
    if as_json:
        typer.echo(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
        return
    from rich.console import Console
    from rich.pretty import Pretty

    Console().print(Pretty(report))
