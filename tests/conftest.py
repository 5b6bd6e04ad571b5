"""Fixtures shared by every tier: real PostgreSQL and Redis for integration tests."""

from __future__ import annotations

import contextlib
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

from iotp.migrate import migrate
from iotp.settings import Settings
from local_platform.broker import free_port
from local_platform.embedded import (
    embedded_postgres,
    embedded_redis,
    postgres_answers,
    redis_answers,
)

# The test servers: the machine's own services unless told otherwise; on a bare machine
# (nothing configured, nothing on the default ports) embedded ones, started by
# pytest_configure below. Every test run gets its own database, and Redis tests use their
# own logical database, flushed per test.
TEST_PG_SERVER = os.environ.get("IOTP_TEST_PG_SERVER", "postgresql://localhost:5432/postgres")
TEST_REDIS_URL = os.environ.get("IOTP_TEST_REDIS_URL", "redis://localhost:6379/15")
TEST_TOKEN = "test-token-0123456789abcdef"
__all__ = ["free_port"]
_embedded = contextlib.ExitStack()


def pytest_configure(config: pytest.Config) -> None:
    """Start embedded PostgreSQL and Redis where none is configured and none answers."""
    global TEST_PG_SERVER, TEST_REDIS_URL
    forced = os.environ.get("IOTP_TEST_EMBEDDED") == "1"
    if forced or ("IOTP_TEST_PG_SERVER" not in os.environ and not postgres_answers(TEST_PG_SERVER)):
        state = Path(tempfile.mkdtemp(prefix="iotp-test-postgres-"))
        TEST_PG_SERVER = _embedded.enter_context(embedded_postgres(state))("postgres")
    if forced or ("IOTP_TEST_REDIS_URL" not in os.environ and not redis_answers(TEST_REDIS_URL)):
        state = Path(tempfile.mkdtemp(prefix="iotp-test-redis-"))
        port = _embedded.enter_context(embedded_redis(state))
        TEST_REDIS_URL = f"redis://127.0.0.1:{port}/15"


def pytest_unconfigure(config: pytest.Config) -> None:
    _embedded.close()


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
