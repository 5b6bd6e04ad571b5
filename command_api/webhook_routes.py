"""Webhook routes: requests into commands, handler results into answers.

Changes go through :mod:`command_api.webhook_handlers`; reads are plain queries
(:mod:`command_api.configuration`). No answer ever holds a secret.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Depends, HTTPException, Request, Response

from command_api import configuration, webhook_handlers
from command_api.dependencies import PoolDep, UnitOfWorkDep, documented_bearer
from command_api.schemas import WebhookDeletedOut, WebhookList, WebhookOut
from command_api.webhooks import Webhook, WebhookNotFound
from iotp.commands import DeleteWebhook, RegisterWebhook
from iotp.http_errors import error_responses
from iotp.settings import Settings
from iotp.webhook_secrets import SecretBox, SecretKeyMissing

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


def _policy(request: Request) -> webhook_handlers.WebhookPolicy:
    # Built once per app, from its settings: a malformed key fails the first registration.
    state = request.app.state
    policy: webhook_handlers.WebhookPolicy | None = getattr(state, "webhook_policy", None)
    if policy is None:
        settings: Settings = state.settings
        policy = webhook_handlers.WebhookPolicy(
            allow_private_targets=settings.notify_allow_private_targets,
            secrets=SecretBox(settings.notify_secret_key),
        )
        state.webhook_policy = policy
    return policy


@webhooks.post("", status_code=201, response_model=WebhookOut, responses=error_responses(400, 413))
async def post_webhook(
    cmd: RegisterWebhook,
    response: Response,
    uow: UnitOfWorkDep,
    policy: Annotated[webhook_handlers.WebhookPolicy, Depends(_policy)],
) -> WebhookOut:
    """Register a webhook: alarm events of the chosen severities are posted to its URL.

    422 when the URL's host resolves to an address that is not public; 503 for a secret
    when the API has no IOTP_NOTIFY_SECRET_KEY to encrypt it with.
    """
    try:
        created = await webhook_handlers.register_webhook(cmd, uow, policy)
    except SecretKeyMissing:
        raise HTTPException(
            503,
            "webhook secrets are stored encrypted and IOTP_NOTIFY_SECRET_KEY is not set on"
            " the command API: set it, or register the webhook without a secret",
        ) from None
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
