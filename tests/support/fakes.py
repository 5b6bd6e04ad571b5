"""In-memory unit of work for handler tests: the same protocol, no database."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any, Self, TypeVar
from uuid import UUID

from command_api.alarms import Alarm, AlarmRule, ClearedAlarm, WatchedDevice
from command_api.domain import ACTIVE, Device, DeviceAlreadyExists
from command_api.unit_of_work import IdempotencyRecord
from command_api.webhooks import Webhook
from iotp.commands import AlarmRuleSpec
from iotp.device_profiles import BUILTIN_PROFILE, DeviceProfile
from iotp.events import (
    AlarmAcknowledged,
    AlarmRuleAttributes,
    AlarmRuleCreated,
    AlarmRuleUpdated,
    Envelope,
)

K = TypeVar("K")
V = TypeVar("V")


class FakeDevices:
    def __init__(self, store: dict[str, Device]) -> None:
        self.store = store
        self.seen: dict[str, Device] = {}

    async def add(self, device: Device) -> None:
        if device.device_id in self.store:
            raise DeviceAlreadyExists(device.device_id)
        self.seen[device.device_id] = device

    async def get(self, device_id: str) -> Device | None:
        found = self.store.get(device_id)
        if found is None:
            return None
        device = copy.deepcopy(found)
        self.seen[device_id] = device
        return device

    async def save(self, device: Device) -> None:
        self.seen[device.device_id] = device


class FakeProfiles:
    """The built-in profile and those a test puts in ``store``; nothing uses any."""

    def __init__(self, store: dict[str, DeviceProfile]) -> None:
        self.store = store

    async def get(self, name: str, lock: str = "share") -> DeviceProfile | None:
        return BUILTIN_PROFILE if name == BUILTIN_PROFILE.name else self.store.get(name)

    async def users(self, name: str) -> tuple[int, int]:
        return 0, 0


class FakeGateways:
    """No gateway: a device id is never a gateway's."""

    async def exists(self, gateway_id: str) -> bool:
        return False


class FakeIdempotency:
    def __init__(self, store: dict[str, IdempotencyRecord]) -> None:
        self.store = store
        self.pending: dict[str, IdempotencyRecord] = {}

    async def claim(
        self, key: str, fingerprint: str, device_id: str, seed: bytes
    ) -> IdempotencyRecord | None:
        if key in self.store:
            return self.store[key]
        self.pending[key] = IdempotencyRecord(fingerprint, device_id, seed, {})
        return None

    async def complete(self, key: str, response: dict[str, Any]) -> None:
        record = self.pending[key]
        self.pending[key] = IdempotencyRecord(
            record.fingerprint, record.device_id, record.secret_seed, response
        )


def _watched(devices: dict[str, Device], device_id: str | None, kind: str | None) -> list[Device]:
    return [d for d in devices.values() if d.device_id == device_id or d.kind == kind]


class FakeAlarmRules:
    def __init__(self, rules: dict[UUID, AlarmRule], devices: dict[str, Device]) -> None:
        self.rules = rules
        self.devices = devices
        self.locked = False

    async def lock(self) -> None:
        self.locked = True

    async def watched_devices(self, device_id: str | None, kind: str | None) -> list[WatchedDevice]:
        return [
            WatchedDevice(
                d.device_id,
                d.kind,
                d.status == ACTIVE,
                [m.model_dump(exclude_none=True) for m in d.metrics],
            )
            for d in _watched(self.devices, device_id, kind)
        ]

    async def add(self, event: AlarmRuleCreated) -> AlarmRule:
        self.rules[event.rule_id] = _rule(event, created_at=event.occurred_at)
        return self.rules[event.rule_id]

    async def replace(self, event: AlarmRuleUpdated) -> AlarmRule | None:
        old = self.rules.get(event.rule_id)
        if old is None:
            return None
        self.rules[event.rule_id] = _rule(event, created_at=old.created_at)
        return self.rules[event.rule_id]

    async def delete(self, rule_id: UUID) -> bool:
        return self.rules.pop(rule_id, None) is not None


def _rule(event: AlarmRuleAttributes, created_at: datetime) -> AlarmRule:
    attributes = event.model_dump(include=set(AlarmRuleSpec.model_fields))
    return AlarmRule(
        rule_id=event.rule_id, **attributes, created_at=created_at, updated_at=event.occurred_at
    )


@dataclass
class AlarmRow:
    """A row of the write store's ``alarms`` table, as far as the command side touches it."""

    alarm_id: UUID
    rule_id: str
    device_id: str
    updated_at: datetime
    state: str = "active"
    acknowledged_by: str | None = None
    acknowledged_at: datetime | None = None
    note: str | None = None
    cleared_at: datetime | None = None
    clear_reason: str | None = None


class FakeAlarms:
    def __init__(self, rows: dict[UUID, AlarmRow], devices: dict[str, Device]) -> None:
        self.rows = rows
        self.devices = devices

    async def get(self, alarm_id: UUID) -> Alarm | None:
        row = self.rows.get(alarm_id)
        if row is None:
            return None
        return Alarm(
            row.alarm_id,
            row.device_id,
            row.state,
            row.acknowledged_by,
            row.acknowledged_at,
            row.note,
        )

    async def acknowledge(self, event: AlarmAcknowledged) -> None:
        row = self.rows[event.alarm_id]
        row.state, row.acknowledged_by = "acknowledged", event.acknowledged_by
        row.acknowledged_at, row.note = event.acknowledged_at, event.note
        row.updated_at = max(row.updated_at, event.occurred_at)

    async def clear_open_of_rule(
        self, rule_id: str, at: datetime, reason: str
    ) -> list[ClearedAlarm]:
        return self._clear(lambda row: row.rule_id == rule_id, at, reason)

    async def clear_open_of_default(
        self,
        default_rule_id: str,
        device_id: str | None,
        kind: str | None,
        at: datetime,
        reason: str,
    ) -> list[ClearedAlarm]:
        watched = {d.device_id for d in _watched(self.devices, device_id, kind)}
        return self._clear(
            lambda row: row.rule_id == default_rule_id and row.device_id in watched, at, reason
        )

    def _clear(
        self, selects: Callable[[AlarmRow], bool], at: datetime, reason: str
    ) -> list[ClearedAlarm]:
        cleared = []
        for row in self.rows.values():
            if row.state != "cleared" and selects(row):
                row.state, row.clear_reason = "cleared", reason
                row.cleared_at = row.updated_at = at
                cleared.append(ClearedAlarm(row.alarm_id, row.device_id))
        return cleared


@dataclass
class WebhookRow:
    webhook: Webhook
    secret: str | None
    deleted_at: datetime | None = None
    pending_deliveries: int = 0


class FakeWebhooks:
    def __init__(self, rows: dict[UUID, WebhookRow]) -> None:
        self.rows = rows

    async def add(self, webhook: Webhook, secret: str | None) -> None:
        self.rows[webhook.webhook_id] = WebhookRow(webhook, secret)

    async def delete(self, webhook_id: UUID, at: datetime) -> bool:
        row = self.rows.get(webhook_id)
        if row is None or row.deleted_at is not None:
            return False
        row.deleted_at = at
        return True

    async def cancel_pending_deliveries(self, webhook_id: UUID) -> int:
        row = self.rows[webhook_id]
        cancelled, row.pending_deliveries = row.pending_deliveries, 0
        return cancelled


class FakeUnitOfWork:
    """Commits copy into the stores and ``published``; leaving without commit keeps nothing."""

    def __init__(self) -> None:
        self.devices_store: dict[str, Device] = {}
        self.keys: dict[str, IdempotencyRecord] = {}
        self.rules_store: dict[UUID, AlarmRule] = {}
        self.alarms_store: dict[UUID, AlarmRow] = {}
        self.webhooks_store: dict[UUID, WebhookRow] = {}
        self.profiles_store: dict[str, DeviceProfile] = {}
        self.published: list[Envelope] = []
        self.commits = 0

    async def __aenter__(self) -> Self:
        self.devices = FakeDevices(self.devices_store)
        self.idempotency = FakeIdempotency(self.keys)
        # Working copies, kept only by commit.
        self.alarm_rules = FakeAlarmRules(copy.deepcopy(self.rules_store), self.devices_store)
        self.alarms = FakeAlarms(copy.deepcopy(self.alarms_store), self.devices_store)
        self.webhooks = FakeWebhooks(copy.deepcopy(self.webhooks_store))
        self.profiles = FakeProfiles(self.profiles_store)
        self.gateways = FakeGateways()
        self.emitted: list[Envelope] = []
        return self

    def emit(self, *events: Envelope) -> None:
        self.emitted.extend(events)

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None

    async def commit(self) -> None:
        for device in self.devices.seen.values():
            self.published.extend(device.events)
            device.events.clear()
            self.devices_store[device.device_id] = copy.deepcopy(device)
        self.published.extend(self.emitted)
        self.emitted = []
        self.keys.update(self.idempotency.pending)
        _keep(self.rules_store, self.alarm_rules.rules)
        _keep(self.alarms_store, self.alarms.rows)
        _keep(self.webhooks_store, self.webhooks.rows)
        self.commits += 1


def _keep(store: dict[K, V], working: dict[K, V]) -> None:
    store.clear()
    store.update(copy.deepcopy(working))
