"""Webhooks in the write store, in the unit of work's transaction."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol
from uuid import UUID

import psycopg

from command_api.webhooks import Webhook

Conn = psycopg.AsyncConnection[dict[str, Any]]

_INSERT = (
    "INSERT INTO webhooks (webhook_id, name, url, secret, severities, created_at)"
    " VALUES (%s, %s, %s, %s, %s, %s)"
)
_CANCEL_PENDING = (
    "UPDATE webhook_deliveries SET state = 'failed', last_error = 'webhook deleted',"
    " finished_at = now(), revision = revision + 1"
    " WHERE webhook_id = %s AND state = 'pending'"
)


class WebhookRepository(Protocol):
    async def add(self, webhook: Webhook, secret: str | None) -> None: ...
    async def delete(self, webhook_id: UUID, at: datetime) -> bool:
        """Mark the webhook deleted at ``at``; False when there is none (or it was deleted)."""
        ...

    async def cancel_pending_deliveries(self, webhook_id: UUID) -> int:
        """Mark the webhook's pending deliveries failed; how many there were."""
        ...


class PostgresWebhookRepository:
    def __init__(self, conn: Conn) -> None:
        self.conn = conn

    async def add(self, webhook: Webhook, secret: str | None) -> None:
        await self.conn.execute(
            _INSERT,
            (
                webhook.webhook_id,
                webhook.name,
                webhook.url,
                secret,
                list(webhook.severities),
                webhook.created_at,
            ),
        )

    async def delete(self, webhook_id: UUID, at: datetime) -> bool:
        cur = await self.conn.execute(
            "UPDATE webhooks SET deleted_at = %s WHERE webhook_id = %s AND deleted_at IS NULL"
            " RETURNING webhook_id",
            (at, webhook_id),
        )
        return await cur.fetchone() is not None

    async def cancel_pending_deliveries(self, webhook_id: UUID) -> int:
        cur = await self.conn.execute(_CANCEL_PENDING, (webhook_id,))
        return cur.rowcount
