"""The notifier's consumer of the alarm events: one delivery row per (webhook, event).

Reads a batch of ``iotp:events:alarms`` in the consumer group ``iotp-notifier``, records
every delivery it calls for in one write-store transaction, then XACKs. A crash before the
commit leaves the entries pending (this consumer re-reads them at start; another one claims
them after an idle time); a crash between the commit and the XACK reads them again, and the
UNIQUE (webhook, event) pair makes the second reading create nothing.

A webhook is notified of the events that happened after it was registered (by the event's
own time), so that re-reading an old event gives the same deliveries whenever it happens.
Acknowledgements and clears carry no severity: they take their alarm's, recorded when it was
raised; one whose raise the notifier never saw goes to the webhooks that take every severity.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
import redis

from iotp.db import ReconnectingConnection
from iotp.event_shards import Entry, ensure_groups
from iotp.events import (
    SEVERITIES,
    AlarmAcknowledged,
    AlarmCleared,
    AlarmRaised,
    UndecodableEvent,
    from_fields,
)
from iotp.names import ALARM_EVENTS_STREAM
from iotp.periodic import Every
from iotp.redis_client import text
from iotp.retry import Stopped, retry_transient

logger = logging.getLogger(__name__)

NOTIFIER_GROUP = "iotp-notifier"
AlarmEvent = AlarmRaised | AlarmAcknowledged | AlarmCleared

_REMEMBER_SEVERITY = (
    "INSERT INTO notifier_alarm_severities (alarm_id, severity) VALUES (%s, %s)"
    " ON CONFLICT (alarm_id) DO NOTHING"
)
_SEVERITY_OF = "SELECT severity FROM notifier_alarm_severities WHERE alarm_id = %s"
_RECORD_DELIVERIES = """
INSERT INTO webhook_deliveries
    (webhook_id, event_id, event_type, alarm_id, device_id, severity, body)
SELECT w.webhook_id, %(event_id)s, %(event_type)s, %(alarm_id)s, %(device_id)s,
       %(severity)s, %(body)s
FROM webhooks w
WHERE w.deleted_at IS NULL
  AND w.created_at <= %(occurred_at)s
  AND CASE WHEN %(severity)s::text IS NULL THEN cardinality(w.severities) >= %(all)s
           ELSE %(severity)s::text = ANY (w.severities) END
ON CONFLICT (webhook_id, event_id) DO NOTHING
"""


@dataclass(frozen=True)
class IntakeOptions:
    consumer: str
    batch_size: int
    block_ms: int
    claim_idle_ms: int
    group: str = NOTIFIER_GROUP


def ensure_group(client: redis.Redis, group: str = NOTIFIER_GROUP) -> None:
    """Create the group on the alarm stream, from its beginning, if missing."""
    ensure_groups(client, group, (ALARM_EVENTS_STREAM,))


def decode(entries: list[Entry]) -> list[AlarmEvent]:
    """The alarm events among ``entries``; anything else is skipped with a log line."""
    events: list[AlarmEvent] = []
    for entry_id, fields in entries:
        if fields is None:  # deleted from the stream while pending: nothing to deliver
            continue
        try:
            event = from_fields(fields)
        except UndecodableEvent as exc:
            logger.error(
                "skipping undecodable entry %s of %s: %s", entry_id, ALARM_EVENTS_STREAM, exc
            )
            continue
        if isinstance(event, AlarmRaised | AlarmAcknowledged | AlarmCleared):
            events.append(event)
        else:
            logger.warning("skipping %s %s: not an alarm event", event.type, event.event_id)
    return events


def record_deliveries(conn: psycopg.Connection[Any], event: AlarmEvent) -> int:
    """Insert the deliveries ``event`` calls for (in the caller's transaction); how many are new."""
    if isinstance(event, AlarmRaised):
        conn.execute(_REMEMBER_SEVERITY, (event.alarm_id, event.severity))
        severity: str | None = event.severity
    else:
        row = conn.execute(_SEVERITY_OF, (event.alarm_id,)).fetchone()
        severity = row["severity"] if row else None
    cur = conn.execute(
        _RECORD_DELIVERIES,
        {
            "event_id": event.event_id,
            "event_type": event.type,
            "alarm_id": event.alarm_id,
            "device_id": event.device_id,
            "severity": severity,
            "body": event.model_dump_json(),
            "occurred_at": event.occurred_at,
            "all": len(SEVERITIES),
        },
    )
    return cur.rowcount


class AlarmIntake:
    """Turns alarm events into delivery rows; ``on_recorded`` wakes the delivery workers."""

    def __init__(
        self,
        client: redis.Redis,
        connect: Callable[[], psycopg.Connection[Any]],
        options: IntakeOptions,
        on_recorded: Callable[[], None] = lambda: None,
    ) -> None:
        self.client, self.options = client, options
        self.on_recorded = on_recorded
        self._db = ReconnectingConnection(connect)
        self._claim = Every(options.claim_idle_ms / 1000)

    def close(self) -> None:
        self._db.close()

    def run(self, stop: threading.Event) -> None:
        """Record deliveries until ``stop`` is set, riding out PostgreSQL and Redis outages."""

        def retry(action: Callable[[], object]) -> None:
            retry_transient(action, stop, task="notifier intake", on_retry=lambda _: self.close())

        try:
            retry(lambda: ensure_group(self.client, self.options.group))
            retry(self.drain_own_pending)
            while not stop.is_set():
                retry(self.step)
        except Stopped:
            return
        finally:
            self.close()

    def drain_own_pending(self) -> None:
        """Record what this consumer read but did not acknowledge before it stopped."""
        while True:
            entries = self._read("0", block=None)
            if not entries:
                return
            self.process(entries)

    def step(self) -> int:
        """Claim abandoned entries now and then, then read new ones; deliveries recorded."""
        recorded = 0
        if self._claim.take():
            claimed = self.claim_abandoned()
            if claimed:
                recorded += self.process(claimed)
        return recorded + self.process(self._read(">", block=self.options.block_ms))

    def claim_abandoned(self) -> list[Entry]:
        """Entries another consumer read and left unacknowledged past the idle time."""
        result: Any = self.client.xautoclaim(
            ALARM_EVENTS_STREAM,
            self.options.group,
            self.options.consumer,
            min_idle_time=self.options.claim_idle_ms,
            start_id="0-0",
            count=self.options.batch_size,
        )
        entries = [(text(i), f or None) for i, f in result[1] if i is not None]
        if entries:
            logger.info("claimed %s alarm events left pending by another notifier", len(entries))
        return entries

    def process(self, entries: list[Entry]) -> int:
        """Record the deliveries of ``entries`` in one transaction, then acknowledge them."""
        if not entries:
            return 0
        conn = self._db()
        with conn.transaction():
            recorded = sum(record_deliveries(conn, event) for event in decode(entries))
        self.client.xack(ALARM_EVENTS_STREAM, self.options.group, *[i for i, _ in entries])
        if recorded:
            logger.debug("recorded %s deliveries", recorded)
            self.on_recorded()
        return recorded

    def _read(self, start: str, block: int | None) -> list[Entry]:
        response: Any = self.client.xreadgroup(
            self.options.group,
            self.options.consumer,
            {ALARM_EVENTS_STREAM: start},
            count=self.options.batch_size,
            block=block,
        )
        return [(text(i), f or None) for _, found in response or () for i, f in found]
