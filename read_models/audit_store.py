"""Writing the audit log: rows inserted once per event id, and old rows forgotten.

Both run in the caller's transaction. An insert of an event id already there changes nothing,
so a redelivered entry, a heal from the outbox and a second consumer all converge.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from read_models.audit import AuditRow

Conn = psycopg.Connection[Any]

# Rows deleted per statement: short transactions, so that retention never holds the table.
FORGET_BATCH = 1_000

_INSERT = """
INSERT INTO read_models.audit_log (event_id, at, actor_kind, actor_id, actor_name, actor_via,
    action, target, outcome, detail)
SELECT * FROM unnest(%s::uuid[], %s::timestamptz[], %s::text[], %s::text[], %s::text[],
    %s::text[], %s::text[], %s::text[], %s::text[], %s::jsonb[])
ON CONFLICT (event_id) DO NOTHING
"""

_FORGET = """
DELETE FROM read_models.audit_log WHERE event_id IN (
    SELECT event_id FROM read_models.audit_log
    WHERE at < now() - %s * INTERVAL '1 day' ORDER BY at LIMIT %s)
"""


def insert_rows(conn: Conn, rows: Sequence[AuditRow]) -> int:
    """Insert ``rows`` not recorded before; how many were new."""
    if not rows:
        return 0
    # In event-id order, so that two consumers inserting the same rows lock them alike.
    ordered = sorted(rows, key=lambda r: r.event_id)
    cur = conn.execute(
        _INSERT,
        (
            [r.event_id for r in ordered],
            [r.at for r in ordered],
            [r.actor.kind for r in ordered],
            [r.actor.id for r in ordered],
            [r.actor.name for r in ordered],
            [r.actor.via for r in ordered],
            [r.action for r in ordered],
            [r.target for r in ordered],
            [r.outcome for r in ordered],
            [Jsonb(r.detail) for r in ordered],
        ),
    )
    return cur.rowcount


def forget_older_than(conn: Conn, days: int, limit: int = FORGET_BATCH) -> int:
    """Delete at most ``limit`` of the oldest rows older than ``days``; how many went."""
    return conn.execute(_FORGET, (days, limit)).rowcount
