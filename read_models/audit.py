"""The audit trail's rows: what one command's event says about who did what to what.

Pure: an event in, an :class:`AuditRow` out, or None for an event that names no actor (older
events, and events no command caused, such as an alarm cleared by a reading). Every event
type a command can cause has a mapping here; a unit test holds that to every
:class:`iotp.events.Issued` type, so a new command's event cannot slip past the audit.
Secrets never reach a row: credential hashes, webhook URLs' paths and passwords are not
copied, only the few fields a person reading the trail needs. :func:`decode_audited` reads a
stream entry (or an outbox row) by its type, skipping types that never name an actor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from typing import Any, Literal, get_args
from uuid import UUID

from iotp.events import (
    AccessDenied,
    Actor,
    AlarmAcknowledged,
    AlarmCleared,
    AlarmRuleCreated,
    AlarmRuleDeleted,
    AlarmRuleUpdated,
    AnyAccessEvent,
    AnyConfigurationEvent,
    AnyEvent,
    AnyProfileEvent,
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
    UndecodableEvent,
    WebhookDeleted,
    WebhookRegistered,
    access_event_from_fields,
    configuration_event_from_fields,
    from_fields,
    profile_event_from_fields,
)

Outcome = Literal["succeeded", "denied"]
OUTCOMES: tuple[Outcome, ...] = ("succeeded", "denied")


@dataclass(frozen=True, slots=True)
class AuditRow:
    """One line of the audit trail, as read_models.audit_log stores it."""

    event_id: UUID
    at: datetime
    actor: Actor
    action: str
    target: str | None
    outcome: Outcome
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Described:
    """What an event type says: the action, its target, and the detail worth keeping."""

    action: str
    target: str | None
    detail: dict[str, Any]
    outcome: Outcome = "succeeded"


def _device_registered(e: DeviceRegistered) -> Described:
    return Described("device.register", f"device:{e.device_id}", {"name": e.name, "kind": e.kind})


def _device_updated(e: DeviceUpdated) -> Described:
    return Described("device.update", f"device:{e.device_id}", {"changed": list(e.changed)})


def _device_decommissioned(e: DeviceDecommissioned) -> Described:
    return Described("device.decommission", f"device:{e.device_id}", {"reason": e.reason})


def _credentials_rotated(e: DeviceCredentialsRotated) -> Described:
    # The MQTT user name only: the hash stays out, though it reveals nothing usable.
    return Described("device.rotate-credentials", f"device:{e.device_id}", {"username": e.username})


def _alarm_acknowledged(e: AlarmAcknowledged) -> Described:
    return Described(
        "alarm.acknowledge",
        f"alarm:{e.alarm_id}",
        {"device_id": e.device_id, "acknowledged_by": e.acknowledged_by, "note": e.note},
    )


def _alarm_cleared(e: AlarmCleared) -> Described:
    return Described(
        "alarm.clear", f"alarm:{e.alarm_id}", {"device_id": e.device_id, "reason": e.reason}
    )


def _rule_detail(e: AlarmRuleCreated | AlarmRuleUpdated) -> dict[str, Any]:
    return {
        "scope": e.scope,
        "device_id": e.device_id,
        "kind": e.kind,
        "metric": e.metric,
        "condition": e.condition,
        "severity": e.severity,
    }


def _rule_created(e: AlarmRuleCreated) -> Described:
    return Described("alarm-rule.create", f"alarm-rule:{e.rule_id}", _rule_detail(e))


def _rule_updated(e: AlarmRuleUpdated) -> Described:
    return Described("alarm-rule.update", f"alarm-rule:{e.rule_id}", _rule_detail(e))


def _rule_deleted(e: AlarmRuleDeleted) -> Described:
    return Described("alarm-rule.delete", f"alarm-rule:{e.rule_id}", {})


def _webhook_registered(e: WebhookRegistered) -> Described:
    # The origin only, as on the stream: a URL's path and query often hold a token.
    return Described(
        "webhook.register",
        f"webhook:{e.webhook_id}",
        {"name": e.name, "url_origin": e.url_origin, "severities": list(e.severities)},
    )


def _webhook_deleted(e: WebhookDeleted) -> Described:
    return Described("webhook.delete", f"webhook:{e.webhook_id}", {})


def _key_created(e: ApiKeyCreated) -> Described:
    return Described(
        "api-key.create",
        f"api-key:{e.key_id}",
        {
            "name": e.name,
            "role": e.role,
            "expires_at": e.expires_at.isoformat() if e.expires_at else None,
        },
    )


def _key_revoked(e: ApiKeyRevoked) -> Described:
    return Described("api-key.revoke", f"api-key:{e.key_id}", {"name": e.name})


def _account_created(e: DashboardAccountCreated) -> Described:
    return Described(
        "dashboard-account.create", f"dashboard-account:{e.username}", {"role": e.role}
    )


def _account_changed(e: DashboardAccountChanged) -> Described:
    return Described(
        "dashboard-account.change",
        f"dashboard-account:{e.username}",
        {"role": e.role, "disabled": e.disabled, "changed": list(e.changed)},
    )


def _profile_saved(e: DeviceProfileSaved) -> Described:
    return Described(
        "device-profile.create" if e.created else "device-profile.update",
        f"device-profile:{e.profile.name}",
        {"payload_format": e.profile.payload_format, "gateway": e.profile.gateway},
    )


def _profile_deleted(e: DeviceProfileDeleted) -> Described:
    return Described("device-profile.delete", f"device-profile:{e.name}", {})


def _gateway_registered(e: GatewayRegistered) -> Described:
    # The devices it may speak for, by id: who can publish for a device is what an audit of
    # a gateway is read for. The credential hash stays out.
    return Described(
        "gateway.register",
        f"gateway:{e.gateway_id}",
        {"profile": e.profile, "devices": sorted(e.devices.values())},
    )


def _gateway_changed(e: GatewayChanged) -> Described:
    return Described(
        "gateway.change",
        f"gateway:{e.gateway_id}",
        {"profile": e.profile, "devices": sorted(e.devices.values()), "changed": list(e.changed)},
    )


def _gateway_deleted(e: GatewayDeleted) -> Described:
    return Described("gateway.delete", f"gateway:{e.gateway_id}", {})


def _access_denied(e: AccessDenied) -> Described:
    action, target = denied_action(e.method, e.path)
    return Described(
        action,
        target,
        {"path": e.path, "permission": e.permission, "reason": e.reason},
        outcome="denied",
    )


# Each event type a command can cause, and how it reads in the trail.
DESCRIPTIONS: dict[type[Issued], Callable[[Any], Described]] = {
    DeviceRegistered: _device_registered,
    DeviceUpdated: _device_updated,
    DeviceDecommissioned: _device_decommissioned,
    DeviceCredentialsRotated: _credentials_rotated,
    AlarmAcknowledged: _alarm_acknowledged,
    AlarmCleared: _alarm_cleared,
    AlarmRuleCreated: _rule_created,
    AlarmRuleUpdated: _rule_updated,
    AlarmRuleDeleted: _rule_deleted,
    WebhookRegistered: _webhook_registered,
    WebhookDeleted: _webhook_deleted,
    ApiKeyCreated: _key_created,
    ApiKeyRevoked: _key_revoked,
    DashboardAccountCreated: _account_created,
    DashboardAccountChanged: _account_changed,
    DeviceProfileSaved: _profile_saved,
    DeviceProfileDeleted: _profile_deleted,
    GatewayRegistered: _gateway_registered,
    GatewayChanged: _gateway_changed,
    GatewayDeleted: _gateway_deleted,
    AccessDenied: _access_denied,
}

# The first path segment of a resource route, and what its targets are called.
_RESOURCES = {
    "devices": "device",
    "alarms": "alarm",
    "alarm-rules": "alarm-rule",
    "webhooks": "webhook",
    "api-keys": "api-key",
    "dashboard-accounts": "dashboard-account",
    "device-profiles": "device-profile",
    "gateways": "gateway",
}


def denied_action(method: str, path: str) -> tuple[str, str | None]:
    """The action and target of a refused request: ``POST /devices/{id}/credentials`` and
    ``device:boiler-1`` for ``/devices/boiler-1/credentials``.

    The resource's id is put back as ``{id}`` so that one action filter finds every refusal
    of a route, whatever it was refused on; the id goes to the target.
    """
    segments = [s for s in path.split("?", 1)[0].split("/") if s]
    method = method.upper()
    if not segments or segments[0] not in _RESOURCES:
        return f"{method} {path}", None
    if len(segments) == 1:
        return f"{method} /{segments[0]}", None
    route = "/".join([segments[0], "{id}", *segments[2:]])
    return f"{method} /{route}", f"{_RESOURCES[segments[0]]}:{segments[1]}"


class UnauditedEvent(LookupError):
    """An event names its actor, and the audit has no mapping for its type (a code error)."""


def audit_row(event: Envelope) -> AuditRow | None:
    """The audit trail's row for ``event``, or None when it names no actor (no command)."""
    if not isinstance(event, Issued) or event.actor is None:
        return None
    describe = DESCRIPTIONS.get(type(event))
    if describe is None:
        raise UnauditedEvent(f"{type(event).__name__} names its actor but has no audit mapping")
    described = describe(event)
    return AuditRow(
        event_id=event.event_id,
        at=event.occurred_at,
        actor=event.actor,
        action=described.action,
        target=described.target,
        outcome=described.outcome,
        detail={k: v for k, v in described.detail.items() if v is not None},
    )


Fields = dict[bytes, bytes] | dict[str, str]  # a stream entry's, or an outbox row's
Decoder = Callable[[Fields], Envelope]
Audited = Envelope | None  # None: an entry of a type that never names an actor


@cache
def _decoders() -> tuple[dict[str, Decoder], frozenset[str]]:
    """By event type: the decoder of every type that may name its actor, and the types that
    never do (AlarmRaised), which are skipped undecoded. Derived from the event unions, so a
    new event type is audited as soon as it is an :class:`iotp.events.Issued`."""
    audited: dict[str, Decoder] = {}
    never: set[str] = set()
    unions: tuple[tuple[Any, Decoder], ...] = (
        (AnyEvent, from_fields),
        (AnyConfigurationEvent, configuration_event_from_fields),
        (AnyAccessEvent, access_event_from_fields),
        (AnyProfileEvent, profile_event_from_fields),
    )
    for union, decoder in unions:
        for event_type in get_args(get_args(union)[0]):
            name = event_type.model_fields["type"].default
            if issubclass(event_type, Issued):
                audited[name] = decoder
            else:
                never.add(name)
    return audited, frozenset(never)


def decode_audited(fields: Fields) -> Audited:
    """The event of a stream entry (or an outbox row's fields), None for a type that never
    names an actor; :class:`UndecodableEvent` for anything else."""
    keyed: dict[Any, Any] = fields
    raw = keyed.get(b"type", keyed.get("type"))
    kind = raw.decode() if isinstance(raw, bytes) else raw
    audited, never = _decoders()
    if kind in never:
        return None
    decoder = audited.get(kind) if isinstance(kind, str) else None
    if decoder is None:
        raise UndecodableEvent(f"unknown event type {kind!r}")
    return decoder(fields)
