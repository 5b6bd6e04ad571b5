"""Alarm rules and acknowledgements: the command side's business rules for them, free of I/O.

A rule must watch something registered and active, and name a metric its target declares;
a rule on one device that leaves a threshold to the declared range needs that bound. A rule
change clears the open alarms nothing would clear after it: the rule's own when it is updated
or deleted, and those of the default rule that a new rule on a metric replaces. An alarm is
acknowledged once, and never after it cleared.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from command_api.domain import (
    CommandRejected,
    DeviceIsDecommissioned,
    DeviceNotFound,
    InvalidField,
)
from iotp.commands import AcknowledgeAlarm, AlarmRuleSpec
from iotp.events import AlarmAcknowledged, AlarmCleared, AlarmCondition, Severity

# Taken exclusively by every rule change (uow.alarm_rules.lock) and shared by every
# transaction of the alarm process (alarms.state), so that the two never interleave.
RULES_LOCK_KEY = 0x10770016
# A declared range's default rule is named by this prefix and the metric (alarms.rules).
DEFAULT_RULE_PREFIX = "range:"

# Why a rule change cleared an alarm (clear_reason, and the AlarmCleared event's reason).
RULE_UPDATED = "rule updated"
RULE_DELETED = "rule deleted"
REPLACED_BY_RULE = "replaced by a configured rule"

ACKNOWLEDGED = "acknowledged"
CLEARED = "cleared"


class NoActiveDeviceOfKind(CommandRejected):
    def __init__(self, kind: str) -> None:
        super().__init__(f"no active device is of kind {kind!r}")


class AlarmRuleNotFound(CommandRejected):
    def __init__(self, rule_id: UUID) -> None:
        super().__init__(f"alarm rule {rule_id} does not exist")


class AlarmNotFound(CommandRejected):
    def __init__(self, alarm_id: UUID) -> None:
        super().__init__(f"alarm {alarm_id} is not known")


class AlarmIsCleared(CommandRejected):
    def __init__(self, alarm_id: UUID) -> None:
        super().__init__(f"alarm {alarm_id} is cleared")


@dataclass(frozen=True)
class AlarmRule:
    """A configured rule, as stored."""

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


@dataclass(frozen=True)
class WatchedDevice:
    """A device a rule's target names: the metrics it declares, and whether it is active."""

    device_id: str
    kind: str
    active: bool
    metrics: list[dict[str, Any]]


@dataclass(frozen=True)
class ClearedAlarm:
    alarm_id: UUID
    device_id: str


@dataclass(frozen=True)
class Acknowledgement:
    """Who acknowledged an alarm; ``event_id`` is None when it was acknowledged before."""

    alarm_id: UUID
    acknowledged_by: str
    acknowledged_at: datetime
    note: str | None
    event_id: UUID | None


@dataclass(frozen=True)
class Alarm:
    """An alarm as an acknowledgement sees it."""

    alarm_id: UUID
    device_id: str
    state: str
    acknowledged_by: str | None = None
    acknowledged_at: datetime | None = None
    note: str | None = None

    def acknowledge(self, cmd: AcknowledgeAlarm, at: datetime) -> AlarmAcknowledged | None:
        """The acknowledgement's event, at ``at``; None when it was acknowledged already."""
        if self.state == CLEARED:
            raise AlarmIsCleared(self.alarm_id)
        if self.state == ACKNOWLEDGED:
            return None
        return AlarmAcknowledged(
            device_id=self.device_id,
            alarm_id=self.alarm_id,
            acknowledged_by=cmd.acknowledged_by,
            acknowledged_at=at,
            note=cmd.note,
            occurred_at=at,
        )

    def earlier_acknowledgement(self) -> Acknowledgement:
        # Only an acknowledgement makes an alarm acknowledged, and it records who and when.
        assert self.acknowledged_by is not None
        assert self.acknowledged_at is not None
        return Acknowledgement(
            self.alarm_id, self.acknowledged_by, self.acknowledged_at, self.note, event_id=None
        )


def rule_attributes(spec: AlarmRuleSpec) -> dict[str, Any]:
    """Every attribute of a rule, as its commands and events carry them."""
    return spec.model_dump(include=set(AlarmRuleSpec.model_fields))


def check_target(spec: AlarmRuleSpec, watched: Sequence[WatchedDevice]) -> None:
    """Refuse a rule its target cannot support; ``watched`` are the devices the spec names."""
    if spec.scope == "device":
        device = next((d for d in watched if d.device_id == spec.device_id), None)
        if device is None:
            raise DeviceNotFound(str(spec.device_id))
        if not device.active:
            raise DeviceIsDecommissioned(device.device_id)
        declared = [device.metrics]
    else:
        declared = [d.metrics for d in watched if d.active and d.kind == spec.kind]
        if not declared:
            raise NoActiveDeviceOfKind(str(spec.kind))
    if spec.metric is None:
        return
    found = [m for metrics in declared if (m := _declared(metrics, spec.metric)) is not None]
    if not found:
        raise InvalidField("metric", f"metric {spec.metric!r} is not declared by the target")
    # A kind's devices may declare different ranges: only a device's own range is checked.
    if spec.scope == "device":
        _check_defaults(spec, found[0])


def _declared(metrics: list[dict[str, Any]], metric: str) -> dict[str, Any] | None:
    return next((m for m in metrics if m.get("name") == metric), None)


def _check_defaults(spec: AlarmRuleSpec, declared: dict[str, Any]) -> None:
    """The thresholds a rule leaves out default to the declared range, which must give them."""
    low = spec.threshold_low if spec.threshold_low is not None else declared.get("min")
    high = spec.threshold_high if spec.threshold_high is not None else declared.get("max")
    needs = {"above": high is None, "below": low is None}
    if needs.get(spec.condition, low is None and high is None):
        raise InvalidField(
            "threshold_high" if spec.condition == "above" else "threshold_low",
            f"metric {spec.metric!r} declares no bound for {spec.condition!r}: give a threshold",
        )
    if low is not None and high is not None and not low < high:
        raise InvalidField("threshold_low", "threshold_low must be below threshold_high")


def replaced_default_rule(spec: AlarmRuleSpec) -> str | None:
    """The default rule that a rule on a metric replaces on the devices it watches."""
    return None if spec.metric is None else DEFAULT_RULE_PREFIX + spec.metric


def clear_events(cleared: Sequence[ClearedAlarm], at: datetime, reason: str) -> list[AlarmCleared]:
    """The events of alarms a rule change cleared: they happened at ``at``, as stored."""
    return [
        AlarmCleared(
            device_id=alarm.device_id,
            alarm_id=alarm.alarm_id,
            cleared_at=at,
            reason=reason,
            occurred_at=at,
        )
        for alarm in cleared
    ]
