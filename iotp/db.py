"""PostgreSQL connections and pools for the write store."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from iotp.errors import ServiceUnavailable, first_line, redact_url
from iotp.model import Location, MetricSpec

DATABASE_SETTING = "IOTP_DATABASE_URL"


def connect(url: str, *, setting: str = DATABASE_SETTING, **kwargs: Any) -> psycopg.Connection[Any]:
    """A synchronous connection, or :class:`ServiceUnavailable` naming the setting."""
    try:
        return psycopg.connect(url, connect_timeout=5, **kwargs)
    except psycopg.OperationalError as exc:
        raise ServiceUnavailable("PostgreSQL", setting, redact_url(url), first_line(exc)) from exc


class ReconnectingConnection:
    """The one connection of a service loop: made on first use, and again once it closed.

    The loops' retry policy (iotp.retry) closes it on a transient error, so the next call
    after the back-off connects anew instead of reusing a broken session.
    """

    def __init__(self, connect: Callable[[], psycopg.Connection[Any]]) -> None:
        self._connect = connect
        self._conn: psycopg.Connection[Any] | None = None

    @property
    def closed(self) -> bool:
        """Whether the next call opens a new session (what the old one held is gone)."""
        return self._conn is None or self._conn.closed

    def __call__(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = self._connect()
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


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


class DescribedDevice(Protocol):
    """What describes a device: the command side's aggregate and its events both have it."""

    @property
    def name(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def location(self) -> Location | None: ...
    @property
    def metadata(self) -> Mapping[str, Any]: ...
    @property
    def metrics(self) -> tuple[MetricSpec, ...]: ...


def device_columns(device: DescribedDevice) -> dict[str, Any]:
    """A device's attributes as the column values of the devices tables (write and read
    stores alike, so that a read model rebuilt from the write store matches the events)."""
    return {
        "name": device.name,
        "kind": device.kind,
        "lat": device.location.lat if device.location else None,
        "lon": device.location.lon if device.location else None,
        "metadata": Jsonb(dict(device.metadata)),
        "metrics": Jsonb([m.model_dump(exclude_none=True) for m in device.metrics]),
    }
