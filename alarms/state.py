"""The alarm process's tables in the write store: rules, evaluation state, alarms, positions.

Every function runs in the caller's transaction; the caller commits a batch's evaluation
state, alarms, outbox events and stream positions together. Rule changes take the rules
lock exclusively and the process's transactions take it shared, so an alarm is never raised
under a rule that was deleted or changed in the meantime.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg

from alarms.rules import DeviceFacts, Evaluation, Rule
from command_api.alarms import RULES_LOCK_KEY
from command_api.outbox import INSERT_EVENT_SQL, outbox_rows
from iotp.events import Envelope

Conn = psycopg.Connection[dict[str, Any]]


RULE_COLUMNS = (
    "rule_id, scope, device_id, kind, metric, condition, threshold_low, threshold_high,"
    " for_readings, for_seconds, clear_readings, severity"
)


def share_rules_lock(conn: Conn) -> None:
    conn.execute("SELECT pg_advisory_xact_lock_shared(%s)", (RULES_LOCK_KEY,))


def database_now(conn: Conn) -> datetime:
    """The transaction's time on the database's clock: the one clock of every alarm decision."""
    row = conn.execute("SELECT now() AS now").fetchone()
    assert row is not None
    return row["now"]  # type: ignore[no-any-return]


def rule_from_row(row: dict[str, Any]) -> Rule:
    return Rule(
        rule_id=str(row["rule_id"]),
        scope=row["scope"],
        condition=row["condition"],
        severity=row["severity"],
        device_id=row["device_id"],
        kind=row["kind"],
        metric=row["metric"],
        threshold_low=row["threshold_low"],
        threshold_high=row["threshold_high"],
        for_readings=row["for_readings"],
        for_seconds=row["for_seconds"],
        clear_readings=row["clear_readings"],
    )


def configured_rules(conn: Conn) -> list[Rule]:
    rows = conn.execute(f"SELECT {RULE_COLUMNS} FROM alarm_rules ORDER BY rule_id").fetchall()  # noqa: S608
    return [rule_from_row(row) for row in rows]


def devices(conn: Conn, device_ids: Iterable[str]) -> dict[str, DeviceFacts]:
    """The registered devices among ``device_ids``: kind, declared ranges, whether active."""
    rows = conn.execute(
        "SELECT device_id, kind, metrics, status FROM devices WHERE device_id = ANY(%s)",
        (list(device_ids),),
    ).fetchall()
    return {row["device_id"]: device_facts(row) for row in rows}


def device_facts(row: dict[str, Any]) -> DeviceFacts:
    ranges = {m["name"]: (m.get("min"), m.get("max")) for m in row["metrics"]}
    return DeviceFacts(row["device_id"], row["kind"], ranges, row["status"] == "active")


def evaluations(conn: Conn, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], Evaluation]:
    """The evaluation state of (rule, device) pairs, locked until the transaction ends."""
    pairs = sorted(set(keys))
    if not pairs:
        return {}
    rows = conn.execute(
        "SELECT e.* FROM alarm_evaluation e"
        " JOIN unnest(%s::text[], %s::text[]) AS k(rule_id, device_id) USING (rule_id, device_id)"
        " ORDER BY e.rule_id, e.device_id FOR UPDATE OF e",
        ([r for r, _ in pairs], [d for _, d in pairs]),
    ).fetchall()
    return {(row["rule_id"], row["device_id"]): evaluation_from_row(row) for row in rows}


def evaluation_from_row(row: dict[str, Any]) -> Evaluation:
    return Evaluation(
        breach_count=row["breach_count"],
        clear_count=row["clear_count"],
        breach_started_at=row["breach_started_at"],
        newest_reading_at=row["newest_reading_at"],
        open_alarm_id=row["open_alarm_id"],
    )


def save_evaluations(conn: Conn, states: dict[tuple[str, str], Evaluation]) -> None:
    if not states:
        return
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO alarm_evaluation (rule_id, device_id, breach_count, clear_count,"
            " breach_started_at, newest_reading_at, open_alarm_id)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (rule_id, device_id) DO UPDATE SET"
            " breach_count = EXCLUDED.breach_count, clear_count = EXCLUDED.clear_count,"
            " breach_started_at = EXCLUDED.breach_started_at,"
            " newest_reading_at = EXCLUDED.newest_reading_at,"
            " open_alarm_id = EXCLUDED.open_alarm_id",
            [(*key, *_evaluation_values(s)) for key, s in sorted(states.items())],
        )


def _evaluation_values(s: Evaluation) -> tuple[Any, ...]:
    return (
        s.breach_count,
        s.clear_count,
        s.breach_started_at,
        s.newest_reading_at,
        s.open_alarm_id,
    )


def insert_alarm(conn: Conn, alarm: dict[str, Any]) -> bool:
    """Record a raised alarm; False when its id is already recorded (nothing changes).

    ``alarm`` holds every field of its AlarmRaised event (the finite bounds, as the event
    carries them) and ``updated_at``, the event's occurred_at: the row is what the read
    model builds from the event, so that a rebuild can copy it.
    """
    row = conn.execute(
        "INSERT INTO alarms (alarm_id, rule_id, device_id, metric, condition, severity, state,"
        " raised_at, value, threshold_low, threshold_high, updated_at)"
        " VALUES (%(alarm_id)s, %(rule_id)s, %(device_id)s, %(metric)s, %(condition)s,"
        " %(severity)s, 'active', %(raised_at)s, %(value)s, %(threshold_low)s,"
        " %(threshold_high)s, %(updated_at)s)"
        " ON CONFLICT (alarm_id) DO NOTHING RETURNING alarm_id",
        alarm,
    ).fetchone()
    return row is not None


def clear_alarm(
    conn: Conn,
    alarm_id: UUID,
    at: datetime,
    reason: str,
    value: float | None,
    occurred_at: datetime,
) -> bool:
    """Mark the alarm cleared (row-locked, so an acknowledgement cannot cross it); False when
    it was cleared already.

    ``occurred_at`` is the AlarmCleared event's; updated_at keeps the newest event's time, as
    the read model's does, whatever order the events' times come in.
    """
    row = conn.execute(
        "UPDATE alarms SET state = 'cleared', cleared_at = %s, cleared_value = %s,"
        " clear_reason = %s, updated_at = greatest(updated_at, %s)"
        " WHERE alarm_id = %s AND state <> 'cleared' RETURNING alarm_id",
        (at, value, reason, occurred_at, alarm_id),
    ).fetchone()
    return row is not None


def open_offline_alarms(conn: Conn, device_ids: Iterable[str]) -> list[tuple[str, str, UUID]]:
    """(rule, device, alarm) of the offline alarms open on ``device_ids``, locked."""
    rows = conn.execute(
        "SELECT e.rule_id, e.device_id, e.open_alarm_id FROM alarm_evaluation e"
        " JOIN alarms a ON a.alarm_id = e.open_alarm_id"
        " WHERE e.device_id = ANY(%s) AND a.condition = 'offline'"
        " ORDER BY e.rule_id, e.device_id FOR UPDATE OF e",
        (list(device_ids),),
    ).fetchall()
    return [(row["rule_id"], row["device_id"], row["open_alarm_id"]) for row in rows]


def advance_last_seen(conn: Conn, seen: dict[str, datetime]) -> set[str]:
    """Move each device's last-seen time forward (never back); the devices it moved."""
    if not seen:
        return set()
    ids = sorted(seen)
    rows = conn.execute(
        "INSERT INTO alarm_device_seen AS s (device_id, last_seen)"
        " SELECT * FROM unnest(%s::text[], %s::timestamptz[])"
        " ON CONFLICT (device_id) DO UPDATE SET last_seen = EXCLUDED.last_seen"
        " WHERE s.last_seen < EXCLUDED.last_seen RETURNING device_id",
        (ids, [seen[i] for i in ids]),
    ).fetchall()
    return {row["device_id"] for row in rows}


def silent_devices(conn: Conn, older_than_seconds: int) -> list[dict[str, Any]]:
    """Active devices last heard of more than ``older_than_seconds`` ago (database clock)."""
    return conn.execute(
        "SELECT d.device_id, d.kind, d.metrics, d.status, s.last_seen FROM alarm_device_seen s"
        " JOIN devices d USING (device_id)"
        " WHERE d.status = 'active' AND s.last_seen < now() - make_interval(secs => %s)"
        " ORDER BY d.device_id",
        (older_than_seconds,),
    ).fetchall()


def open_alarms_of_inactive_devices(conn: Conn) -> list[tuple[str, str, UUID]]:
    """(rule, device, alarm) open on decommissioned devices, locked."""
    rows = conn.execute(
        "SELECT e.rule_id, e.device_id, e.open_alarm_id FROM alarm_evaluation e"
        " JOIN devices d USING (device_id)"
        " WHERE e.open_alarm_id IS NOT NULL AND d.status <> 'active'"
        " ORDER BY e.rule_id, e.device_id FOR UPDATE OF e"
    ).fetchall()
    return [(row["rule_id"], row["device_id"], row["open_alarm_id"]) for row in rows]


def positions(conn: Conn) -> dict[str, str]:
    rows = conn.execute("SELECT stream, last_id FROM alarm_positions").fetchall()
    return {row["stream"]: row["last_id"] for row in rows}


def save_position(conn: Conn, stream: str, last_id: str) -> None:
    conn.execute(
        "INSERT INTO alarm_positions (stream, last_id) VALUES (%s, %s)"
        " ON CONFLICT (stream) DO UPDATE SET last_id = EXCLUDED.last_id, updated_at = now()",
        (stream, last_id),
    )


def write_events(conn: Conn, events: list[Envelope]) -> None:
    """Queue ``events`` in the command side's outbox, for the relay (each to its stream)."""
    if not events:
        return
    with conn.cursor() as cur:
        cur.executemany(INSERT_EVENT_SQL, outbox_rows(events))
