"""Redis clients with one clear error when the server does not answer."""

from __future__ import annotations

import redis
import redis.asyncio as aioredis

from iotp.errors import ServiceUnavailable, redact_url

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
