"""The dashboard's access to the read side: one cached pool per server process, clear errors."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import pandas as pd
import psycopg
import redis
import streamlit as st
from psycopg_pool import ConnectionPool, PoolTimeout

from iotp.errors import redact_url
from iotp.settings import Settings, get_settings
from read_models import queries
from read_models.health import PipelineHealth, health_redis, pipeline_health

T = TypeVar("T")


def _close(resource: ConnectionPool[queries.Conn] | redis.Redis) -> None:
    resource.close()


# Closed when released (a cleared cache, another URL): a dropped pool would otherwise keep
# its connections, and its threads reconnecting to a server that may be gone.
@st.cache_resource(on_release=_close)
def _pool(url: str) -> ConnectionPool[queries.Conn]:
    return queries.open_read_pool(url, name="iotp-dashboard", max_size=4, connect_timeout=3)


@st.cache_resource(on_release=_close)
def _redis(url: str, cluster: bool) -> redis.Redis:
    return health_redis(url, cluster)


def settings() -> Settings:
    return get_settings()


def liveness_rule() -> queries.LivenessRule:
    return queries.LivenessRule.from_settings(settings())


def redis_client() -> redis.Redis:
    return _redis(settings().redis_url, settings().redis_cluster)


@contextmanager
def _connection() -> Iterator[queries.Conn]:
    with _pool(settings().reader_url()).connection(timeout=5) as conn:
        yield conn


# A read store that just failed is not asked again for this long: a page makes several
# reads, and each would otherwise wait out the pool's timeout (a page of 15 s, not 5).
UNANSWERED_SECONDS = 5.0
_unanswered: dict[str, tuple[float, str]] = {}  # reader URL: (until, why)


def read(query: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
    """Run a read-model query; on a dead backing service show one clear message, not a trace."""
    url = settings().reader_url()
    until, why = _unanswered.get(url, (0.0, ""))
    if time.monotonic() < until:
        _read_store_error(why)
        return None
    try:
        with _connection() as conn:
            return query(conn, *args, **kwargs)
    except (psycopg.OperationalError, psycopg.errors.UndefinedTable, PoolTimeout) as exc:
        why = str(exc).splitlines()[0] if str(exc) else repr(exc)
        _unanswered[url] = (time.monotonic() + UNANSWERED_SECONDS, why)
        _read_store_error(why)
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        st.error(
            f"Redis does not answer at {redact_url(settings().redis_url)} (IOTP_REDIS_URL): {exc}"
        )
    return None


def _read_store_error(why: str) -> None:
    config = settings()
    setting = "IOTP_READ_REPLICA_URL" if config.read_replica_url else "IOTP_READ_DATABASE_URL"
    st.error(
        f"The read store does not answer at {redact_url(config.reader_url())}"
        f" ({setting}): {why}. Is PostgreSQL running and `iotp migrate` applied?"
    )


def pipeline_report() -> PipelineHealth | None:
    """The pipeline health report, or None after showing why it is not available."""
    return read(lambda conn: pipeline_health(conn, redis_client(), settings().event_shards))


def local_times(frame: pd.DataFrame, *columns: str) -> pd.DataFrame:
    """Timestamps are stored in UTC; show them in IOTP_DASHBOARD_TIMEZONE."""
    zone = ZoneInfo(settings().dashboard_timezone)
    for column in columns:
        if column in frame and not frame.empty:
            frame[column] = pd.to_datetime(frame[column], utc=True).dt.tz_convert(zone)
    return frame


SEVERITY_MARKS = {"critical": "🔴", "major": "🟠", "minor": "🟡", "warning": "🔵"}


def alarm_badge(open_alarms: dict[str, int]) -> str:
    """Alarms not cleared, by severity (worst first), as one short text: "🔴 1 critical"."""
    return " · ".join(
        f"{mark} {open_alarms[severity]} {severity}"
        for severity, mark in SEVERITY_MARKS.items()
        if open_alarms.get(severity)
    )


def deferred(query: Callable[..., bytes], *args: Any) -> Callable[[], bytes]:
    """A download's contents, read only when its button is pressed (Streamlit calls it on a
    thread of its own, where a failure cannot be shown as ``read`` shows it: it is raised)."""

    def contents() -> bytes:
        with _connection() as conn:
            return query(conn, *args)

    return contents
