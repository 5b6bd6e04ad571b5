"""API keys in the write store: made, listed, revoked, and looked up by both HTTP APIs.

A key is 256 random bits shown once; only its SHA-256 is stored (a random key needs no slow
hash). A revoked or expired key is refused by a lookup at most :data:`LOOKUP_TTL_SECONDS`
after the change: each API process caches a lookup that long, never longer.
"""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg

from iotp.events import Actor
from iotp.permissions import Principal, Role

KEY_PREFIX = "iotp_"
LOOKUP_TTL_SECONDS = 1.0
MAX_CACHED_LOOKUPS = 10_000

AsyncConn = psycopg.AsyncConnection[Any]


class ApiKeyNotFound(LookupError):
    def __init__(self, key_id: uuid.UUID) -> None:
        super().__init__(f"no API key {key_id}")


@dataclass(frozen=True)
class ApiKey:
    """What is known of a key, never the key itself."""

    key_id: uuid.UUID
    name: str
    role: Role
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None


@dataclass(frozen=True)
class IssuedKey:
    """A key just made: the only time the key is at hand."""

    api_key: ApiKey
    key: str


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_hash(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


def _api_key(row: Any) -> ApiKey:
    values = row.values() if isinstance(row, dict) else row
    key_id, name, role, created_at, expires_at, revoked_at = values
    return ApiKey(key_id, name, Role(role), created_at, expires_at, revoked_at)


async def create_key(
    conn: AsyncConn, name: str, role: Role, expires_at: datetime | None = None
) -> IssuedKey:
    """Store a new key for ``name`` with ``role``; answers it with the key, shown only here."""
    key = new_key()
    cursor = await conn.execute(
        "INSERT INTO api_keys (key_id, name, role, key_hash, expires_at)"
        " VALUES (%s, %s, %s, %s, %s)"
        " RETURNING key_id, name, role, created_at, expires_at, revoked_at",
        (uuid.uuid4(), name, role.value, key_hash(key), expires_at),
    )
    return IssuedKey(_api_key(await cursor.fetchone()), key)


async def list_keys(conn: AsyncConn) -> list[ApiKey]:
    cursor = await conn.execute(
        "SELECT key_id, name, role, created_at, expires_at, revoked_at"
        " FROM api_keys ORDER BY created_at, key_id"
    )
    return [_api_key(row) for row in await cursor.fetchall()]


async def get_key(conn: AsyncConn, key_id: uuid.UUID) -> ApiKey:
    cursor = await conn.execute(
        "SELECT key_id, name, role, created_at, expires_at, revoked_at"
        " FROM api_keys WHERE key_id = %s",
        (key_id,),
    )
    row = await cursor.fetchone()
    if row is None:
        raise ApiKeyNotFound(key_id)
    return _api_key(row)


async def revoke_key(conn: AsyncConn, key_id: uuid.UUID) -> tuple[ApiKey, bool]:
    """Revoke ``key_id``; answers the key and whether this call revoked it (again is
    harmless: the first revocation time stays)."""
    cursor = await conn.execute(
        "UPDATE api_keys SET revoked_at = now() WHERE key_id = %s AND revoked_at IS NULL"
        " RETURNING key_id, name, role, created_at, expires_at, revoked_at",
        (key_id,),
    )
    row = await cursor.fetchone()
    if row is None:
        return await get_key(conn, key_id), False
    return _api_key(row), True


async def principal_for(conn: AsyncConn, key: str) -> Principal | None:
    """The usable key ``key`` is, or None when unknown, revoked or expired."""
    digest = key_hash(key)
    cursor = await conn.execute(
        "SELECT key_id, name, role, key_hash FROM api_keys WHERE key_hash = %s"
        " AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())",
        (digest,),
    )
    row = await cursor.fetchone()
    if row is None:
        return None
    key_id, name, role, stored = row.values() if isinstance(row, dict) else row
    if not secrets.compare_digest(bytes(stored), digest):
        return None
    return Principal(Role(role), Actor(kind="api-key", id=str(key_id), name=name))


Lookup = Callable[[str], Awaitable[Principal | None]]


class CachedLookup:
    """``lookup``'s answers (found or not), each kept for at most ``ttl`` seconds: a change
    in the write store (a revoked key, a disabled account) takes effect within ``ttl``."""

    def __init__(self, lookup: Lookup, ttl: float = LOOKUP_TTL_SECONDS) -> None:
        self._lookup = lookup
        self._ttl = ttl
        self._cache: dict[bytes, tuple[float, Principal | None]] = {}

    async def get(self, cache_key: bytes, argument: str) -> Principal | None:
        now = time.monotonic()
        cached = self._cache.get(cache_key)
        if cached is not None and now - cached[0] < self._ttl:
            return cached[1]
        found = await self._lookup(argument)
        if len(self._cache) >= MAX_CACHED_LOOKUPS:
            self._cache.clear()
        self._cache[cache_key] = (now, found)
        return found


class KeyAuthenticator:
    """Who a bearer credential is: a bootstrap token, else a stored key looked up through
    ``lookup``, whose answers are cached (:class:`CachedLookup`) under the key's hash."""

    def __init__(
        self,
        bootstrap: dict[str, Principal],
        lookup: Lookup,
        ttl: float = LOOKUP_TTL_SECONDS,
    ) -> None:
        self._bootstrap = {key_hash(token): who for token, who in bootstrap.items()}
        self._stored = CachedLookup(lookup, ttl)

    async def principal(self, credential: str) -> Principal | None:
        digest = key_hash(credential)
        for known, who in self._bootstrap.items():
            if secrets.compare_digest(known, digest):
                return who
        if not credential.startswith(KEY_PREFIX):
            return None
        return await self._stored.get(digest, credential)


def expired(api_key: ApiKey, now: datetime | None = None) -> bool:
    moment = now or datetime.now(UTC)
    return api_key.expires_at is not None and api_key.expires_at <= moment
