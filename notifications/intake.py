"""The notifier's consumer of the alarm events: one delivery row per (webhook, event).

The kernel's group reader (:mod:`iotp.group_reader`) feeds batches of ``iotp:events:alarms``
in the consumer group ``iotp-notifier``; every delivery a batch calls for is recorded, with
the stream position, in one write-store transaction, and the batch is acknowledged after the
commit. A crash between the commit and the XACK hands the entries again, and the UNIQUE
(webhook, event) pair makes the second reading create nothing. Alarm events that left Redis
before they were read are recorded from the outbox's copy of them (:mod:`notifications.heal`).

Which deliveries an event calls for: :mod:`notifications.delivery_rows`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import psycopg
import redis

from iotp.db import ReconnectingConnection
from iotp.events import AlarmAcknowledged, AlarmCleared, AlarmRaised, AnyEvent, from_fields
from iotp.group_reader import Batch, GroupReader, ReaderOptions, StreamPart
from iotp.names import ALARM_EVENTS_STREAM
from notifications.delivery_rows import AlarmEvent, record_deliveries
from notifications.heal import record_retained_deliveries

logger = logging.getLogger(__name__)

NOTIFIER_GROUP = "iotp-notifier"

# Positions only move forward here (several notifiers may commit out of order); a heal may
# lower them (notifications.heal).
_SAVE_POSITION = """
INSERT INTO notifier_positions AS p (stream, last_id) VALUES (%s, %s)
ON CONFLICT (stream) DO UPDATE SET last_id = excluded.last_id, updated_at = now()
WHERE (split_part(p.last_id, '-', 1)::bigint, split_part(p.last_id, '-', 2)::bigint)
    < (split_part(excluded.last_id, '-', 1)::bigint, split_part(excluded.last_id, '-', 2)::bigint)
"""


@dataclass(frozen=True)
class IntakeOptions:
    consumer: str
    batch_size: int
    block_ms: int
    claim_idle_ms: int
    group: str = NOTIFIER_GROUP

    def reader(self) -> ReaderOptions:
        return ReaderOptions(
            group=self.group,
            consumer=self.consumer,
            streams=(ALARM_EVENTS_STREAM,),
            batch_size=self.batch_size,
            block_ms=self.block_ms,
            claim_idle_ms=self.claim_idle_ms,
            task="notifier intake",
        )


class DeliveryRecorder(StreamPart[AnyEvent]):
    """Turns alarm events into delivery rows; ``on_recorded`` wakes the delivery workers."""

    def __init__(
        self,
        connect: Callable[[], psycopg.Connection[Any]],
        on_recorded: Callable[[], None] = lambda: None,
    ) -> None:
        self.on_recorded = on_recorded
        self._db = ReconnectingConnection(connect)

    def apply(self, batch: Batch[AnyEvent]) -> int:
        conn = self._db()
        with conn.transaction():
            recorded = sum(record_deliveries(conn, event) for event in alarm_events(batch))
            for stream, last in batch.last_ids.items():
                conn.execute(_SAVE_POSITION, (stream, last))
        self._recorded(recorded)
        return recorded

    def positions(self) -> Mapping[str, str]:
        rows = self._db().execute("SELECT stream, last_id FROM notifier_positions").fetchall()
        return {row["stream"]: row["last_id"] for row in rows}

    def heal(self, delivered: Mapping[str, str]) -> None:
        self._recorded(record_retained_deliveries(self._db(), delivered))

    def close(self) -> None:
        self._db.close()

    def _recorded(self, count: int) -> None:
        if count:
            logger.debug("recorded %s deliveries", count)
            self.on_recorded()


def alarm_events(batch: Batch[AnyEvent]) -> list[AlarmEvent]:
    """The alarm events of ``batch``; anything else is skipped with a log line."""
    events: list[AlarmEvent] = []
    for delivered in batch.events:
        event = delivered.event
        if isinstance(event, AlarmRaised | AlarmAcknowledged | AlarmCleared):
            events.append(event)
        else:
            logger.warning("skipping %s %s: not an alarm event", event.type, event.event_id)
    return events


def alarm_intake(
    client: redis.Redis,
    connect: Callable[[], psycopg.Connection[Any]],
    options: IntakeOptions,
    on_recorded: Callable[[], None] = lambda: None,
) -> GroupReader[AnyEvent]:
    """The notifier's intake: the group reader feeding a :class:`DeliveryRecorder`."""
    return GroupReader(
        client, DeliveryRecorder(connect, on_recorded), options.reader(), from_fields
    )
