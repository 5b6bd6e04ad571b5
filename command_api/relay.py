"""The outbox relay: moves committed events, in order, from the outbox to their Redis stream.

At-least-once: an event is marked sent only after XADD succeeded, so a relay that dies in
between sends it again on its next run, with the same ``event_id`` for consumers to dedupe.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import psycopg
import redis
import redis.asyncio as aioredis
from psycopg_pool import AsyncConnectionPool

from command_api.unit_of_work import Conn
from iotp.settings import Settings

logger = logging.getLogger(__name__)

RELAY_LOCK_KEY = 0x10770002  # one active relay at a time keeps the stream in outbox order
NOTIFY_CHANNEL = "iotp_outbox"
HOUSEKEEPING_SECONDS = 600.0
MAX_BACKOFF_SECONDS = 30.0


async def fetch_unsent(conn: Conn, limit: int) -> list[dict[str, Any]]:
    """The oldest unsent events, or none when another relay holds the lock (in a transaction)."""
    cur = await conn.execute("SELECT pg_try_advisory_xact_lock(%s) AS locked", (RELAY_LOCK_KEY,))
    row = await cur.fetchone()
    if row is None or not row["locked"]:
        return []
    cur = await conn.execute(
        "SELECT id, stream, fields FROM outbox WHERE sent_at IS NULL ORDER BY id LIMIT %s",
        (limit,),
    )
    return await cur.fetchall()


async def publish(client: aioredis.Redis, rows: list[dict[str, Any]]) -> list[str]:
    """XADD every row in one pipelined round trip; the stream ids, in order."""
    async with client.pipeline(transaction=False) as pipe:
        for row in rows:
            pipe.xadd(row["stream"], row["fields"])
        ids = await pipe.execute()
    return [i.decode() if isinstance(i, bytes) else str(i) for i in ids]


async def mark_sent(conn: Conn, outbox_ids: list[int], stream_ids: list[str]) -> None:
    await conn.execute(
        """
        UPDATE outbox SET sent_at = now(), stream_id = sent.stream_id
        FROM unnest(%s::bigint[], %s::text[]) AS sent(id, stream_id)
        WHERE outbox.id = sent.id
        """,
        (outbox_ids, stream_ids),
    )


async def relay_batch(conn: Conn, client: aioredis.Redis, limit: int) -> int:
    """Publish and mark one batch in one transaction; how many events it moved."""
    async with conn.transaction():
        rows = await fetch_unsent(conn, limit)
        if rows:
            stream_ids = await publish(client, rows)
            await mark_sent(conn, [r["id"] for r in rows], stream_ids)
    return len(rows)


async def drain(conn: Conn, client: aioredis.Redis, limit: int) -> int:
    """Relay until the outbox is empty (or another relay holds it); how many were moved."""
    total = 0
    while (moved := await relay_batch(conn, client, limit)) > 0:
        total += moved
    return total


async def housekeeping(conn: Conn, settings: Settings) -> None:
    """Forget sent events and idempotency keys older than their retention."""
    async with conn.transaction():
        await conn.execute(
            "DELETE FROM outbox WHERE sent_at < now() - %s * INTERVAL '1 hour'",
            (settings.outbox_keep_hours,),
        )
        await conn.execute(
            "DELETE FROM idempotency_keys WHERE created_at < now() - %s * INTERVAL '1 hour'",
            (settings.idempotency_ttl_hours,),
        )


async def run_relay(
    pool: AsyncConnectionPool[Conn], client: aioredis.Redis, settings: Settings
) -> None:
    """Relay forever: woken by NOTIFY on commit, polling as a fallback; stops when cancelled."""
    backoff = 0.5
    last_housekeeping = 0.0
    listener: psycopg.AsyncConnection[Any] | None = None
    try:
        while True:
            try:
                if listener is None:
                    listener = await psycopg.AsyncConnection.connect(
                        settings.database_url, autocommit=True, connect_timeout=5
                    )
                    await listener.execute(f"LISTEN {NOTIFY_CHANNEL}")
                async with pool.connection() as conn:
                    moved = await drain(conn, client, settings.relay_batch_size)
                    if moved:
                        logger.debug("relayed %s events", moved)
                    if time.monotonic() - last_housekeeping > HOUSEKEEPING_SECONDS:
                        await housekeeping(conn, settings)
                        last_housekeeping = time.monotonic()
                if backoff > 0.5:
                    logger.info("relay resumed")
                backoff = 0.5
                async for _ in listener.notifies(timeout=settings.relay_poll_seconds, stop_after=1):
                    pass
            except (
                psycopg.OperationalError,
                redis.ConnectionError,
                redis.TimeoutError,
                OSError,
            ) as exc:
                logger.warning("relay cannot reach a service, retrying in %.1fs: %s", backoff, exc)
                if listener is not None:
                    with contextlib.suppress(Exception):
                        await listener.close()
                    listener = None
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
    finally:
        if listener is not None:
            await listener.close()
