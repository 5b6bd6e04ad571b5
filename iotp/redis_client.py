"""Redis clients with one clear error when the server does not answer."""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio as aioredis

from iotp.errors import ServiceUnavailable, redact_url
from iotp.names import INGEST_STATS_KEY_PREFIX

REDIS_SETTING = "IOTP_REDIS_URL"


async def open_redis(url: str) -> aioredis.Redis:
    """A connected asyncio client, or :class:`ServiceUnavailable`."""
    client = aioredis.Redis.from_url(url, socket_connect_timeout=5, health_check_interval=30)
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
