"""Webhook handlers, and the stream every outbox event goes to, with an in-memory unit of work."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import pytest
from cryptography.fernet import Fernet
from pydantic import SecretStr

from command_api import webhook_handlers
from command_api.outbox import STREAM_OF, stream_of
from command_api.webhooks import Webhook, WebhookNotFound
from iotp.commands import DeleteWebhook, RegisterWebhook
from iotp.events import TelemetryRecorded, WebhookDeleted, WebhookRegistered
from iotp.names import (
    ACCESS_EVENTS_STREAM,
    ALARM_EVENTS_STREAM,
    ALARM_RULE_EVENTS_STREAM,
    DEVICE_EVENTS_STREAM,
    PROFILE_EVENTS_STREAM,
    WEBHOOK_EVENTS_STREAM,
)
from iotp.webhook_secrets import SecretBox, is_encrypted
from tests.support.fakes import FakeUnitOfWork

SECRET = "s3cret-s3cret-s3cret"
BOX = SecretBox(SecretStr(Fernet.generate_key().decode()))
POLICY = webhook_handlers.WebhookPolicy(allow_private_targets=False, secrets=BOX)


def _register(uow: FakeUnitOfWork, **fields: object) -> Webhook:
    cmd = RegisterWebhook.model_validate(
        {"url": "https://hooks.example.com:8443/t0k3n?x=1", "secret": SECRET, **fields}
    )
    return asyncio.run(webhook_handlers.register_webhook(cmd, uow, POLICY))


def test_a_registration_keeps_the_secret_and_its_event_only_the_origin() -> None:
    uow = FakeUnitOfWork()
    webhook = _register(uow, severities=["critical"], name="ops")
    (event,) = uow.published
    assert isinstance(event, WebhookRegistered) and stream_of(event) == WEBHOOK_EVENTS_STREAM
    assert event.webhook_id == webhook.webhook_id
    assert event.url_origin == "https://hooks.example.com:8443" and event.has_secret
    assert SECRET not in event.model_dump_json() and "t0k3n" not in event.model_dump_json()
    assert webhook.url == "https://hooks.example.com:8443/t0k3n?x=1"
    assert webhook.severities == ("critical",) and webhook.has_secret
    assert webhook.created_at == event.occurred_at
    stored = uow.webhooks_store[webhook.webhook_id].secret
    assert stored is not None and is_encrypted(stored) and SECRET not in stored
    assert BOX.open(stored) == SECRET


def test_a_deletion_cancels_the_pending_deliveries_once() -> None:
    uow = FakeUnitOfWork()
    webhook = _register(uow, secret=None)
    uow.webhooks_store[webhook.webhook_id].pending_deliveries = 3
    cmd = DeleteWebhook(webhook_id=webhook.webhook_id)
    deleted = asyncio.run(webhook_handlers.delete_webhook(cmd, uow))
    event = uow.published[-1]
    assert isinstance(event, WebhookDeleted) and stream_of(event) == WEBHOOK_EVENTS_STREAM
    assert deleted == webhook_handlers.WebhookDeletion(webhook.webhook_id, event.event_id, 3)
    assert uow.webhooks_store[webhook.webhook_id].deleted_at == event.occurred_at
    with pytest.raises(WebhookNotFound):
        asyncio.run(webhook_handlers.delete_webhook(cmd, uow))
    with pytest.raises(WebhookNotFound):
        asyncio.run(webhook_handlers.delete_webhook(DeleteWebhook(webhook_id=uuid.uuid4()), uow))
    assert len(uow.published) == 2


def test_every_outbox_event_has_one_stream_and_others_are_refused() -> None:
    streams = {name: stream for name, stream in ((t.__name__, s) for t, s in STREAM_OF.items())}
    assert streams == {
        "DeviceRegistered": DEVICE_EVENTS_STREAM,
        "DeviceUpdated": DEVICE_EVENTS_STREAM,
        "DeviceDecommissioned": DEVICE_EVENTS_STREAM,
        "DeviceCredentialsRotated": DEVICE_EVENTS_STREAM,
        "AlarmRaised": ALARM_EVENTS_STREAM,
        "AlarmAcknowledged": ALARM_EVENTS_STREAM,
        "AlarmCleared": ALARM_EVENTS_STREAM,
        "AlarmRuleCreated": ALARM_RULE_EVENTS_STREAM,
        "AlarmRuleUpdated": ALARM_RULE_EVENTS_STREAM,
        "AlarmRuleDeleted": ALARM_RULE_EVENTS_STREAM,
        "WebhookRegistered": WEBHOOK_EVENTS_STREAM,
        "WebhookDeleted": WEBHOOK_EVENTS_STREAM,
        "ApiKeyCreated": ACCESS_EVENTS_STREAM,
        "ApiKeyRevoked": ACCESS_EVENTS_STREAM,
        "DashboardAccountCreated": ACCESS_EVENTS_STREAM,
        "DashboardAccountChanged": ACCESS_EVENTS_STREAM,
        "AccessDenied": ACCESS_EVENTS_STREAM,
        "DeviceProfileSaved": PROFILE_EVENTS_STREAM,
        "DeviceProfileDeleted": PROFILE_EVENTS_STREAM,
        "GatewayRegistered": PROFILE_EVENTS_STREAM,
        "GatewayChanged": PROFILE_EVENTS_STREAM,
        "GatewayDeleted": PROFILE_EVENTS_STREAM,
    }
    now = datetime.now(UTC)
    telemetry = TelemetryRecorded(device_id="d1", readings=(), received_at=now, ingested_at=now)
    with pytest.raises(ValueError, match="TelemetryRecorded has no stream"):
        stream_of(telemetry)
