"""The outbox relay: moves committed events, in order, from the outbox to their Redis stream.

At-least-once: an event is marked sent only after XADD succeeded, so a relay that dies in
between sends it again on its next run, with the same ``event_id`` for consumers to dedupe.
Its housekeeping bounds what it fills: sent outbox rows and idempotency keys past their
retention are deleted, and its streams are trimmed to what every consumer group has
consumed (:mod:`iotp.stream_trim`; each trim is one atomic script, so relays running it
side by side are harmless).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import psycopg
import redis.asyncio as aioredis
from psycopg_pool import AsyncConnectionPool

from command_api.outbox import (
    FORGET_SENT_SQL,
    MARK_SENT_SQL,
    STREAM_OF,
    UNSENT_SQL,
    outbox_backlog,
)
from command_api.unit_of_work import Conn
from iotp.names import RELAY_STATS_KEY
from iotp.periodic import Every
from iotp.redis_client import text
from iotp.retry import Stopped, retry_transient_async
from iotp.settings import Settings
from iotp.stream_trim import StreamTrim, trim_consumed

logger = logging.getLogger(__name__)

RELAY_LOCK_KEY = 0x10770002  # one active relay at a time keeps the stream in outbox order
NOTIFY_CHANNEL = "iotp_outbox"
HOUSEKEEPING_SECONDS = 600.0
REPORT_SECONDS = 2.0
RELAYED_STREAMS = tuple(dict.fromkeys(STREAM_OF.values()))


async def fetch_unsent(conn: Conn, limit: int) -> list[dict[str, Any]]:
    """The oldest unsent events, or none when another relay holds the lock (in a transaction)."""
    cur = await conn.execute("SELECT pg_try_advisory_xact_lock(%s) AS locked", (RELAY_LOCK_KEY,))
    row = await cur.fetchone()
    if row is None or not row["locked"]:
        return []
    cur = await conn.execute(UNSENT_SQL, (limit,))
    return await cur.fetchall()


async def publish(client: aioredis.Redis, rows: list[dict[str, Any]]) -> list[str]:
    """XADD every row in one pipelined round trip; the stream ids, in order."""
    async with client.pipeline(transaction=False) as pipe:
        for row in rows:
            pipe.xadd(row["stream"], row["fields"])
        ids = await pipe.execute()
    return [text(i) for i in ids]


async def mark_sent(conn: Conn, outbox_ids: list[int], stream_ids: list[str]) -> None:
    await conn.execute(MARK_SENT_SQL, (outbox_ids, stream_ids))


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


async def report_backlog(conn: Conn, client: aioredis.Redis) -> None:
    """Publish the outbox backlog where the query side can read it (not the write tables)."""
    backlog = await outbox_backlog(conn)
    await conn.commit()
    await client.hset(
        RELAY_STATS_KEY, mapping={"outbox_backlog": backlog, "updated_at": time.time()}
    )
    await client.expire(RELAY_STATS_KEY, 120)


async def housekeeping(conn: Conn, settings: Settings) -> None:
    """Forget sent events and idempotency keys older than their retention."""
    async with conn.transaction():
        await conn.execute(FORGET_SENT_SQL, (settings.outbox_keep_hours,))
        await conn.execute(
            "DELETE FROM idempotency_keys WHERE created_at < now() - %s * INTERVAL '1 hour'",
            (settings.idempotency_ttl_hours,),
        )


async def trim_streams(client: aioredis.Redis, cap: int) -> list[StreamTrim]:
    """Trim every relayed stream to what its consumer groups have not consumed yet."""
    trims = [await trim_consumed(client, stream, cap, time.time()) for stream in RELAYED_STREAMS]
    for trim in trims:
        if trim.cut:
            logger.error(
                "%s has no consumer group and reached its cap of %s entries"
                " (IOTP_EVENT_STREAM_MAXLEN): its %s oldest entries were cut; a group created"
                " on it later heals from the write store",
                trim.stream,
                cap,
                trim.cut,
            )
        elif trim.length > cap:
            # Never cut: a group's unconsumed entries stay. A part retired for good leaves its
            # group behind, holding the stream; the line names it.
            logger.warning(
                "%s holds %s entries, over IOTP_EVENT_STREAM_MAXLEN (%s): consumer group %s"
                " has not consumed them (is its part running? a retired part's group can be"
                " removed with XGROUP DESTROY)",
                trim.stream,
                trim.length,
                cap,
                trim.held_by,
            )
        elif trim.trimmed:
            logger.debug("trimmed %s consumed entries of %s", trim.trimmed, trim.stream)
    return trims


async def _listen(conn: psycopg.AsyncConnection[Any], wake: asyncio.Event) -> None:
    async with contextlib.aclosing(conn.notifies()) as notifies:
        async for _ in notifies:
            wake.set()


async def _sleep_until_woken(
    wake: asyncio.Event, stop: asyncio.Event, listener: asyncio.Task[None], seconds: float
) -> None:
    """Return on NOTIFY, on stop, after ``seconds``, or raise why the listener died."""
    woken = asyncio.ensure_future(wake.wait())
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait(
            {woken, stopped, listener}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        woken.cancel()
        stopped.cancel()
    wake.clear()
    if listener.done():
        listener.result()  # raises the listener's error
        raise psycopg.OperationalError("the LISTEN connection closed")


async def run_relay(
    pool: AsyncConnectionPool[Conn],
    client: aioredis.Redis,
    settings: Settings,
    stop: asyncio.Event,
) -> None:
    """Relay until ``stop`` is set: woken by NOTIFY on commit, polling as a fallback.

    Stopping is an event rather than task cancellation because on Python 3.11 a library
    racing a timeout against the cancellation can swallow it (seen with psycopg's
    ``notifies(timeout=)``), leaving a task that never ends.
    """
    relay = _Relay(pool, client, settings, stop)
    try:
        while not stop.is_set():
            await retry_transient_async(
                relay.round, stop, task="outbox relay", on_retry=relay.listen_again
            )
    except Stopped:
        pass
    finally:
        await relay.stop_listening()


class _Relay:
    """The relay between rounds: its LISTEN connection, and when it last reported."""

    def __init__(
        self,
        pool: AsyncConnectionPool[Conn],
        client: aioredis.Redis,
        settings: Settings,
        stop: asyncio.Event,
    ) -> None:
        self.pool, self.client, self.settings, self.stop = pool, client, settings, stop
        self.wake = asyncio.Event()
        self.connection: psycopg.AsyncConnection[Any] | None = None
        self.listener: asyncio.Task[None] | None = None
        self.report = Every(REPORT_SECONDS)
        self.housekeeping = Every(HOUSEKEEPING_SECONDS)

    async def round(self) -> None:
        """Listen if not listening, relay what waits, report, then sleep until woken."""
        if self.connection is None or self.listener is None:
            self.connection = await psycopg.AsyncConnection.connect(
                self.settings.database_url, autocommit=True, connect_timeout=5
            )
            await self.connection.execute(f"LISTEN {NOTIFY_CHANNEL}")
            self.listener = asyncio.create_task(_listen(self.connection, self.wake))
        async with self.pool.connection() as conn:
            moved = await drain(conn, self.client, self.settings.relay_batch_size)
            if moved:
                logger.debug("relayed %s events", moved)
            if self.report.due():
                await report_backlog(conn, self.client)
                self.report.done()
            if self.housekeeping.due():
                await housekeeping(conn, self.settings)
                await trim_streams(self.client, self.settings.event_stream_maxlen)
                self.housekeeping.done()
        await _sleep_until_woken(
            self.wake, self.stop, self.listener, self.settings.relay_poll_seconds
        )

    async def listen_again(self, error: BaseException) -> None:
        """After a failure, drop the LISTEN connection: the next round opens a fresh one."""
        await self.stop_listening()

    async def stop_listening(self) -> None:
        connection, listener = self.connection, self.listener
        self.connection, self.listener = None, None
        if listener is not None:
            listener.cancel()
            with contextlib.suppress(BaseException):
                await listener
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.close()
