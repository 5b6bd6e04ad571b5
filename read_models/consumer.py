"""The aggregator: consumes the event streams in a consumer group and applies them.

Reads a batch (XREADGROUP COUNT), folds it into deltas, applies them with the events' ids
and the tracking row in one transaction, then XACKs. Entries a dead consumer left pending
are claimed (XAUTOCLAIM) after an idle time. Every step is at-least-once; the event-id
dedupe in the read store makes it exactly-once in effect. Events that left the stream
before they were applied (cut at the stream's cap, deleted, lost by Redis) are found and
healed from the write store (:mod:`read_models.gaps`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
import redis

from iotp.db import ReconnectingConnection
from iotp.event_shards import Entry, by_stream, ensure_groups, event_streams, read_group
from iotp.events import AnyEvent, TelemetryFacts, UndecodableEvent, from_fields_to_fold
from iotp.names import ALARM_EVENTS_STREAM
from iotp.periodic import Every
from iotp.redis_client import split_id, text
from iotp.retry import Stopped, retry_transient
from read_models import queries, store
from read_models.gaps import GapWatch, Heal, delivered_positions
from read_models.projection import fold

logger = logging.getLogger(__name__)

AGGREGATOR_GROUP = "iotp-aggregators"


def aggregated_streams(shards: int) -> tuple[str, ...]:
    """Every stream the aggregators fold (IOTP_EVENT_SHARDS telemetry shards among them)."""
    return (*event_streams(shards), ALARM_EVENTS_STREAM)


@dataclass(frozen=True)
class ConsumerOptions:
    group: str
    consumer: str
    batch_size: int
    block_ms: int
    claim_idle_ms: int
    applied_events_keep_hours: int
    event_shards: int = 1
    gather_ms: int = 0  # after a short read, wait this long and add what arrived

    @property
    def streams(self) -> tuple[str, ...]:
        return aggregated_streams(self.event_shards)


@dataclass
class BatchOutcome:
    entries: int
    applied: int
    skipped: int


class Aggregator:
    def __init__(
        self,
        client: redis.Redis,
        connect: Callable[[], psycopg.Connection[Any]],
        options: ConsumerOptions,
        heal: Heal | None = None,
    ) -> None:
        self.client = client
        self.options = options
        self.gaps = GapWatch(client, options.group, heal, options.event_shards)
        self._db = ReconnectingConnection(connect)
        self._claim = Every(options.claim_idle_ms / 1000)
        self._prune = Every(600)
        self.applied_total = 0

    def close(self) -> None:
        self._db.close()

    def run(self, stop: threading.Event) -> None:
        """Apply events until ``stop`` is set, riding out PostgreSQL and Redis outages."""

        def retry(action: Callable[[], object]) -> None:
            retry_transient(action, stop, task="aggregator", on_retry=lambda _: self.close())

        try:
            retry(lambda: ensure_groups(self.client, self.options.group, self.options.streams))
            retry(self.look_for_gaps)
            retry(lambda: self.drain_own_pending(stop))
            while not stop.is_set():
                retry(self.step)
        except Stopped:
            return

    def look_for_gaps(self) -> None:
        """At start: what Redis lost since the read store's positions, and cuts; heal them."""
        with self._db().transaction():
            rows = queries.tracking(self._db())
        tracked = {
            t["stream"]: t["last_applied_id"] for t in rows if t["group_name"] == self.options.group
        }
        self.gaps.compare_positions(
            tracked, delivered_positions(self.client, self.options.group, self.options.streams)
        )
        self.gaps.check(force=True)

    def drain_own_pending(self, stop: threading.Event) -> None:
        """Apply what this consumer read but did not acknowledge before it stopped."""
        while not stop.is_set():
            batch = read_group(
                self.client,
                self.options.group,
                self.options.consumer,
                dict.fromkeys(self.options.streams, "0"),
                self.options.batch_size,
            )
            if not any(batch.values()):
                return
            self.process(batch)

    def step(self) -> BatchOutcome:
        """One round: heal gaps and reclaim abandoned entries now and then, read, apply."""
        self.gaps.check()
        if self._claim.take():
            for stream in self.options.streams:
                claimed = self.claim_abandoned(stream)
                if claimed:
                    self.process({stream: claimed})
        if self._prune.take():
            with self._db().transaction():
                store.forget_applied(self._db(), self.options.applied_events_keep_hours)
        batch = self._read_new(self.options.block_ms)
        size = sum(len(entries) for entries in batch.values())
        if 0 < size < self.options.batch_size and self.options.gather_ms:
            # A trickle: gather what arrives next into the same batch, for one transaction
            # per gather_ms rather than one per handful of events (each is a dozen round trips).
            time.sleep(self.options.gather_ms / 1000)
            for stream, entries in self._read_new(None, self.options.batch_size - size).items():
                batch.setdefault(stream, []).extend(entries)
        return self.process(batch)

    def _read_new(self, block_ms: int | None, count: int | None = None) -> dict[str, list[Entry]]:
        return read_group(
            self.client,
            self.options.group,
            self.options.consumer,
            dict.fromkeys(self.options.streams, ">"),
            count or self.options.batch_size,
            block_ms,
        )

    def claim_abandoned(self, stream: str) -> list[Entry]:
        entries: list[Entry] = []
        deleted = 0
        cursor = "0-0"
        while True:
            result: Any = self.client.xautoclaim(
                stream,
                self.options.group,
                self.options.consumer,
                min_idle_time=self.options.claim_idle_ms,
                start_id=cursor,
                count=self.options.batch_size,
            )
            cursor = text(result[0])
            entries += [(text(i), f or None) for i, f in result[1] if i is not None]
            # Entries deleted while pending: Redis 7 drops them from the pending list and
            # names them apart; Redis 6.2 claims them, with no id ((None, None) here).
            unnamed = sum(1 for i, _ in result[1] if i is None)
            if unnamed:
                self._ack_deleted(stream)
            deleted += unnamed + (len(result[2]) if len(result) > 2 else 0)
            if cursor == "0-0" or len(entries) >= self.options.batch_size:
                break
        if deleted:
            self.gaps.entries_deleted(stream, deleted)
        if entries:
            logger.info(
                "claimed %s entries of %s left pending by another consumer", len(entries), stream
            )
        return entries

    def _ack_deleted(self, stream: str) -> None:
        """Acknowledge the deleted entries this consumer holds (its history names them)."""
        response: Any = self.client.xreadgroup(
            self.options.group, self.options.consumer, {stream: "0"}
        )
        ids = [i for i, fields in by_stream(response).get(stream, []) if fields is None]
        if ids:
            self.client.xack(stream, self.options.group, *ids)

    def process(self, batch: dict[str, list[Entry]]) -> BatchOutcome:
        """Apply one batch in one transaction, then acknowledge it."""
        events: list[AnyEvent | TelemetryFacts] = []
        newest: dict[str, Any] = {}
        total = 0
        for stream, entries in batch.items():
            deleted = sum(1 for _, fields in entries if fields is None)
            if deleted:  # left the stream before it was applied: a gap, healed
                self.gaps.entries_deleted(stream, deleted)
            for entry_id, fields in entries:
                total += 1
                if fields is None:
                    continue
                try:
                    event = from_fields_to_fold(fields)
                except UndecodableEvent as exc:
                    logger.error("skipping undecodable entry %s of %s: %s", entry_id, stream, exc)
                    continue
                events.append(event)
                if stream not in newest or event.occurred_at > newest[stream]:
                    newest[stream] = event.occurred_at
        if total == 0:
            return BatchOutcome(0, 0, 0)
        conn = self._db()
        with conn.transaction():
            store.lock_for_batch(conn)
            new = store.claim_events(conn, [e.event_id for e in events])
            fresh = [e for e in events if e.event_id in new]
            store.apply_deltas(conn, fold(fresh))
            for stream, entries in batch.items():
                if entries:
                    last = max((e for e, _ in entries), key=split_id)
                    store.track(conn, stream, self.options.group, last, newest.get(stream))
        for stream, entries in batch.items():
            if entries:
                self.client.xack(stream, self.options.group, *[i for i, _ in entries])
        self.applied_total += len(fresh)
        return BatchOutcome(total, len(fresh), total - len(fresh))
