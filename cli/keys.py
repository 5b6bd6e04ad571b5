"""`iotp keys`: make, list and revoke API keys straight on the write store, so that the first
key can be made before any API runs (and without a token)."""

from __future__ import annotations

import asyncio
import getpass
import os
import socket
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, TypeVar
from uuid import UUID

import typer
from pydantic import ValidationError

from iotp.command_line import command, load_settings
from iotp.commands import CreateApiKey, RevokeApiKey
from iotp.errors import ConfigurationError
from iotp.events import Actor
from iotp.model import Role

if TYPE_CHECKING:
    from command_api.unit_of_work import PostgresUnitOfWork

commands = typer.Typer(name="keys", help="API keys with roles, for both HTTP APIs.")
T = TypeVar("T")


def on_write_store(work: Callable[[PostgresUnitOfWork], Awaitable[T]]) -> T:
    """Run ``work`` on a unit of work whose events name the operator at this terminal."""
    from command_api.unit_of_work import PostgresUnitOfWork
    from iotp.db import open_pool

    url = load_settings().database_url

    async def run() -> T:
        pool = await open_pool(url, max_size=1)
        try:
            return await work(PostgresUnitOfWork(pool, actor=command_line_actor()))
        finally:
            await pool.close()

    return asyncio.run(run())


def command_line_actor() -> Actor:
    """The operator at this terminal: the OS user and the host (there is no login here)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a bare container)
        user = f"uid {os.getuid()}"
    return Actor(kind="command-line", name=f"{user}@{socket.gethostname()}"[:200])


def _aware(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


@command(commands)
def create(
    name: Annotated[str, typer.Option(help="Who or what holds the key.")],
    role: Annotated[Role, typer.Option(help="admin, operator, provisioner or viewer.")],
    expires_at: Annotated[
        str | None, typer.Option(help="ISO 8601 time (UTC if no offset) it stops working.")
    ] = None,
) -> None:
    """Make a key and print it: it is shown this once, only its hash is stored."""
    from command_api import api_key_handlers

    try:
        expiry = _aware(expires_at) if expires_at else None
    except ValueError as exc:
        raise ConfigurationError(f"--expires-at: {exc}") from None
    if expiry is not None and expiry <= datetime.now(UTC):
        raise ConfigurationError("--expires-at must be in the future")
    if not name.strip():
        raise ConfigurationError("--name must not be blank")
    try:
        cmd = CreateApiKey(name=name, role=role, expires_at=expiry)
    except ValidationError as exc:
        raise ConfigurationError(f"--name: {exc.errors()[0]['msg']}") from None
    issued = on_write_store(lambda uow: api_key_handlers.create_api_key(cmd, uow))
    key = issued.api_key
    typer.echo(f"key_id: {key.key_id}", err=True)
    typer.echo(f"role: {key.role}, expires: {key.expires_at or 'never'}", err=True)
    typer.echo("the key below is shown only now; store it safely", err=True)
    typer.echo(issued.key)


@command(commands, name="list")
def list_keys() -> None:
    """Every key (never the key itself): id, role, name, created, expires, revoked."""
    from iotp import api_keys

    async def every_key(uow: PostgresUnitOfWork) -> list[api_keys.ApiKey]:
        async with uow.pool.connection() as conn:
            return await api_keys.list_keys(conn)

    for key in on_write_store(every_key):
        state = "revoked" if key.revoked_at else "expired" if api_keys.expired(key) else "active"
        expires = key.expires_at.isoformat() if key.expires_at else "-"
        typer.echo(
            f"{key.key_id}  {key.role:<11}  {state:<7}  {key.created_at.isoformat()}"
            f"  expires {expires}  {key.name}"
        )


@command(commands)
def revoke(key_id: Annotated[UUID, typer.Argument(help="The key_id to revoke.")]) -> None:
    """Revoke a key: both APIs refuse it within two seconds."""
    from command_api import api_key_handlers
    from iotp import api_keys

    try:
        key = on_write_store(
            lambda uow: api_key_handlers.revoke_api_key(RevokeApiKey(key_id=key_id), uow)
        )
    except api_keys.ApiKeyNotFound as exc:
        raise ConfigurationError(str(exc)) from None
    typer.echo(f"revoked {key.key_id} ({key.name}) at {key.revoked_at}")
