"""The audit trail's heal: the commands' events the write store's outbox still holds.

The audit log cannot be recomputed from Redis (the streams are what was lost) nor from the
write tables (they hold the state a command left, not who issued it). The outbox can: every
command's event is written there, with its actor, in the command's own transaction, and the
relay keeps it, sent or not, for IOTP_OUTBOX_KEEP_HOURS. So a heal reads every event the
outbox keeps for the audited streams, in commit order, and inserts their rows (the event id
dedupes what the audit has already). What was sent before the oldest row the outbox keeps
cannot be recovered: when the audit's own position on a stream is older than that row, the
heal says so in an error line naming the stream and the span that may be missing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from iotp.events import UndecodableEvent
from iotp.redis_client import split_id
from read_models import audit_store
from read_models.audit import AuditRow, audit_row, decode_audited

logger = logging.getLogger(__name__)

PAGE_ROWS = 1_000

# The outbox is the command side's table; read here only, never written.
_RETAINED = "SELECT id, fields FROM outbox WHERE stream = ANY(%s) AND id > %s ORDER BY id LIMIT %s"
_OLDEST_SENT = (
    "SELECT stream_id, created_at FROM outbox WHERE stream = %s AND stream_id IS NOT NULL"
    " ORDER BY id LIMIT 1"
)


@dataclass
class OutboxRecovery:
    """What a heal read from the outbox, and the spans it could not recover (by stream)."""

    events: int = 0
    recorded: int = 0
    missing: dict[str, str] = field(default_factory=dict)


def recover_from_outbox(
    write: psycopg.Connection[Any],
    read: psycopg.Connection[Any],
    streams: Iterable[str],
    positions: Mapping[str, str],
) -> OutboxRecovery:
    """Insert the audit rows of every event the outbox keeps for ``streams``; ``positions``
    (the audit's own, by stream) tell which spans the outbox no longer covers."""
    wanted = list(streams)
    recovery = OutboxRecovery()
    with write.transaction():
        recovery.missing = _uncovered(write, wanted, positions)
        after = 0
        while True:
            with write.cursor(row_factory=dict_row) as cur:
                page = cur.execute(_RETAINED, (wanted, after, PAGE_ROWS)).fetchall()
            if not page:
                break
            rows: list[AuditRow] = []
            for outbox_row in page:
                try:
                    event = decode_audited(outbox_row["fields"])
                except UndecodableEvent as exc:
                    logger.error(
                        "audit: skipping undecodable outbox event %s: %s", outbox_row["id"], exc
                    )
                    continue
                row = None if event is None else audit_row(event)
                if row is not None:
                    rows.append(row)
            recovery.events += len(page)
            with read.transaction():
                recovery.recorded += audit_store.insert_rows(read, rows)
            after = page[-1]["id"]
    logger.info(
        "audit healed from the outbox: %s events read, %s audit rows recovered",
        recovery.events,
        recovery.recorded,
    )
    for stream, span in recovery.missing.items():
        logger.error(
            "audit: entries of %s %s are no longer in the outbox (it keeps sent events for"
            " IOTP_OUTBOX_KEEP_HOURS): the commands among them, if any, cannot be recovered"
            " and are missing from the audit log",
            stream,
            span,
        )
    return recovery


def _uncovered(
    write: psycopg.Connection[Any], streams: list[str], positions: Mapping[str, str]
) -> dict[str, str]:
    """For each stream whose oldest event the outbox keeps lies beyond the audit's position:
    the span between them, said for the log. (The outbox forgets oldest first, so when it
    still holds the entry the audit reached, it holds everything after it.)"""
    missing: dict[str, str] = {}
    for stream in streams:
        found = write.execute(_OLDEST_SENT, (stream,)).fetchone()
        if found is None:
            continue  # nothing sent is kept: nothing to compare (and nothing to recover)
        oldest_id, created_at = _columns(found)
        applied = positions.get(stream, "0-0")
        if split_id(oldest_id) > split_id(applied):
            missing[stream] = (
                f"after {applied} (the last the audit applied) and before {oldest_id}"
                f" (committed {created_at:%Y-%m-%d %H:%M:%S %Z})"
            )
    return missing


def _columns(row: Any) -> tuple[str, datetime]:
    if isinstance(row, Mapping):
        return row["stream_id"], row["created_at"]
    return row[0], row[1]
