"""Dashboard accounts in the write store: made, changed, listed, and checked at login.

A password is kept only as an argon2id hash (argon2-cffi's encoded form, its parameters
inside). A login verifies in constant time, and an unknown user name costs the same one
verification, so the time of an answer does not tell which accounts exist. A disabled
account is kept (its name stays in the audit trail) and refused at once by every lookup
here; the dashboard re-checks a session's account (dashboard.login) and the command API the
account of each request sent for a person (the :data:`DASHBOARD_USER_HEADER`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from iotp.commands import DASHBOARD_USERNAME_PATTERN
from iotp.events import Actor
from iotp.permissions import Principal, Role

logger = logging.getLogger(__name__)

# The header with which the dashboard names the person a command is sent for.
DASHBOARD_USER_HEADER = "X-Iotp-Dashboard-User"

AsyncConn = psycopg.AsyncConnection[Any]
SyncConn = psycopg.Connection[Any]

# argon2-cffi's defaults: argon2id with RFC 9106's low-memory profile. Creating it does no
# work; a change of these parameters is picked up by each account's next login (rehash).
_HASHER = PasswordHasher()
_USERNAME = re.compile(DASHBOARD_USERNAME_PATTERN)
_SELECT_ACCOUNT = (
    "SELECT username, role, created_at, updated_at, disabled_at FROM dashboard_accounts"
    " WHERE username = %s"
)
_SELECT_ACCOUNT_FOR_UPDATE = (
    "SELECT username, role, created_at, updated_at, disabled_at FROM dashboard_accounts"
    " WHERE username = %s FOR UPDATE"
)


class DashboardAccountNotFound(LookupError):
    def __init__(self, username: str) -> None:
        super().__init__(f"no dashboard account {username!r}")


class DashboardAccountExists(ValueError):
    def __init__(self, username: str) -> None:
        super().__init__(f"the dashboard account {username!r} exists already")


@dataclass(frozen=True)
class Account:
    """What is known of an account, never its password or hash."""

    username: str
    role: Role
    created_at: datetime
    updated_at: datetime
    disabled_at: datetime | None

    @property
    def disabled(self) -> bool:
        return self.disabled_at is not None


def is_username(text: str) -> bool:
    """Whether ``text`` can be an account's user name (a lookup of anything else finds none)."""
    return _USERNAME.fullmatch(text) is not None


def hash_password(password: str) -> str:
    """The argon2id hash of ``password``, with a random salt (tens of milliseconds)."""
    return _HASHER.hash(password)


def password_matches(stored: str, password: str) -> bool:
    """Whether ``password`` is the one ``stored`` was made from (constant time)."""
    try:
        return _HASHER.verify(stored, password)
    except VerifyMismatchError:
        return False
    except (VerificationError, InvalidHashError) as exc:
        logger.warning("a dashboard account's password hash cannot be verified: %s", exc)
        return False


@functools.cache
def _unknown_user_hash() -> str:
    # Verified against for a user name that has no account, so that such a login takes as
    # long as a wrong password does. Made once per process, on the first such login.
    return hash_password("no account has this password")


def _account(row: Any) -> Account:
    values = list(row.values() if isinstance(row, dict) else row)
    username, role, created_at, updated_at, disabled_at = values[:5]
    return Account(username, Role(role), created_at, updated_at, disabled_at)


def principal_of(account: Account) -> Principal:
    """The principal whose commands are the person's: the account's role and name."""
    return Principal(
        account.role, Actor(kind="dashboard-user", id=account.username, name=account.username)
    )


async def create_account(conn: AsyncConn, username: str, role: Role, password: str) -> Account:
    """Store a new account; :class:`DashboardAccountExists` when the name is taken."""
    hashed = await asyncio.to_thread(hash_password, password)  # keeps the event loop free
    # No savepoint: ON CONFLICT makes a taken name an empty answer, and a concurrent insert
    # of the same name waits for the first one's transaction.
    cursor = await conn.execute(
        "INSERT INTO dashboard_accounts (username, role, password_hash) VALUES (%s, %s, %s)"
        " ON CONFLICT (username) DO NOTHING RETURNING username, role, created_at, updated_at,"
        " disabled_at",
        (username, role.value, hashed),
    )
    row = await cursor.fetchone()
    if row is None:
        raise DashboardAccountExists(username)
    return _account(row)


async def change_account(
    conn: AsyncConn,
    username: str,
    *,
    role: Role | None = None,
    disabled: bool | None = None,
    password: str | None = None,
) -> tuple[Account, tuple[str, ...]]:
    """Change what is given; answers the account and what changed ("role", "disabled",
    "password"): setting what is already so changes nothing, a new password always does."""
    current = await get_account(conn, username, lock=True)
    changed = tuple(
        name
        for name, differs in (
            ("role", role is not None and role != current.role),
            ("disabled", disabled is not None and disabled != current.disabled),
            ("password", password is not None),
        )
        if differs
    )
    if not changed:
        return current, ()
    hashed = None if password is None else await asyncio.to_thread(hash_password, password)
    cursor = await conn.execute(
        "UPDATE dashboard_accounts SET role = %s,"
        " disabled_at = CASE WHEN %s THEN coalesce(disabled_at, now()) END,"
        " password_hash = coalesce(%s::text, password_hash), updated_at = now()"
        " WHERE username = %s RETURNING username, role, created_at, updated_at, disabled_at",
        (
            (role or current.role).value,
            current.disabled if disabled is None else disabled,
            hashed,
            username,
        ),
    )
    return _account(await cursor.fetchone()), changed


async def get_account(conn: AsyncConn, username: str, *, lock: bool = False) -> Account:
    """The account ``username``; ``lock`` holds its row until the transaction ends."""
    cursor = await conn.execute(
        _SELECT_ACCOUNT_FOR_UPDATE if lock else _SELECT_ACCOUNT,
        (username,),
    )
    row = await cursor.fetchone()
    if row is None:
        raise DashboardAccountNotFound(username)
    return _account(row)


async def list_accounts(conn: AsyncConn) -> list[Account]:
    cursor = await conn.execute(
        "SELECT username, role, created_at, updated_at, disabled_at FROM dashboard_accounts"
        " ORDER BY username"
    )
    return [_account(row) for row in await cursor.fetchall()]


async def account_principal(conn: psycopg.AsyncConnection[Any], username: str) -> Principal | None:
    """The principal of the enabled account ``username``, or None (unknown or disabled)."""
    if not is_username(username):  # a header's text: never sent to PostgreSQL (NUL ...)
        return None
    cursor = await conn.execute(
        "SELECT username, role, created_at, updated_at, disabled_at FROM dashboard_accounts"
        " WHERE username = %s AND disabled_at IS NULL",
        (username,),
    )
    row = await cursor.fetchone()
    return None if row is None else principal_of(_account(row))


# The dashboard's side: synchronous, on its own small pool over the write store.


def verify_login(conn: SyncConn, username: str, password: str) -> Account | None:
    """The enabled account ``username`` when ``password`` is its password, else None.

    A hash made with older parameters is redone on ``conn``; its transaction is the
    caller's to commit (a pooled connection's block commits it).
    """
    if not is_username(username):
        password_matches(_unknown_user_hash(), password)
        return None
    row = conn.execute(
        "SELECT username, role, created_at, updated_at, disabled_at, password_hash"
        " FROM dashboard_accounts WHERE username = %s",
        (username,),
    ).fetchone()
    if row is None:
        password_matches(_unknown_user_hash(), password)
        return None
    account = _account(row)
    stored = list(row.values() if isinstance(row, dict) else row)[5]
    # Verified even for a disabled account: the answer's time says nothing of its state.
    if not password_matches(stored, password) or account.disabled:
        return None
    if _HASHER.check_needs_rehash(stored):
        conn.execute(
            "UPDATE dashboard_accounts SET password_hash = %s"
            " WHERE username = %s AND password_hash = %s",
            (hash_password(password), username, stored),
        )
    return account


def find_account(conn: SyncConn, username: str) -> Account | None:
    """The account ``username`` in whatever state, or None."""
    if not is_username(username):
        return None
    row = conn.execute(_SELECT_ACCOUNT, (username,)).fetchone()
    return None if row is None else _account(row)


def accounts_exist(conn: SyncConn) -> bool:
    """Whether any account was ever made (a disabled one counts)."""
    row = conn.execute("SELECT EXISTS (SELECT FROM dashboard_accounts)").fetchone()
    return row is not None and list(row.values() if isinstance(row, dict) else row) == [True]
