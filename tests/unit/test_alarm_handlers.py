"""Alarm rule and acknowledgement handlers, and their rules, with an in-memory unit of work."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from command_api import alarm_handlers
from command_api.alarms import (
    AlarmIsCleared,
    AlarmNotFound,
    AlarmRuleNotFound,
    NoActiveDeviceOfKind,
    WatchedDevice,
    check_target,
)
from command_api.domain import (
    DECOMMISSIONED,
    Device,
    DeviceIsDecommissioned,
    DeviceNotFound,
    InvalidField,
)
from command_api.outbox import stream_of
from iotp.commands import (
    AcknowledgeAlarm,
    CreateAlarmRule,
    DeleteAlarmRule,
    UpdateAlarmRule,
)
from iotp.events import (
    AlarmAcknowledged,
    AlarmCleared,
    AlarmRuleCreated,
    AlarmRuleDeleted,
    AlarmRuleUpdated,
)
from iotp.model import MetricSpec
from iotp.names import ALARM_EVENTS_STREAM, ALARM_RULE_EVENTS_STREAM
from tests.support.fakes import AlarmRow, FakeUnitOfWork

LONG_AGO = datetime(2026, 1, 1, tzinfo=UTC)
TEMP = MetricSpec(name="temp", min=-40.0, max=60.0)
HUM = MetricSpec(name="hum")  # no declared range
LOW_ONLY = MetricSpec(name="level", min=10.0)


def _uow(*devices: Device) -> FakeUnitOfWork:
    uow = FakeUnitOfWork()
    for device in devices:
        uow.devices_store[device.device_id] = device
    return uow


def _device(device_id: str, kind: str = "boiler", status: str = "active") -> Device:
    return Device(device_id, device_id, kind, "hash", metrics=(TEMP, HUM, LOW_ONLY), status=status)


def _alarm(uow: FakeUnitOfWork, rule_id: str, device_id: str, **fields: Any) -> uuid.UUID:
    row = AlarmRow(uuid.uuid4(), rule_id, device_id, updated_at=LONG_AGO, **fields)
    uow.alarms_store[row.alarm_id] = row
    return row.alarm_id


def _rule(**fields: Any) -> CreateAlarmRule:
    return CreateAlarmRule.model_validate(
        {"scope": "device", "device_id": "b1", "metric": "temp", "condition": "above", **fields}
    )


def _create(uow: FakeUnitOfWork, **fields: Any) -> alarm_handlers.RuleChange:
    return asyncio.run(alarm_handlers.create_rule(_rule(**fields), uow))


def test_a_rule_is_stored_with_its_event_on_the_rule_stream_under_the_lock() -> None:
    uow = _uow(_device("b1"))
    change = _create(uow, threshold_high=50.0)
    (event,) = uow.published
    assert isinstance(event, AlarmRuleCreated)
    assert stream_of(event) == ALARM_RULE_EVENTS_STREAM
    assert event.event_id == change.event_id and event.rule_id == change.rule.rule_id
    assert change.rule.threshold_high == 50.0 and change.cleared_alarms == 0
    assert change.rule.created_at == change.rule.updated_at == event.occurred_at
    assert uow.rules_store == {change.rule.rule_id: change.rule}
    assert uow.alarm_rules.locked


def test_a_rule_on_a_metric_clears_the_default_alarms_it_replaces_at_its_own_instant() -> None:
    uow = _uow(_device("b1"), _device("b2"), _device("p1", kind="pump"))
    replaced = [_alarm(uow, "range:temp", d) for d in ("b1", "b2")]
    untouched = [
        _alarm(uow, "range:temp", "p1"),  # another kind
        _alarm(uow, "range:hum", "b1"),  # another metric
        _alarm(uow, "range:temp", "b1", state="cleared"),  # cleared already
    ]
    change = _create(uow, scope="kind", device_id=None, kind="boiler")
    rule_event, *cleared = uow.published
    assert isinstance(rule_event, AlarmRuleCreated)
    assert change.cleared_alarms == 2
    assert {e.alarm_id for e in cleared if isinstance(e, AlarmCleared)} == set(replaced)
    at = rule_event.occurred_at
    for event in cleared:
        assert isinstance(event, AlarmCleared)
        assert stream_of(event) == ALARM_EVENTS_STREAM
        assert event.occurred_at == event.cleared_at == at
        assert event.reason == "replaced by a configured rule" and event.value is None
        row = uow.alarms_store[event.alarm_id]
        assert row.state == "cleared" and row.cleared_at == row.updated_at == at
    assert [uow.alarms_store[a].updated_at for a in untouched] == [LONG_AGO] * 3


def test_an_offline_rule_replaces_no_default() -> None:
    uow = _uow(_device("b1"))
    _alarm(uow, "range:temp", "b1")
    change = _create(uow, metric=None, condition="offline", for_seconds=60)
    assert change.cleared_alarms == 0 and len(uow.published) == 1


@pytest.mark.parametrize(
    ("fields", "rejection"),
    [
        ({"device_id": "ghost"}, DeviceNotFound),
        ({"device_id": "old"}, DeviceIsDecommissioned),
        ({"scope": "kind", "device_id": None, "kind": "ghosts"}, NoActiveDeviceOfKind),
        ({"scope": "kind", "device_id": None, "kind": "retired"}, NoActiveDeviceOfKind),
        ({"metric": "nope"}, InvalidField),
        ({"metric": "hum"}, InvalidField),
    ],
)
def test_a_rule_its_target_cannot_support_is_refused_and_nothing_is_kept(
    fields: dict[str, Any], rejection: type[Exception]
) -> None:
    uow = _uow(_device("b1"), _device("old", status=DECOMMISSIONED, kind="retired"))
    with pytest.raises(rejection):
        _create(uow, **fields)
    assert uow.published == [] and uow.rules_store == {} and uow.commits == 0


def _watched(*metrics: MetricSpec) -> list[WatchedDevice]:
    declared = [m.model_dump(exclude_none=True) for m in metrics]
    return [WatchedDevice("b1", "boiler", True, declared)]


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"metric": "hum", "condition": "above"}, "threshold_high"),
        ({"metric": "hum", "condition": "below"}, "threshold_low"),
        ({"metric": "hum", "condition": "outside_range"}, "threshold_low"),
        ({"metric": "level", "condition": "above"}, "threshold_high"),
        # The declared bound given for the other side is not below the threshold.
        ({"metric": "temp", "condition": "outside_range", "threshold_low": 70.0}, "threshold_low"),
        ({"metric": "level", "condition": "outside_range", "threshold_high": 5.0}, "threshold_low"),
        ({"metric": "nope"}, "metric"),
    ],
)
def test_thresholds_left_to_the_declared_range_need_it(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidField) as refused:
        check_target(_rule(**fields), _watched(TEMP, HUM, LOW_ONLY))
    assert refused.value.field == field


@pytest.mark.parametrize(
    "fields",
    [
        {"metric": "temp", "condition": "outside_range"},
        {"metric": "hum", "condition": "above", "threshold_high": 3.0},
        {"metric": "level", "condition": "below"},
        {"metric": "level", "condition": "outside_range", "threshold_high": 50.0},
        {"metric": None, "condition": "offline"},
        # A kind's devices may declare different ranges: only a device's own is checked.
        {"scope": "kind", "device_id": None, "kind": "boiler", "metric": "hum"},
    ],
)
def test_rules_whose_thresholds_are_given_or_declared_are_accepted(fields: dict[str, Any]) -> None:
    check_target(_rule(**fields), _watched(TEMP, HUM, LOW_ONLY))


def test_an_update_replaces_the_rule_and_clears_its_alarms_and_the_replaced_defaults() -> None:
    uow = _uow(_device("b1"))
    created = _create(uow, threshold_high=50.0)
    own = _alarm(uow, str(created.rule.rule_id), "b1", state="acknowledged")
    default = _alarm(uow, "range:temp", "b1")
    spec = _rule(threshold_high=55.0).model_dump()
    cmd = UpdateAlarmRule(rule_id=created.rule.rule_id, **spec)
    updated = asyncio.run(alarm_handlers.update_rule(cmd, uow))
    event, *cleared = uow.published[1:]
    assert isinstance(event, AlarmRuleUpdated) and event.event_id == updated.event_id
    assert updated.rule.threshold_high == 55.0 and updated.cleared_alarms == 2
    assert updated.rule.created_at == created.rule.created_at
    assert updated.rule.updated_at == event.occurred_at
    assert [(e.alarm_id, e.reason) for e in cleared if isinstance(e, AlarmCleared)] == [
        (own, "rule updated"),
        (default, "replaced by a configured rule"),
    ]
    assert {e.occurred_at for e in cleared} == {event.occurred_at}


def test_updating_or_deleting_an_unknown_rule_is_refused_without_an_event() -> None:
    uow = _uow(_device("b1"))
    missing = uuid.uuid4()
    cmd = UpdateAlarmRule(rule_id=missing, **_rule().model_dump())
    with pytest.raises(AlarmRuleNotFound):
        asyncio.run(alarm_handlers.update_rule(cmd, uow))
    with pytest.raises(AlarmRuleNotFound):
        asyncio.run(alarm_handlers.delete_rule(DeleteAlarmRule(rule_id=missing), uow))
    assert uow.published == [] and uow.alarm_rules.locked


def test_a_deleted_rule_takes_its_open_alarms_with_it() -> None:
    uow = _uow(_device("b1"))
    created = _create(uow, threshold_high=50.0)
    rule_id = created.rule.rule_id
    alarm_id = _alarm(uow, str(rule_id), "b1")
    _alarm(uow, str(rule_id), "b1", state="cleared")
    deleted = asyncio.run(alarm_handlers.delete_rule(DeleteAlarmRule(rule_id=rule_id), uow))
    event, cleared = uow.published[1:]
    assert isinstance(event, AlarmRuleDeleted) and stream_of(event) == ALARM_RULE_EVENTS_STREAM
    assert deleted == alarm_handlers.RuleDeletion(rule_id, event.event_id, 1)
    assert isinstance(cleared, AlarmCleared) and cleared.alarm_id == alarm_id
    assert cleared.reason == "rule deleted" and cleared.occurred_at == event.occurred_at
    assert uow.alarms_store[alarm_id].updated_at == event.occurred_at
    assert uow.rules_store == {}


def _acknowledge(uow: FakeUnitOfWork, alarm_id: uuid.UUID, by: str = "alice") -> Any:
    cmd = AcknowledgeAlarm(alarm_id=alarm_id, acknowledged_by=by, note="on my way")
    return asyncio.run(alarm_handlers.acknowledge_alarm(cmd, uow))


def test_an_acknowledgement_is_recorded_once_with_its_event_on_the_alarm_stream() -> None:
    uow = _uow(_device("b1"))
    alarm_id = _alarm(uow, "range:temp", "b1")
    first = _acknowledge(uow, alarm_id)
    (event,) = uow.published
    assert isinstance(event, AlarmAcknowledged) and stream_of(event) == ALARM_EVENTS_STREAM
    assert first.event_id == event.event_id and event.device_id == "b1"
    assert event.acknowledged_at == event.occurred_at == first.acknowledged_at
    row = uow.alarms_store[alarm_id]
    assert (row.state, row.acknowledged_by, row.note) == ("acknowledged", "alice", "on my way")
    assert row.updated_at == event.occurred_at

    again = _acknowledge(uow, alarm_id, by="bob")
    assert again.event_id is None and again.acknowledged_by == "alice"
    assert again.acknowledged_at == first.acknowledged_at
    assert len(uow.published) == 1 and not uow.alarm_rules.locked


def test_an_acknowledgement_never_moves_updated_at_back() -> None:
    uow = _uow(_device("b1"))
    later = datetime.now(UTC) + timedelta(hours=1)  # an earlier event from a clock ahead
    alarm_id = _alarm(uow, "range:temp", "b1")
    uow.alarms_store[alarm_id].updated_at = later
    _acknowledge(uow, alarm_id)
    assert uow.alarms_store[alarm_id].updated_at == later


def test_an_unknown_or_cleared_alarm_is_not_acknowledged() -> None:
    uow = _uow(_device("b1"))
    cleared = _alarm(uow, "range:temp", "b1", state="cleared")
    with pytest.raises(AlarmNotFound):
        _acknowledge(uow, uuid.uuid4())
    with pytest.raises(AlarmIsCleared):
        _acknowledge(uow, cleared)
    assert uow.published == [] and uow.alarms_store[cleared].acknowledged_by is None
