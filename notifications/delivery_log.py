"""The delivery log in the read store, kept up to date from the delivery rows.

Every change of a delivery row bumps its ``revision``. This copies the rows whose revision
the log has not recorded yet into ``read_models.webhook_deliveries`` (a row there is only
replaced by a higher revision), commits the read store, then records in the write store
which revisions it copied. A crash in between copies them again, which changes nothing: the
log catches up with the deliveries whatever stops, and never moves backwards. Finished
deliveries are forgotten after IOTP_NOTIFY_KEEP_DAYS, in both stores.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import psycopg

from iotp.commands import url_origin
from iotp.db import ReconnectingConnection
from iotp.periodic import Every
from iotp.retry import Stopped, retry_transient

logger = logging.getLogger(__name__)

_UNLOGGED = """
SELECT d.delivery_id, d.webhook_id, w.name AS webhook_name, w.url, d.event_id, d.event_type,
       d.alarm_id, d.device_id, d.severity, d.state, d.attempts, d.last_status, d.last_error,
       d.created_at, d.last_attempt_at,
       CASE WHEN d.state = 'pending' THEN d.next_attempt_at END AS next_attempt_at,
       d.finished_at, d.revision
FROM webhook_deliveries d JOIN webhooks w USING (webhook_id)
WHERE d.logged_revision < d.revision
ORDER BY d.created_at
LIMIT %s
"""
_LOG_COLUMNS = (
    "delivery_id",
    "webhook_id",
    "webhook_name",
    "webhook_origin",
    "event_id",
    "event_type",
    "alarm_id",
    "device_id",
    "severity",
    "state",
    "attempts",
    "last_status",
    "last_error",
    "created_at",
    "last_attempt_at",
    "next_attempt_at",
    "finished_at",
    "revision",
)
_UPSERT = (
    f"INSERT INTO read_models.webhook_deliveries ({', '.join(_LOG_COLUMNS)})"  # noqa: S608
    f" VALUES ({', '.join(f'%({c})s' for c in _LOG_COLUMNS)})"
    " ON CONFLICT (delivery_id) DO UPDATE SET "
    + ", ".join(f"{c} = EXCLUDED.{c}" for c in _LOG_COLUMNS[1:])
    + " WHERE read_models.webhook_deliveries.revision < EXCLUDED.revision"
)
_MARK_LOGGED = """
UPDATE webhook_deliveries SET logged_revision = greatest(logged_revision, logged.revision)
FROM unnest(%s::uuid[], %s::bigint[]) AS logged(delivery_id, revision)
WHERE webhook_deliveries.delivery_id = logged.delivery_id
"""

# Finished deliveries older than the retention, once the log has them; then their log rows.
_FORGET_FINISHED = (
    "DELETE FROM webhook_deliveries WHERE state <> 'pending' AND logged_revision = revision"
    " AND finished_at < now() - %s * INTERVAL '1 day'"
)
_FORGET_LOGGED = (
    "DELETE FROM read_models.webhook_deliveries WHERE state <> 'pending'"
    " AND finished_at < now() - %s * INTERVAL '1 day'"
)
HOUSEKEEPING_SECONDS = 600.0

Connect = Callable[[], psycopg.Connection[Any]]


def copy_batch(
    write: psycopg.Connection[Any], read: psycopg.Connection[Any], limit: int = 500
) -> int:
    """Copy one batch of changed deliveries to the log; how many rows it copied."""
    with write.transaction():
        rows = write.execute(_UNLOGGED, (limit,)).fetchall()
    if not rows:
        return 0
    entries = [{**row, "webhook_origin": url_origin(row.pop("url"))} for row in rows]
    with read.transaction(), read.cursor() as cur:
        cur.executemany(_UPSERT, entries)
    with write.transaction():
        write.execute(
            _MARK_LOGGED, ([e["delivery_id"] for e in entries], [e["revision"] for e in entries])
        )
    return len(entries)


class DeliveryLog:
    """Keeps the read store's delivery log current; woken when deliveries change."""

    def __init__(
        self,
        connect_write: Connect,
        connect_read: Connect,
        wake: threading.Event,
        poll: float,
        keep_days: int,
    ) -> None:
        self.wake, self.poll, self.keep_days = wake, poll, keep_days
        self._housekeeping = Every(HOUSEKEEPING_SECONDS)
        self._write = ReconnectingConnection(connect_write)
        self._read = ReconnectingConnection(connect_read)

    def close(self) -> None:
        self._write.close()
        self._read.close()

    def step(self) -> int:
        """Copy until the log has caught up; how many rows were copied."""
        write, read = self._write(), self._read()
        copied = 0
        while moved := copy_batch(write, read):
            copied += moved
        if self._housekeeping.due():
            with write.transaction():
                write.execute(_FORGET_FINISHED, (self.keep_days,))
            with read.transaction():
                read.execute(_FORGET_LOGGED, (self.keep_days,))
            self._housekeeping.done()
        return copied

    def run(self, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                retry_transient(
                    self.step, stop, task="notifier delivery log", on_retry=lambda _: self.close()
                )
                if self.wake.wait(self.poll):
                    self.wake.clear()
        except Stopped:
            return
        finally:
            self.close()
