"""Webhook routes: requests into commands, handler results into answers.

Changes go through :mod:`command_api.webhook_handlers`; reads are plain queries
(:mod:`command_api.configuration`). No answer ever holds a secret.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any
from uuid import UUID

from fastapi import APIRouter, Depends, Response

from command_api import configuration, webhook_handlers
from command_api.dependencies import PoolDep, UnitOfWorkDep, documented_bearer
from command_api.schemas import WebhookDeletedOut, WebhookList, WebhookOut
from command_api.webhooks import Webhook, WebhookNotFound
from iotp.commands import DeleteWebhook, RegisterWebhook
from iotp.http_errors import error_responses

webhooks = APIRouter(
    prefix="/webhooks",
    tags=["webhooks"],
    dependencies=[Depends(documented_bearer)],
    responses=error_responses(401, 422, 503),
)

# The shared 404 speaks of devices; these routes answer it for a webhook.
_NO_SUCH_WEBHOOK: dict[int | str, dict[str, Any]] = {
    404: {**error_responses(404)[404], "description": "No such webhook"}
}


def _out(webhook: Webhook) -> WebhookOut:
    return WebhookOut(**asdict(webhook))


@webhooks.post("", status_code=201, response_model=WebhookOut, responses=error_responses(400, 413))
async def post_webhook(cmd: RegisterWebhook, response: Response, uow: UnitOfWorkDep) -> WebhookOut:
    """Register a webhook: alarm events of the chosen severities are posted to its URL."""
    created = await webhook_handlers.register_webhook(cmd, uow)
    response.headers["Location"] = f"/webhooks/{created.webhook_id}"
    return _out(created)


@webhooks.get("", response_model=WebhookList)
async def list_webhooks(pool: PoolDep) -> WebhookList:
    """Every webhook not deleted, oldest first; secrets are never shown."""
    return WebhookList(webhooks=[_out(w) for w in await configuration.webhooks(pool)])


@webhooks.get("/{webhook_id}", response_model=WebhookOut, responses=_NO_SUCH_WEBHOOK)
async def get_webhook(webhook_id: UUID, pool: PoolDep) -> WebhookOut:
    """One webhook; the secret is never shown, only whether one is set."""
    webhook = await configuration.webhook(pool, webhook_id)
    if webhook is None:
        raise WebhookNotFound(webhook_id)
    return _out(webhook)


@webhooks.delete("/{webhook_id}", response_model=WebhookDeletedOut, responses=_NO_SUCH_WEBHOOK)
async def remove_webhook(webhook_id: UUID, uow: UnitOfWorkDep) -> WebhookDeletedOut:
    """Stop notifying a webhook; its pending deliveries are marked failed."""
    deleted = await webhook_handlers.delete_webhook(DeleteWebhook(webhook_id=webhook_id), uow)
    return WebhookDeletedOut(**asdict(deleted))
