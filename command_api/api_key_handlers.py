"""API key handlers: make a key (shown once) and revoke one, each with its event.

The key's row and its ApiKeyCreated or ApiKeyRevoked event (outbox, stream
``iotp:events:access``) commit together, so the audit trail names who made or revoked
every key. The command line (`iotp keys`) runs these same handlers.
"""

from __future__ import annotations

from datetime import UTC, datetime

from command_api.domain import InvalidField
from command_api.unit_of_work import UnitOfWork
from iotp.api_keys import ApiKey, IssuedKey
from iotp.commands import CreateApiKey, RevokeApiKey
from iotp.events import ApiKeyCreated, ApiKeyRevoked


async def create_api_key(cmd: CreateApiKey, uow: UnitOfWork) -> IssuedKey:
    if cmd.expires_at is not None and cmd.expires_at <= datetime.now(UTC):
        raise InvalidField("expires_at", "expires_at must be in the future")
    async with uow:
        issued = await uow.api_keys.create(cmd.name, cmd.role, cmd.expires_at)
        key = issued.api_key
        uow.emit(
            ApiKeyCreated(
                key_id=key.key_id,
                name=key.name,
                role=key.role.value,
                expires_at=key.expires_at,
                occurred_at=key.created_at,
            )
        )
        await uow.commit()
    return issued


async def revoke_api_key(cmd: RevokeApiKey, uow: UnitOfWork) -> ApiKey:
    """Revoke the key; revoking it again answers the first revocation and records nothing."""
    async with uow:
        key, revoked_now = await uow.api_keys.revoke(cmd.key_id)
        if revoked_now:
            assert key.revoked_at is not None
            uow.emit(ApiKeyRevoked(key_id=key.key_id, name=key.name, occurred_at=key.revoked_at))
            await uow.commit()
    return key
