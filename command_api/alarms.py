"""Alarm rule and acknowledgement routes: each change commits with its event or not at all.

A rule's create, update or delete takes the rules lock exclusively, so it never interleaves
with a batch of the alarm process (which takes it shared); an update or delete clears the
rule's open alarms in the same transaction, and a new rule on a metric clears the open
alarms of the default rule it replaces, so no alarm is left that nothing would clear.
An acknowledgement locks the alarm's row, as the alarm process's clear does: the two cannot
cross, and an alarm cleared first answers 409. Rule events go to ``iotp:events:alarm-rules``,
acknowledgements and clears to ``iotp:events:alarms``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any
from uuid import UUID, uuid4

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.security import HTTPBearer
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel, Field

from command_api.outbox import INSERT_EVENT_SQL
from command_api.unit_of_work import Conn
from iotp.commands import (
    ALARM_NOTE_MAX_LENGTH,
    AcknowledgeAlarm,
    AlarmRuleSpec,
    CreateAlarmRule,
    DeleteAlarmRule,
    UpdateAlarmRule,
)
from iotp.events import (
    AlarmAcknowledged,
    AlarmCleared,
    AlarmCondition,
    AlarmRuleCreated,
    AlarmRuleDeleted,
    AlarmRuleUpdated,
    Envelope,
    Severity,
    to_fields,
)
from iotp.http_errors import error_responses, invalid
from iotp.model import FrozenModel, Name, SafeText
from iotp.names import ALARM_EVENTS_STREAM, ALARM_RULE_EVENTS_STREAM

# Taken shared by every transaction of the alarm process (alarms.state), exclusive here.
RULES_LOCK_KEY = 0x10770016
DEFAULT_RULE_PREFIX = "range:"

_documented_bearer = HTTPBearer(auto_error=False, description="IOTP_API_TOKEN")
alarm_rules = APIRouter(
    prefix="/alarm-rules",
    tags=["alarms"],
    dependencies=[Depends(_documented_bearer)],
    responses=error_responses(401, 422, 503),
)
alarms = APIRouter(
    prefix="/alarms",
    tags=["alarms"],
    dependencies=[Depends(_documented_bearer)],
    responses=error_responses(401, 422, 503),
)

_RULE_FIELDS = (
    "scope, device_id, kind, metric, condition, threshold_low, threshold_high, for_readings,"
    " for_seconds, clear_readings, severity"
)
_RULE_COLUMNS = f"rule_id, {_RULE_FIELDS}, created_at, updated_at"
_RULE_VALUES = ", ".join(f"%({name.strip()})s" for name in _RULE_FIELDS.split(","))


class AlarmRuleOut(BaseModel):
    rule_id: UUID
    scope: str
    device_id: str | None
    kind: str | None
    metric: str | None
    condition: AlarmCondition
    threshold_low: float | None
    threshold_high: float | None
    for_readings: int | None
    for_seconds: int | None
    clear_readings: int
    severity: Severity
    created_at: datetime
    updated_at: datetime


class AlarmRuleChangedOut(AlarmRuleOut):
    event_id: UUID
    cleared_alarms: int = Field(description="Open alarms this change cleared")


class AlarmRuleList(BaseModel):
    rules: list[AlarmRuleOut]


class AlarmRuleDeletedOut(BaseModel):
    rule_id: UUID
    event_id: UUID
    cleared_alarms: int = Field(description="Open alarms of the rule, cleared with it")


class AcknowledgeBody(FrozenModel):
    acknowledged_by: Name
    note: SafeText | None = Field(default=None, max_length=ALARM_NOTE_MAX_LENGTH)


class AcknowledgedOut(BaseModel):
    alarm_id: UUID
    state: str
    acknowledged_by: str
    acknowledged_at: datetime
    note: str | None
    event_id: UUID | None = Field(
        description="This acknowledgement's event; null when it was acknowledged before"
    )


def _pool(request: Request) -> AsyncConnectionPool[Conn]:
    pool: AsyncConnectionPool[Conn] = request.app.state.pool
    return pool


PoolDep = Annotated[AsyncConnectionPool[Conn], Depends(_pool)]


async def _write_events(conn: Conn, stream: str, events: list[Envelope]) -> None:
    for event in events:
        fields = to_fields(event)
        await conn.execute(
            INSERT_EVENT_SQL, (event.event_id, stream, fields["type"], Jsonb(fields))
        )


def _declared(metrics: list[dict[str, Any]], metric: str) -> dict[str, Any] | None:
    return next((m for m in metrics if m.get("name") == metric), None)


async def _check_target(conn: Conn, spec: AlarmRuleSpec) -> None:
    """404 for an unknown device or kind, 409 for a decommissioned device, 422 for a metric
    its target does not declare or a default threshold its range does not give."""
    if spec.scope == "device":
        cur = await conn.execute(
            "SELECT metrics, status FROM devices WHERE device_id = %s", (spec.device_id,)
        )
        row = await cur.fetchone()
        if row is None:
            raise HTTPException(404, f"device {spec.device_id!r} is not registered")
        if row["status"] != "active":
            raise HTTPException(409, f"device {spec.device_id!r} is decommissioned")
        declared = [row["metrics"]]
    else:
        cur = await conn.execute(
            "SELECT metrics FROM devices WHERE kind = %s AND status = 'active'", (spec.kind,)
        )
        declared = [r["metrics"] for r in await cur.fetchall()]
        if not declared:
            raise HTTPException(404, f"no active device is of kind {spec.kind!r}")
    if spec.metric is None:
        return
    found = [m for metrics in declared if (m := _declared(metrics, spec.metric)) is not None]
    if not found:
        raise invalid(("body", "metric"), f"metric {spec.metric!r} is not declared by the target")
    if spec.scope == "device":
        _check_defaults(spec, found[0])


def _check_defaults(spec: AlarmRuleSpec, declared: dict[str, Any]) -> None:
    low = spec.threshold_low if spec.threshold_low is not None else declared.get("min")
    high = spec.threshold_high if spec.threshold_high is not None else declared.get("max")
    needs = {"above": high is None, "below": low is None}
    if needs.get(spec.condition, low is None and high is None):
        raise invalid(
            ("body", "threshold_high" if spec.condition == "above" else "threshold_low"),
            f"metric {spec.metric!r} declares no bound for {spec.condition!r}: give a threshold",
        )
    if low is not None and high is not None and not low < high:
        raise invalid(("body", "threshold_low"), "threshold_low must be below threshold_high")


async def _clear_open(
    conn: Conn, where: str, params: dict[str, Any], reason: str
) -> list[Envelope]:
    """Clear the open alarms ``where`` selects (row-locked), and forget their evaluation."""
    # ``where`` is one of this module's constants; values travel as parameters.
    sql = (
        "UPDATE alarms SET state = 'cleared', cleared_at = now(), clear_reason = %(reason)s"  # noqa: S608
        f" WHERE state <> 'cleared' AND {where} RETURNING alarm_id, device_id, cleared_at"
    )
    cur = await conn.execute(sql, {**params, "reason": reason})
    rows = await cur.fetchall()
    await conn.execute(f"DELETE FROM alarm_evaluation WHERE {where}", params)  # noqa: S608
    return [
        AlarmCleared(
            device_id=row["device_id"],
            alarm_id=row["alarm_id"],
            cleared_at=row["cleared_at"],
            reason=reason,
        )
        for row in rows
    ]


async def _clear_replaced_defaults(conn: Conn, spec: AlarmRuleSpec) -> list[Envelope]:
    """A rule on a metric replaces that metric's default rule on the devices it watches."""
    if spec.metric is None:
        return []
    where = (
        "rule_id = %(default)s AND device_id IN (SELECT device_id FROM devices"
        " WHERE device_id = %(device_id)s OR kind = %(kind)s)"
    )
    params = {
        "default": DEFAULT_RULE_PREFIX + spec.metric,
        "device_id": spec.device_id,
        "kind": spec.kind,
    }
    return await _clear_open(conn, where, params, "replaced by a configured rule")


def _rule_params(spec: AlarmRuleSpec) -> dict[str, Any]:
    return spec.model_dump(include=set(AlarmRuleSpec.model_fields))


async def create_rule(cmd: CreateAlarmRule, pool: AsyncConnectionPool[Conn]) -> AlarmRuleChangedOut:
    """Store the rule and its AlarmRuleCreated event in one transaction."""
    event = AlarmRuleCreated(rule_id=uuid4(), **_rule_params(cmd))
    async with pool.connection() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (RULES_LOCK_KEY,))
        await _check_target(conn, cmd)
        cur = await conn.execute(
            f"INSERT INTO alarm_rules (rule_id, {_RULE_FIELDS}, created_at, updated_at)"  # noqa: S608
            f" VALUES (%(rule_id)s, {_RULE_VALUES}, %(at)s, %(at)s) RETURNING {_RULE_COLUMNS}",
            {**_rule_params(cmd), "rule_id": event.rule_id, "at": event.occurred_at},
        )
        row = await cur.fetchone()
        cleared = await _clear_replaced_defaults(conn, cmd)
        await _write_events(conn, ALARM_RULE_EVENTS_STREAM, [event])
        await _write_events(conn, ALARM_EVENTS_STREAM, cleared)
    assert row is not None
    return AlarmRuleChangedOut(**row, event_id=event.event_id, cleared_alarms=len(cleared))


async def update_rule(cmd: UpdateAlarmRule, pool: AsyncConnectionPool[Conn]) -> AlarmRuleChangedOut:
    """Replace the rule; its open alarms clear, and it is evaluated afresh from now on."""
    event = AlarmRuleUpdated(**_rule_params(cmd), rule_id=cmd.rule_id)
    async with pool.connection() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (RULES_LOCK_KEY,))
        await _check_target(conn, cmd)
        cur = await conn.execute(
            f"UPDATE alarm_rules SET ({_RULE_FIELDS}, updated_at) = ({_RULE_VALUES}, %(at)s)"  # noqa: S608
            f" WHERE rule_id = %(rule_id)s RETURNING {_RULE_COLUMNS}",
            {**_rule_params(cmd), "rule_id": cmd.rule_id, "at": event.occurred_at},
        )
        row = await cur.fetchone()
        if row is None:
            raise _rule_not_found(cmd.rule_id)
        params = {"rule_id": str(cmd.rule_id)}
        cleared = await _clear_open(conn, "rule_id = %(rule_id)s", params, "rule updated")
        cleared += await _clear_replaced_defaults(conn, cmd)
        await _write_events(conn, ALARM_RULE_EVENTS_STREAM, [event])
        await _write_events(conn, ALARM_EVENTS_STREAM, cleared)
    return AlarmRuleChangedOut(**row, event_id=event.event_id, cleared_alarms=len(cleared))


async def delete_rule(cmd: DeleteAlarmRule, pool: AsyncConnectionPool[Conn]) -> AlarmRuleDeletedOut:
    """Delete the rule and clear its open alarms, with their events, in one transaction."""
    event = AlarmRuleDeleted(rule_id=cmd.rule_id)
    async with pool.connection() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (RULES_LOCK_KEY,))
        cur = await conn.execute(
            "DELETE FROM alarm_rules WHERE rule_id = %s RETURNING rule_id", (cmd.rule_id,)
        )
        if await cur.fetchone() is None:
            raise _rule_not_found(cmd.rule_id)
        params = {"rule_id": str(cmd.rule_id)}
        cleared = await _clear_open(conn, "rule_id = %(rule_id)s", params, "rule deleted")
        await _write_events(conn, ALARM_RULE_EVENTS_STREAM, [event])
        await _write_events(conn, ALARM_EVENTS_STREAM, cleared)
    return AlarmRuleDeletedOut(
        rule_id=cmd.rule_id, event_id=event.event_id, cleared_alarms=len(cleared)
    )


async def acknowledge_alarm(
    cmd: AcknowledgeAlarm, pool: AsyncConnectionPool[Conn]
) -> AcknowledgedOut:
    """Record who acknowledged the alarm; 404 unknown, 409 cleared, no second event."""
    async with pool.connection() as conn, conn.transaction():
        cur = await conn.execute(
            "SELECT device_id, state, acknowledged_by, acknowledged_at, note FROM alarms"
            " WHERE alarm_id = %s FOR UPDATE",
            (cmd.alarm_id,),
        )
        row = await cur.fetchone()
        if row is None:
            raise HTTPException(404, f"alarm {cmd.alarm_id} is not known")
        if row["state"] == "cleared":
            raise HTTPException(409, f"alarm {cmd.alarm_id} is cleared")
        if row["state"] == "acknowledged":
            return AcknowledgedOut(alarm_id=cmd.alarm_id, event_id=None, **row)
        event = AlarmAcknowledged(
            device_id=row["device_id"],
            alarm_id=cmd.alarm_id,
            acknowledged_by=cmd.acknowledged_by,
            acknowledged_at=datetime.now(UTC),
            note=cmd.note,
        )
        await conn.execute(
            "UPDATE alarms SET state = 'acknowledged', acknowledged_by = %s,"
            " acknowledged_at = %s, note = %s WHERE alarm_id = %s",
            (event.acknowledged_by, event.acknowledged_at, event.note, cmd.alarm_id),
        )
        await _write_events(conn, ALARM_EVENTS_STREAM, [event])
    return AcknowledgedOut(
        alarm_id=cmd.alarm_id,
        state="acknowledged",
        acknowledged_by=event.acknowledged_by,
        acknowledged_at=event.acknowledged_at,
        note=event.note,
        event_id=event.event_id,
    )


def _rule_not_found(rule_id: UUID) -> HTTPException:
    return HTTPException(404, f"alarm rule {rule_id} does not exist")


@alarm_rules.post(
    "",
    status_code=201,
    response_model=AlarmRuleChangedOut,
    responses=error_responses(400, 404, 409, 413),
)
async def post_rule(cmd: CreateAlarmRule, response: Response, pool: PoolDep) -> AlarmRuleChangedOut:
    """Create a rule; a rule on a metric replaces that metric's default range rule."""
    created = await create_rule(cmd, pool)
    response.headers["Location"] = f"/alarm-rules/{created.rule_id}"
    return created


@alarm_rules.get("", response_model=AlarmRuleList)
async def list_rules(pool: PoolDep) -> AlarmRuleList:
    """Every configured rule, oldest first (the default range rules are implied, not listed)."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            f"SELECT {_RULE_COLUMNS} FROM alarm_rules ORDER BY created_at, rule_id"  # noqa: S608
        )
        rows = await cur.fetchall()
    return AlarmRuleList(rules=[AlarmRuleOut(**row) for row in rows])


@alarm_rules.get("/{rule_id}", response_model=AlarmRuleOut, responses=error_responses(404))
async def get_rule(rule_id: UUID, pool: PoolDep) -> AlarmRuleOut:
    async with pool.connection() as conn:
        cur = await conn.execute(
            f"SELECT {_RULE_COLUMNS} FROM alarm_rules WHERE rule_id = %s",  # noqa: S608
            (rule_id,),
        )
        row = await cur.fetchone()
    if row is None:
        raise _rule_not_found(rule_id)
    return AlarmRuleOut(**row)


@alarm_rules.put(
    "/{rule_id}", response_model=AlarmRuleChangedOut, responses=error_responses(400, 404, 409, 413)
)
async def put_rule(rule_id: UUID, spec: CreateAlarmRule, pool: PoolDep) -> AlarmRuleChangedOut:
    """Replace every attribute of a rule; its open alarms clear."""
    cmd = UpdateAlarmRule(rule_id=rule_id, **_rule_params(spec))
    return await update_rule(cmd, pool)


@alarm_rules.delete(
    "/{rule_id}", response_model=AlarmRuleDeletedOut, responses=error_responses(404)
)
async def remove_rule(rule_id: UUID, pool: PoolDep) -> AlarmRuleDeletedOut:
    """Delete a rule; its open alarms clear."""
    return await delete_rule(DeleteAlarmRule(rule_id=rule_id), pool)


@alarms.post(
    "/{alarm_id}/acknowledge",
    response_model=AcknowledgedOut,
    responses=error_responses(400, 404, 409, 413),
)
async def post_acknowledge(alarm_id: UUID, body: AcknowledgeBody, pool: PoolDep) -> AcknowledgedOut:
    """Acknowledge an alarm (who, and an optional note); it stays acknowledged until it clears."""
    cmd = AcknowledgeAlarm(alarm_id=alarm_id, acknowledged_by=body.acknowledged_by, note=body.note)
    return await acknowledge_alarm(cmd, pool)
