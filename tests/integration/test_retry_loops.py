"""The retry policy in the loops that use it: the aggregator and the outbox relay."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

import psycopg
import pytest
import redis
import redis.asyncio as aioredis
from psycopg.types.json import Jsonb

from command_api.outbox import INSERT_EVENT_SQL, OUTBOX_BACKLOG_SQL
from command_api.relay import run_relay
from iotp.db import open_pool
from iotp.events import DeviceRegistered, to_fields
from iotp.names import DEVICE_EVENTS_STREAM
from iotp.settings import Settings
from local_platform.broker import free_port
from read_models.consumer import aggregator, aggregator_options
from tests.support.waiting import wait_for

TEST_APPLICATION = "iotp-retry-test"


def _read_model_names(db: psycopg.Connection[Any]) -> set[str]:
    return {row[0] for row in db.execute("SELECT device_id FROM read_models.devices")}


def _register(client: redis.Redis, device_id: str) -> None:
    fields: Any = to_fields(DeviceRegistered(device_id=device_id, name=device_id, kind="k"))
    client.xadd(DEVICE_EVENTS_STREAM, fields)


def _warnings(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


def test_aggregator_rides_out_an_interface_error_and_a_terminated_connection(
    settings: Settings, db: psycopg.Connection[Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="iotp.retry")
    connections = 0

    def connect() -> psycopg.Connection[Any]:
        nonlocal connections
        connections += 1
        if connections == 1:  # the aggregator used to give up on this one
            raise psycopg.InterfaceError("the connection is unusable")
        return psycopg.connect(settings.read_url(), application_name=TEST_APPLICATION)

    client = redis.Redis.from_url(settings.redis_url)
    options = aggregator_options(
        "retry-test",
        batch_size=100,
        block_ms=50,
        claim_idle_ms=300,  # how the entries of the failed batch come back
    )
    reader = aggregator(client, connect, options, 24, recompute=lambda: None)
    stop = threading.Event()
    runner = threading.Thread(target=reader.run, args=(stop,))
    runner.start()
    try:
        _register(client, "a")
        wait_for(lambda: _read_model_names(db) == {"a"})
        db.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            (TEST_APPLICATION,),
        )
        _register(client, "b")
        wait_for(lambda: _read_model_names(db) == {"a", "b"})
    finally:
        stop.set()
        runner.join(timeout=15)
        reader.part.close()
        client.close()
    assert not runner.is_alive()
    assert len(_warnings(caplog, "aggregator: postgresql unreachable; retry 1 in ")) == 2
    assert _warnings(caplog, "aggregator: postgresql is back after 1 retries; resuming")


def test_relay_stops_at_once_while_redis_is_unreachable(
    settings: Settings, db: psycopg.Connection[Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="iotp.retry")
    event = DeviceRegistered(device_id="waiting", name="w", kind="k")
    db.execute(
        INSERT_EVENT_SQL,
        (event.event_id, DEVICE_EVENTS_STREAM, type(event).__name__, Jsonb(to_fields(event))),
    )
    offline = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})

    async def relay_until_stopped() -> float:
        pool = await open_pool(offline.database_url, max_size=2)
        client = aioredis.Redis.from_url(offline.redis_url, socket_connect_timeout=1)
        stop = asyncio.Event()
        relay = asyncio.create_task(run_relay(pool, client, offline, stop))
        try:
            deadline = time.monotonic() + 20
            while len(_warnings(caplog, "outbox relay: redis unreachable")) < 3:
                assert time.monotonic() < deadline, "the relay never retried"
                await asyncio.sleep(0.05)
            stop.set()
            stopped_at = time.monotonic()
            await asyncio.wait_for(relay, timeout=5)
            return time.monotonic() - stopped_at
        finally:
            await client.aclose()
            await pool.close()

    assert asyncio.run(relay_until_stopped()) < 1.0
    assert db.execute(OUTBOX_BACKLOG_SQL).fetchone() == (1,), "the event still waits"
