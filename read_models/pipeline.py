"""Pipeline health: how far behind the read side is, from Redis and the tracking rows."""

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


def pipeline_health(conn: queries.Conn, client: redis.Redis) -> PipelineHealth:
    tracked = {(t["stream"], t["group_name"]): t for t in queries.tracking(conn)}
    now = datetime.now(UTC)
    groups: list[GroupHealth] = []
    lengths: dict[str, int] = {}
    for stream in (*STREAMS, TELEMETRY_DEADLETTER_STREAM):
        lengths[stream] = int(client.xlen(stream))
    for stream in STREAMS:
        try:
            infos: Any = client.xinfo_groups(stream)
        except redis.ResponseError:
            infos = []  # the stream does not exist yet
        for info in infos:
            name = text(info["name"])
            track = tracked.get((stream, name))
            last_event_at = track["last_event_at"] if track else None
            groups.append(
                GroupHealth(
                    stream=stream,
                    group=name,
                    consumers=int(info["consumers"]),
                    pending=int(info["pending"]),
                    lag=None if info.get("lag") is None else int(info["lag"]),
                    last_delivered_id=text(info["last-delivered-id"]),
                    last_applied_id=track["last_applied_id"] if track else None,
                    last_event_at=last_event_at,
                    newest_event_age_seconds=(
                        (now - last_event_at).total_seconds() if last_event_at else None
                    ),
                )
            )
    ingest = ingest_stats(client)
    latest: Any = client.xrevrange(TELEMETRY_DEADLETTER_STREAM, count=LATEST_DEADLETTERS)
    backlog: Any = client.hget(RELAY_STATS_KEY, "outbox_backlog")
    return PipelineHealth(
        streams=lengths,
        groups=groups,
        ingest=ingest,
        deadletters=lengths[TELEMETRY_DEADLETTER_STREAM],
        latest_deadletters=[
            {"id": text(i), **{text(k): text(v) for k, v in f.items()}} for i, f in latest
        ],
        outbox_backlog=None if backlog is None else int(backlog),
    )
