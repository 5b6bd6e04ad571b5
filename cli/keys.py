"""`iotp keys`: make, list and revoke API keys straight on the write store, so that the first
key can be made before any API runs (and without a token)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, TypeVar
from uuid import UUID

import psycopg
import typer

from iotp.command_line import command, load_settings
from iotp.errors import ConfigurationError, ServiceUnavailable, first_line, redact_url
from iotp.permissions import Role

commands = typer.Typer(name="keys", help="API keys with roles, for both HTTP APIs.")
T = TypeVar("T")


def _on_write_store(work: Callable[[psycopg.AsyncConnection[object]], Awaitable[T]]) -> T:
    url = load_settings().database_url

    async def run() -> T:
        try:
            conn = await psycopg.AsyncConnection.connect(url, connect_timeout=5)
        except psycopg.OperationalError as exc:
            raise ServiceUnavailable(
                "PostgreSQL", "IOTP_DATABASE_URL", redact_url(url), first_line(exc)
            ) from exc
        async with conn:
            return await work(conn)

    return asyncio.run(run())


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
    from iotp import api_keys

    try:
        expiry = _aware(expires_at) if expires_at else None
    except ValueError as exc:
        raise ConfigurationError(f"--expires-at: {exc}") from None
    if expiry is not None and expiry <= datetime.now(UTC):
        raise ConfigurationError("--expires-at must be in the future")
    if not name.strip():
        raise ConfigurationError("--name must not be blank")
    issued = _on_write_store(lambda conn: api_keys.create_key(conn, name, role, expiry))
    key = issued.api_key
    typer.echo(f"key_id: {key.key_id}", err=True)
    typer.echo(f"role: {key.role}, expires: {key.expires_at or 'never'}", err=True)
    typer.echo("the key below is shown only now; store it safely", err=True)
    typer.echo(issued.key)


@command(commands, name="list")
def list_keys() -> None:
    """Every key (never the key itself): id, role, name, created, expires, revoked."""
    from iotp import api_keys

    for key in _on_write_store(api_keys.list_keys):
        state = "revoked" if key.revoked_at else "expired" if api_keys.expired(key) else "active"
        expires = key.expires_at.isoformat() if key.expires_at else "-"
        typer.echo(
            f"{key.key_id}  {key.role:<11}  {state:<7}  {key.created_at.isoformat()}"
            f"  expires {expires}  {key.name}"
        )


@command(commands)
def revoke(key_id: Annotated[UUID, typer.Argument(help="The key_id to revoke.")]) -> None:
    """Revoke a key: both APIs refuse it within two seconds."""
    from iotp import api_keys

    try:
        key = _on_write_store(lambda conn: api_keys.revoke_key(conn, key_id))
    except api_keys.ApiKeyNotFound as exc:
        raise ConfigurationError(str(exc)) from None
    typer.echo(f"revoked {key.key_id} ({key.name}) at {key.revoked_at}")
