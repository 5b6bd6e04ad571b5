"""Redis clients with one clear error when the server does not answer."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import hiredis
import orjson
import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster

from iotp.errors import ServiceUnavailable, redact_url
from iotp.names import INGEST_HEARTBEATS_KEY, INGEST_SESSIONS_KEY, INGEST_STATS_KEY_PREFIX

REDIS_SETTING = "IOTP_REDIS_URL"


class HiredisPacker:
    """Packs a command into the Redis protocol with one call into hiredis.

    redis-py's own packer runs Python for every argument before it calls the same hiredis
    function (an encoder call, type checks, a tuple rebuilt): for ingest's script that adds a
    batch of events, 5.1 µs of CPU an event, against 0.6 µs for hiredis alone. Anything
    hiredis does not take as it is (a command name with a space such as ``CLIENT SETINFO``,
    a bool, None) goes to redis-py's packer, so the result and the errors are redis-py's.
    """

    def __init__(self) -> None:
        # redis-py's own packer, made as its connections make it (its classes are untyped).
        made: Any = redis.connection
        encode = made.Encoder("utf-8", "strict", decode_responses=False).encode
        general = made.PythonRespSerializer(6000, encode)  # redis-py's buffer cutoff
        self._general: Any = made.HiredisRespSerializer(general.pack, encode)

    def pack(self, *args: Any) -> list[bytes]:
        first = args[0]
        if isinstance(first, str):
            whole = " " not in first
        else:
            whole = isinstance(first, bytes) and b" " not in first
        if whole:
            try:
                return [hiredis.pack_command(args)]
            except (TypeError, UnicodeError):
                pass  # redis-py words the error
        packed: list[bytes] = self._general.pack(*args)
        return packed


_PACKER = HiredisPacker()


class _PackedConnection(redis.Connection):
    def __init__(self, **options: Any) -> None:
        super().__init__(command_packer=_PACKER, **options)  # type: ignore[no-untyped-call]


def redis_for(url: str, cluster: bool, **options: Any) -> redis.Redis:
    """The one way to make a Redis client: a node's, or a cluster's with ``url`` as its seed.

    Typed as ``redis.Redis``: the cluster client answers the same commands iotp sends (its
    multi-key scripts and reads keep to one hash slot; iotp.event_shards). Both pack commands
    with :class:`HiredisPacker`, but for a cluster reached by ``rediss://``: redis-py then
    sets its own TLS connection class from the URL, and its own packer with it (slower, the
    same bytes).
    """
    if cluster:
        # The cluster client passes no packer to its nodes' connections, but their class.
        return RedisCluster.from_url(  # type: ignore[return-value]
            url, connection_class=_PackedConnection, **options
        )
    return redis.Redis.from_url(url, command_packer=_PACKER, **options)


def async_redis_for(url: str, cluster: bool, **options: Any) -> aioredis.Redis:
    """:func:`redis_for` for asyncio code."""
    if cluster:
        return AsyncRedisCluster.from_url(url, **options)  # type: ignore[return-value]
    return aioredis.Redis.from_url(url, **options)


async def open_redis(url: str, cluster: bool = False) -> aioredis.Redis:
    """A connected asyncio client, or :class:`ServiceUnavailable`."""
    options: dict[str, Any] = {"socket_connect_timeout": 5}
    if not cluster:
        options["health_check_interval"] = 30
    client = async_redis_for(url, cluster, **options)
    try:
        await client.ping()
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        await client.aclose()
        raise ServiceUnavailable("Redis", REDIS_SETTING, redact_url(url), str(exc)) from exc
    return client


def redis_unavailable(url: str, exc: BaseException) -> ServiceUnavailable:
    return ServiceUnavailable("Redis", REDIS_SETTING, redact_url(url), str(exc))


def text(value: Any) -> str:
    """A Redis reply as text, whether the client decodes replies or not."""
    return value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else str(value)


def ingest_stats(client: redis.Redis) -> dict[str, dict[str, float]]:
    """The counters every live ingest process published, by client id."""
    stats: dict[str, dict[str, float]] = {}
    for key in client.scan_iter(match=f"{INGEST_STATS_KEY_PREFIX}*", count=100):
        values: Any = client.hgetall(key)
        stats[text(key).removeprefix(INGEST_STATS_KEY_PREFIX)] = {
            text(k): float(text(v)) if "." in text(v) else int(text(v)) for k, v in values.items()
        }
    return stats


def ingest_sessions(client: redis.Redis, live_seconds: float = 5.0) -> list[dict[str, Any]]:
    """The broker sessions of ingest processes, each with ``connected`` and when last seen.

    Connected means a heartbeat younger than ``live_seconds`` (IOTP_INGEST_LIVE_SECONDS). A
    session past its expiry (counted from its last heartbeat) is left out: the broker dropped it.
    """
    server_time: Any = client.time()
    now = server_time[0] + server_time[1] / 1e6
    records: Any = client.hgetall(INGEST_SESSIONS_KEY)
    scores: Any = client.zrange(INGEST_HEARTBEATS_KEY, 0, -1, withscores=True)
    beats = {text(member): float(score) for member, score in scores}
    sessions = []
    for key, value in records.items():
        record = orjson.loads(value)
        beat = beats.get(text(key))
        last = beat if beat is not None else record.get("stopped_at") or record["joined_at"]
        expires = last + record["session_expiry_seconds"]
        if expires < now:
            continue
        sessions.append(
            {
                **record,
                "connected": beat is not None and now - beat < live_seconds,
                "joined_at": _iso(record["joined_at"]),
                "stopped_at": _iso(record.get("stopped_at")),
                "last_seen_at": _iso(last),
                "seen_seconds_ago": round(now - last, 1),
                "expires_at": _iso(expires),
            }
        )
    return sorted(sessions, key=lambda session: session["client_id"])


def _iso(timestamp: float | None) -> str | None:
    return None if timestamp is None else datetime.fromtimestamp(timestamp, UTC).isoformat()


def text_hash(client: redis.Redis, key: str) -> dict[str, str]:
    """A Redis hash as text (empty when the key does not exist)."""
    values: Any = client.hgetall(key)
    return {text(k): text(v) for k, v in values.items()}


def number(values: dict[str, str], field: str) -> int | None:
    """An integer field of :func:`text_hash`'s result, None when it is missing or not one."""
    try:
        return int(float(values[field]))
    except (KeyError, ValueError):
        return None


def split_id(entry_id: str) -> tuple[int, int]:
    """A stream entry id as (milliseconds, sequence), so that ids compare in stream order."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)
