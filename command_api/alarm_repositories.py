"""Alarm rules and alarms in the write store, in the unit of work's transaction.

Rule changes take the rules lock exclusively (:meth:`PostgresAlarmRuleRepository.lock`);
alarms are read and cleared row-locked, as the alarm process clears them, so that an
acknowledgement and a clear cannot cross. Every time written is an event's own (an alarm's
updated_at: the newest of its events), so that the rows match the events to the microsecond.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol
from uuid import UUID

import psycopg

from command_api.alarms import (
    RULES_LOCK_KEY,
    Alarm,
    AlarmRule,
    ClearedAlarm,
    WatchedDevice,
)
from iotp.events import AlarmAcknowledged, AlarmRuleAttributes, AlarmRuleCreated, AlarmRuleUpdated

Conn = psycopg.AsyncConnection[dict[str, Any]]

_RULE_FIELDS = (
    "scope, device_id, kind, metric, condition, threshold_low, threshold_high, for_readings,"
    " for_seconds, clear_readings, severity"
)
_RULE_NAMES = {name.strip() for name in _RULE_FIELDS.split(",")}
_RULE_VALUES = ", ".join(f"%({name.strip()})s" for name in _RULE_FIELDS.split(","))
RULE_COLUMNS = f"rule_id, {_RULE_FIELDS}, created_at, updated_at"


class AlarmRuleRepository(Protocol):
    async def lock(self) -> None:
        """Take the rules lock exclusively, until the transaction ends."""
        ...

    async def watched_devices(self, device_id: str | None, kind: str | None) -> list[WatchedDevice]:
        """The device ``device_id`` and the devices of ``kind``, whatever their status."""
        ...

    async def add(self, event: AlarmRuleCreated) -> AlarmRule: ...
    async def replace(self, event: AlarmRuleUpdated) -> AlarmRule | None:
        """The rule as replaced; None when there is no such rule."""
        ...

    async def delete(self, rule_id: UUID) -> bool: ...


class AlarmRepository(Protocol):
    async def get(self, alarm_id: UUID) -> Alarm | None:
        """The alarm, row-locked until the transaction ends."""
        ...

    async def acknowledge(self, event: AlarmAcknowledged) -> None: ...
    async def clear_open_of_rule(
        self, rule_id: str, at: datetime, reason: str
    ) -> list[ClearedAlarm]:
        """Clear the rule's open alarms at ``at`` and forget its evaluation."""
        ...

    async def clear_open_of_default(
        self,
        default_rule_id: str,
        device_id: str | None,
        kind: str | None,
        at: datetime,
        reason: str,
    ) -> list[ClearedAlarm]:
        """The same for a default rule, on the device ``device_id`` and those of ``kind``."""
        ...


def rule_from_row(row: dict[str, Any]) -> AlarmRule:
    return AlarmRule(**row)


def _rule_params(event: AlarmRuleAttributes) -> dict[str, Any]:
    return {
        **event.model_dump(include=_RULE_NAMES),
        "rule_id": event.rule_id,
        "at": event.occurred_at,
    }


class PostgresAlarmRuleRepository:
    def __init__(self, conn: Conn) -> None:
        self.conn = conn

    async def lock(self) -> None:
        await self.conn.execute("SELECT pg_advisory_xact_lock(%s)", (RULES_LOCK_KEY,))

    async def watched_devices(self, device_id: str | None, kind: str | None) -> list[WatchedDevice]:
        cur = await self.conn.execute(
            "SELECT device_id, kind, status = 'active' AS active, metrics FROM devices"
            " WHERE device_id = %s OR kind = %s",
            (device_id, kind),
        )
        return [WatchedDevice(**row) for row in await cur.fetchall()]

    async def add(self, event: AlarmRuleCreated) -> AlarmRule:
        cur = await self.conn.execute(
            f"INSERT INTO alarm_rules (rule_id, {_RULE_FIELDS}, created_at, updated_at)"  # noqa: S608
            f" VALUES (%(rule_id)s, {_RULE_VALUES}, %(at)s, %(at)s) RETURNING {RULE_COLUMNS}",
            _rule_params(event),
        )
        row = await cur.fetchone()
        assert row is not None, "INSERT ... RETURNING returns the row it inserted"
        return rule_from_row(row)

    async def replace(self, event: AlarmRuleUpdated) -> AlarmRule | None:
        cur = await self.conn.execute(
            f"UPDATE alarm_rules SET ({_RULE_FIELDS}, updated_at) = ({_RULE_VALUES}, %(at)s)"  # noqa: S608
            f" WHERE rule_id = %(rule_id)s RETURNING {RULE_COLUMNS}",
            _rule_params(event),
        )
        row = await cur.fetchone()
        return None if row is None else rule_from_row(row)

    async def delete(self, rule_id: UUID) -> bool:
        cur = await self.conn.execute(
            "DELETE FROM alarm_rules WHERE rule_id = %s RETURNING rule_id", (rule_id,)
        )
        return await cur.fetchone() is not None


# Which open alarms a clear selects; values travel as parameters.
_OF_RULE = "rule_id = %(rule_id)s"
_OF_DEFAULT = (
    "rule_id = %(rule_id)s AND device_id IN (SELECT device_id FROM devices"
    " WHERE device_id = %(device_id)s OR kind = %(kind)s)"
)


class PostgresAlarmRepository:
    def __init__(self, conn: Conn) -> None:
        self.conn = conn

    async def get(self, alarm_id: UUID) -> Alarm | None:
        cur = await self.conn.execute(
            "SELECT alarm_id, device_id, state, acknowledged_by, acknowledged_at, note"
            " FROM alarms WHERE alarm_id = %s FOR UPDATE",
            (alarm_id,),
        )
        row = await cur.fetchone()
        return None if row is None else Alarm(**row)

    async def acknowledge(self, event: AlarmAcknowledged) -> None:
        # updated_at is the newest of the alarm's events; an earlier one may be newer (its
        # occurred_at comes from another process's clock).
        await self.conn.execute(
            "UPDATE alarms SET state = 'acknowledged', acknowledged_by = %s,"
            " acknowledged_at = %s, note = %s, updated_at = greatest(updated_at, %s)"
            " WHERE alarm_id = %s",
            (
                event.acknowledged_by,
                event.acknowledged_at,
                event.note,
                event.occurred_at,
                event.alarm_id,
            ),
        )

    async def clear_open_of_rule(
        self, rule_id: str, at: datetime, reason: str
    ) -> list[ClearedAlarm]:
        return await self._clear_open(_OF_RULE, {"rule_id": rule_id}, at, reason)

    async def clear_open_of_default(
        self,
        default_rule_id: str,
        device_id: str | None,
        kind: str | None,
        at: datetime,
        reason: str,
    ) -> list[ClearedAlarm]:
        params = {"rule_id": default_rule_id, "device_id": device_id, "kind": kind}
        return await self._clear_open(_OF_DEFAULT, params, at, reason)

    async def _clear_open(
        self, where: str, params: dict[str, Any], at: datetime, reason: str
    ) -> list[ClearedAlarm]:
        # cleared_at is ``at``, the AlarmCleared events' occurred_at, and updated_at the newest
        # of the alarm's events (as the read model merges them, whatever the clocks did); a
        # clear by a rule change has no reading, so cleared_value stays NULL.
        cur = await self.conn.execute(
            "UPDATE alarms SET state = 'cleared', cleared_at = %(at)s,"  # noqa: S608
            " updated_at = greatest(updated_at, %(at)s),"
            f" clear_reason = %(reason)s WHERE state <> 'cleared' AND {where}"
            " RETURNING alarm_id, device_id",
            {**params, "at": at, "reason": reason},
        )
        cleared = [ClearedAlarm(**row) for row in await cur.fetchall()]
        await self.conn.execute(f"DELETE FROM alarm_evaluation WHERE {where}", params)  # noqa: S608
        return cleared
