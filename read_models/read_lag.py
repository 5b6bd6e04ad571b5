"""How stale what the readers see may be, in seconds, when they read a streaming replica.

Reads only. The replica's delay is measured on the readers' own connection, so it is the
delay of the database they actually read; on a primary there is none and nothing is reported.
The total adds the aggregators' delay (the age of the oldest event they have not applied)
to the replica's: an upper bound of the age of the oldest change readers cannot see yet.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any, Protocol

import redis
from pydantic import BaseModel

from iotp.redis_client import split_id, text
from read_models import queries

# clock_timestamp(), not now(): the connection may be inside a transaction begun earlier.
# A standby that replayed everything it received is as fresh as its primary, however long
# ago the last transaction it replayed was: an idle primary writes nothing new, so the age
# of the last replayed transaction would only measure that idleness, not a delay; the
# delay is counted only while received WAL waits to be replayed (the first change after an
# idle spell shows the spell as delay until it is replayed: too high, never too low). A
# receive position that is unknown (NULL: not streaming) counts as behind. The difference
# can be negative when the primary's clock runs ahead of the standby's: clamped to 0 below.
# CASE, not AND, because only CASE fixes the order: pg_is_wal_replay_paused() raises on a
# primary.
_REPLICA_STATE = """
SELECT pg_is_in_recovery(),
       coalesce(pg_last_wal_receive_lsn() <= pg_last_wal_replay_lsn(), false),
       extract(epoch FROM clock_timestamp() - pg_last_xact_replay_timestamp())::float8,
       CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() ELSE false END
"""


class ReplicaHealth(BaseModel):
    """The streaming replica the readers read (IOTP_READ_REPLICA_URL)."""

    url_host: str
    caught_up: bool  # it has replayed all the WAL it received from the primary
    replay_delay_seconds: float | None  # 0 when caught up; None when it never replayed any
    replay_paused: bool  # pg_wal_replay_pause() was called on it


class WaitingGroup(Protocol):
    """A consumer group as the health report tells it (its GroupHealth)."""

    @property
    def stream(self) -> str: ...
    @property
    def group(self) -> str: ...
    @property
    def pending(self) -> int: ...
    @property
    def lag(self) -> int | None: ...
    @property
    def last_delivered_id(self) -> str: ...


def replica_health(conn: queries.Conn) -> ReplicaHealth | None:
    """The replica behind ``conn``, or None when ``conn`` is a primary."""
    row = conn.execute(_REPLICA_STATE).fetchone()
    if row is None or not row[0]:
        return None
    caught_up, since_replay, paused = bool(row[1]), row[2], bool(row[3])
    delay: float | None = 0.0
    if not caught_up:
        delay = None if since_replay is None else max(float(since_replay), 0.0)
    return ReplicaHealth(
        url_host=conn.info.host,
        caught_up=caught_up,
        replay_delay_seconds=delay,
        replay_paused=paused,
    )


def read_lag_seconds(
    client: redis.Redis, groups: Iterable[WaitingGroup], replica: ReplicaHealth
) -> float | None:
    """The aggregators' delay plus the replica's; None while the replica's is unknown."""
    if replica.replay_delay_seconds is None:
        return None
    now_ms = time.time() * 1000
    waiting = [since for g in groups if (since := _waiting_since_ms(client, g)) is not None]
    aggregators = max((now_ms - since) / 1000 for since in waiting) if waiting else 0.0
    return max(aggregators, 0.0) + replica.replay_delay_seconds


def _waiting_since_ms(client: redis.Redis, group: WaitingGroup) -> int | None:
    """When the oldest entry ``group`` has not applied was added (a stream id is its time)."""
    if group.pending:
        summary: Any = client.xpending(group.stream, group.group)
        if summary and summary.get("pending") and summary.get("min"):
            return split_id(text(summary["min"]))[0]
    if group.lag != 0:  # some entries not delivered yet, or unknown how many
        after: Any = client.xrange(group.stream, min=f"({group.last_delivered_id}", count=1)
        if after:
            return split_id(text(after[0][0]))[0]
    return None
