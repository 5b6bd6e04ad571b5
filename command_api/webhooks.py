"""Webhooks: where the notifier posts alarm events; the command side's rules for them.

A URL is checked as text by the command, and its host's addresses by the handler (public
ones only, iotp.public_address); it is never fetched here: the notifier is the only thing
that ever connects to it. The secret is stored encrypted for signing and never answered,
and the URL's path and query (they often hold a token) never travel on a stream: the event
carries the URL's origin and whether there is a secret.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID, uuid4

from command_api.domain import CommandRejected
from iotp.commands import RegisterWebhook, url_origin
from iotp.events import Severity, WebhookRegistered


class WebhookNotFound(CommandRejected):
    def __init__(self, webhook_id: UUID) -> None:
        super().__init__(f"webhook {webhook_id} is not registered")


@dataclass(frozen=True)
class Webhook:
    """A webhook as answered: never its secret, only whether it has one."""

    webhook_id: UUID
    name: str | None
    url: str
    severities: tuple[Severity, ...]
    has_secret: bool
    created_at: datetime


def register(cmd: RegisterWebhook) -> tuple[Webhook, WebhookRegistered]:
    """The webhook ``cmd`` registers, and its event."""
    event = WebhookRegistered(
        webhook_id=uuid4(),
        name=cmd.name,
        url_origin=url_origin(cmd.url),
        severities=cmd.severities,
        has_secret=cmd.secret is not None,
    )
    webhook = Webhook(
        webhook_id=event.webhook_id,
        name=cmd.name,
        url=cmd.url,
        severities=cmd.severities,
        has_secret=event.has_secret,
        created_at=event.occurred_at,
    )
    return webhook, event
