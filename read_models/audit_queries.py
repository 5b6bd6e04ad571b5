"""Reads of the audit trail (read_models.audit_log), for the query API and the dashboard.

Newest first; every filter is an exact match but the time window, and each is served by an
index ordered by time (read_models migration 0040).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg
from pydantic import BaseModel

from iotp.events import Actor
from read_models.audit import Outcome
from read_models.pages import page_rows

Conn = psycopg.Connection[Any]


class AuditEntry(BaseModel):
    """One command: when, who, what it did to what, and whether it was allowed."""

    event_id: UUID
    at: datetime
    actor: Actor
    action: str
    target: str | None
    outcome: Outcome
    detail: dict[str, Any]


class AuditPage(BaseModel):
    items: list[AuditEntry]
    total: int
    limit: int
    offset: int


_FILTER = """
    WHERE (%(actor)s::text IS NULL OR actor_name = %(actor)s OR actor_id = %(actor)s)
      AND (%(action)s::text IS NULL OR action = %(action)s)
      AND (%(target)s::text IS NULL OR target = %(target)s)
      AND (%(outcome)s::text IS NULL OR outcome = %(outcome)s)
      AND (%(start)s::timestamptz IS NULL OR at >= %(start)s)
      AND (%(end)s::timestamptz IS NULL OR at < %(end)s)
"""
_FIELDS = (
    "event_id, at, actor_kind, actor_id, actor_name, actor_via, action, target, outcome, detail"
)


def list_audit(
    conn: Conn,
    *,
    actor: str | None = None,
    action: str | None = None,
    target: str | None = None,
    outcome: Outcome | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    limit: int = 50,
    offset: int = 0,
) -> AuditPage:
    """One page of the commands recorded in [start, end), newest first, with the total.

    ``actor`` matches an actor's name or its id (a key's id, an account's user name).
    """
    params = {
        "actor": actor,
        "action": action,
        "target": target,
        "outcome": outcome,
        "start": start,
        "end": end,
        "limit": limit,
        "offset": offset,
    }
    rows, total = page_rows(
        conn, _FIELDS, f"read_models.audit_log {_FILTER}", "at DESC, event_id", params
    )
    return AuditPage(items=[_entry(row) for row in rows], total=total, limit=limit, offset=offset)


def _entry(row: dict[str, Any]) -> AuditEntry:
    return AuditEntry(
        event_id=row["event_id"],
        at=row["at"],
        actor=Actor(
            kind=row["actor_kind"],
            id=row["actor_id"],
            name=row["actor_name"],
            via=row["actor_via"],
        ),
        action=row["action"],
        target=row["target"],
        outcome=row["outcome"],
        detail=row["detail"],
    )
