"""The aggregator: what it does with a batch of events, under the kernel's group reader.

A batch is folded into deltas and applied, with the events' ids and the tracking rows, in
one read-store transaction; :class:`iotp.group_reader.GroupReader` acknowledges it after the
commit. The event-id dedupe makes a redelivered or re-published event change nothing. A gap
(events that left Redis before they were applied) is healed by recomputing every read
model, alarms included, from the write store (:func:`read_models.rebuild.rebuild`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg
import redis

from iotp.db import ReconnectingConnection
from iotp.event_shards import event_streams
from iotp.events import AnyEvent, TelemetryFacts, from_fields_to_fold
from iotp.group_reader import Batch, GroupReader, ReaderOptions, StreamPart
from iotp.names import ALARM_EVENTS_STREAM, READ_MODEL_HEALS_KEY
from iotp.periodic import Every
from read_models import queries, store
from read_models.projection import fold

logger = logging.getLogger(__name__)

AGGREGATOR_GROUP = "iotp-aggregators"
PRUNE_SECONDS = 600.0
Folded = AnyEvent | TelemetryFacts


def aggregated_streams(shards: int) -> tuple[str, ...]:
    """Every stream the aggregators fold (IOTP_EVENT_SHARDS telemetry shards among them)."""
    return (*event_streams(shards), ALARM_EVENTS_STREAM)


def aggregator_options(
    consumer: str,
    *,
    batch_size: int,
    block_ms: int,
    claim_idle_ms: int,
    gather_ms: int = 0,
    gather_min: int = 1,
    linger_ms: int = 0,
    event_shards: int = 1,
) -> ReaderOptions:
    """How an aggregator reads: every aggregated stream, in the group ``iotp-aggregators``."""
    return ReaderOptions(
        group=AGGREGATOR_GROUP,
        consumer=consumer,
        streams=aggregated_streams(event_shards),
        batch_size=batch_size,
        block_ms=block_ms,
        claim_idle_ms=claim_idle_ms,
        gather_ms=gather_ms,
        gather_min=gather_min,
        linger_ms=linger_ms,
        shards=event_shards,
        heals_key=READ_MODEL_HEALS_KEY,  # what /pipeline's `healing` reports
        task="aggregator",
    )


class ReadModelUpdater(StreamPart[Folded]):
    """Applies batches to the read models; heals by recomputing them from the write store."""

    def __init__(
        self,
        connect: Callable[[], psycopg.Connection[Any]],
        group: str,
        applied_events_keep_hours: int,
        recompute: Callable[[], object],
    ) -> None:
        self.group = group
        self.applied_events_keep_hours = applied_events_keep_hours
        self._db = ReconnectingConnection(connect)
        self._recompute = recompute
        self._prune = Every(PRUNE_SECONDS)

    def apply(self, batch: Batch[Folded]) -> int:
        newest: dict[str, datetime] = {}
        for delivered in batch.events:
            at = delivered.event.occurred_at
            if delivered.stream not in newest or at > newest[delivered.stream]:
                newest[delivered.stream] = at
        conn = self._db()
        positions = {stream: (last, newest.get(stream)) for stream, last in batch.last_ids.items()}
        # Four statements a batch (BEGIN, the claim with the lock, the read models with the
        # positions, COMMIT): at a moderate rate a batch is a few events, and each statement
        # costs the aggregator more CPU than they do.
        with conn.transaction():
            ids = [d.event.event_id for d in batch.events]
            new = store.claim_events(conn, ids, lock=True)
            fresh = [d.event for d in batch.events] if new is None else _first_of_each(batch, new)
            store.apply_deltas(conn, fold(fresh), self.group, positions)
        return len(fresh)

    def positions(self) -> Mapping[str, str]:
        with self._db().transaction():
            rows = queries.tracking(self._db())
        return {t["stream"]: t["last_applied_id"] for t in rows if t["group_name"] == self.group}

    def heal(self, delivered: Mapping[str, str]) -> None:
        self._recompute()
        conn = self._db()
        with conn.transaction():
            store.reset_tracking(conn, self.group, delivered)

    def chores(self, busy: bool) -> None:
        if self._prune.take():
            with self._db().transaction():
                store.forget_applied(self._db(), self.applied_events_keep_hours)

    def close(self) -> None:
        self._db.close()


def _first_of_each(batch: Batch[Folded], new: set[UUID]) -> list[Folded]:
    """The batch's events whose ids were ``new``, each once: an event re-published under
    another entry id may come twice in one batch, and its ids are claimed once."""
    fresh = []
    for delivered in batch.events:
        event_id = delivered.event.event_id
        if event_id in new:
            new.discard(event_id)
            fresh.append(delivered.event)
    return fresh


def aggregator(
    client: redis.Redis,
    connect: Callable[[], psycopg.Connection[Any]],
    options: ReaderOptions,
    applied_events_keep_hours: int,
    recompute: Callable[[], object],
) -> GroupReader[Folded]:
    """An aggregator: the group reader feeding a :class:`ReadModelUpdater`."""
    part = ReadModelUpdater(connect, options.group, applied_events_keep_hours, recompute)
    return GroupReader(client, part, options, from_fields_to_fold)
