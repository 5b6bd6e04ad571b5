"""The outbox table: what the unit of work writes, what the relay sends, and the backlog.

Events are written in the transaction of the device rows they describe; the relay sends
them in ``id`` order and marks them sent after Redis took them, so ``sent_at IS NULL`` is
exactly the backlog: events committed and not yet on their stream.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import tuple_row
from psycopg.types.json import Jsonb

from iotp.events import Event, to_fields
from iotp.names import DEVICE_EVENTS_STREAM

# One column, ``backlog``, whatever the connection's row factory.
OUTBOX_BACKLOG_SQL = "SELECT count(*) AS backlog FROM outbox WHERE sent_at IS NULL"
INSERT_EVENT_SQL = (
    "INSERT INTO outbox (event_id, stream, event_type, fields) VALUES (%s, %s, %s, %s)"
)
UNSENT_SQL = "SELECT id, stream, fields FROM outbox WHERE sent_at IS NULL ORDER BY id LIMIT %s"
MARK_SENT_SQL = """
UPDATE outbox SET sent_at = now(), stream_id = sent.stream_id
FROM unnest(%s::bigint[], %s::text[]) AS sent(id, stream_id)
WHERE outbox.id = sent.id
"""
FORGET_SENT_SQL = "DELETE FROM outbox WHERE sent_at < now() - %s * INTERVAL '1 hour'"


async def write_outbox(conn: psycopg.AsyncConnection[Any], events: list[Event]) -> None:
    """Queue ``events`` for the relay, in the caller's transaction."""
    async with conn.cursor() as cur:
        await cur.executemany(
            INSERT_EVENT_SQL,
            [
                (e.event_id, DEVICE_EVENTS_STREAM, type(e).__name__, Jsonb(to_fields(e)))
                for e in events
            ],
        )


async def outbox_backlog(conn: psycopg.AsyncConnection[Any]) -> int:
    """How many committed events wait to be relayed."""
    async with conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute(OUTBOX_BACKLOG_SQL)
        row = await cur.fetchone()
    return int(row[0]) if row else 0
