"""The notifier's heal: the deliveries of the alarm events still in the command side's outbox.

Every alarm event is written to the outbox table in the transaction of the change it
describes, before the relay puts it on ``iotp:events:alarms``; the relay keeps it there,
sent or not, for IOTP_OUTBOX_KEEP_HOURS. So the alarm events Redis lost, cut or deleted
before the notifier read them can be read again from the outbox: the heal records the
deliveries of every alarm event it retains, in ``id`` (commit) order, in one write-store
transaction, and records the group's delivered ids as the notifier's positions. The UNIQUE
(webhook, event) pair makes the events already recorded create nothing, and so do entries
redelivered after the heal. Events older than the outbox's retention cannot be healed
this way: their deliveries are lost if the notifier never read them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import Any

import psycopg
from psycopg.rows import dict_row

from iotp.events import AlarmAcknowledged, AlarmCleared, AlarmRaised, UndecodableEvent, from_fields
from iotp.names import ALARM_EVENTS_STREAM
from notifications.delivery_rows import AlarmEvent, record_deliveries

logger = logging.getLogger(__name__)

PAGE_ROWS = 1_000

_RETAINED = "SELECT id, fields FROM outbox WHERE stream = %s AND id > %s ORDER BY id LIMIT %s"


def record_retained_deliveries(conn: psycopg.Connection[Any], delivered: Mapping[str, str]) -> int:
    """Record the deliveries of every alarm event the outbox retains, then ``delivered``
    (stream -> the group's last-delivered id) as the notifier's positions; how many are new.

    ``conn`` must return dict rows, as the intake's does.
    """
    recorded = events = 0
    with conn.transaction():
        for event in _retained_alarm_events(conn):
            recorded += record_deliveries(conn, event)
            events += 1
        _replace_positions(conn, delivered)
    logger.info(
        "notifier healed from the outbox: %s alarm events read, %s deliveries recorded",
        events,
        recorded,
    )
    return recorded


def _retained_alarm_events(
    conn: psycopg.Connection[Any],
) -> Iterator[AlarmEvent]:
    """The outbox's alarm events, sent or not, in id order, a page at a time."""
    after = 0
    while True:
        with conn.cursor(row_factory=dict_row) as cur:
            rows = cur.execute(_RETAINED, (ALARM_EVENTS_STREAM, after, PAGE_ROWS)).fetchall()
        if not rows:
            return
        for row in rows:
            try:
                event = from_fields(row["fields"])
            except UndecodableEvent as exc:
                logger.error("skipping undecodable outbox event %s: %s", row["id"], exc)
                continue
            if isinstance(event, AlarmRaised | AlarmAcknowledged | AlarmCleared):
                yield event
        after = rows[-1]["id"]


def _replace_positions(conn: psycopg.Connection[Any], delivered: Mapping[str, str]) -> None:
    """Record what the group was delivered, lowering a position if need be: after Redis lost
    the stream, its new entries may have ids below the old position, and would be skipped."""
    for stream, last_id in sorted(delivered.items()):
        if last_id == "0-0":
            conn.execute("DELETE FROM notifier_positions WHERE stream = %s", (stream,))
        else:
            conn.execute(
                "INSERT INTO notifier_positions (stream, last_id) VALUES (%s, %s)"
                " ON CONFLICT (stream) DO UPDATE SET last_id = EXCLUDED.last_id,"
                " updated_at = now()",
                (stream, last_id),
            )
