"""Fixtures of the stores, for every tier: a migrated database of this run's own and Redis.

Loaded as a plugin by tests/conftest.py, which also makes its hooks start embedded servers
on a bare machine before any test runs.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
import redis
from pydantic import SecretStr

from iotp.migrate import migrate
from iotp.settings import Settings
from read_models.schema import READ_STORE_MIGRATIONS
from tests.support.servers import (
    SERVERS,
    TEST_TOKEN,
    database_url_named,
    start_embedded_where_needed,
)

_embedded = contextlib.ExitStack()


def pytest_configure(config: pytest.Config) -> None:
    start_embedded_where_needed(_embedded)


def pytest_unconfigure(config: pytest.Config) -> None:
    _embedded.close()


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A migrated database of this test run's own, dropped at the end."""
    name = f"iotp_test_{uuid.uuid4().hex[:10]}"
    url = database_url_named(name)
    migrate(Settings(database_url=url, timescaledb="off"), READ_STORE_MIGRATIONS)
    yield url
    with psycopg.connect(SERVERS.postgres, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def db(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    """A connection to the test database, emptied before the test."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "TRUNCATE devices, outbox, idempotency_keys, telemetry, ingest_ledger,"
            " read_models.devices, read_models.device_activity, read_models.metric_stats,"
            " read_models.rollup_minute_recent, read_models.rollup_hour_recent,"
            " read_models.rollup_day_recent, read_models.rollup_minute_packed,"
            " read_models.rollup_hour_packed, read_models.rollup_day_packed,"
            " read_models.rollup_minute_columnar, read_models.rollup_hour_columnar,"
            " read_models.rollup_day_columnar,"
            " read_models.fleet_minute,"
            " read_models.tracking, read_models.applied_events, read_models.alarms,"
            " webhooks, webhook_deliveries, notifier_alarm_severities,"
            " read_models.webhook_deliveries,"
            " alarm_rules, alarms, alarm_evaluation, alarm_device_seen, alarm_positions,"
            " notifier_positions, api_keys, dashboard_accounts"
        )
        yield conn


@pytest.fixture
def redis_client() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(SERVERS.redis, decode_responses=True)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def settings(database_url: str, db: psycopg.Connection[Any], redis_client: redis.Redis) -> Settings:
    return Settings(
        database_url=database_url,
        redis_url=SERVERS.redis,
        api_token=SecretStr(TEST_TOKEN),
        relay_poll_seconds=0.2,
    )


@pytest.fixture
def now() -> datetime:
    """The minute a test seeds its read models in. The read side's windows ("the last hour",
    liveness) follow the clock, so an instant taken at import ages as the suite runs."""
    return datetime.now(UTC).replace(second=0, microsecond=0)


@pytest.fixture
def fresh_boot(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process on a machine booted a second ago: time.monotonic, which counts from
    boot, starts near 0 and runs on at its real pace (a CI machine may be that young)."""
    real = time.monotonic
    offset = real() - 1.0
    monkeypatch.setattr(time, "monotonic", lambda: real() - offset)
