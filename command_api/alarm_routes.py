"""Alarm rule and acknowledgement routes: requests into commands, handler results into answers.

Changes go through :mod:`command_api.alarm_handlers`; reads of the rules are plain queries
(:mod:`command_api.configuration`).
"""

from __future__ import annotations

from dataclasses import asdict
from uuid import UUID

from fastapi import APIRouter, Request, Response

from command_api import alarm_handlers, configuration
from command_api.alarms import ACKNOWLEDGED, AlarmRule, AlarmRuleNotFound, rule_attributes
from command_api.dependencies import PoolDep, UnitOfWorkDep
from command_api.schemas import (
    AcknowledgeBody,
    AcknowledgedOut,
    AlarmRuleChangedOut,
    AlarmRuleDeletedOut,
    AlarmRuleList,
    AlarmRuleOut,
)
from iotp.commands import AcknowledgeAlarm, CreateAlarmRule, DeleteAlarmRule, UpdateAlarmRule
from iotp.http_errors import error_responses, invalid
from iotp.permissions import Permission, request_principal, requires

alarm_rules = APIRouter(
    prefix="/alarm-rules",
    tags=["alarms"],
    responses=error_responses(401, 403, 422, 503),
)
alarms = APIRouter(
    prefix="/alarms",
    tags=["alarms"],
    dependencies=[requires(Permission.ALARMS_ACKNOWLEDGE)],
    responses=error_responses(401, 403, 422, 503),
)
_READ = requires(Permission.ALARM_RULES_READ)
_MANAGE = requires(Permission.ALARM_RULES_MANAGE)


def _rule_out(rule: AlarmRule) -> AlarmRuleOut:
    return AlarmRuleOut(**asdict(rule))


def _changed_out(change: alarm_handlers.RuleChange) -> AlarmRuleChangedOut:
    return AlarmRuleChangedOut(
        **asdict(change.rule), event_id=change.event_id, cleared_alarms=change.cleared_alarms
    )


@alarm_rules.post(
    "",
    status_code=201,
    response_model=AlarmRuleChangedOut,
    dependencies=[_MANAGE],
    responses=error_responses(400, 404, 409, 413),
)
async def post_rule(
    cmd: CreateAlarmRule, response: Response, uow: UnitOfWorkDep
) -> AlarmRuleChangedOut:
    """Create a rule; a rule on a metric replaces that metric's default range rule."""
    created = await alarm_handlers.create_rule(cmd, uow)
    response.headers["Location"] = f"/alarm-rules/{created.rule.rule_id}"
    return _changed_out(created)


@alarm_rules.get("", response_model=AlarmRuleList, dependencies=[_READ])
async def list_rules(pool: PoolDep) -> AlarmRuleList:
    """Every configured rule, oldest first (the default range rules are implied, not listed)."""
    return AlarmRuleList(rules=[_rule_out(rule) for rule in await configuration.alarm_rules(pool)])


@alarm_rules.get(
    "/{rule_id}",
    response_model=AlarmRuleOut,
    dependencies=[_READ],
    responses=error_responses(404),
)
async def get_rule(rule_id: UUID, pool: PoolDep) -> AlarmRuleOut:
    rule = await configuration.alarm_rule(pool, rule_id)
    if rule is None:
        raise AlarmRuleNotFound(rule_id)
    return _rule_out(rule)


@alarm_rules.put(
    "/{rule_id}",
    response_model=AlarmRuleChangedOut,
    dependencies=[_MANAGE],
    responses=error_responses(400, 404, 409, 413),
)
async def put_rule(rule_id: UUID, spec: CreateAlarmRule, uow: UnitOfWorkDep) -> AlarmRuleChangedOut:
    """Replace every attribute of a rule; its open alarms clear."""
    cmd = UpdateAlarmRule(rule_id=rule_id, **rule_attributes(spec))
    return _changed_out(await alarm_handlers.update_rule(cmd, uow))


@alarm_rules.delete(
    "/{rule_id}",
    response_model=AlarmRuleDeletedOut,
    dependencies=[_MANAGE],
    responses=error_responses(404),
)
async def remove_rule(rule_id: UUID, uow: UnitOfWorkDep) -> AlarmRuleDeletedOut:
    """Delete a rule; its open alarms clear."""
    deleted = await alarm_handlers.delete_rule(DeleteAlarmRule(rule_id=rule_id), uow)
    return AlarmRuleDeletedOut(**asdict(deleted))


@alarms.post(
    "/{alarm_id}/acknowledge",
    response_model=AcknowledgedOut,
    responses=error_responses(400, 404, 409, 413),
)
async def post_acknowledge(
    alarm_id: UUID, body: AcknowledgeBody, uow: UnitOfWorkDep, request: Request
) -> AcknowledgedOut:
    """Acknowledge an alarm (who, and an optional note); it stays acknowledged until it clears."""
    actor = request_principal(request).actor
    who = body.acknowledged_by or actor.name
    if actor.kind == "dashboard-user" and who != actor.name:
        # A person acknowledges in their own name: the dashboard cannot be told otherwise.
        raise invalid(
            ("body", "acknowledged_by"), f"a dashboard user acknowledges as {actor.name!r}"
        )
    cmd = AcknowledgeAlarm(alarm_id=alarm_id, acknowledged_by=who, note=body.note)
    acknowledged = await alarm_handlers.acknowledge_alarm(cmd, uow)
    return AcknowledgedOut(**asdict(acknowledged), state=ACKNOWLEDGED)
