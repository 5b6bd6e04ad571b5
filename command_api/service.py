"""Wiring of the command API process and of the standalone outbox relay."""

from __future__ import annotations

import asyncio

import uvicorn

from command_api.app import create_app
from command_api.relay import run_relay
from iotp.db import open_pool
from iotp.preflight import command_side_preflight
from iotp.redis_client import open_redis
from iotp.settings import Settings


def run_api(settings: Settings, host: str | None, port: int | None, relay: bool) -> None:
    """Serve the command API (with the relay inside unless ``relay`` is false) until stopped."""
    command_side_preflight(settings)
    application = create_app(settings, run_relay_task=relay)
    uvicorn.run(
        application,
        host=host or settings.api_host,
        port=port or settings.api_port,
        log_level=settings.log_level.lower(),
    )


async def serve_relay(settings: Settings, stop: asyncio.Event) -> None:
    """Relay the outbox to Redis until ``stop`` is set."""
    command_side_preflight(settings)
    pool = await open_pool(settings.database_url, max_size=2)
    try:
        client = await open_redis(settings.redis_url, settings.redis_cluster)
        try:
            await run_relay(pool, client, settings, stop)
        finally:
            await client.aclose()
    finally:
        await pool.close()
