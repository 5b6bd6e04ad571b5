"""The ``platform`` fixture of the integration and end-to-end tiers (a tests/conftest.py plugin)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

from iotp.settings import Settings
from tests.support.broker import private_mosquitto
from tests.support.platform import Platform


@pytest.fixture
def platform(
    settings: Settings, db: psycopg.Connection[Any], redis_client: redis.Redis, tmp_path: Path
) -> Iterator[Platform]:
    """A private broker beside the test database and Redis, ready for ingest."""
    db.execute("TRUNCATE ingest_ledger")
    with private_mosquitto(tmp_path / "broker") as url:
        platform = Platform(settings, url, db, redis_client, tmp_path)
        try:
            yield platform
        finally:
            platform.stop_children()
