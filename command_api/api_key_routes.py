"""API key routes (admin only): make a key (shown once), list and read keys, revoke one.

Each change goes through a handler (command_api.api_key_handlers) and commits with its event;
the key itself is answered only by POST and never stored (iotp.api_keys keeps its SHA-256).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from fastapi import APIRouter, Response
from pydantic import BaseModel, Field

from command_api import api_key_handlers
from command_api.dependencies import PoolDep, UnitOfWorkDep
from iotp import api_keys
from iotp.commands import CreateApiKey, RevokeApiKey
from iotp.http_errors import error_responses
from iotp.permissions import Permission, Role, requires

api_key_router = APIRouter(
    prefix="/api-keys",
    tags=["api keys"],
    dependencies=[requires(Permission.API_KEYS_MANAGE)],
    responses=error_responses(401, 403, 422, 503),
)
_NO_SUCH_KEY: dict[int | str, dict[str, Any]] = {
    404: {**error_responses(404)[404], "description": "No such API key"}
}


class ApiKeyOut(BaseModel):
    key_id: UUID
    name: str
    role: Role
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None


class ApiKeyCreatedOut(ApiKeyOut):
    key: str = Field(description="Shown only in this answer; it cannot be read again.")


class ApiKeyList(BaseModel):
    keys: list[ApiKeyOut]


def _out(key: api_keys.ApiKey) -> ApiKeyOut:
    return ApiKeyOut(
        key_id=key.key_id,
        name=key.name,
        role=key.role,
        created_at=key.created_at,
        expires_at=key.expires_at,
        revoked_at=key.revoked_at,
    )


@api_key_router.post(
    "", status_code=201, response_model=ApiKeyCreatedOut, responses=error_responses(400, 413)
)
async def create_api_key(
    cmd: CreateApiKey, response: Response, uow: UnitOfWorkDep
) -> ApiKeyCreatedOut:
    """Make a key with a role; the key is in this answer only."""
    issued = await api_key_handlers.create_api_key(cmd, uow)
    response.headers["Location"] = f"/api-keys/{issued.api_key.key_id}"
    return ApiKeyCreatedOut(**_out(issued.api_key).model_dump(), key=issued.key)


@api_key_router.get("", response_model=ApiKeyList)
async def list_api_keys(pool: PoolDep) -> ApiKeyList:
    """Every key, revoked and expired ones too, oldest first; never the keys themselves."""
    async with pool.connection() as conn:
        return ApiKeyList(keys=[_out(key) for key in await api_keys.list_keys(conn)])


@api_key_router.get("/{key_id}", response_model=ApiKeyOut, responses=_NO_SUCH_KEY)
async def get_api_key(key_id: UUID, pool: PoolDep) -> ApiKeyOut:
    async with pool.connection() as conn:
        return _out(await api_keys.get_key(conn, key_id))


@api_key_router.delete("/{key_id}", response_model=ApiKeyOut, responses=_NO_SUCH_KEY)
async def revoke_api_key(key_id: UUID, uow: UnitOfWorkDep) -> ApiKeyOut:
    """Revoke a key: both APIs refuse it within two seconds."""
    return _out(await api_key_handlers.revoke_api_key(RevokeApiKey(key_id=key_id), uow))
