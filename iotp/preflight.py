"""Pre-start checks a service's wiring runs before it serves: one clear line, not a traceback.

Each raises the kernel's :class:`ServiceUnavailable` or :class:`ConfigurationError`, which
the command line turns into one line on stderr and exit code 2.
"""

from __future__ import annotations

import logging

import redis

from iotp.db import connect
from iotp.errors import ConfigurationError, redact_url
from iotp.migrate import pending_migrations
from iotp.redis_client import redis_for, redis_unavailable
from iotp.settings import Settings

logger = logging.getLogger(__name__)

READ_DATABASE_SETTING = "IOTP_READ_DATABASE_URL"
READ_REPLICA_SETTING = "IOTP_READ_REPLICA_URL"


def require_migrated_database(settings: Settings) -> None:
    """Fail when the write store is unreachable or its schema is not up to date."""
    with connect(settings.database_url) as conn:
        pending = pending_migrations(conn)
    if pending:
        raise ConfigurationError(
            f"the database schema is not up to date (pending: {', '.join(pending)}):"
            " run `iotp migrate` first"
        )


def require_read_store(settings: Settings) -> None:
    """Fail when the read store does not answer."""
    connect(settings.read_url(), setting=READ_DATABASE_SETTING).close()


def require_read_replica(settings: Settings) -> None:
    """When IOTP_READ_REPLICA_URL is set, fail unless it answers and is a standby.

    A primary there would be a second, independent read store that no aggregator updates.
    """
    if settings.read_replica_url is None:
        return
    with connect(settings.read_replica_url, setting=READ_REPLICA_SETTING) as conn:
        row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
    if not (row and row[0]):
        raise ConfigurationError(
            f"{READ_REPLICA_SETTING} ({redact_url(settings.read_replica_url)}) is not a replica"
            " (pg_is_in_recovery() is false): point it at a streaming standby of the read store"
        )


def require_redis(settings: Settings) -> None:
    """Fail when Redis does not answer."""
    client = redis_for(settings.redis_url, settings.redis_cluster, socket_connect_timeout=5)
    try:
        client.ping()
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise redis_unavailable(settings.redis_url, exc) from exc
    finally:
        client.close()


def warn_if_redis_down(settings: Settings) -> None:
    """Log a warning when Redis does not answer: the command side keeps working without it."""
    client = redis_for(settings.redis_url, settings.redis_cluster, socket_connect_timeout=3)
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        logger.warning(
            "%s; events wait in the outbox until it answers",
            redis_unavailable(settings.redis_url, exc),
        )
    finally:
        client.close()


def command_side_preflight(settings: Settings) -> None:
    """What the command API and the relay need: a migrated database; Redis may come later."""
    require_migrated_database(settings)
    warn_if_redis_down(settings)
