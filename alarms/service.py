"""Wiring of `iotp alarms`: settings to the alarm process, with its pre-start checks."""

from __future__ import annotations

import logging
import threading
from typing import Any

import psycopg
from psycopg.rows import dict_row

from alarms.process import ALARM_GROUP, AlarmOptions, alarm_process
from iotp.db import connect
from iotp.events import AnyEvent, TelemetryFacts
from iotp.group_reader import GroupReader
from iotp.preflight import require_migrated_database, require_redis
from iotp.redis_client import redis_for
from iotp.settings import Settings

logger = logging.getLogger(__name__)


def alarm_options(settings: Settings) -> AlarmOptions:
    return AlarmOptions(
        batch_size=settings.alarm_batch_size,
        block_ms=settings.aggregator_block_ms,
        tick_seconds=settings.alarm_tick_seconds,
        liveness_timeout_seconds=settings.liveness_timeout_seconds,
        liveness_timeouts=dict(settings.liveness_timeouts),
        event_shards=settings.event_shards,
    )


def alarm_process_for(settings: Settings) -> GroupReader[AnyEvent | TelemetryFacts]:
    """An alarm process on the write store and Redis of ``settings`` (nothing connects yet)."""

    def write_store() -> psycopg.Connection[Any]:
        return connect(settings.database_url, autocommit=True, row_factory=dict_row)

    client = redis_for(
        settings.redis_url, settings.redis_cluster, socket_connect_timeout=5, socket_timeout=30
    )
    return alarm_process(client, write_store, alarm_options(settings))


def run_alarms(settings: Settings, stop: threading.Event) -> None:
    """Run the alarm process until ``stop`` is set; :class:`ServiceUnavailable` if a service
    is down at start, ConfigurationError if the database is not migrated."""
    require_migrated_database(settings)
    require_redis(settings)
    process = alarm_process_for(settings)
    logger.info("alarms: evaluating in group %s", ALARM_GROUP)
    try:
        process.run(stop)
    finally:
        process.client.close()
