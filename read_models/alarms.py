"""The alarm read model: one row per alarm, folded from the alarm stream, and its reads.

An alarm's row depends only on the set of its events, never on their order or on how often
each arrives: each group of columns belongs to one event type (the raise, the
acknowledgement, the clear), the earliest event of a type (by its own time) sets its group,
and the state follows from which types arrived (cleared > acknowledged > active). So a clear
that overtakes its raise still ends as a cleared alarm with the raise's fields, and several
aggregators converge. The rows are written with the aggregator's batch, in its transaction.
An alarm whose raise has not arrived yet is kept but not shown by the reads.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

import psycopg
from psycopg.rows import dict_row
from pydantic import BaseModel

from iotp.events import SEVERITIES, AlarmAcknowledged, AlarmCleared, AlarmRaised, Severity
from read_models.pages import page_rows

Conn = psycopg.Connection[Any]
AlarmEvent = AlarmRaised | AlarmAcknowledged | AlarmCleared
AlarmState = Literal["active", "acknowledged", "cleared"]
ALARM_STATES: tuple[AlarmState, ...] = ("active", "acknowledged", "cleared")


@dataclass(slots=True)
class AlarmDelta:
    """What a batch says about one alarm: the earliest event of each type, and the newest time."""

    device_id: str
    updated_at: datetime
    raised: AlarmRaised | None = None
    acknowledged: AlarmAcknowledged | None = None
    cleared: AlarmCleared | None = None

    def add(self, event: AlarmEvent) -> None:
        self.updated_at = max(self.updated_at, event.occurred_at)
        if isinstance(event, AlarmRaised):
            if self.raised is None or event.raised_at < self.raised.raised_at:
                self.raised = event
        elif isinstance(event, AlarmAcknowledged):
            if (
                self.acknowledged is None
                or event.acknowledged_at < self.acknowledged.acknowledged_at
            ):
                self.acknowledged = event
        elif self.cleared is None or event.cleared_at < self.cleared.cleared_at:
            self.cleared = event


def add_alarm_event(alarms: dict[UUID, AlarmDelta], event: AlarmEvent) -> None:
    """Fold ``event`` into the batch's per-alarm deltas."""
    delta = alarms.get(event.alarm_id)
    if delta is None:
        delta = alarms[event.alarm_id] = AlarmDelta(event.device_id, event.occurred_at)
    delta.add(event)


# Column groups, each owned by one event type and keyed by that event's own time.
_GROUPS = {
    "raised_at": (
        "rule_id",
        "metric",
        "condition",
        "severity",
        "value",
        "threshold_low",
        "threshold_high",
    ),
    "acknowledged_at": ("acknowledged_by", "note"),
    "cleared_at": ("cleared_value", "clear_reason"),
}
# The read model's columns and their types, in the order the upsert and `iotp rebuild` write them.
ALARM_COLUMNS = (
    ("alarm_id", "uuid"),
    ("device_id", "text"),
    ("rule_id", "text"),
    ("metric", "text"),
    ("condition", "text"),
    ("severity", "text"),
    ("raised_at", "timestamptz"),
    ("value", "float8"),
    ("threshold_low", "float8"),
    ("threshold_high", "float8"),
    ("acknowledged_by", "text"),
    ("acknowledged_at", "timestamptz"),
    ("note", "text"),
    ("cleared_at", "timestamptz"),
    ("cleared_value", "float8"),
    ("clear_reason", "text"),
    ("updated_at", "timestamptz"),
)


def _take_earliest(key: str, columns: tuple[str, ...]) -> str:
    earlier = f"excluded.{key} IS NOT NULL AND (t.{key} IS NULL OR excluded.{key} < t.{key})"
    return ",\n    ".join(
        f"{c} = CASE WHEN {earlier} THEN excluded.{c} ELSE t.{c} END" for c in (*columns, key)
    )


_MERGE = ",\n    ".join(_take_earliest(key, columns) for key, columns in _GROUPS.items())
_UPSERT_ALARMS = f"""
INSERT INTO read_models.alarms AS t ({", ".join(c for c, _ in ALARM_COLUMNS)})
SELECT * FROM unnest({", ".join(f"%s::{kind}[]" for _, kind in ALARM_COLUMNS)})
ON CONFLICT (alarm_id) DO UPDATE SET
    {_MERGE},
    updated_at = GREATEST(t.updated_at, excluded.updated_at)
"""  # noqa: S608 - it interpolates constant column names only


def _row(alarm_id: UUID, delta: AlarmDelta) -> tuple[Any, ...]:
    r, a, c = delta.raised, delta.acknowledged, delta.cleared
    return (
        alarm_id,
        delta.device_id,
        *(
            (r.rule_id, r.metric, r.condition, r.severity, r.raised_at, r.value)
            if r
            else (None,) * 6
        ),
        *((r.threshold_low, r.threshold_high) if r else (None, None)),
        *((a.acknowledged_by, a.acknowledged_at, a.note) if a else (None,) * 3),
        *((c.cleared_at, c.value, c.reason) if c else (None,) * 3),
        delta.updated_at,
    )


def apply_alarms(conn: Conn, alarms: dict[UUID, AlarmDelta]) -> None:
    """Merge the batch's alarm deltas into read_models.alarms, in the caller's transaction."""
    if not alarms:
        return
    # In key order, so that aggregators touching the same alarms lock them in the same order.
    rows = [_row(alarm_id, alarms[alarm_id]) for alarm_id in sorted(alarms)]
    conn.execute(_UPSERT_ALARMS.encode(), [list(column) for column in zip(*rows, strict=True)])


class Alarm(BaseModel):
    alarm_id: UUID
    device_id: str
    metric: str | None
    severity: Severity
    state: AlarmState
    raised_at: datetime
    acknowledged_by: str | None
    acknowledged_at: datetime | None
    note: str | None
    cleared_at: datetime | None
    rule_id: str
    condition: str
    value: float | None
    threshold_low: float | None
    threshold_high: float | None
    cleared_value: float | None
    clear_reason: str | None
    updated_at: datetime


class AlarmPage(BaseModel):
    items: list[Alarm]
    total: int
    limit: int
    offset: int


class AlarmCounts(BaseModel):
    """Alarms not cleared: by severity, and by state (active or acknowledged)."""

    critical: int = 0
    major: int = 0
    minor: int = 0
    warning: int = 0
    active: int = 0
    acknowledged: int = 0


_SHOWN = "raised_at IS NOT NULL"
_FILTER = f"""
    WHERE {_SHOWN}
      AND (%(device_id)s::text IS NULL OR device_id = %(device_id)s)
      AND (%(severity)s::text IS NULL OR severity = %(severity)s)
      AND (%(state)s::text IS NULL OR state = %(state)s)
      AND (%(start)s::timestamptz IS NULL OR raised_at >= %(start)s)
      AND (%(end)s::timestamptz IS NULL OR raised_at < %(end)s)
"""
_FIELDS = ", ".join(Alarm.model_fields)


def list_alarms(
    conn: Conn,
    *,
    device_id: str | None = None,
    severity: Severity | None = None,
    state: AlarmState | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    limit: int = 50,
    offset: int = 0,
) -> AlarmPage:
    """One page of alarms raised in [start, end), newest first, with the total count."""
    params = {
        "device_id": device_id,
        "severity": severity,
        "state": state,
        "start": start,
        "end": end,
        "limit": limit,
        "offset": offset,
    }
    rows, total = page_rows(
        conn, _FIELDS, f"read_models.alarms {_FILTER}", "raised_at DESC, alarm_id", params
    )
    return AlarmPage(
        items=[Alarm.model_validate(row) for row in rows], total=total, limit=limit, offset=offset
    )


def get_alarm(conn: Conn, alarm_id: UUID) -> Alarm | None:
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            f"SELECT {_FIELDS} FROM read_models.alarms"  # noqa: S608
            f" WHERE alarm_id = %s AND {_SHOWN}",
            (alarm_id,),
        ).fetchone()
    return None if row is None else Alarm.model_validate(row)


def open_alarm_counts(conn: Conn) -> AlarmCounts:
    """How many alarms are not cleared, by severity and by state."""
    rows = conn.execute(
        f"SELECT severity, state, count(*) FROM read_models.alarms"  # noqa: S608
        f" WHERE cleared_at IS NULL AND {_SHOWN} GROUP BY severity, state"
    ).fetchall()
    counts = dict.fromkeys((*SEVERITIES, "active", "acknowledged"), 0)
    for severity, state, n in rows:
        counts[severity] = counts.get(severity, 0) + n
        counts[state] += n
    return AlarmCounts(**{k: v for k, v in counts.items() if k in AlarmCounts.model_fields})


def open_alarms_by_device(conn: Conn, device_ids: Iterable[str]) -> dict[str, dict[str, int]]:
    """For each of ``device_ids`` with alarms not cleared: how many, by severity."""
    rows = conn.execute(
        f"SELECT device_id, severity, count(*) FROM read_models.alarms"  # noqa: S608
        f" WHERE device_id = ANY(%s) AND cleared_at IS NULL AND {_SHOWN}"
        " GROUP BY device_id, severity",
        (list(device_ids),),
    ).fetchall()
    found: dict[str, dict[str, int]] = {}
    for device_id, severity, n in rows:
        found.setdefault(device_id, {})[severity] = n
    return found
