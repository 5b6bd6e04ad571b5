"""The benchmarks' own stores: emptied before a run, devices registered the real way."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg

from iotp.migrate import migrate
from iotp.redis_client import redis_for
from iotp.settings import Settings
from read_models.rebuild import MODEL_TABLES
from read_models.schema import READ_STORE_MIGRATIONS

WRITE_TABLES = ("devices", "outbox", "idempotency_keys", "telemetry", "ingest_ledger")
READ_TABLES = (*MODEL_TABLES, "tracking")
BENCH_TOKEN = "bench-token-not-for-production"  # noqa: S105 - a throw-away local database


def reset(settings: Settings) -> None:
    """Migrate, then empty the write store, the read store and the bench's Redis database."""
    migrate(settings, READ_STORE_MIGRATIONS)
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        conn.execute("TRUNCATE " + ", ".join(WRITE_TABLES))
    with psycopg.connect(settings.read_url(), autocommit=True) as conn:
        conn.execute("TRUNCATE " + ", ".join(f"read_models.{t}" for t in READ_TABLES))
    redis_for(settings.redis_url, settings.redis_cluster).flushdb()


def register(
    settings: Settings, device_ids: list[str], kind: str, metrics: list[dict[str, Any]]
) -> None:
    """Register the devices through the command handlers (rows and outbox, as the API does)."""
    asyncio.run(_register(settings, device_ids, kind, metrics))


async def _register(
    settings: Settings, device_ids: list[str], kind: str, metrics: list[dict[str, Any]]
) -> None:
    from command_api.handlers import register_device
    from command_api.unit_of_work import PostgresUnitOfWork
    from iotp.commands import RegisterDevice
    from iotp.db import open_pool

    pool = await open_pool(settings.database_url, max_size=2)
    try:
        for device_id in device_ids:
            cmd = RegisterDevice.model_validate(
                {"device_id": device_id, "name": device_id, "kind": kind, "metrics": metrics}
            )
            await register_device(cmd, PostgresUnitOfWork(pool), b"bench")
    finally:
        await pool.close()
