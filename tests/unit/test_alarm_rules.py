"""The pure evaluation of alarm rules: runs, durations, late readings, defaults, offline."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from uuid import uuid4

import httpx
import orjson
import pytest
from pydantic import ValidationError

from alarms.rules import (
    DeviceFacts,
    Evaluation,
    Rule,
    Transition,
    alarm_id,
    applicable_rules,
    default_rule,
    evaluate,
    is_offline,
    offline_timeout,
    thresholds,
)
from device_simulator.faults import FaultInjector, FaultRates
from device_simulator.registration import ensure_offline_rule
from iotp.commands import AcknowledgeAlarm, CreateAlarmRule

T0 = datetime(2026, 1, 1, tzinfo=UTC)
DEVICE = DeviceFacts("d1", "thermostat", {"temp": (-10.0, 50.0), "bat": (None, None)})


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def run(
    rule: Rule, values: list[tuple[float, float]], state: Evaluation | None = None
) -> tuple[Evaluation, list[Transition]]:
    """Apply (seconds, value) readings in order, opening and closing the alarm as told."""
    bounds = thresholds(rule, DEVICE)
    assert bounds is not None
    state = state or Evaluation()
    steps = []
    for seconds, value in values:
        state, step = evaluate(rule, bounds, state, at(seconds), value)
        if step is not None:
            steps.append(step)
            opened = uuid4() if step.kind == "raise" else None
            state = replace(state, open_alarm_id=opened, clear_count=0)
    return state, steps


def kinds(steps: list[Transition]) -> list[str]:
    return [step.kind for step in steps]


def test_three_consecutive_readings_outside_the_declared_range_raise_once() -> None:
    rule = default_rule("temp")
    _, steps = run(rule, [(1, 60), (2, 61), (3, 62), (4, 63), (5, 64)])
    assert kinds(steps) == ["raise"]
    assert steps[0].at == at(3) and steps[0].value == 62


def test_a_reading_inside_resets_the_run() -> None:
    _, steps = run(default_rule("temp"), [(1, 60), (2, 61), (3, 20), (4, 60), (5, 61)])
    assert steps == []


def test_three_consecutive_readings_inside_clear_it() -> None:
    values = [(1, 60), (2, 60), (3, 60), (4, 20), (5, 20), (6, 70), (7, 20), (8, 20), (9, 20)]
    _, steps = run(default_rule("temp"), values)
    assert kinds(steps) == ["raise", "clear"]
    assert steps[1].at == at(9)


def test_below_the_declared_minimum_breaches_too() -> None:
    _, steps = run(default_rule("temp"), [(1, -11.0), (2, -12.0), (3, -13.0)])
    assert kinds(steps) == ["raise"]


def test_for_seconds_raises_when_the_breach_has_lasted_long_enough() -> None:
    rule = Rule("r", "device", "above", "critical", device_id="d1", metric="temp",
                threshold_high=30, for_seconds=10)  # fmt: skip
    _, steps = run(rule, [(0, 31), (5, 32), (9, 33), (10, 34)])
    assert kinds(steps) == ["raise"] and steps[0].at == at(10)


def test_for_readings_n() -> None:
    rule = Rule("r", "device", "below", "minor", device_id="d1", metric="temp",
                threshold_low=0, for_readings=5)  # fmt: skip
    _, steps = run(rule, [(i, -1) for i in range(1, 5)])
    assert steps == []
    _, steps = run(rule, [(i, -1) for i in range(1, 6)])
    assert kinds(steps) == ["raise"]


def test_above_ignores_the_low_bound() -> None:
    rule = Rule("r", "kind", "above", "warning", kind="thermostat", metric="temp", for_readings=1)
    assert thresholds(rule, DEVICE) == (float("-inf"), 50.0)
    _, steps = run(rule, [(1, -100)])
    assert steps == []


def test_late_and_replayed_readings_change_nothing() -> None:
    rule = default_rule("temp")
    state, steps = run(rule, [(10, 60), (11, 60)])
    assert steps == []
    # Older than the newest applied (out of order, late) and equal (replayed): no effect.
    after, step = evaluate(rule, (-10, 50), state, at(5), 60)
    assert (after, step) == (state, None)
    after, step = evaluate(rule, (-10, 50), state, at(11), 20)
    assert (after, step) == (state, None)


def test_late_readings_inside_do_not_clear_a_raised_alarm() -> None:
    state, steps = run(default_rule("temp"), [(10, 60), (11, 60), (12, 60)])
    assert kinds(steps) == ["raise"]
    state, steps = run(default_rule("temp"), [(1, 20), (2, 20), (3, 20), (4, 20)], state)
    assert steps == [] and state.open_alarm_id is not None


def test_default_rules_come_from_declared_ranges_and_yield_to_configured_ones() -> None:
    assert [r.rule_id for r in applicable_rules(DEVICE, [])] == ["range:temp"]
    mine = Rule("r1", "device", "above", "critical", device_id="d1", metric="temp")
    other = Rule("r2", "device", "above", "critical", device_id="d2", metric="temp")
    by_kind = Rule("r3", "kind", "offline", "major", kind="thermostat")
    found = applicable_rules(DEVICE, [mine, other, by_kind])
    assert [r.rule_id for r in found] == ["r1", "r3"]


def test_a_rule_on_an_undeclared_or_unbounded_metric_does_not_apply() -> None:
    assert thresholds(default_rule("bat"), DEVICE) is None
    assert thresholds(default_rule("nope"), DEVICE) is None
    offline = Rule("r", "device", "offline", "major", device_id="d1")
    assert thresholds(offline, DEVICE) is None


def test_offline_timer() -> None:
    rule = Rule("r", "kind", "offline", "major", kind="thermostat")
    assert offline_timeout(rule, "thermostat", 300, {"thermostat": 60}) == 60
    assert offline_timeout(rule, "tracker", 300, {"thermostat": 60}) == 300
    assert offline_timeout(replace(rule, for_seconds=5), "thermostat", 300, {}) == 5
    assert not is_offline(at(0), at(60), 60)
    assert is_offline(at(0), at(61), 60)


def test_alarm_ids_are_deterministic() -> None:
    assert alarm_id("r", "d", "s/1-0") == alarm_id("r", "d", "s/1-0")
    assert alarm_id("r", "d", "s/1-0") != alarm_id("r", "d", "s/2-0")


GOOD = {"scope": "device", "device_id": "d1", "metric": "temp", "condition": "above"}


@pytest.mark.parametrize(
    "change",
    [
        {"threshold_high": float("inf")},
        {"threshold_high": 1e300},
        {"threshold_high": "12"},
        {"threshold_high": True},
        {"for_readings": 0},
        {"for_readings": 10**9},
        {"for_seconds": 10**9},
        {"clear_readings": 0},
        {"severity": "catastrophic"},
        {"condition": "sideways"},
        {"scope": "kind"},
        {"kind": "thermostat"},
        {"metric": None},
        {"metric": "bad metric"},
        {"threshold_low": 1},
        {"condition": "outside_range", "threshold_low": 5, "threshold_high": 5},
        {"condition": "offline"},
        {"device_id": "x" * 65},
        {"unexpected": 1},
    ],
)
def test_hostile_rules_are_refused(change: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        CreateAlarmRule.model_validate({**GOOD, **change})


def test_a_good_rule_and_an_offline_rule_pass() -> None:
    CreateAlarmRule.model_validate(GOOD)
    CreateAlarmRule.model_validate({"scope": "kind", "kind": "t", "condition": "offline"})


@pytest.mark.parametrize(
    "body",
    [
        {"acknowledged_by": ""},
        {"acknowledged_by": "   "},
        {"acknowledged_by": "a" * 201},
        {"acknowledged_by": "eve\x00"},
        {"acknowledged_by": "eve", "note": "n" * 1001},
        {"acknowledged_by": "eve", "note": "\x1b[31m"},
    ],
)
def test_hostile_acknowledgements_are_refused(body: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        AcknowledgeAlarm.model_validate({"alarm_id": str(uuid4()), **body})


def test_the_simulator_holds_a_metric_out_of_range_for_a_spell_then_returns() -> None:
    declared: list[dict[str, object]] = [{"name": "temp", "min": -40, "max": 60}, {"name": "x"}]
    injector = FaultInjector(FaultRates(breach=1.0), random.Random(1))
    metrics = {"temp": 20.0, "x": 1.0}
    assert injector.hold_breach("d", 0.0, 1.0, metrics, declared) == "breach"
    assert metrics["temp"] > 60
    until, metric = injector.breaching["d"]
    assert metric == "temp" and 30 <= until <= 120
    for second in range(1, int(until)):
        held = {"temp": 20.0}
        assert injector.hold_breach("d", float(second), 1.0, held, declared) == "breach"
        assert held["temp"] > 60
    quiet = FaultInjector(FaultRates(breach=0.0), random.Random(1))
    assert quiet.hold_breach("d", until + 1, 1.0, {"temp": 20.0}, declared) is None


def test_the_simulator_asks_once_for_an_offline_rule_per_kind() -> None:
    rules: list[dict[str, object]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(200, json={"rules": rules})
        rules.append(orjson.loads(request.content))
        return httpx.Response(201, json=rules[-1])

    client = httpx.Client(base_url="http://api", transport=httpx.MockTransport(answer))
    for _ in range(2):
        ensure_offline_rule(client, "thermostat")
    assert rules == [
        {"scope": "kind", "kind": "thermostat", "condition": "offline", "for_seconds": 20,
         "severity": "minor"}
    ]  # fmt: skip
    refused = httpx.Client(
        base_url="http://api", transport=httpx.MockTransport(lambda _: httpx.Response(404))
    )
    ensure_offline_rule(refused, "tracker")  # logged, not raised
