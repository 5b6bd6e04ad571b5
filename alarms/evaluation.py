"""A batch of readings, and the offline timer, applied to the alarm tables in one transaction.

What to do is decided by the pure functions of :mod:`alarms.rules`; this module loads what
they need, records what they decide (evaluation state, alarms) and collects the events to
queue in the same transaction. An alarm row and its event are written together or not at
all: a raise whose id is already recorded writes no second event. The row holds everything
its events say (the read model's columns, with updated_at the newest event's occurred_at),
so the alarm read model can be recomputed from the write store alone.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any, Protocol
from uuid import UUID

from alarms import state
from alarms.rules import (
    DeviceFacts,
    Evaluation,
    Rule,
    Transition,
    alarm_id,
    applicable_rules,
    evaluate,
    is_offline,
    offline_timeout,
    thresholds,
)
from iotp.events import AlarmCleared, AlarmRaised, Envelope

Key = tuple[str, str]  # (rule_id, device_id)


class _Reading(Protocol):
    @property
    def ts(self) -> datetime: ...
    @property
    def metrics(self) -> Mapping[str, float]: ...


class _Telemetry(Protocol):
    @property
    def device_id(self) -> str: ...
    @property
    def readings(self) -> Sequence[_Reading]: ...
    @property
    def received_at(self) -> datetime | None: ...
    @property
    def ingested_at(self) -> datetime: ...


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


class _Recorder:
    """Writes raises and clears with their events; shared by the batch and the timer."""

    def __init__(self, conn: state.Conn, now: datetime) -> None:
        self.conn = conn
        self.now = now
        self.events: list[Envelope] = []
        self.raised = 0
        self.cleared = 0

    def raise_alarm(
        self,
        rule: Rule,
        device_id: str,
        position: str,
        transition: Transition,
        bounds: tuple[float, float] | None,
    ) -> UUID | None:
        """Record the alarm; its id, or None when this very alarm was recorded before."""
        new_id = alarm_id(rule.rule_id, device_id, position)
        low, high = bounds if bounds is not None else (-math.inf, math.inf)
        event = AlarmRaised(
            occurred_at=self.now,
            device_id=device_id,
            alarm_id=new_id,
            rule_id=rule.rule_id,
            metric=rule.metric,
            condition=rule.condition,
            severity=rule.severity,
            raised_at=transition.at,
            value=transition.value,
            threshold_low=_finite(low),
            threshold_high=_finite(high),
        )
        # The row holds what the event says, so that the read model can be copied from it.
        row = {
            "alarm_id": new_id,
            "rule_id": rule.rule_id,
            "device_id": device_id,
            "metric": rule.metric,
            "condition": rule.condition,
            "severity": rule.severity,
            "raised_at": transition.at,
            "value": transition.value,
            "threshold_low": event.threshold_low,
            "threshold_high": event.threshold_high,
            "updated_at": event.occurred_at,
        }
        if not state.insert_alarm(self.conn, row):
            return None
        self.events.append(event)
        self.raised += 1
        return new_id

    def clear_alarm(
        self, device_id: str, open_id: UUID, at: datetime, value: float | None, reason: str
    ) -> None:
        if not state.clear_alarm(self.conn, open_id, at, reason, value, self.now):
            return  # cleared by the command side already (its rule was deleted)
        self.events.append(
            AlarmCleared(
                occurred_at=self.now,
                device_id=device_id,
                alarm_id=open_id,
                cleared_at=at,
                value=value,
                reason=reason,
            )
        )
        self.cleared += 1


class BatchEvaluation(_Recorder):
    """Applies a batch's telemetry events, in stream order, to the rules that watch them."""

    def apply(self, batch: Sequence[tuple[str, _Telemetry]]) -> None:
        if not batch:
            return
        facts = state.devices(self.conn, {event.device_id for _, event in batch})
        configured = state.configured_rules(self.conn)
        watching = {d: applicable_rules(f, configured) for d, f in facts.items() if f.active}
        keys = [(rule.rule_id, d) for d, rules in watching.items() for rule in rules]
        states = state.evaluations(self.conn, keys)
        changed: dict[Key, Evaluation] = {}
        seen: dict[str, datetime] = {}
        for position, event in batch:
            heard = event.received_at or event.ingested_at
            seen[event.device_id] = max(seen.get(event.device_id, heard), heard)
            device = facts.get(event.device_id)
            if device is None or event.device_id not in watching:
                continue
            for reading in sorted(event.readings, key=lambda r: r.ts):
                for rule in watching[event.device_id]:
                    if rule.metric in reading.metrics:
                        self._reading(rule, device, position, reading, states, changed)
        moved = state.advance_last_seen(self.conn, seen)
        for rule_id, device_id, open_id in state.open_offline_alarms(self.conn, moved):
            self.clear_alarm(device_id, open_id, self.now, None, "reading received")
            key = (rule_id, device_id)
            changed[key] = replace(states.get(key, Evaluation()), open_alarm_id=None)
        state.save_evaluations(self.conn, changed)

    def _reading(
        self,
        rule: Rule,
        device: DeviceFacts,
        position: str,
        reading: _Reading,
        states: dict[Key, Evaluation],
        changed: dict[Key, Evaluation],
    ) -> None:
        bounds = thresholds(rule, device)
        if bounds is None or rule.metric is None:
            return
        key = (rule.rule_id, device.device_id)
        value = reading.metrics[rule.metric]
        current, transition = evaluate(
            rule, bounds, states.get(key, Evaluation()), reading.ts, value
        )
        if transition is not None and transition.kind == "raise":
            where = f"{position}@{reading.ts.isoformat()}"
            raised = self.raise_alarm(rule, device.device_id, where, transition, bounds)
            current = replace(current, open_alarm_id=raised)
        elif transition is not None and current.open_alarm_id is not None:
            reason = "back in range"
            self.clear_alarm(device.device_id, current.open_alarm_id, transition.at, value, reason)
            current = replace(current, open_alarm_id=None, clear_count=0)
        if current != states.get(key):
            states[key] = changed[key] = current


class OfflineSweep(_Recorder):
    """The timer's round: offline alarms for silent devices, clears for decommissioned ones."""

    def __init__(
        self,
        conn: state.Conn,
        now: datetime,
        default_timeout: int,
        per_kind: Mapping[str, int],
    ) -> None:
        super().__init__(conn, now)
        self.default_timeout = default_timeout
        self.per_kind = per_kind

    def run(self) -> None:
        changed: dict[Key, Evaluation] = {}
        for rule_id, device_id, open_id in state.open_alarms_of_inactive_devices(self.conn):
            self.clear_alarm(device_id, open_id, self.now, None, "device decommissioned")
            changed[(rule_id, device_id)] = Evaluation()
        offline = [r for r in state.configured_rules(self.conn) if r.condition == "offline"]
        if offline:
            self._raise_offline(offline, changed)
        state.save_evaluations(self.conn, changed)

    def _raise_offline(self, offline: list[Rule], changed: dict[Key, Evaluation]) -> None:
        shortest = min(
            [r.for_seconds for r in offline if r.for_seconds is not None]
            + [self.default_timeout, *self.per_kind.values()]
        )
        due: list[tuple[Rule, dict[str, Any]]] = []
        for row in state.silent_devices(self.conn, shortest):
            device = state.device_facts(row)
            for rule in applicable_rules(device, offline):
                timeout = offline_timeout(rule, device.kind, self.default_timeout, self.per_kind)
                if rule.condition == "offline" and is_offline(row["last_seen"], self.now, timeout):
                    due.append((rule, row))
        states = state.evaluations(self.conn, [(r.rule_id, row["device_id"]) for r, row in due])
        for rule, row in due:
            key = (rule.rule_id, row["device_id"])
            current = states.get(key, Evaluation())
            if current.open_alarm_id is not None:
                continue
            episode = f"offline@{row['last_seen'].isoformat()}"
            transition = Transition("raise", self.now, None)
            raised = self.raise_alarm(rule, row["device_id"], episode, transition, None)
            if raised is not None:
                changed[key] = replace(current, open_alarm_id=raised)
