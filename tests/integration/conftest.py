"""Fixtures of the integration tier."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

from iotp.settings import Settings
from tests.broker import private_mosquitto
from tests.integration.ingest_harness import Platform


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
