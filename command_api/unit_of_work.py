"""Units of work: one transaction for the rows a command changes, its events (outbox) and
idempotency; every repository works on the unit of work's one connection."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any, Protocol, Self
from uuid import UUID

import psycopg
from psycopg import errors
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from command_api.alarm_repositories import (
    AlarmRepository,
    AlarmRuleRepository,
    PostgresAlarmRepository,
    PostgresAlarmRuleRepository,
)
from command_api.domain import Device, DeviceAlreadyExists
from command_api.outbox import write_outbox
from command_api.profile_repository import (
    GatewayRepository,
    PostgresGatewayRepository,
    PostgresProfileRepository,
    ProfileRepository,
)
from command_api.webhook_repository import PostgresWebhookRepository, WebhookRepository
from iotp import api_keys, dashboard_accounts
from iotp.api_keys import ApiKey, IssuedKey
from iotp.dashboard_accounts import Account
from iotp.db import device_columns
from iotp.events import Actor, Envelope, Issued
from iotp.model import Location, MetricSpec, Role


@dataclass(frozen=True)
class IdempotencyRecord:
    fingerprint: str
    device_id: str
    secret_seed: bytes
    response: dict[str, Any]


class DeviceRepository(Protocol):
    @property
    def seen(self) -> dict[str, Device]:
        """Devices loaded or added in this unit of work, whose events commit collects."""
        ...

    async def add(self, device: Device) -> None: ...
    async def get(self, device_id: str) -> Device | None: ...
    async def save(self, device: Device) -> None: ...


class IdempotencyStore(Protocol):
    async def claim(
        self, key: str, fingerprint: str, device_id: str, seed: bytes
    ) -> IdempotencyRecord | None:
        """Reserve ``key``; return the earlier record instead when the key was used before."""
        ...

    async def complete(self, key: str, response: dict[str, Any]) -> None: ...


class ApiKeyRepository(Protocol):
    async def create(self, name: str, role: Role, expires_at: datetime | None) -> IssuedKey: ...
    async def revoke(self, key_id: UUID) -> tuple[ApiKey, bool]: ...


class PostgresApiKeyRepository:
    """iotp.api_keys on the unit of work's connection."""

    def __init__(self, conn: Conn) -> None:
        self.conn = conn

    async def create(self, name: str, role: Role, expires_at: datetime | None) -> IssuedKey:
        return await api_keys.create_key(self.conn, name, role, expires_at)

    async def revoke(self, key_id: UUID) -> tuple[ApiKey, bool]:
        return await api_keys.revoke_key(self.conn, key_id)


class DashboardAccountRepository(Protocol):
    async def create(self, username: str, role: Role, password: str) -> Account: ...
    async def change(
        self,
        username: str,
        *,
        role: Role | None = None,
        disabled: bool | None = None,
        password: str | None = None,
    ) -> tuple[Account, tuple[str, ...]]: ...


class PostgresDashboardAccountRepository:
    """iotp.dashboard_accounts on the unit of work's connection."""

    def __init__(self, conn: Conn) -> None:
        self.conn = conn

    async def create(self, username: str, role: Role, password: str) -> Account:
        return await dashboard_accounts.create_account(self.conn, username, role, password)

    async def change(
        self,
        username: str,
        *,
        role: Role | None = None,
        disabled: bool | None = None,
        password: str | None = None,
    ) -> tuple[Account, tuple[str, ...]]:
        return await dashboard_accounts.change_account(
            self.conn, username, role=role, disabled=disabled, password=password
        )


class UnitOfWork(Protocol):
    @property
    def devices(self) -> DeviceRepository: ...
    @property
    def idempotency(self) -> IdempotencyStore: ...
    @property
    def alarm_rules(self) -> AlarmRuleRepository: ...
    @property
    def alarms(self) -> AlarmRepository: ...
    @property
    def webhooks(self) -> WebhookRepository: ...
    @property
    def api_keys(self) -> ApiKeyRepository: ...
    @property
    def dashboard_accounts(self) -> DashboardAccountRepository: ...
    @property
    def profiles(self) -> ProfileRepository: ...
    @property
    def gateways(self) -> GatewayRepository: ...

    def emit(self, *events: Envelope) -> None:
        """Queue events of no aggregate; commit writes them to the outbox after the devices'."""
        ...

    async def __aenter__(self) -> Self: ...
    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None: ...
    async def commit(self) -> None: ...


Conn = psycopg.AsyncConnection[dict[str, Any]]

_DEVICE_COLUMNS = (
    "device_id, name, kind, lat, lon, metadata, metrics, status, credential_hash, profile"
)
_INSERT_DEVICE = (
    "INSERT INTO devices (device_id, name, kind, lat, lon, metadata, metrics, status,"
    " credential_hash, profile, created_at, updated_at) VALUES (%(device_id)s, %(name)s,"
    " %(kind)s, %(lat)s, %(lon)s, %(metadata)s, %(metrics)s, %(status)s, %(credential_hash)s,"
    " %(profile)s, %(at)s, %(at)s)"
)


def _device_from_row(row: dict[str, Any]) -> Device:
    location = None if row["lat"] is None else Location(lat=row["lat"], lon=row["lon"])
    return Device(
        device_id=row["device_id"],
        name=row["name"],
        kind=row["kind"],
        credential_hash=row["credential_hash"],
        location=location,
        metadata=row["metadata"],
        metrics=tuple(MetricSpec.model_validate(m) for m in row["metrics"]),
        profile=row["profile"],
        status=row["status"],
    )


def _device_params(device: Device) -> dict[str, Any]:
    # Times are the events' own, so that read models rebuilt from this table match the ones
    # built from the events to the microsecond.
    at = device.events[-1].occurred_at if device.events else None
    return {
        "at": at,
        "device_id": device.device_id,
        **device_columns(device),
        "status": device.status,
        "credential_hash": device.credential_hash,
        "profile": device.profile,
    }


class PostgresDeviceRepository:
    def __init__(self, conn: Conn) -> None:
        self.conn = conn
        self.seen: dict[str, Device] = {}

    async def add(self, device: Device) -> None:
        # A savepoint: a concurrent registration of the same id is an answer, not a crash.
        try:
            async with self.conn.transaction():
                await self.conn.execute(_INSERT_DEVICE, _device_params(device))
        except errors.UniqueViolation:
            raise DeviceAlreadyExists(device.device_id) from None
        self.seen[device.device_id] = device

    async def get(self, device_id: str) -> Device | None:
        # FOR UPDATE serialises commands on one device, which also keeps its events in order.
        cur = await self.conn.execute(
            f"SELECT {_DEVICE_COLUMNS} FROM devices WHERE device_id = %s FOR UPDATE",  # noqa: S608
            (device_id,),
        )
        row = await cur.fetchone()
        if row is None:
            return None
        device = _device_from_row(row)
        self.seen[device_id] = device
        return device

    async def save(self, device: Device) -> None:
        await self.conn.execute(
            """
            UPDATE devices SET name = %(name)s, kind = %(kind)s, lat = %(lat)s, lon = %(lon)s,
                metadata = %(metadata)s, metrics = %(metrics)s, status = %(status)s,
                credential_hash = %(credential_hash)s, profile = %(profile)s,
                updated_at = coalesce(%(at)s, now()),
                decommissioned_at = CASE WHEN %(status)s = 'decommissioned'
                                         THEN coalesce(decommissioned_at, %(at)s, now()) END
            WHERE device_id = %(device_id)s
            """,
            _device_params(device),
        )
        self.seen[device.device_id] = device


class PostgresIdempotencyStore:
    def __init__(self, conn: Conn, ttl_hours: int) -> None:
        self.conn = conn
        self.ttl_hours = ttl_hours

    async def claim(
        self, key: str, fingerprint: str, device_id: str, seed: bytes
    ) -> IdempotencyRecord | None:
        await self.conn.execute(
            "DELETE FROM idempotency_keys WHERE key = %s"
            " AND created_at < now() - %s * INTERVAL '1 hour'",
            (key, self.ttl_hours),
        )
        # A concurrent request with the same key waits here until the first one commits.
        cur = await self.conn.execute(
            "INSERT INTO idempotency_keys (key, fingerprint, device_id, secret_seed, response)"
            " VALUES (%s, %s, %s, %s, '{}') ON CONFLICT (key) DO NOTHING RETURNING key",
            (key, fingerprint, device_id, seed),
        )
        if await cur.fetchone() is not None:
            return None
        cur = await self.conn.execute(
            "SELECT fingerprint, device_id, secret_seed, response FROM idempotency_keys"
            " WHERE key = %s",
            (key,),
        )
        row = await cur.fetchone()
        assert row is not None, "a conflicting key row is committed before ON CONFLICT returns"
        return IdempotencyRecord(
            row["fingerprint"], row["device_id"], bytes(row["secret_seed"]), row["response"]
        )

    async def complete(self, key: str, response: dict[str, Any]) -> None:
        await self.conn.execute(
            "UPDATE idempotency_keys SET response = %s WHERE key = %s", (Jsonb(response), key)
        )


class PostgresUnitOfWork:
    """One pooled connection and one transaction; events go to the outbox at commit, each
    event a command causes with the actor who issued it (``actor``)."""

    def __init__(
        self,
        pool: AsyncConnectionPool[Conn],
        idempotency_ttl_hours: int = 24,
        actor: Actor | None = None,
    ) -> None:
        self.pool = pool
        self.ttl_hours = idempotency_ttl_hours
        self.actor = actor
        self._conn: Conn | None = None
        self._emitted: list[Envelope] = []

    async def __aenter__(self) -> Self:
        self._conn = await self.pool.getconn()
        self._emitted = []
        self.devices = PostgresDeviceRepository(self._conn)
        self.idempotency = PostgresIdempotencyStore(self._conn, self.ttl_hours)
        self.alarm_rules = PostgresAlarmRuleRepository(self._conn)
        self.alarms = PostgresAlarmRepository(self._conn)
        self.webhooks = PostgresWebhookRepository(self._conn)
        self.api_keys = PostgresApiKeyRepository(self._conn)
        self.dashboard_accounts = PostgresDashboardAccountRepository(self._conn)
        self.profiles = PostgresProfileRepository(self._conn)
        self.gateways = PostgresGatewayRepository(self._conn)
        return self

    def emit(self, *events: Envelope) -> None:
        self._emitted.extend(events)

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            await conn.rollback()  # no-op after commit; undoes everything otherwise
        finally:
            await self.pool.putconn(conn)

    async def commit(self) -> None:
        assert self._conn is not None, "commit outside the unit of work"
        events: list[Envelope] = [e for device in self.devices.seen.values() for e in device.events]
        events += self._emitted
        if events:
            await write_outbox(self._conn, [self._issued(event) for event in events])
        await self._conn.commit()
        for device in self.devices.seen.values():
            device.events.clear()
        self._emitted.clear()

    def _issued(self, event: Envelope) -> Envelope:
        """``event`` with the actor of this unit of work, for every event a command causes."""
        if self.actor is None or not isinstance(event, Issued) or event.actor is not None:
            return event
        return event.model_copy(update={"actor": self.actor})
