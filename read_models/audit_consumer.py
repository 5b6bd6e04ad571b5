"""The audit trail's consumer: command events in, audit rows out, under the kernel's reader.

:class:`iotp.group_reader.GroupReader` feeds batches of the device, alarm, alarm-rule,
webhook and access streams in the consumer group ``iotp-audit``. A batch's rows (one per
event that names its actor) and the group's tracking rows commit in one read-store
transaction, and the batch is acknowledged after the commit; the event id is the row's key,
so a redelivered entry inserts nothing. Events that left Redis before they were applied are
recovered from the write store's outbox (:mod:`read_models.audit_heal`), as far back as it
keeps them. Between rounds, rows older than IOTP_AUDIT_RETENTION_DAYS are deleted a batch
at a time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import psycopg
import redis

from iotp.db import ReconnectingConnection
from iotp.group_reader import Batch, GroupReader, ReaderOptions, StreamPart
from iotp.names import (
    ACCESS_EVENTS_STREAM,
    ALARM_EVENTS_STREAM,
    ALARM_RULE_EVENTS_STREAM,
    DEVICE_EVENTS_STREAM,
    PROFILE_EVENTS_STREAM,
    WEBHOOK_EVENTS_STREAM,
)
from iotp.periodic import Every
from read_models import audit_store, queries, store
from read_models.audit import Audited, AuditRow, audit_row, decode_audited
from read_models.audit_heal import recover_from_outbox

logger = logging.getLogger(__name__)

AUDIT_GROUP = "iotp-audit"
AUDITED_STREAMS = (
    DEVICE_EVENTS_STREAM,
    ALARM_EVENTS_STREAM,
    ALARM_RULE_EVENTS_STREAM,
    WEBHOOK_EVENTS_STREAM,
    ACCESS_EVENTS_STREAM,
    PROFILE_EVENTS_STREAM,
)
FORGET_SECONDS = 300.0  # how often retention looks for old rows (then deletes until none)


def audit_options(
    consumer: str,
    *,
    batch_size: int = 500,
    block_ms: int = 1000,
    claim_idle_ms: int = 30_000,
    group: str = AUDIT_GROUP,
) -> ReaderOptions:
    """How the audit consumer reads: every stream a command's event goes to."""
    return ReaderOptions(
        group=group,
        consumer=consumer,
        streams=AUDITED_STREAMS,
        batch_size=batch_size,
        block_ms=block_ms,
        claim_idle_ms=claim_idle_ms,
        task="audit",
    )


class AuditRecorder(StreamPart[Audited]):
    """Records a batch's audit rows with the group's positions; heals from the outbox."""

    def __init__(
        self,
        read_store: Callable[[], psycopg.Connection[Any]],
        write_store: Callable[[], psycopg.Connection[Any]],
        group: str,
        retention_days: int,
    ) -> None:
        self.group = group
        self.retention_days = retention_days
        self._db = ReconnectingConnection(read_store)
        self._write = ReconnectingConnection(write_store)
        self._forget = Every(FORGET_SECONDS)

    def apply(self, batch: Batch[Audited]) -> int:
        rows: list[AuditRow] = []
        newest: dict[str, datetime] = {}
        for delivered in batch.events:
            event = delivered.event
            if event is None:
                continue
            at = event.occurred_at
            if delivered.stream not in newest or at > newest[delivered.stream]:
                newest[delivered.stream] = at
            row = audit_row(event)
            if row is not None:
                rows.append(row)
        conn = self._db()
        with conn.transaction():
            recorded = audit_store.insert_rows(conn, rows)
            positions = {s: (last, newest.get(s)) for s, last in batch.last_ids.items()}
            store.track(conn, self.group, positions)
        return recorded

    def positions(self) -> Mapping[str, str]:
        with self._db().transaction():
            rows = queries.tracking(self._db())
        return {t["stream"]: t["last_applied_id"] for t in rows if t["group_name"] == self.group}

    def heal(self, delivered: Mapping[str, str]) -> None:
        recover_from_outbox(self._write(), self._db(), AUDITED_STREAMS, self.positions())
        conn = self._db()
        with conn.transaction():
            store.reset_tracking(conn, self.group, delivered)

    def chores(self, busy: bool) -> None:
        if not self._forget.due():
            return
        conn = self._db()
        with conn.transaction():
            forgotten = audit_store.forget_older_than(conn, self.retention_days)
        if forgotten:
            logger.info("audit: deleted %s rows older than %s days", forgotten, self.retention_days)
        if forgotten < audit_store.FORGET_BATCH:
            self._forget.done()  # else more are due: another batch after the next round

    def close(self) -> None:
        self._db.close()
        self._write.close()


def audit_reader(
    client: redis.Redis,
    read_store: Callable[[], psycopg.Connection[Any]],
    write_store: Callable[[], psycopg.Connection[Any]],
    options: ReaderOptions,
    retention_days: int,
) -> GroupReader[Audited]:
    """The audit consumer: the group reader feeding an :class:`AuditRecorder`."""
    part = AuditRecorder(read_store, write_store, options.group, retention_days)
    return GroupReader(client, part, options, decode_audited)
