"""What the command API's routes are given: the unit of work, the pool, the pepper, and the
bearer scheme every protected router declares."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPBearer
from psycopg_pool import AsyncConnectionPool

from command_api.unit_of_work import Conn, PostgresUnitOfWork

# The token is enforced by BearerTokenMiddleware before the body is read; this only
# declares the scheme so that /docs offers the Authorize button.
documented_bearer = HTTPBearer(auto_error=False, description="IOTP_API_TOKEN")


def _uow(request: Request) -> PostgresUnitOfWork:
    state = request.app.state
    return PostgresUnitOfWork(state.pool, state.settings.idempotency_ttl_hours)


def _pool(request: Request) -> AsyncConnectionPool[Conn]:
    pool: AsyncConnectionPool[Conn] = request.app.state.pool
    return pool


def _pepper(request: Request) -> bytes:
    return bytes(request.app.state.pepper)


UnitOfWorkDep = Annotated[PostgresUnitOfWork, Depends(_uow)]
PoolDep = Annotated[AsyncConnectionPool[Conn], Depends(_pool)]
PepperDep = Annotated[bytes, Depends(_pepper)]
