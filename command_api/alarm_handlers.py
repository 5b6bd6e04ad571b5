"""Alarm rule and acknowledgement handlers: a command and a unit of work to a result.

A rule's create, update or delete takes the rules lock exclusively, so it never interleaves
with a batch of the alarm process (which takes it shared); an update or delete clears the
rule's open alarms in the same transaction, and a new rule on a metric clears the open
alarms of the default rule it replaces, so no alarm is left that nothing would clear. Those
clears happen at the instant of the rule's event. An acknowledgement locks the alarm's row,
as the alarm process's clear does: the two cannot cross, and an alarm cleared first is
refused. Every change commits with its events (outbox) or not at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID, uuid4

from command_api.alarms import (
    REPLACED_BY_RULE,
    RULE_DELETED,
    RULE_UPDATED,
    Acknowledgement,
    AlarmNotFound,
    AlarmRule,
    AlarmRuleNotFound,
    check_target,
    clear_events,
    replaced_default_rule,
    rule_attributes,
)
from command_api.unit_of_work import UnitOfWork
from iotp.commands import (
    AcknowledgeAlarm,
    AlarmRuleSpec,
    CreateAlarmRule,
    DeleteAlarmRule,
    UpdateAlarmRule,
)
from iotp.events import (
    AlarmCleared,
    AlarmRuleCreated,
    AlarmRuleDeleted,
    AlarmRuleUpdated,
    utc_now,
)


@dataclass(frozen=True)
class RuleChange:
    rule: AlarmRule
    event_id: UUID
    cleared_alarms: int


@dataclass(frozen=True)
class RuleDeletion:
    rule_id: UUID
    event_id: UUID
    cleared_alarms: int


async def create_rule(cmd: CreateAlarmRule, uow: UnitOfWork) -> RuleChange:
    """Store the rule and its AlarmRuleCreated event; the default rule it replaces clears."""
    event = AlarmRuleCreated(rule_id=uuid4(), **rule_attributes(cmd))
    async with uow:
        await uow.alarm_rules.lock()
        check_target(cmd, await uow.alarm_rules.watched_devices(cmd.device_id, cmd.kind))
        rule = await uow.alarm_rules.add(event)
        cleared = await _clear_replaced_default(uow, cmd, event.occurred_at)
        uow.emit(event, *cleared)
        await uow.commit()
    return RuleChange(rule, event.event_id, len(cleared))


async def update_rule(cmd: UpdateAlarmRule, uow: UnitOfWork) -> RuleChange:
    """Replace the rule; its open alarms clear, and it is evaluated afresh from now on."""
    event = AlarmRuleUpdated(**rule_attributes(cmd), rule_id=cmd.rule_id)
    at = event.occurred_at
    async with uow:
        await uow.alarm_rules.lock()
        check_target(cmd, await uow.alarm_rules.watched_devices(cmd.device_id, cmd.kind))
        rule = await uow.alarm_rules.replace(event)
        if rule is None:
            raise AlarmRuleNotFound(cmd.rule_id)
        own = await uow.alarms.clear_open_of_rule(str(cmd.rule_id), at, RULE_UPDATED)
        cleared = clear_events(own, at, RULE_UPDATED)
        cleared += await _clear_replaced_default(uow, cmd, at)
        uow.emit(event, *cleared)
        await uow.commit()
    return RuleChange(rule, event.event_id, len(cleared))


async def delete_rule(cmd: DeleteAlarmRule, uow: UnitOfWork) -> RuleDeletion:
    """Delete the rule and clear its open alarms."""
    event = AlarmRuleDeleted(rule_id=cmd.rule_id)
    at = event.occurred_at
    async with uow:
        await uow.alarm_rules.lock()
        if not await uow.alarm_rules.delete(cmd.rule_id):
            raise AlarmRuleNotFound(cmd.rule_id)
        own = await uow.alarms.clear_open_of_rule(str(cmd.rule_id), at, RULE_DELETED)
        cleared = clear_events(own, at, RULE_DELETED)
        uow.emit(event, *cleared)
        await uow.commit()
    return RuleDeletion(cmd.rule_id, event.event_id, len(cleared))


async def acknowledge_alarm(cmd: AcknowledgeAlarm, uow: UnitOfWork) -> Acknowledgement:
    """Record who acknowledged the alarm; acknowledging again answers the first one."""
    async with uow:
        alarm = await uow.alarms.get(cmd.alarm_id)
        if alarm is None:
            raise AlarmNotFound(cmd.alarm_id)
        event = alarm.acknowledge(cmd, utc_now())
        if event is None:
            return alarm.earlier_acknowledgement()
        await uow.alarms.acknowledge(event)
        uow.emit(event)
        await uow.commit()
    return Acknowledgement(
        cmd.alarm_id, event.acknowledged_by, event.acknowledged_at, event.note, event.event_id
    )


async def _clear_replaced_default(
    uow: UnitOfWork, spec: AlarmRuleSpec, at: datetime
) -> list[AlarmCleared]:
    default = replaced_default_rule(spec)
    if default is None:
        return []
    cleared = await uow.alarms.clear_open_of_default(
        default, spec.device_id, spec.kind, at, REPLACED_BY_RULE
    )
    return clear_events(cleared, at, REPLACED_BY_RULE)
