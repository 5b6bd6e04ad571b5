"""Webhook handlers: a command and a unit of work to a result.

A registration or deletion commits its row and its event (outbox, stream
``iotp:events:webhooks``) in one transaction, or neither.
"""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

from command_api.unit_of_work import UnitOfWork
from command_api.webhooks import Webhook, WebhookNotFound, register
from iotp.commands import DeleteWebhook, RegisterWebhook
from iotp.events import WebhookDeleted


@dataclass(frozen=True)
class WebhookDeletion:
    webhook_id: UUID
    event_id: UUID
    cancelled_deliveries: int


async def register_webhook(cmd: RegisterWebhook, uow: UnitOfWork) -> Webhook:
    """Store the webhook, with its secret, and its WebhookRegistered event."""
    webhook, event = register(cmd)
    secret = cmd.secret.get_secret_value() if cmd.secret is not None else None
    async with uow:
        await uow.webhooks.add(webhook, secret)
        uow.emit(event)
        await uow.commit()
    return webhook


async def delete_webhook(cmd: DeleteWebhook, uow: UnitOfWork) -> WebhookDeletion:
    """Mark the webhook deleted and cancel its pending deliveries, which have nowhere to go."""
    event = WebhookDeleted(webhook_id=cmd.webhook_id)
    async with uow:
        if not await uow.webhooks.delete(cmd.webhook_id, event.occurred_at):
            raise WebhookNotFound(cmd.webhook_id)
        cancelled = await uow.webhooks.cancel_pending_deliveries(cmd.webhook_id)
        uow.emit(event)
        await uow.commit()
    return WebhookDeletion(cmd.webhook_id, event.event_id, cancelled)
