"""Alarm rules and their evaluation, free of I/O: the same inputs always give the same steps.

A rule breaches on a reading outside its thresholds; a run of breaching readings raises an
alarm once it is N readings long or spans T seconds of reading time, and a run of
``clear_readings`` readings inside clears it. Readings are taken in reading-time order: one
at or before the newest reading already applied (late, out of order, or replayed) changes
nothing, so it can neither raise, clear nor reset a run.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Literal
from uuid import UUID

from command_api.alarms import DEFAULT_RULE_PREFIX
from iotp.events import AlarmCondition, Severity

DEFAULT_FOR_READINGS = 3
DEFAULT_CLEAR_READINGS = 3
DEFAULT_SEVERITY: Severity = "major"
# Namespace of the alarm ids (uuid5): the same rule, device and raising position give the
# same id in every process, so a raise redone after a crash is recognisably the same alarm.
ALARM_NAMESPACE = UUID("6f1d8c2e-5b7a-4c1e-9a57-1a0e4d1f0a16")


@dataclass(frozen=True)
class Rule:
    """A configured rule (``scope`` device or kind) or a declared range's default one."""

    rule_id: str
    scope: Literal["device", "kind", "default"]
    condition: AlarmCondition
    severity: Severity
    device_id: str | None = None
    kind: str | None = None
    metric: str | None = None
    threshold_low: float | None = None  # None: the metric's declared bound
    threshold_high: float | None = None
    for_readings: int | None = None
    for_seconds: int | None = None
    clear_readings: int = DEFAULT_CLEAR_READINGS


@dataclass(frozen=True)
class DeviceFacts:
    """What the evaluation needs of a device: its kind and declared ranges."""

    device_id: str
    kind: str
    ranges: Mapping[str, tuple[float | None, float | None]]
    active: bool = True


@dataclass(frozen=True)
class Evaluation:
    """Where one (rule, device) stands; ``open_alarm_id`` is its alarm not yet cleared."""

    breach_count: int = 0
    clear_count: int = 0
    breach_started_at: datetime | None = None
    newest_reading_at: datetime | None = None
    open_alarm_id: UUID | None = None


@dataclass(frozen=True)
class Transition:
    """The alarm of (rule, device) is to be raised or cleared by the reading at ``at``."""

    kind: Literal["raise", "clear"]
    at: datetime
    value: float | None


def default_rule(metric: str) -> Rule:
    return Rule(
        rule_id=DEFAULT_RULE_PREFIX + metric,
        scope="default",
        condition="outside_range",
        severity=DEFAULT_SEVERITY,
        metric=metric,
        for_readings=DEFAULT_FOR_READINGS,
        clear_readings=DEFAULT_CLEAR_READINGS,
    )


def applicable_rules(device: DeviceFacts, configured: Iterable[Rule]) -> list[Rule]:
    """The rules that watch ``device``: its own and its kind's, and the default rule of each
    declared range that no configured rule on the same metric replaces."""
    found = [
        rule
        for rule in configured
        if (rule.scope == "device" and rule.device_id == device.device_id)
        or (rule.scope == "kind" and rule.kind == device.kind)
    ]
    covered = {rule.metric for rule in found if rule.metric is not None}
    for metric, (low, high) in sorted(device.ranges.items()):
        if metric not in covered and (low is not None or high is not None):
            found.append(default_rule(metric))
    return found


def thresholds(rule: Rule, device: DeviceFacts) -> tuple[float, float] | None:
    """(low, high) a reading must stay within (infinite where unbounded); None when the rule
    does not apply to the device (an offline rule, or no bound set nor declared)."""
    if rule.metric is None or rule.condition == "offline":
        return None
    declared_low, declared_high = device.ranges.get(rule.metric, (None, None))
    if rule.metric not in device.ranges:
        return None
    low = rule.threshold_low if rule.threshold_low is not None else declared_low
    high = rule.threshold_high if rule.threshold_high is not None else declared_high
    if rule.condition == "above":
        low = None
    elif rule.condition == "below":
        high = None
    if low is None and high is None:
        return None
    return (-math.inf if low is None else low, math.inf if high is None else high)


def evaluate(
    rule: Rule, bounds: tuple[float, float], state: Evaluation, at: datetime, value: float
) -> tuple[Evaluation, Transition | None]:
    """Apply one reading (time ``at``) to ``state``: the new state, and what to do, if any."""
    if state.newest_reading_at is not None and at <= state.newest_reading_at:
        return state, None  # late: see the module docstring
    low, high = bounds
    if value < low or value > high:
        started = state.breach_started_at or at
        count = state.breach_count + 1
        state = replace(
            state,
            breach_count=count,
            clear_count=0,
            breach_started_at=started,
            newest_reading_at=at,
        )
        if state.open_alarm_id is None and _sustained(rule, count, at - started):
            return state, Transition("raise", at, value)
        return state, None
    state = replace(state, breach_count=0, breach_started_at=None, newest_reading_at=at)
    if state.open_alarm_id is None:
        return replace(state, clear_count=0), None
    state = replace(state, clear_count=state.clear_count + 1)
    if state.clear_count >= rule.clear_readings:
        return state, Transition("clear", at, value)
    return state, None


def _sustained(rule: Rule, count: int, lasted: timedelta) -> bool:
    if rule.for_readings is None and rule.for_seconds is None:
        return count >= DEFAULT_FOR_READINGS
    if rule.for_readings is not None and count >= rule.for_readings:
        return True
    return rule.for_seconds is not None and lasted.total_seconds() >= rule.for_seconds


def offline_timeout(rule: Rule, kind: str, default: int, per_kind: Mapping[str, int]) -> int:
    """Seconds of silence after which ``rule`` calls a device of ``kind`` offline."""
    if rule.for_seconds is not None:
        return rule.for_seconds
    return per_kind.get(kind, default)


def is_offline(last_seen: datetime, now: datetime, timeout_seconds: int) -> bool:
    return now - last_seen > timedelta(seconds=timeout_seconds)


def alarm_id(rule_id: str, device_id: str, position: str) -> UUID:
    """The id of the alarm that ``position`` (a stream entry, or an offline episode) raised."""
    return uuid.uuid5(ALARM_NAMESPACE, f"{rule_id}\x1f{device_id}\x1f{position}")
