"""`iotp users`: dashboard accounts made and changed straight on the write store, through the
command API's own handlers, so that the first admin can log in before any API runs."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer
from pydantic import TypeAdapter, ValidationError

from cli.keys import on_write_store
from iotp.command_line import command
from iotp.commands import (
    DASHBOARD_PASSWORD_MAX_LENGTH,
    DASHBOARD_PASSWORD_MIN_LENGTH,
    ChangeDashboardAccount,
    CreateDashboardAccount,
    DashboardUsername,
)
from iotp.errors import ConfigurationError
from iotp.model import Role

if TYPE_CHECKING:
    from command_api.unit_of_work import PostgresUnitOfWork
    from iotp.dashboard_accounts import Account

commands = typer.Typer(name="users", help="Dashboard accounts with roles.")
C = TypeVar("C", CreateDashboardAccount, ChangeDashboardAccount)

Username = Annotated[str, typer.Argument(help="The account's user name.")]
PasswordStdin = Annotated[
    bool,
    typer.Option(
        "--password-stdin", help="Read the password from the first line of stdin (scripts)."
    ),
]


def _password(from_stdin: bool) -> str:
    """The new password: one line of stdin, or typed twice at a prompt that hides it."""
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    typed: str = typer.prompt(
        "Password (12 characters or more)", hide_input=True, confirmation_prompt=True
    )
    return typed


def _valid(build: type[C], **fields: object) -> C:
    try:
        return build.model_validate(fields)
    except ValidationError as exc:  # the message names the field; never the password typed
        issue = exc.errors()[0]
        where = ".".join(str(part) for part in issue["loc"]) or "the change"
        if where == "password":
            raise ConfigurationError(
                f"password: {DASHBOARD_PASSWORD_MIN_LENGTH} to {DASHBOARD_PASSWORD_MAX_LENGTH}"
                " characters"
            ) from None
        raise ConfigurationError(f"{where}: {issue['msg']}") from None


def _check_username(username: str) -> None:
    """Refuse a malformed user name before the password is asked for."""
    try:
        TypeAdapter(DashboardUsername).validate_python(username)
    except ValidationError as exc:
        raise ConfigurationError(f"username: {exc.errors()[0]['msg']}") from None


def _change(username: str, **fields: object) -> Account:
    from command_api import dashboard_account_handlers
    from iotp.dashboard_accounts import DashboardAccountNotFound

    cmd = _valid(ChangeDashboardAccount, username=username, **fields)
    try:
        return on_write_store(
            lambda uow: dashboard_account_handlers.change_dashboard_account(cmd, uow)
        )
    except DashboardAccountNotFound as exc:
        raise ConfigurationError(str(exc)) from None


def _line(account: Account) -> str:
    state = "disabled" if account.disabled else "enabled"
    return (
        f"{account.username}  {account.role:<11}  {state:<8}"
        f"  created {account.created_at.isoformat()}  updated {account.updated_at.isoformat()}"
    )


@command(commands)
def create(
    username: Annotated[str, typer.Option(help="Lower case: a-z, 0-9 and . _ @ + -.")],
    role: Annotated[Role, typer.Option(help="admin, operator, provisioner or viewer.")],
    password_stdin: PasswordStdin = False,
) -> None:
    """Make an account; its password is asked for (hidden), or read with --password-stdin."""
    from command_api import dashboard_account_handlers
    from iotp.dashboard_accounts import DashboardAccountExists

    _check_username(username)
    cmd = _valid(
        CreateDashboardAccount, username=username, role=role, password=_password(password_stdin)
    )
    try:
        account = on_write_store(
            lambda uow: dashboard_account_handlers.create_dashboard_account(cmd, uow)
        )
    except DashboardAccountExists as exc:
        raise ConfigurationError(str(exc)) from None
    typer.echo(f"created {account.username} ({account.role})")


@command(commands, name="list")
def list_accounts() -> None:
    """Every account (never a password): user name, role, state, created, updated."""
    from iotp import dashboard_accounts

    async def every_account(uow: PostgresUnitOfWork) -> list[Account]:
        async with uow.pool.connection() as conn:
            return await dashboard_accounts.list_accounts(conn)

    for account in on_write_store(every_account):
        typer.echo(_line(account))


@command(commands)
def disable(username: Username) -> None:
    """Disable an account: its dashboard session ends within a minute."""
    typer.echo(_line(_change(username, disabled=True)))


@command(commands)
def enable(username: Username) -> None:
    """Enable a disabled account again."""
    typer.echo(_line(_change(username, disabled=False)))


@command(commands, name="set-password")
def set_password(username: Username, password_stdin: PasswordStdin = False) -> None:
    """Give an account a new password (asked for hidden, or read with --password-stdin)."""
    _check_username(username)
    typer.echo(_line(_change(username, password=_password(password_stdin))))


@command(commands, name="set-role")
def set_role(
    username: Username,
    role: Annotated[Role, typer.Argument(help="admin, operator, provisioner or viewer.")],
) -> None:
    """Give an account another role: its dashboard session has it within a minute."""
    typer.echo(_line(_change(username, role=role)))
