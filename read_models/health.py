"""Pipeline health: how far behind the read side is, from Redis and the tracking rows.

Reads only: stream lengths, consumer groups (with their lag, counted here where the server
does not report it), the ingest counters, the latest dead letters and the outbox backlog
that the relay publishes.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import redis
from pydantic import BaseModel

from iotp.names import RELAY_STATS_KEY, TELEMETRY_DEADLETTER_STREAM
from iotp.redis_client import ingest_stats, text
from read_models import queries
from read_models.consumer import STREAMS

LATEST_DEADLETTERS = 20
# At most this many stream entries are read to count one group's lag: about 25 ms of
# Redis time with telemetry events, during which Redis serves no one else.
LAG_COUNT_LIMIT = 20_000
_LAG_PAGE = 1_000

# Counts forward from the last-delivered id and backward from it, a page at a time in turn;
# the first side to end gives the lag (the backward one as XLEN minus the entries it saw).
_COUNT_LAG = """
local stream, delivered = KEYS[1], ARGV[1]
local limit, page = tonumber(ARGV[2]), tonumber(ARGV[3])
local after, before = 0, 0
local after_start, before_end = '(' .. delivered, delivered
while after + before < limit do
    local entries = redis.call('XRANGE', stream, after_start, '+', 'COUNT', page)
    after = after + #entries
    if #entries < page then return after end
    after_start = '(' .. entries[#entries][1]
    entries = redis.call('XREVRANGE', stream, before_end, '-', 'COUNT', page)
    before = before + #entries
    if #entries < page then return redis.call('XLEN', stream) - before end
    before_end = '(' .. entries[#entries][1]
end
return false
"""


class GroupHealth(BaseModel):
    stream: str
    group: str
    consumers: int
    pending: int
    lag: int | None
    last_delivered_id: str
    last_applied_id: str | None
    last_event_at: datetime | None
    newest_event_age_seconds: float | None


class PipelineHealth(BaseModel):
    streams: dict[str, int]
    groups: list[GroupHealth]
    ingest: dict[str, dict[str, float]]
    deadletters: int
    latest_deadletters: list[dict[str, str]]
    outbox_backlog: int | None


def health_redis(url: str) -> redis.Redis:
    """A Redis client for health reports: short timeouts, so a dead server is a quick error."""
    return redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=5)


def pipeline_health(conn: queries.Conn, client: redis.Redis) -> PipelineHealth:
    tracked = {(t["stream"], t["group_name"]): t for t in queries.tracking(conn)}
    lengths = {
        stream: int(client.xlen(stream)) for stream in (*STREAMS, TELEMETRY_DEADLETTER_STREAM)
    }
    now = datetime.now(UTC)
    groups = [
        _group_health(client, stream, info, tracked.get((stream, text(info["name"]))), now)
        for stream in STREAMS
        for info in _groups_of(client, stream)
    ]
    latest: Any = client.xrevrange(TELEMETRY_DEADLETTER_STREAM, count=LATEST_DEADLETTERS)
    backlog: Any = client.hget(RELAY_STATS_KEY, "outbox_backlog")
    return PipelineHealth(
        streams=lengths,
        groups=groups,
        ingest=ingest_stats(client),
        deadletters=lengths[TELEMETRY_DEADLETTER_STREAM],
        latest_deadletters=[
            {"id": text(i), **{text(k): text(v) for k, v in f.items()}} for i, f in latest
        ],
        outbox_backlog=None if backlog is None else int(backlog),
    )


def _groups_of(client: redis.Redis, stream: str) -> list[dict[str, Any]]:
    try:
        infos: Any = client.xinfo_groups(stream)
    except redis.ResponseError:
        return []  # the stream does not exist yet
    return list(infos)


def _group_health(
    client: redis.Redis,
    stream: str,
    info: dict[str, Any],
    track: dict[str, Any] | None,
    now: datetime,
) -> GroupHealth:
    last_delivered_id = text(info["last-delivered-id"])
    reported = info.get("lag")  # Redis 7 and later; None there too when it cannot tell
    last_event_at = track["last_event_at"] if track else None
    return GroupHealth(
        stream=stream,
        group=text(info["name"]),
        consumers=int(info["consumers"]),
        pending=int(info["pending"]),
        lag=group_lag(client, stream, last_delivered_id) if reported is None else int(reported),
        last_delivered_id=last_delivered_id,
        last_applied_id=track["last_applied_id"] if track else None,
        last_event_at=last_event_at,
        newest_event_age_seconds=(now - last_event_at).total_seconds() if last_event_at else None,
    )


def group_lag(
    client: redis.Redis, stream: str, last_delivered_id: str, *, limit: int = LAG_COUNT_LIMIT
) -> int | None:
    """The entries of ``stream`` after ``last_delivered_id``, counted in Redis (needs 6.2).

    What the group will still be handed: entries trimmed away before it read them are not
    counted, so a group behind the start of a trimmed stream lags by XLEN. One script reads
    pages forward from the id and backward from it in turn, so the cost follows the smaller
    side (nothing to read for a group that is up to date), and it stops after about
    ``limit`` entries: None (unknown, as Redis 7 answers when it cannot tell) only when
    both the lag and the entries already delivered are over ``limit / 2``.
    """
    lag: Any = client.eval(_COUNT_LAG, 1, stream, last_delivered_id, limit, min(_LAG_PAGE, limit))
    return None if lag is None else int(lag)
