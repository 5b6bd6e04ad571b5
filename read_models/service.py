"""Wiring of one aggregator process."""

from __future__ import annotations

import logging
import threading
from typing import Any

import psycopg
import redis

from iotp.db import connect
from iotp.group_reader import GroupReader
from iotp.preflight import READ_DATABASE_SETTING, require_read_store, require_redis
from iotp.redis_client import redis_for
from iotp.runtime import settle_gc
from iotp.settings import Settings
from read_models.consumer import AGGREGATOR_GROUP, Folded, aggregator, aggregator_options
from read_models.rebuild import rebuild
from read_models.retention import run_periodically

logger = logging.getLogger(__name__)


def aggregator_for(settings: Settings, client: redis.Redis) -> GroupReader[Folded]:
    """An aggregator that heals the gaps it finds by recomputing from the write store."""

    def read_store() -> psycopg.Connection[Any]:
        return connect(settings.read_url(), setting=READ_DATABASE_SETTING)

    def heal() -> None:
        report = rebuild(settings)
        logger.info(
            "recomputed %s devices and %s metric series; %s events on the stream marked"
            " applied, %s of them published during the recompute",
            report.devices,
            report.metric_series,
            report.marked_applied,
            report.window_events,
        )

    options = aggregator_options(
        settings.aggregator_consumer(),
        batch_size=settings.aggregator_batch_size,
        block_ms=settings.aggregator_block_ms,
        claim_idle_ms=settings.aggregator_claim_idle_ms,
        gather_ms=settings.aggregator_gather_ms,
        gather_min=settings.aggregator_gather_min_events,
        linger_ms=settings.aggregator_linger_ms,
        event_shards=settings.event_shards,
    )
    return aggregator(client, read_store, options, settings.applied_events_keep_hours, heal)


def run_aggregator(settings: Settings, stop: threading.Event) -> None:
    """Aggregate until ``stop`` is set. Raises :class:`ServiceUnavailable` if a service is down."""
    require_redis(settings)
    require_read_store(settings)
    client = redis_for(
        settings.redis_url, settings.redis_cluster, socket_connect_timeout=5, socket_timeout=30
    )
    reader = aggregator_for(settings, client)
    logger.info("aggregating as %s in group %s", settings.aggregator_consumer(), AGGREGATOR_GROUP)
    # The retention job (read_models/retention.py) runs beside the fold, in whichever
    # aggregator holds its lock; a thread, so that a long round never delays a batch.
    retention = threading.Thread(
        target=run_periodically, args=(settings, stop), name="retention", daemon=True
    )
    retention.start()
    settle_gc()
    try:
        reader.run(stop)
    finally:
        client.close()
        retention.join(timeout=5)
