"""Device profiles and gateways in the write store, in the unit of work's transaction.

A command that relies on a profile (a device or gateway naming it) reads it ``FOR SHARE``,
and one that changes or deletes it ``FOR UPDATE``: a profile cannot be deleted between the
check that it exists and the commit of a device that names it.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol

import psycopg
from psycopg import errors
from psycopg.types.json import Jsonb

from command_api.profiles import Gateway, GatewayAlreadyExists, ProfileAlreadyExists
from iotp.device_profiles import BUILTIN_PROFILE, DeviceProfile
from iotp.model import DEFAULT_PROFILE

Conn = psycopg.AsyncConnection[dict[str, Any]]
Lock = Literal["share", "update"]


class ProfileRepository(Protocol):
    async def get(self, name: str, lock: Lock = "share") -> DeviceProfile | None: ...
    async def add(self, profile: DeviceProfile) -> None: ...
    async def replace(self, profile: DeviceProfile) -> None: ...
    async def delete(self, name: str) -> None: ...
    async def users(self, name: str) -> tuple[int, int]:
        """How many devices (not decommissioned) and gateways name the profile."""
        ...


class GatewayRepository(Protocol):
    async def get(self, gateway_id: str) -> Gateway | None: ...
    async def add(self, gateway: Gateway) -> None: ...
    async def save(self, gateway: Gateway) -> None: ...
    async def delete(self, gateway_id: str) -> None: ...
    async def exists(self, gateway_id: str) -> bool:
        """Whether ``gateway_id`` is a gateway's broker user name (no device may take it)."""
        ...

    async def active_devices(self, device_ids: set[str]) -> set[str]: ...
    async def names_of_others(self, profile: str, gateway_id: str) -> set[str]:
        """The friendly names the other gateways of ``profile`` speak for."""
        ...


def profile_from_row(row: dict[str, Any]) -> DeviceProfile:
    return DeviceProfile.model_validate(row["profile"])


class PostgresProfileRepository:
    def __init__(self, conn: Conn) -> None:
        self.conn = conn

    async def get(self, name: str, lock: Lock = "share") -> DeviceProfile | None:
        if name == DEFAULT_PROFILE:
            return BUILTIN_PROFILE
        clause = "FOR SHARE" if lock == "share" else "FOR UPDATE"
        cur = await self.conn.execute(
            f"SELECT profile FROM device_profiles WHERE name = %s {clause}",  # noqa: S608
            (name,),
        )
        row = await cur.fetchone()
        return None if row is None else profile_from_row(row)

    async def add(self, profile: DeviceProfile) -> None:
        try:
            async with self.conn.transaction():
                await self.conn.execute(
                    "INSERT INTO device_profiles (name, profile) VALUES (%s, %s)",
                    (profile.name, Jsonb(profile.model_dump(mode="json"))),
                )
        except errors.UniqueViolation:
            raise ProfileAlreadyExists(profile.name) from None

    async def replace(self, profile: DeviceProfile) -> None:
        await self.conn.execute(
            "UPDATE device_profiles SET profile = %s, updated_at = now() WHERE name = %s",
            (Jsonb(profile.model_dump(mode="json")), profile.name),
        )

    async def delete(self, name: str) -> None:
        await self.conn.execute("DELETE FROM device_profiles WHERE name = %s", (name,))

    async def users(self, name: str) -> tuple[int, int]:
        cur = await self.conn.execute(
            "SELECT (SELECT count(*) FROM devices WHERE profile = %(name)s"
            "        AND status = 'active') AS devices,"
            " (SELECT count(*) FROM gateways WHERE profile = %(name)s) AS gateways",
            {"name": name},
        )
        row = await cur.fetchone()
        assert row is not None
        return int(row["devices"]), int(row["gateways"])


_GATEWAY_COLUMNS = "gateway_id, name, profile, devices, credential_hash"


def gateway_from_row(row: dict[str, Any]) -> Gateway:
    return Gateway(
        row["gateway_id"], row["name"], row["profile"], row["credential_hash"], row["devices"]
    )


class PostgresGatewayRepository:
    def __init__(self, conn: Conn) -> None:
        self.conn = conn

    async def get(self, gateway_id: str) -> Gateway | None:
        cur = await self.conn.execute(
            f"SELECT {_GATEWAY_COLUMNS} FROM gateways WHERE gateway_id = %s FOR UPDATE",  # noqa: S608
            (gateway_id,),
        )
        row = await cur.fetchone()
        return None if row is None else gateway_from_row(row)

    async def add(self, gateway: Gateway) -> None:
        # A gateway's id is its broker user name: no device may have it (devices are checked
        # the same way at registration).
        cur = await self.conn.execute(
            "SELECT 1 FROM devices WHERE device_id = %s", (gateway.gateway_id,)
        )
        if await cur.fetchone() is not None:
            raise GatewayAlreadyExists(gateway.gateway_id)
        try:
            async with self.conn.transaction():
                await self.conn.execute(
                    "INSERT INTO gateways (gateway_id, name, profile, devices, credential_hash)"
                    " VALUES (%s, %s, %s, %s, %s)",
                    (
                        gateway.gateway_id,
                        gateway.name,
                        gateway.profile,
                        Jsonb(gateway.devices),
                        gateway.credential_hash,
                    ),
                )
        except errors.UniqueViolation:
            raise GatewayAlreadyExists(gateway.gateway_id) from None

    async def save(self, gateway: Gateway) -> None:
        await self.conn.execute(
            "UPDATE gateways SET name = %s, profile = %s, devices = %s, credential_hash = %s,"
            " updated_at = now() WHERE gateway_id = %s",
            (
                gateway.name,
                gateway.profile,
                Jsonb(gateway.devices),
                gateway.credential_hash,
                gateway.gateway_id,
            ),
        )

    async def delete(self, gateway_id: str) -> None:
        await self.conn.execute("DELETE FROM gateways WHERE gateway_id = %s", (gateway_id,))

    async def exists(self, gateway_id: str) -> bool:
        cur = await self.conn.execute("SELECT 1 FROM gateways WHERE gateway_id = %s", (gateway_id,))
        return await cur.fetchone() is not None

    async def active_devices(self, device_ids: set[str]) -> set[str]:
        cur = await self.conn.execute(
            "SELECT device_id FROM devices WHERE device_id = ANY(%s) AND status = 'active'",
            (list(device_ids),),
        )
        return {row["device_id"] for row in await cur.fetchall()}

    async def names_of_others(self, profile: str, gateway_id: str) -> set[str]:
        cur = await self.conn.execute(
            "SELECT jsonb_object_keys(devices) AS name FROM gateways"
            " WHERE profile = %s AND gateway_id <> %s",
            (profile, gateway_id),
        )
        return {row["name"] for row in await cur.fetchall()}
