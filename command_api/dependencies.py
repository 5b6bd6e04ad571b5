"""What the command API's routes are given: the unit of work, the pool, the pepper, and the
bearer scheme."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from psycopg_pool import AsyncConnectionPool

from command_api.unit_of_work import Conn, PostgresUnitOfWork
from iotp.permissions import bearer_scheme, request_principal

# Keys are checked by AccessMiddleware before the body is read, against the permission each
# route declares (iotp.permissions.requires); this only declares the scheme for /docs.
documented_bearer = bearer_scheme


def _uow(request: Request) -> PostgresUnitOfWork:
    state = request.app.state
    actor = request_principal(request).actor
    return PostgresUnitOfWork(state.pool, state.settings.idempotency_ttl_hours, actor)


def _pool(request: Request) -> AsyncConnectionPool[Conn]:
    pool: AsyncConnectionPool[Conn] = request.app.state.pool
    return pool


def _pepper(request: Request) -> bytes:
    return bytes(request.app.state.pepper)


UnitOfWorkDep = Annotated[PostgresUnitOfWork, Depends(_uow)]
PoolDep = Annotated[AsyncConnectionPool[Conn], Depends(_pool)]
PepperDep = Annotated[bytes, Depends(_pepper)]
