"""The configuration the command side holds, read back: alarm rules, webhooks, device
profiles and gateways.

Plain queries of the write store, outside any unit of work. They stay on the command side
because the operator who just changed a rule or a webhook must read the change back at once,
because a webhook's URL and secret live only here (its events carry the URL's origin), and
because configuration is a handful of rows, not a read model built from events.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from psycopg_pool import AsyncConnectionPool

from command_api.alarm_repositories import RULE_COLUMNS, rule_from_row
from command_api.alarms import AlarmRule
from command_api.profile_repository import gateway_from_row, profile_from_row
from command_api.profiles import Gateway
from command_api.unit_of_work import Conn
from command_api.webhooks import Webhook
from iotp.device_profiles import BUILTIN_PROFILE, DeviceProfile

Pool = AsyncConnectionPool[Conn]

_WEBHOOK_COLUMNS = "webhook_id, name, url, severities, secret IS NOT NULL AS has_secret, created_at"


async def alarm_rules(pool: Pool) -> list[AlarmRule]:
    """Every configured rule, oldest first (the default range rules are implied, not stored)."""
    sql = f"SELECT {RULE_COLUMNS} FROM alarm_rules ORDER BY created_at, rule_id"  # noqa: S608
    rows = await _fetch(pool, sql)
    return [rule_from_row(row) for row in rows]


async def alarm_rule(pool: Pool, rule_id: UUID) -> AlarmRule | None:
    sql = f"SELECT {RULE_COLUMNS} FROM alarm_rules WHERE rule_id = %s"  # noqa: S608
    rows = await _fetch(pool, sql, rule_id)
    return rule_from_row(rows[0]) if rows else None


async def webhooks(pool: Pool) -> list[Webhook]:
    """Every webhook not deleted, oldest first."""
    rows = await _fetch(
        pool,
        f"SELECT {_WEBHOOK_COLUMNS} FROM webhooks WHERE deleted_at IS NULL"  # noqa: S608
        " ORDER BY created_at, webhook_id",
    )
    return [_webhook_from_row(row) for row in rows]


async def webhook(pool: Pool, webhook_id: UUID) -> Webhook | None:
    """The webhook, unless it is deleted."""
    rows = await _fetch(
        pool,
        f"SELECT {_WEBHOOK_COLUMNS} FROM webhooks"  # noqa: S608
        " WHERE webhook_id = %s AND deleted_at IS NULL",
        webhook_id,
    )
    return _webhook_from_row(rows[0]) if rows else None


async def _fetch(pool: Pool, sql: str, *params: Any) -> list[dict[str, Any]]:
    async with pool.connection() as conn:
        cur = await conn.execute(sql, params or None)
        return await cur.fetchall()


def _webhook_from_row(row: dict[str, Any]) -> Webhook:
    return Webhook(**{**row, "severities": tuple(row["severities"])})


async def device_profiles(pool: Pool) -> list[DeviceProfile]:
    """The built-in profile, then every stored one by name."""
    rows = await _fetch(pool, "SELECT profile FROM device_profiles ORDER BY name")
    return [BUILTIN_PROFILE, *(profile_from_row(row) for row in rows)]


async def device_profile(pool: Pool, name: str) -> DeviceProfile | None:
    if name == BUILTIN_PROFILE.name:
        return BUILTIN_PROFILE
    rows = await _fetch(pool, "SELECT profile FROM device_profiles WHERE name = %s", name)
    return profile_from_row(rows[0]) if rows else None


_GATEWAY_COLUMNS = "gateway_id, name, profile, devices, credential_hash"


async def gateways(pool: Pool) -> list[Gateway]:
    rows = await _fetch(
        pool,
        f"SELECT {_GATEWAY_COLUMNS} FROM gateways ORDER BY gateway_id",  # noqa: S608
    )
    return [gateway_from_row(row) for row in rows]


async def gateway(pool: Pool, gateway_id: str) -> Gateway | None:
    rows = await _fetch(
        pool,
        f"SELECT {_GATEWAY_COLUMNS} FROM gateways WHERE gateway_id = %s",  # noqa: S608
        gateway_id,
    )
    return gateway_from_row(rows[0]) if rows else None
