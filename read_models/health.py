"""Pipeline health: how far behind the read side is, from Redis and the tracking rows.

Reads only: stream lengths, consumer groups (with their lag, counted here where the server
does not report it), the ingest counters, the latest dead letters, the outbox backlog that
the relay publishes, what the streams' caps trimmed (ingest's record) and the gaps healed
(the aggregators'), and the broker's own counters (ingest's copy of Mosquitto's $SYS).
Whatever an operator must act on is also in ``alerts``, worst first.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any, Literal

import redis
from pydantic import BaseModel, Field

from iotp.event_shards import stream_trims, telemetry_streams
from iotp.names import (
    AUTH_FAILURES_KEY,
    BROKER_STATS_KEY,
    READ_MODEL_HEALS_KEY,
    RELAY_STATS_KEY,
    TELEMETRY_DEADLETTER_STREAM,
    consumer_stats_key,
    stream_cuts_field,
)
from iotp.redis_client import ingest_sessions, ingest_stats, number, redis_for, text, text_hash
from iotp.stream_gaps import cuts_into
from read_models import queries
from read_models.consumer import AGGREGATOR_GROUP, aggregated_streams
from read_models.read_lag import ReplicaHealth, read_lag_seconds, replica_health

LATEST_DEADLETTERS = 20
# A cut of the telemetry stream, or a broker drop, this recent is a current condition.
RECENT_SECONDS = 600
# The dead-letter stream this full of its cap is about to drop the oldest dead letters.
NEAR_CAP = 0.9
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


class ConsumerCounts(BaseModel):
    """What one consumer group's consumers did, in all (iotp.group_reader counts it alike for
    every group): entries read, events that took effect, and the rest."""

    entries: int = 0
    applied: int = 0  # took effect (not repeats, not events the consumer ignores)
    undecodable: int = 0  # logged and acknowledged
    deleted: int = 0  # handed back without fields: deleted before they were applied
    claimed: int = 0  # taken over from a consumer that left them pending
    heals: int = 0  # gaps healed from the write store
    last_batch_at: datetime | None = None
    last_heal_at: datetime | None = None
    last_heal_reason: str | None = None


class AuthHealth(BaseModel):
    """Refused credentials, and requests answered 429 for them, of both HTTP APIs, in all
    (iotp.auth_throttle): a steady rise is someone guessing keys."""

    failures: int = 0
    throttled: int = 0
    by_api: dict[str, dict[str, int]] = Field(default_factory=dict)
    last_failure_at: datetime | None = None


def auth_health(values: dict[str, str]) -> AuthHealth:
    by_api: dict[str, dict[str, int]] = {}
    for field, value in values.items():
        api, _, outcome = field.partition(":")
        if outcome in ("failures", "throttled") and value.isdigit():
            by_api.setdefault(api, {"failures": 0, "throttled": 0})[outcome] = int(value)
    return AuthHealth(
        failures=sum(counts["failures"] for counts in by_api.values()),
        throttled=sum(counts["throttled"] for counts in by_api.values()),
        by_api=by_api,
        last_failure_at=_when(values, "last_failure_at"),
    )


class StreamCapHealth(BaseModel):
    """The telemetry stream's cap (IOTP_TELEMETRY_STREAM_MAXLEN) and what it cut unread."""

    cap: int | None  # as ingest applies it; None until an ingest has published
    reached: bool  # the cap cut entries before a group read them, in the last RECENT_SECONDS
    entries_cut: int  # entries trimmed before every consumer group had read them, in all
    cuts: int
    last_cut_at: datetime | None
    unhealed_cuts: int  # cuts into the aggregators' entries not yet healed from the write store


class HealingHealth(BaseModel):
    """Gaps the aggregators found in what they read, healed by recomputing from the write store."""

    heals: int
    last_heal_at: datetime | None
    last_heal_seconds: float | None
    last_heal_reason: str | None
    deleted_entries: int  # entries handed back without fields: deleted before applied


class DeadletterStreamHealth(BaseModel):
    entries: int
    cap: int | None  # IOTP_DEADLETTER_STREAM_MAXLEN as ingest applies it
    trimmed: int  # dead letters the cap dropped, in all
    last_trim_at: datetime | None
    near_cap: bool


class BrokerHealth(BaseModel):
    """The broker's own counters ($SYS), as an ingest process last read them."""

    reported: bool  # False: no ingest reads the broker's counters (or it refuses them)
    messages_dropped: int | None  # since the broker started
    dropping: bool  # the drop count grew in the last RECENT_SECONDS
    dropped_grew_at: datetime | None
    stored_messages: int | None
    stored_bytes: int | None
    clients_connected: int | None
    clients_disconnected: int | None  # persistent sessions with no client connected
    messages_received: int | None
    messages_sent: int | None
    subscriptions: int | None
    uptime_seconds: int | None
    version: str | None
    updated_at: datetime | None
    error: str | None


class Alert(BaseModel):
    level: Literal["error", "warning"]
    message: str


class LossHealth(BaseModel):
    """What was lost or is at risk, from Redis alone (`iotp status` shows it too)."""

    stream_cap: StreamCapHealth
    healing: HealingHealth
    deadletter_stream: DeadletterStreamHealth
    broker: BrokerHealth
    alerts: list[Alert]


class PipelineHealth(LossHealth):
    streams: dict[str, int]
    groups: list[GroupHealth]
    consumers: dict[str, ConsumerCounts]  # by group
    auth: AuthHealth
    ingest: dict[str, dict[str, float]]
    # Sessions the broker keeps for an ingest instance that is not connected: what is dealt
    # to them waits there (`iotp ingest --retire INSTANCE` stores it if it will not return).
    disconnected_ingest_sessions: list[dict[str, Any]]
    deadletters: int
    latest_deadletters: list[dict[str, str]]
    outbox_backlog: int | None
    # Only while the readers read a streaming replica (IOTP_READ_REPLICA_URL): absent, not
    # null, otherwise, so that the report stays as it was for those who read the read store.
    # read_lag_seconds (the aggregators' delay plus the replica's) is absent while unknown.
    replica: ReplicaHealth | None = Field(default=None, exclude_if=lambda v: v is None)
    read_lag_seconds: float | None = Field(default=None, exclude_if=lambda v: v is None)


def health_redis(url: str, cluster: bool = False) -> redis.Redis:
    """A Redis client for health reports: short timeouts, so a dead server is a quick error."""
    return redis_for(url, cluster, socket_connect_timeout=3, socket_timeout=5)


def pipeline_health(conn: queries.Conn, client: redis.Redis, shards: int = 1) -> PipelineHealth:
    """Every stream (each telemetry shard on its own), group and counter, with the alerts."""
    tracked = {(t["stream"], t["group_name"]): t for t in queries.tracking(conn)}
    streams = aggregated_streams(shards)
    lengths = {
        stream: int(client.xlen(stream)) for stream in (*streams, TELEMETRY_DEADLETTER_STREAM)
    }
    now = datetime.now(UTC)
    trims = stream_trims(client, shards)
    shard_streams = telemetry_streams(shards)
    infos = [(stream, info) for stream in streams for info in _groups_of(client, stream)]
    counts = {
        name: text_hash(client, consumer_stats_key(name))
        for name in sorted({text(info["name"]) for _, info in infos})
    }
    groups = [
        _group_health(
            client,
            stream,
            info,
            tracked.get((stream, text(info["name"]))),
            counts[text(info["name"])].get(f"acked:{stream}"),
            now,
            stream in shard_streams and _ever_cut(trims, text(info["name"])),
        )
        for stream, info in infos
    ]
    latest: Any = client.xrevrange(TELEMETRY_DEADLETTER_STREAM, count=LATEST_DEADLETTERS)
    backlog: Any = client.hget(RELAY_STATS_KEY, "outbox_backlog")
    replica = replica_health(conn)
    return PipelineHealth(
        replica=replica,
        read_lag_seconds=(
            None
            if replica is None
            else read_lag_seconds(
                client, [g for g in groups if g.group == AGGREGATOR_GROUP], replica
            )
        ),
        streams=lengths,
        groups=groups,
        consumers={name: consumer_counts(values) for name, values in counts.items()},
        auth=auth_health(text_hash(client, AUTH_FAILURES_KEY)),
        ingest=ingest_stats(client),
        disconnected_ingest_sessions=[s for s in ingest_sessions(client) if not s["connected"]],
        deadletters=lengths[TELEMETRY_DEADLETTER_STREAM],
        latest_deadletters=[
            {"id": text(i), **{text(k): text(v) for k, v in f.items()}} for i, f in latest
        ],
        outbox_backlog=None if backlog is None else int(backlog),
        **dict(loss_health(client, trims, lengths[TELEMETRY_DEADLETTER_STREAM], shards)),
    )


def loss_health(
    client: redis.Redis,
    trims: dict[str, str] | None = None,
    deadletters: int | None = None,
    shards: int = 1,
) -> LossHealth:
    """The streams' cuts and heals, dropped dead letters and broker drops, with the alerts."""
    if trims is None:
        trims = stream_trims(client, shards)
    if deadletters is None:
        deadletters = int(client.xlen(TELEMETRY_DEADLETTER_STREAM))
    cuts, healed = cuts_into(client, AGGREGATOR_GROUP, shards, trims)
    cap = stream_cap_health(trims, max(cuts - healed, 0))
    dead = deadletter_stream_health(trims, deadletters)
    broker = broker_health(text_hash(client, BROKER_STATS_KEY))
    return LossHealth(
        stream_cap=cap,
        healing=healing_health(text_hash(client, READ_MODEL_HEALS_KEY)),
        deadletter_stream=dead,
        broker=broker,
        alerts=alerts(cap, dead, broker),
    )


def _when(values: dict[str, str], field: str) -> datetime | None:
    try:
        return datetime.fromtimestamp(float(values[field]), UTC)
    except (KeyError, ValueError):
        return None


def _recent(at: datetime | None) -> bool:
    return at is not None and time.time() - at.timestamp() < RECENT_SECONDS


def stream_cap_health(trims: dict[str, str], unhealed_cuts: int) -> StreamCapHealth:
    last_cut_at = _when(trims, "telemetry_last_cut_at")
    return StreamCapHealth(
        cap=number(trims, "telemetry_cap"),
        reached=_recent(last_cut_at),
        entries_cut=number(trims, "telemetry_cut") or 0,
        cuts=number(trims, "telemetry_cuts") or 0,
        last_cut_at=last_cut_at,
        unhealed_cuts=unhealed_cuts,
    )


def healing_health(heals: dict[str, str]) -> HealingHealth:
    seconds = heals.get("last_heal_seconds")
    return HealingHealth(
        heals=number(heals, "heals") or 0,
        last_heal_at=_when(heals, "last_heal_at"),
        last_heal_seconds=float(seconds) if seconds else None,
        last_heal_reason=heals.get("last_heal_reason"),
        deleted_entries=number(heals, "deleted_entries") or 0,
    )


def deadletter_stream_health(trims: dict[str, str], entries: int) -> DeadletterStreamHealth:
    cap = number(trims, "deadletter_cap")
    return DeadletterStreamHealth(
        entries=entries,
        cap=cap,
        trimmed=number(trims, "deadletter_trimmed") or 0,
        last_trim_at=_when(trims, "deadletter_last_trim_at"),
        near_cap=cap is not None and entries >= NEAR_CAP * cap,
    )


def broker_health(stats: dict[str, str]) -> BrokerHealth:
    dropped_grew_at = _when(stats, "dropped_grew_at")
    counts = {
        field: number(stats, field)
        for field in (
            "messages_dropped",
            "stored_messages",
            "stored_bytes",
            "clients_connected",
            "clients_disconnected",
            "messages_received",
            "messages_sent",
            "subscriptions",
            "uptime_seconds",
        )
    }
    return BrokerHealth(
        reported=counts["messages_dropped"] is not None,
        dropping=_recent(dropped_grew_at),
        dropped_grew_at=dropped_grew_at,
        version=stats.get("version") or None,
        updated_at=_when(stats, "updated_at"),
        error=stats.get("error") or None,
        **counts,
    )


def alerts(cap: StreamCapHealth, dead: DeadletterStreamHealth, broker: BrokerHealth) -> list[Alert]:
    """What an operator must act on: errors (events or messages lost) first, then warnings."""
    errors: list[str] = []
    warnings: list[str] = []
    if cap.reached:
        errors.append(
            f"The telemetry stream reached its cap of {cap.cap or 0:,} entries"
            f" (IOTP_TELEMETRY_STREAM_MAXLEN): {cap.entries_cut:,} entries were trimmed"
            " before the consumer groups read them. The aggregators are too slow or stopped."
        )
    if cap.unhealed_cuts:
        errors.append(
            f"{cap.unhealed_cuts:,} cuts of the telemetry stream are not healed yet: the"
            " read models miss those readings until the aggregators recompute them from the"
            " write store (once the cuts stop)."
        )
    dropped = f"{broker.messages_dropped or 0:,}"
    if broker.dropping:
        errors.append(
            f"The MQTT broker is dropping messages: {dropped} since it started (a"
            " subscriber's queue was full: max_queued_messages / max_queued_bytes)."
        )
    elif broker.messages_dropped:
        warnings.append(f"The MQTT broker dropped {dropped} messages since it started.")
    if dead.trimmed or dead.near_cap:
        warnings.append(
            f"The dead-letter stream holds {dead.entries:,} of at most {dead.cap or 0:,}"
            f" entries (IOTP_DEADLETTER_STREAM_MAXLEN); {dead.trimmed:,} dead letters were"
            " dropped."
        )
    if broker.error:
        warnings.append(f"Broker counters: {broker.error}.")
    return [Alert(level="error", message=m) for m in errors] + [
        Alert(level="warning", message=m) for m in warnings
    ]


def _groups_of(client: redis.Redis, stream: str) -> list[dict[str, Any]]:
    try:
        infos: Any = client.xinfo_groups(stream)
    except redis.ResponseError:
        return []  # the stream does not exist yet
    return list(infos)


def _ever_cut(trims: dict[str, str], group: str) -> bool:
    """Whether the cap ever cut entries ``group`` had not read (or before it existed)."""
    return bool(number(trims, stream_cuts_field(group)) or number(trims, "cuts_without_group"))


def consumer_counts(values: dict[str, str]) -> ConsumerCounts:
    numbers = ("entries", "applied", "undecodable", "deleted", "claimed", "heals")
    return ConsumerCounts(
        **{name: number(values, name) or 0 for name in numbers},
        last_batch_at=_when(values, "last_batch_at"),
        last_heal_at=_when(values, "last_heal_at"),
        last_heal_reason=values.get("last_heal_reason"),
    )


def _group_health(
    client: redis.Redis,
    stream: str,
    info: dict[str, Any],
    track: dict[str, Any] | None,
    acked: str | None,
    now: datetime,
    cut: bool,
) -> GroupHealth:
    last_delivered_id = text(info["last-delivered-id"])
    # Redis 7 and later report a lag (None when they cannot tell), from counters that
    # entries cut before the group read them leave too high for good: counted here then.
    reported = None if cut else info.get("lag")
    last_event_at = track["last_event_at"] if track else None
    return GroupHealth(
        stream=stream,
        group=text(info["name"]),
        consumers=int(info["consumers"]),
        pending=int(info["pending"]),
        lag=group_lag(client, stream, last_delivered_id) if reported is None else int(reported),
        last_delivered_id=last_delivered_id,
        # The read store's tracking row for the aggregators; the newest id acknowledged (after
        # its batch committed) for the other groups.
        last_applied_id=track["last_applied_id"] if track else acked,
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
