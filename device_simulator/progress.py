"""The simulator's live progress (rich) and closing summary."""

from __future__ import annotations

import threading

import aiomqtt
import httpx
from rich.console import Console
from rich.live import Live
from rich.table import Table

from device_simulator.registration import RegistrationFailed
from device_simulator.runner import SimulationConfig, Summary, run_simulation
from iotp.errors import ServiceUnavailable, redact_url


def _table(summary: Summary, title: str) -> Table:
    table = Table(title=title)
    for column in (
        "devices",
        "sent",
        "acknowledged",
        "readings",
        "msg/s",
        "readings/s",
        "errors",
        "faults",
    ):
        table.add_column(column, justify="right")
    table.add_row(
        str(summary.devices),
        f"{summary.messages_sent:,}",
        f"{summary.messages_acked:,}",
        f"{summary.readings_sent:,}",
        f"{summary.messages_per_s:,.1f}",
        f"{summary.readings_per_s:,.1f}",
        str(summary.publish_errors),
        ", ".join(f"{k} {v}" for k, v in sorted(summary.faults.items())) or "-",
    )
    return table


def run_with_progress(config: SimulationConfig, stop: threading.Event, quiet: bool) -> Summary:
    """Run the simulation under a live table (none when ``quiet``); a command API or broker
    that cannot be reached or refuses the devices is a :class:`ServiceUnavailable`."""
    console = Console(stderr=True)
    try:
        if quiet:
            return run_simulation(config, stop)
        with Live(console=console, refresh_per_second=4) as live:
            summary = run_simulation(
                config, stop, lambda s: live.update(_table(s, "iotp simulate"))
            )
        console.print(_table(summary, "summary"))
        if summary.failures:
            console.print(f"[red]{summary.failures} messages failed or were not acknowledged")
        return summary
    except (httpx.HTTPError, RegistrationFailed) as exc:
        raise ServiceUnavailable("the command API", "--api-url", config.api_url, str(exc)) from exc
    except (OSError, aiomqtt.MqttError) as exc:
        raise ServiceUnavailable(
            "the MQTT broker", "IOTP_MQTT_URL", redact_url(config.mqtt_url), str(exc)
        ) from exc
