"""The one read-pool builder, shared by the query API and the dashboard."""

from __future__ import annotations

import time

import psycopg
import pytest
from psycopg_pool import PoolTimeout

from iotp.settings import Settings
from local_platform.broker import free_port
from read_models.queries import open_read_pool


def test_the_pool_serves_the_read_store(settings: Settings) -> None:
    pool = open_read_pool(settings.read_url(), name="iotp-test", max_size=2)
    try:
        with pool.connection(timeout=10) as conn:
            assert conn.execute("SELECT count(*) FROM read_models.devices").fetchone() == (0,)
        assert (pool.name, pool.min_size, pool.max_size) == ("iotp-test", 1, 2)
    finally:
        pool.close()


def test_a_dead_read_store_fails_the_read_not_the_start() -> None:
    url = f"postgresql://127.0.0.1:{free_port()}/nothing"
    started = time.monotonic()
    pool = open_read_pool(url, name="iotp-test", max_size=2, connect_timeout=1)
    try:
        assert time.monotonic() - started < 1  # it opens in the background
        with pytest.raises(PoolTimeout) as raised, pool.connection(timeout=0.5):
            pass
        # what the query API answers 503 for, and the dashboard shows as one line
        assert isinstance(raised.value, psycopg.OperationalError)
    finally:
        pool.close()
