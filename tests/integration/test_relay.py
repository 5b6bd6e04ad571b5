"""The outbox relay: at-least-once delivery across crashes and Redis outages."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import redis

from command_api.relay import drain
from iotp.db import open_pool
from iotp.events import DeviceRegistered
from iotp.redis_client import open_redis
from iotp.settings import Settings
from local_platform.broker import free_port
from tests.support.api_client import AUTH, THERMOSTAT, running_api, stream_events
from tests.support.waiting import wait_for

CRASH_AFTER_XADD = textwrap.dedent(
    """
    import asyncio, os, signal, sys
    from command_api.relay import fetch_unsent, publish
    from iotp.db import open_pool
    from iotp.redis_client import open_redis

    async def main(database_url, redis_url):
        pool = await open_pool(database_url)
        client = await open_redis(redis_url)
        async with pool.connection() as conn, conn.transaction():
            rows = await fetch_unsent(conn, 100)
            await publish(client, rows)
            print(len(rows), flush=True)
            os.kill(os.getpid(), signal.SIGKILL)  # dies before marking them sent

    asyncio.run(main(sys.argv[1], sys.argv[2]))
    """
)


def _unsent(db: psycopg.Connection[Any]) -> int:
    row = db.execute("SELECT count(*) FROM outbox WHERE sent_at IS NULL").fetchone()
    assert row is not None
    return int(row[0])


async def _drain_once(settings: Settings) -> int:
    pool = await open_pool(settings.database_url, max_size=1)
    client = await open_redis(settings.redis_url)
    try:
        async with pool.connection() as conn:
            return await drain(conn, client, 100)
    finally:
        await client.aclose()
        await pool.close()


def test_relay_killed_between_xadd_and_marking_sends_again_with_same_event_id(
    settings: Settings, db: psycopg.Connection[Any], redis_client: redis.Redis
) -> None:
    with running_api(settings, relay=False) as client:
        registered = client.post("/devices", json=THERMOSTAT, headers=AUTH)
    assert registered.status_code == 201
    assert _unsent(db) == 1

    crashed = subprocess.run(
        [sys.executable, "-c", CRASH_AFTER_XADD, settings.database_url, settings.redis_url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert crashed.returncode == -9, crashed.stderr
    assert crashed.stdout.strip() == "1"
    assert len(stream_events(redis_client)) == 1, "the crashed relay did XADD"
    assert _unsent(db) == 1, "but its marking was never committed"

    assert asyncio.run(_drain_once(settings)) == 1
    events = [event for _, event in stream_events(redis_client)]
    assert len(events) == 2
    assert events[0] == events[1]
    assert str(events[0].event_id) == registered.json()["event_id"]
    assert _unsent(db) == 0
    assert asyncio.run(_drain_once(settings)) == 0, "nothing is sent a third time"


def test_relay_keeps_outbox_order(
    settings: Settings, db: psycopg.Connection[Any], redis_client: redis.Redis
) -> None:
    with running_api(settings, relay=False) as client:
        for n in range(30):
            body = {**THERMOSTAT, "device_id": f"d{n:02d}"}
            assert client.post("/devices", json=body, headers=AUTH).status_code == 201
            assert (
                client.patch(f"/devices/d{n:02d}", json={"name": f"n{n}"}, headers=AUTH).status_code
                == 200
            )
    assert asyncio.run(_drain_once(settings)) == 60
    order = db.execute("SELECT fields->>'event_id' FROM outbox ORDER BY id").fetchall()
    on_stream = [str(event.event_id) for _, event in stream_events(redis_client)]
    assert on_stream == [row[0] for row in order]


@pytest.fixture
def private_redis_port() -> Iterator[int]:
    """A free port where a private redis-server is started later by the test."""
    port = free_port()
    yield port
    subprocess.run(
        ["redis-cli", "-p", str(port), "shutdown", "nosave"],
        capture_output=True,
        check=False,
        timeout=10,
    )


def test_commands_succeed_while_redis_is_down_and_events_follow_when_it_returns(
    settings: Settings, db: psycopg.Connection[Any], private_redis_port: int
) -> None:
    redis_url = f"redis://127.0.0.1:{private_redis_port}/0"
    offline = settings.model_copy(update={"redis_url": redis_url})
    with running_api(offline) as client:
        health = client.get("/healthz")
        registered = client.post("/devices", json=THERMOSTAT, headers=AUTH)
        assert health.status_code == 503
        assert health.json()["redis"]["reachable"] is False
        assert registered.status_code == 201
        assert _unsent(db) == 1

        subprocess.run(
            [
                "redis-server",
                "--port",
                str(private_redis_port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "yes",
            ],
            check=True,
            capture_output=True,
            timeout=10,
        )
        wait_for(lambda: _unsent(db) == 0, timeout=45)
        events = [e for _, e in stream_events(redis.Redis.from_url(redis_url))]
    assert len(events) == 1
    assert isinstance(events[0], DeviceRegistered)
    assert str(events[0].event_id) == registered.json()["event_id"]
