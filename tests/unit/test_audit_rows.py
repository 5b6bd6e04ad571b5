"""The audit trail's rows (read_models.audit): every event a command can cause has one, with
its actor, action, target and outcome, no secret, and none without an actor."""

from __future__ import annotations

import inspect
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import pytest

from iotp import events
from iotp.device_profiles import DeviceProfile, TopicTree
from iotp.events import (
    AccessDenied,
    Actor,
    AlarmAcknowledged,
    AlarmCleared,
    AlarmRaised,
    AlarmRuleCreated,
    AlarmRuleDeleted,
    AlarmRuleUpdated,
    ApiKeyCreated,
    ApiKeyRevoked,
    DashboardAccountChanged,
    DashboardAccountCreated,
    DeviceCredentialsRotated,
    DeviceDecommissioned,
    DeviceProfileDeleted,
    DeviceProfileSaved,
    DeviceRegistered,
    DeviceUpdated,
    Envelope,
    GatewayChanged,
    GatewayDeleted,
    GatewayRegistered,
    Issued,
    RecordedReading,
    TelemetryRecorded,
    UndecodableEvent,
    WebhookDeleted,
    WebhookRegistered,
    to_fields,
)
from read_models.audit import DESCRIPTIONS, audit_row, decode_audited, denied_action

KEY = Actor(kind="api-key", id="5f0c7a52-7d1e-4ac4-9a43-3c0b1d9d2f11", name="line 3 key")
AT = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
ALARM = UUID("7d6c1d9e-6f31-4d43-9a53-1f7a6f7f0c01")
RULE = UUID("0c1a2b3c-4d5e-4f60-8a7b-9c0d1e2f3a4b")
HOOK = UUID("1b2c3d4e-5f60-4a7b-8c9d-0e1f2a3b4c5d")
KEY_ID = UUID("2c3d4e5f-6a7b-4c8d-9e0f-1a2b3c4d5e6f")
HASH = "$7$101$c2FsdHNhbHQ=$aGFzaGhhc2hoYXNoaGFzaA=="
RULE_FIELDS: dict[str, Any] = {
    "rule_id": RULE,
    "scope": "kind",
    "kind": "thermostat",
    "metric": "temp",
    "condition": "above",
    "threshold_high": 30.0,
    "for_readings": 3,
    "clear_readings": 2,
    "severity": "major",
}

# One event of each type a command can cause, and the (action, target, outcome) it reads as.
SAMPLES: dict[type[Issued], tuple[Envelope, tuple[str, str, str]]] = {
    DeviceRegistered: (
        DeviceRegistered(
            device_id="boiler-1", name="Boiler", kind="thermostat", credential_hash=HASH
        ),
        ("device.register", "device:boiler-1", "succeeded"),
    ),
    DeviceUpdated: (
        DeviceUpdated(device_id="boiler-1", name="Boiler 2", kind="thermostat", changed=("name",)),
        ("device.update", "device:boiler-1", "succeeded"),
    ),
    DeviceDecommissioned: (
        DeviceDecommissioned(device_id="boiler-1", reason="replaced"),
        ("device.decommission", "device:boiler-1", "succeeded"),
    ),
    DeviceCredentialsRotated: (
        DeviceCredentialsRotated(device_id="boiler-1", username="boiler-1", credential_hash=HASH),
        ("device.rotate-credentials", "device:boiler-1", "succeeded"),
    ),
    AlarmAcknowledged: (
        AlarmAcknowledged(
            device_id="boiler-1", alarm_id=ALARM, acknowledged_by="ann", acknowledged_at=AT
        ),
        ("alarm.acknowledge", f"alarm:{ALARM}", "succeeded"),
    ),
    AlarmCleared: (
        AlarmCleared(device_id="boiler-1", alarm_id=ALARM, cleared_at=AT, reason="rule deleted"),
        ("alarm.clear", f"alarm:{ALARM}", "succeeded"),
    ),
    AlarmRuleCreated: (
        AlarmRuleCreated(**RULE_FIELDS),
        ("alarm-rule.create", f"alarm-rule:{RULE}", "succeeded"),
    ),
    AlarmRuleUpdated: (
        AlarmRuleUpdated(**RULE_FIELDS),
        ("alarm-rule.update", f"alarm-rule:{RULE}", "succeeded"),
    ),
    AlarmRuleDeleted: (
        AlarmRuleDeleted(rule_id=RULE),
        ("alarm-rule.delete", f"alarm-rule:{RULE}", "succeeded"),
    ),
    WebhookRegistered: (
        WebhookRegistered(
            webhook_id=HOOK,
            name="pager",
            url_origin="https://hooks.example.com",
            severities=("critical",),
            has_secret=True,
        ),
        ("webhook.register", f"webhook:{HOOK}", "succeeded"),
    ),
    WebhookDeleted: (
        WebhookDeleted(webhook_id=HOOK),
        ("webhook.delete", f"webhook:{HOOK}", "succeeded"),
    ),
    ApiKeyCreated: (
        ApiKeyCreated(key_id=KEY_ID, name="ci", role="viewer"),
        ("api-key.create", f"api-key:{KEY_ID}", "succeeded"),
    ),
    ApiKeyRevoked: (
        ApiKeyRevoked(key_id=KEY_ID, name="ci"),
        ("api-key.revoke", f"api-key:{KEY_ID}", "succeeded"),
    ),
    DashboardAccountCreated: (
        DashboardAccountCreated(username="ann", role="operator"),
        ("dashboard-account.create", "dashboard-account:ann", "succeeded"),
    ),
    DashboardAccountChanged: (
        DashboardAccountChanged(
            username="ann", role="viewer", disabled=False, changed=("role", "password")
        ),
        ("dashboard-account.change", "dashboard-account:ann", "succeeded"),
    ),
    DeviceProfileSaved: (
        DeviceProfileSaved(
            profile=DeviceProfile(
                name="esphome",
                payload_format="plain",
                topics=TopicTree(telemetry=("{device}/sensor/{metric}/state",)),
            ),
            created=True,
        ),
        ("device-profile.create", "device-profile:esphome", "succeeded"),
    ),
    DeviceProfileDeleted: (
        DeviceProfileDeleted(name="esphome"),
        ("device-profile.delete", "device-profile:esphome", "succeeded"),
    ),
    GatewayRegistered: (
        GatewayRegistered(
            gateway_id="z2m-1",
            name="zigbee bridge",
            profile="zigbee2mqtt",
            devices={"kitchen sensor": "kitchen-1"},
            credential_hash=HASH,
        ),
        ("gateway.register", "gateway:z2m-1", "succeeded"),
    ),
    GatewayChanged: (
        GatewayChanged(
            gateway_id="z2m-1",
            name="zigbee bridge",
            profile="zigbee2mqtt",
            devices={"kitchen sensor": "kitchen-1", "hall": "hall-1"},
            changed=("devices",),
            credential_hash=HASH,
        ),
        ("gateway.change", "gateway:z2m-1", "succeeded"),
    ),
    GatewayDeleted: (
        GatewayDeleted(gateway_id="z2m-1"),
        ("gateway.delete", "gateway:z2m-1", "succeeded"),
    ),
    AccessDenied: (
        AccessDenied(
            method="POST",
            path="/devices",
            permission="devices:register",
            reason="role viewer lacks permission devices:register",
        ),
        ("POST /devices", "", "denied"),
    ),
}


def issued_event_types() -> set[type[Any]]:
    """Every concrete event type of iotp.events that names who issued it."""
    found: set[type[Any]] = set()
    for _, cls in inspect.getmembers(events, inspect.isclass):
        if issubclass(cls, Issued) and issubclass(cls, Envelope) and "type" in cls.model_fields:
            found.add(cls)
    return found


EVENT_TYPES = sorted(SAMPLES, key=lambda t: str(t.__qualname__))


def test_every_event_a_command_can_cause_has_a_mapping_and_a_sample() -> None:
    found = issued_event_types()
    assert len(found) >= 16
    assert set(DESCRIPTIONS) == found, "an Issued event type without an audit mapping"
    assert set(SAMPLES) == found, "an Issued event type without a sample in this test"


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_each_event_with_an_actor_reads_as_its_action_target_and_outcome(
    event_type: type[Issued],
) -> None:
    sample, (action, target, outcome) = SAMPLES[event_type]
    event = sample.model_copy(update={"actor": KEY, "occurred_at": AT})
    row = audit_row(event)
    assert row is not None
    assert (row.action, row.target or "", row.outcome) == (action, target, outcome)
    assert row.event_id == event.event_id and row.at == AT and row.actor == KEY
    assert None not in row.detail.values()


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_an_event_without_an_actor_is_no_command(event_type: type[Issued]) -> None:
    sample, _ = SAMPLES[event_type]
    assert audit_row(sample) is None


def test_events_no_command_causes_are_skipped() -> None:
    raised = AlarmRaised(
        device_id="boiler-1",
        alarm_id=ALARM,
        rule_id="range:temp",
        metric="temp",
        condition="above",
        severity="major",
        raised_at=AT,
    )
    reading = TelemetryRecorded(
        device_id="boiler-1",
        readings=(RecordedReading(ts=AT, metrics={"temp": 1.0}),),
        ingested_at=AT,
    )
    assert audit_row(raised) is None and audit_row(reading) is None


def test_no_secret_reaches_a_row() -> None:
    for sample, _ in SAMPLES.values():
        row = audit_row(sample.model_copy(update={"actor": KEY}))
        assert row is not None
        assert HASH not in str(row.detail)
    registered = audit_row(SAMPLES[WebhookRegistered][0].model_copy(update={"actor": KEY}))
    assert registered is not None and "has_secret" not in registered.detail


def test_a_denied_request_names_its_route_and_its_target() -> None:
    assert denied_action("post", "/devices") == ("POST /devices", None)
    assert denied_action("POST", "/devices/boiler-1/credentials") == (
        "POST /devices/{id}/credentials",
        "device:boiler-1",
    )
    assert denied_action("DELETE", f"/api-keys/{KEY_ID}") == (
        "DELETE /api-keys/{id}",
        f"api-key:{KEY_ID}",
    )
    assert denied_action("PATCH", "/dashboard-accounts/ann?x=1") == (
        "PATCH /dashboard-accounts/{id}",
        "dashboard-account:ann",
    )
    assert denied_action("GET", "/pipeline") == ("GET /pipeline", None)


def test_stream_entries_decode_by_type_and_skip_what_never_names_an_actor() -> None:
    for sample, _ in SAMPLES.values():
        issued = sample.model_copy(update={"actor": KEY})
        fields = to_fields(issued)
        assert decode_audited(fields) == issued
        assert decode_audited({k.encode(): v.encode() for k, v in fields.items()}) == issued
    raised = AlarmRaised(
        device_id="boiler-1",
        alarm_id=ALARM,
        rule_id="range:temp",
        condition="offline",
        severity="minor",
        raised_at=AT,
    )
    # Skipped without being decoded: even a malformed AlarmRaised is not an error here.
    assert decode_audited(to_fields(raised)) is None
    assert decode_audited({b"type": b"AlarmRaised", b"data": b"{not json"}) is None
    with pytest.raises(UndecodableEvent):
        decode_audited({b"type": b"SomethingNew", b"schema_version": b"1", b"data": b"{}"})
    with pytest.raises(UndecodableEvent):
        decode_audited({b"type": b"DeviceRegistered", b"schema_version": b"1", b"data": b"{}"})
