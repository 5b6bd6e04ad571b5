"""The dashboard's access to its accounts (iotp.dashboard_accounts), which live in the write
store: a small pool of its own, used for logins and account checks only (every page reads
the read store).

An answer about an account is kept at most IOTP_DASHBOARD_ACCOUNT_CHECK_SECONDS, so that a
disabled account or a changed role reaches every session within that time, while a page
that reruns every few seconds does not query the write store each time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import psycopg
import streamlit as st
from psycopg_pool import ConnectionPool, PoolTimeout

from dashboard.data import settings
from iotp import dashboard_accounts
from iotp.dashboard_accounts import Account
from iotp.db import DATABASE_SETTING
from iotp.errors import first_line, redact_url
from read_models import queries

T = TypeVar("T")
_EXIST = "\x00exist"  # the cache's key for "are there accounts": no user name has a NUL
MAX_KEPT_ANSWERS = 10_000


class AccountsUnavailable(RuntimeError):
    """The write store does not answer: no login can be checked, so none is let in."""


class AccountAnswers:
    """Answers of the write store, each kept at most ``ttl`` seconds (sessions share it)."""

    def __init__(self, ttl: float) -> None:
        self._ttl = ttl
        self._lock = threading.Lock()
        self._answers: dict[str, tuple[float, object]] = {}

    def get(self, key: str, look_up: Callable[[], T]) -> T:
        now = time.monotonic()
        with self._lock:
            kept = self._answers.get(key)
        if kept is not None and now - kept[0] < self._ttl:
            return kept[1]  # type: ignore[return-value]  # stored by this same key's look_up
        answer = look_up()
        with self._lock:
            if len(self._answers) >= MAX_KEPT_ANSWERS:
                self._answers.clear()
            self._answers[key] = (now, answer)
        return answer

    def forget(self, key: str) -> None:
        with self._lock:
            self._answers.pop(key, None)


def _close(pool: ConnectionPool[queries.Conn]) -> None:
    pool.close()


# The read pool's builder: a small synchronous pool that opens in the background, so that
# the dashboard starts while PostgreSQL is down. Closed when released (a cleared cache).
@st.cache_resource(on_release=_close)
def _pool(url: str) -> ConnectionPool[queries.Conn]:
    return queries.open_read_pool(
        url, name="iotp-dashboard-accounts", max_size=2, connect_timeout=3
    )


@st.cache_resource
def _answers(url: str, ttl: float) -> AccountAnswers:
    return AccountAnswers(ttl)


def _kept() -> AccountAnswers:
    config = settings()
    return _answers(config.database_url, config.dashboard_account_check_seconds)


@contextmanager
def _connection() -> Iterator[queries.Conn]:
    url = settings().database_url
    try:
        with _pool(url).connection(timeout=5) as conn:
            yield conn
    except (psycopg.OperationalError, PoolTimeout) as exc:
        raise AccountsUnavailable(
            f"The write store does not answer at {redact_url(url)} ({DATABASE_SETTING}), where"
            f" the dashboard's accounts are: {first_line(exc)}."
        ) from exc


def accounts_in_use() -> bool:
    """Whether any dashboard account was ever made (kept a while, like every answer here)."""

    def look_up() -> bool:
        try:
            with _connection() as conn:
                return dashboard_accounts.accounts_exist(conn)
        except psycopg.errors.UndefinedTable:  # `iotp migrate` not run yet: no account exists
            return False

    return _kept().get(_EXIST, look_up)


def account(username: str) -> Account | None:
    """The account ``username`` in whatever state (kept a while), or None."""

    def look_up() -> Account | None:
        with _connection() as conn:
            return dashboard_accounts.find_account(conn, username)

    return _kept().get(username, look_up)


def log_in(username: str, password: str) -> Account | None:
    """The enabled account when ``password`` is its password, else None (never kept)."""
    with _connection() as conn:
        found = dashboard_accounts.verify_login(conn, username, password)
    _kept().forget(username)  # the session starts from what the store says now
    return found
