"""PostgreSQL connections and pools for the write store."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from iotp.errors import ServiceUnavailable, first_line, redact_url

DATABASE_SETTING = "IOTP_DATABASE_URL"


def connect(url: str, *, setting: str = DATABASE_SETTING, **kwargs: Any) -> psycopg.Connection[Any]:
    """A synchronous connection, or :class:`ServiceUnavailable` naming the setting."""
    try:
        return psycopg.connect(url, connect_timeout=5, **kwargs)
    except psycopg.OperationalError as exc:
        raise ServiceUnavailable("PostgreSQL", setting, redact_url(url), first_line(exc)) from exc


async def open_pool(
    url: str, *, setting: str = DATABASE_SETTING, min_size: int = 1, max_size: int = 10
) -> AsyncConnectionPool[psycopg.AsyncConnection[dict[str, Any]]]:
    """An open async pool whose connections return rows as dicts; fails fast when unreachable."""
    pool: AsyncConnectionPool[psycopg.AsyncConnection[dict[str, Any]]] = AsyncConnectionPool(
        url,
        min_size=min_size,
        max_size=max_size,
        open=False,
        kwargs={"row_factory": dict_row, "connect_timeout": 5},
        connection_class=psycopg.AsyncConnection[dict[str, Any]],
        name="iotp-write",
    )
    try:
        await pool.open(wait=True, timeout=10)
    except Exception as exc:
        await pool.close()
        reason = first_line(exc)
        try:  # the pool's timeout hides why; one direct attempt says it
            conn = await psycopg.AsyncConnection.connect(url, connect_timeout=5)
            await conn.close()
        except psycopg.OperationalError as direct:
            reason = first_line(direct)
        raise ServiceUnavailable("PostgreSQL", setting, redact_url(url), reason) from exc
    return pool
