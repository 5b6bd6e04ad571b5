"""The outbox table: what the unit of work writes, what the relay sends, and the backlog.

Events are written in the transaction of the rows they describe, each with the stream it
goes to; the relay sends them in ``id`` order and marks them sent after Redis took them, so
``sent_at IS NULL`` is exactly the backlog: events committed and not yet on their stream.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg.rows import tuple_row
from psycopg.types.json import Jsonb

from iotp.events import (
    AccessDenied,
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
    WebhookDeleted,
    WebhookRegistered,
    to_fields,
)
from iotp.names import (
    ACCESS_EVENTS_STREAM,
    ALARM_EVENTS_STREAM,
    ALARM_RULE_EVENTS_STREAM,
    DEVICE_EVENTS_STREAM,
    PROFILE_EVENTS_STREAM,
    WEBHOOK_EVENTS_STREAM,
)

# One column, ``backlog``, whatever the connection's row factory.
OUTBOX_BACKLOG_SQL = "SELECT count(*) AS backlog FROM outbox WHERE sent_at IS NULL"
INSERT_EVENT_SQL = (
    "INSERT INTO outbox (event_id, stream, event_type, fields) VALUES (%s, %s, %s, %s)"
)
UNSENT_SQL = "SELECT id, stream, fields FROM outbox WHERE sent_at IS NULL ORDER BY id LIMIT %s"
MARK_SENT_SQL = """
UPDATE outbox SET sent_at = now(), stream_id = sent.stream_id
FROM unnest(%s::bigint[], %s::text[]) AS sent(id, stream_id)
WHERE outbox.id = sent.id
"""
FORGET_SENT_SQL = "DELETE FROM outbox WHERE sent_at < now() - %s * INTERVAL '1 hour'"

# Every event type that travels through the outbox, and its stream. Listed one by one (not
# by base class): AlarmCleared is a device's event too, yet goes with the alarms.
STREAM_OF: dict[type[Envelope], str] = {
    DeviceRegistered: DEVICE_EVENTS_STREAM,
    DeviceUpdated: DEVICE_EVENTS_STREAM,
    DeviceDecommissioned: DEVICE_EVENTS_STREAM,
    DeviceCredentialsRotated: DEVICE_EVENTS_STREAM,
    AlarmRaised: ALARM_EVENTS_STREAM,
    AlarmAcknowledged: ALARM_EVENTS_STREAM,
    AlarmCleared: ALARM_EVENTS_STREAM,
    AlarmRuleCreated: ALARM_RULE_EVENTS_STREAM,
    AlarmRuleUpdated: ALARM_RULE_EVENTS_STREAM,
    AlarmRuleDeleted: ALARM_RULE_EVENTS_STREAM,
    WebhookRegistered: WEBHOOK_EVENTS_STREAM,
    WebhookDeleted: WEBHOOK_EVENTS_STREAM,
    ApiKeyCreated: ACCESS_EVENTS_STREAM,
    ApiKeyRevoked: ACCESS_EVENTS_STREAM,
    DashboardAccountCreated: ACCESS_EVENTS_STREAM,
    DashboardAccountChanged: ACCESS_EVENTS_STREAM,
    AccessDenied: ACCESS_EVENTS_STREAM,
    DeviceProfileSaved: PROFILE_EVENTS_STREAM,
    DeviceProfileDeleted: PROFILE_EVENTS_STREAM,
    GatewayRegistered: PROFILE_EVENTS_STREAM,
    GatewayChanged: PROFILE_EVENTS_STREAM,
    GatewayDeleted: PROFILE_EVENTS_STREAM,
}


def stream_of(event: Envelope) -> str:
    """The stream ``event`` goes to; a type without one is a programming error, said loudly."""
    try:
        return STREAM_OF[type(event)]
    except KeyError:
        raise ValueError(f"{type(event).__name__} has no stream in the outbox") from None


def outbox_rows(events: Sequence[Envelope]) -> list[tuple[Any, ...]]:
    """The parameters of INSERT_EVENT_SQL for ``events``, each with its stream, in order."""
    rows = []
    for event in events:
        fields = to_fields(event)
        rows.append((event.event_id, stream_of(event), fields["type"], Jsonb(fields)))
    return rows


async def write_outbox(conn: psycopg.AsyncConnection[Any], events: Sequence[Envelope]) -> None:
    """Queue ``events`` for the relay, in order, each to its stream, in the caller's transaction."""
    async with conn.cursor() as cur:
        await cur.executemany(INSERT_EVENT_SQL, outbox_rows(events))


async def outbox_backlog(conn: psycopg.AsyncConnection[Any]) -> int:
    """How many committed events wait to be relayed."""
    async with conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute(OUTBOX_BACKLOG_SQL)
        row = await cur.fetchone()
    return int(row[0]) if row else 0
