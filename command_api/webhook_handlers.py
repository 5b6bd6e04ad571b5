"""Webhook handlers: a command and a unit of work to a result.

A registration or deletion commits its row and its event (outbox, stream
``iotp:events:webhooks``) in one transaction, or neither. A registration is refused when
the URL's host resolves to an address that is not public (the notifier checks again at every
delivery), and its secret is stored encrypted.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from uuid import UUID

from command_api.domain import InvalidField
from command_api.unit_of_work import UnitOfWork
from command_api.webhooks import Webhook, WebhookNotFound, register
from iotp.commands import DeleteWebhook, RegisterWebhook
from iotp.events import WebhookDeleted
from iotp.public_address import TargetRefused, checked_addresses, host_and_port
from iotp.webhook_secrets import SecretBox


@dataclass(frozen=True)
class WebhookPolicy:
    """What a registration is checked and stored with (from the settings)."""

    allow_private_targets: bool
    secrets: SecretBox


@dataclass(frozen=True)
class WebhookDeletion:
    webhook_id: UUID
    event_id: UUID
    cancelled_deliveries: int


async def check_target(url: str, allow_private: bool) -> None:
    """Refuse (422 on ``url``) a host that resolves to an address that is not public.

    A name that does not resolve now is accepted: it is checked at every delivery.
    """
    host, port = host_and_port(url)
    try:
        await asyncio.to_thread(checked_addresses, host, port, allow_private=allow_private)
    except TargetRefused as exc:
        raise InvalidField("url", str(exc)) from None
    except OSError:
        return


async def register_webhook(cmd: RegisterWebhook, uow: UnitOfWork, policy: WebhookPolicy) -> Webhook:
    """Store the webhook, with its secret encrypted, and its WebhookRegistered event.

    Raises :class:`iotp.webhook_secrets.SecretKeyMissing` for a secret when no key is set.
    """
    await check_target(cmd.url, policy.allow_private_targets)
    webhook, event = register(cmd)
    secret = policy.secrets.seal(cmd.secret.get_secret_value()) if cmd.secret is not None else None
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
