"""Wiring of one audit process (`iotp audit`): the audit consumer on its two stores.

It writes the read store's audit log and reads the write store's outbox when it heals, so
it needs both, and Redis.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import psycopg
import redis

from iotp.db import connect
from iotp.group_reader import GroupReader
from iotp.preflight import (
    READ_DATABASE_SETTING,
    require_migrated_database,
    require_read_store,
    require_redis,
)
from iotp.redis_client import redis_for
from iotp.settings import Settings
from read_models.audit import Audited
from read_models.audit_consumer import AUDIT_GROUP, audit_options, audit_reader

logger = logging.getLogger(__name__)


def audit_reader_for(settings: Settings, client: redis.Redis) -> GroupReader[Audited]:
    """The audit consumer of ``settings``: its consumer name, its stores, its retention."""

    def read_store() -> psycopg.Connection[Any]:
        return connect(settings.read_url(), setting=READ_DATABASE_SETTING)

    def write_store() -> psycopg.Connection[Any]:
        # Read only (the outbox, when healing), statement by statement.
        return connect(settings.database_url, autocommit=True)

    return audit_reader(
        client,
        read_store,
        write_store,
        audit_options(settings.audit_consumer()),
        settings.audit_retention_days,
    )


def run_audit(settings: Settings, stop: threading.Event) -> None:
    """Record the audit trail until ``stop`` is set. Raises :class:`ServiceUnavailable` if a
    service is down."""
    require_migrated_database(settings)
    require_read_store(settings)
    require_redis(settings)
    client = redis_for(
        settings.redis_url, settings.redis_cluster, socket_connect_timeout=5, socket_timeout=30
    )
    reader = audit_reader_for(settings, client)
    logger.info("auditing as %s in group %s", settings.audit_consumer(), AUDIT_GROUP)
    try:
        reader.run(stop)
    finally:
        client.close()
