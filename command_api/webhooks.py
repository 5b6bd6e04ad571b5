"""Webhook routes and handlers: register, list, read and delete where alarms are posted.

A registration or deletion commits its row and its event (outbox, stream
``iotp:events:webhooks``) in one transaction, or neither. A URL is checked as text only and
never fetched here: the notifier is the only thing that ever connects to it. The secret is
stored for signing and never answered: a webhook says only whether it has one.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from uuid import UUID, uuid4

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.security import HTTPBearer
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel, Field

from command_api.outbox import INSERT_EVENT_SQL
from command_api.unit_of_work import Conn
from iotp.commands import DeleteWebhook, RegisterWebhook, url_origin
from iotp.events import Envelope, Severity, WebhookDeleted, WebhookRegistered, to_fields
from iotp.http_errors import error_responses
from iotp.names import WEBHOOK_EVENTS_STREAM

_documented_bearer = HTTPBearer(auto_error=False, description="IOTP_API_TOKEN")
webhooks = APIRouter(
    prefix="/webhooks",
    tags=["webhooks"],
    dependencies=[Depends(_documented_bearer)],
    responses=error_responses(401, 422, 503),
)

# The shared 404 speaks of devices; these routes answer it for a webhook.
_NO_SUCH_WEBHOOK: dict[int | str, dict[str, Any]] = {
    404: {**error_responses(404)[404], "description": "No such webhook"}
}
_COLUMNS = "webhook_id, name, url, secret IS NOT NULL AS has_secret, severities, created_at"
_INSERT = (
    "INSERT INTO webhooks (webhook_id, name, url, secret, severities, created_at)"
    " VALUES (%s, %s, %s, %s, %s, %s)"
)
# Deliveries not yet made have nowhere to go once their webhook is deleted.
_CANCEL_PENDING = (
    "UPDATE webhook_deliveries SET state = 'failed', last_error = 'webhook deleted',"
    " finished_at = now(), revision = revision + 1"
    " WHERE webhook_id = %s AND state = 'pending'"
)


class WebhookOut(BaseModel):
    webhook_id: UUID
    name: str | None
    url: str
    severities: list[Severity]
    has_secret: bool = Field(description="Whether deliveries are signed; the secret is not shown")
    created_at: datetime


class WebhookList(BaseModel):
    webhooks: list[WebhookOut]


class WebhookDeletedOut(BaseModel):
    webhook_id: UUID
    event_id: UUID
    cancelled_deliveries: int = Field(description="Pending deliveries that will not be made")


def _pool(request: Request) -> AsyncConnectionPool[Conn]:
    pool: AsyncConnectionPool[Conn] = request.app.state.pool
    return pool


PoolDep = Annotated[AsyncConnectionPool[Conn], Depends(_pool)]


async def _write_event(conn: Conn, event: Envelope) -> None:
    fields = to_fields(event)
    await conn.execute(
        INSERT_EVENT_SQL, (event.event_id, WEBHOOK_EVENTS_STREAM, fields["type"], Jsonb(fields))
    )


async def register_webhook(cmd: RegisterWebhook, pool: AsyncConnectionPool[Conn]) -> WebhookOut:
    """Store the webhook and its WebhookRegistered event in one transaction."""
    event = WebhookRegistered(
        webhook_id=uuid4(),
        name=cmd.name,
        url_origin=url_origin(cmd.url),
        severities=cmd.severities,
        has_secret=cmd.secret is not None,
    )
    secret = cmd.secret.get_secret_value() if cmd.secret is not None else None
    async with pool.connection() as conn, conn.transaction():
        await conn.execute(
            _INSERT,
            (
                event.webhook_id,
                cmd.name,
                cmd.url,
                secret,
                list(cmd.severities),
                event.occurred_at,
            ),
        )
        await _write_event(conn, event)
    return WebhookOut(
        webhook_id=event.webhook_id,
        name=cmd.name,
        url=cmd.url,
        severities=list(cmd.severities),
        has_secret=secret is not None,
        created_at=event.occurred_at,
    )


async def delete_webhook(cmd: DeleteWebhook, pool: AsyncConnectionPool[Conn]) -> WebhookDeletedOut:
    """Mark the webhook deleted and cancel its pending deliveries; 404 when there is none."""
    event = WebhookDeleted(webhook_id=cmd.webhook_id)
    async with pool.connection() as conn, conn.transaction():
        cur = await conn.execute(
            "UPDATE webhooks SET deleted_at = %s WHERE webhook_id = %s AND deleted_at IS NULL"
            " RETURNING webhook_id",
            (event.occurred_at, cmd.webhook_id),
        )
        if await cur.fetchone() is None:
            raise _not_found(cmd.webhook_id)
        cancelled = await conn.execute(_CANCEL_PENDING, (cmd.webhook_id,))
        await _write_event(conn, event)
    return WebhookDeletedOut(
        webhook_id=cmd.webhook_id, event_id=event.event_id, cancelled_deliveries=cancelled.rowcount
    )


def _not_found(webhook_id: UUID) -> HTTPException:
    return HTTPException(404, f"webhook {webhook_id} is not registered")


def _out(row: dict[str, Any]) -> WebhookOut:
    return WebhookOut.model_validate(row)


@webhooks.post("", status_code=201, response_model=WebhookOut, responses=error_responses(400, 413))
async def post_webhook(cmd: RegisterWebhook, response: Response, pool: PoolDep) -> WebhookOut:
    """Register a webhook: alarm events of the chosen severities are posted to its URL."""
    created = await register_webhook(cmd, pool)
    response.headers["Location"] = f"/webhooks/{created.webhook_id}"
    return created


@webhooks.get("", response_model=WebhookList)
async def list_webhooks(pool: PoolDep) -> WebhookList:
    """Every webhook not deleted, oldest first; secrets are never shown."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            f"SELECT {_COLUMNS} FROM webhooks WHERE deleted_at IS NULL"  # noqa: S608
            " ORDER BY created_at, webhook_id"
        )
        rows = await cur.fetchall()
    return WebhookList(webhooks=[_out(row) for row in rows])


@webhooks.get("/{webhook_id}", response_model=WebhookOut, responses=_NO_SUCH_WEBHOOK)
async def get_webhook(webhook_id: UUID, pool: PoolDep) -> WebhookOut:
    """One webhook; the secret is never shown, only whether one is set."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            f"SELECT {_COLUMNS} FROM webhooks"  # noqa: S608
            " WHERE webhook_id = %s AND deleted_at IS NULL",
            (webhook_id,),
        )
        row = await cur.fetchone()
    if row is None:
        raise _not_found(webhook_id)
    return _out(row)


@webhooks.delete("/{webhook_id}", response_model=WebhookDeletedOut, responses=_NO_SUCH_WEBHOOK)
async def remove_webhook(webhook_id: UUID, pool: PoolDep) -> WebhookDeletedOut:
    """Stop notifying a webhook; its pending deliveries are marked failed."""
    return await delete_webhook(DeleteWebhook(webhook_id=webhook_id), pool)
