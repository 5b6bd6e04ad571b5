"""One way to consume event streams in a Redis consumer group: read, decode, apply, acknowledge.

An entry is acknowledged (XACK) only after the part made the batch's effect and its own
progress durable together (one PostgreSQL transaction, or one atomic file write), so a crash
anywhere redoes at most the batch in hand, and the part recognises what it applied before
(event ids, unique keys, positions: that is the part's business). Every step is retried
through :mod:`iotp.retry`; the reader stops only on the stop event or an error that is not
an outage.

Each round reads, in this order: this consumer's own pending entries (at start, after an
error and when the part gains the right to read), then entries another consumer left pending
past ``claim_idle_ms`` (XAUTOCLAIM), then new entries. Every shard is read, on one node or a
Redis Cluster (:mod:`iotp.event_shards`). An entry that does not decode is logged, counted and
acknowledged with its batch. Groups Redis lost (NOGROUP, or missing after a reconnect) are
created again, and what left Redis before it was applied is healed from the write store by
the part (:mod:`iotp.stream_gaps`). Counters go to the group's stats hash, for /pipeline.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import msgspec
import redis

from iotp.event_shards import Entry, by_stream, ensure_groups, read_group
from iotp.events import UndecodableEvent
from iotp.names import consumer_stats_key
from iotp.periodic import Every
from iotp.redis_client import text
from iotp.retry import Stopped, retry_transient
from iotp.stream_gaps import GapWatch

logger = logging.getLogger(__name__)

E = TypeVar("E")
Decode = Callable[[dict[bytes, bytes]], E]


# A msgspec Struct, not a frozen dataclass: one is made per entry, in a seventh of the
# time (a frozen dataclass sets each field through object.__setattr__).
class Delivered(msgspec.Struct, Generic[E], frozen=True, gc=False):
    """One decoded entry: where it was on its stream, and its event."""

    stream: str
    entry_id: str
    event: E


@dataclass(frozen=True)
class Batch(Generic[E]):
    """What a part applies at once: the decoded events, in stream order within each stream,
    and the newest entry id of each stream (undecodable and deleted entries included), which
    is the part's progress once the batch is applied."""

    events: list[Delivered[E]]
    last_ids: dict[str, str]

    def __len__(self) -> int:
        return len(self.events)


class StreamPart(Generic[E]):
    """What a consumer does with its events; the reader owns everything else.

    ``apply`` and ``heal`` must be safe to repeat: the reader may hand a batch again after a
    crash or an outage, and heal again after a crash mid-heal.
    """

    def apply(self, batch: Batch[E]) -> int:
        """Make the batch's effect and the part's progress durable together; how many events
        took effect (not repeats, not events the part ignores)."""
        raise NotImplementedError

    def heal(self, delivered: Mapping[str, str]) -> None:
        """Recompute the part's state from the write store, then record ``delivered`` (each
        stream's last id its group was delivered) as its progress, even where that is lower."""
        raise NotImplementedError

    def positions(self) -> Mapping[str, str]:
        """The progress recorded with the effects, by stream (empty: none recorded yet)."""
        return {}

    def may_read(self) -> bool:
        """Whether this consumer may read now (a standby waits for its leader's lock)."""
        return True

    def chores(self, busy: bool) -> None:
        """Work between rounds (housekeeping, timers); ``busy``: the last read was full."""

    def close(self) -> None:
        """Drop connections after a transient error: they may be broken."""


@dataclass(frozen=True)
class ReaderOptions:
    group: str
    consumer: str
    streams: tuple[str, ...]
    batch_size: int = 500
    block_ms: int = 500
    claim_idle_ms: int = 30_000
    gather_ms: int = 0  # after a short read of gather_min events or more, wait and add more
    gather_min: int = 1
    linger_ms: int = 0  # after a read of fewer than gather_min events, wait and add more
    shards: int = 1  # IOTP_EVENT_SHARDS: which trim records count cuts into this group
    heals_key: str | None = None  # a further hash heals are counted in (the aggregators')
    task: str = ""  # the name in log lines; the group's by default


@dataclass
class Counts:
    """A batch's (or a round's) counters, added to the group's stats hash with the XACK."""

    entries: int = 0
    applied: int = 0
    undecodable: int = 0
    deleted: int = 0
    claimed: int = 0

    def add(self, other: Counts) -> None:
        for name in COUNTERS:
            setattr(self, name, getattr(self, name) + getattr(other, name))


COUNTERS = ("entries", "applied", "undecodable", "deleted", "claimed")
# "deleted" is stored by the gap watch, which also hears of entries XAUTOCLAIM found deleted.
STORED_COUNTERS = ("entries", "applied", "undecodable", "claimed")


class GroupReader(Generic[E]):
    """Feeds one part from its consumer group until stopped (see the module docstring)."""

    def __init__(
        self,
        client: redis.Redis,
        part: StreamPart[E],
        options: ReaderOptions,
        decode: Decode[E],
    ) -> None:
        self.client = client
        self.part = part
        self.options = options
        self.decode = decode
        self.gaps = GapWatch(
            client,
            options.group,
            options.streams,
            part.heal,
            shards=options.shards,
            heals_key=options.heals_key,
        )
        self._claim = Every(options.claim_idle_ms / 1000)
        self._recover = True  # check the groups and drain own pending at the next round
        self._reading = False

    @property
    def task(self) -> str:
        return self.options.task or self.options.group

    def run(self, stop: threading.Event) -> None:
        """Apply events until ``stop`` is set, riding out PostgreSQL and Redis outages; the part
        is closed at the end."""

        def failed(_: BaseException) -> None:
            self.part.close()
            self._recover = True

        try:
            while not stop.is_set():
                retry_transient(lambda: self.step(stop), stop, task=self.task, on_retry=failed)
        except Stopped:
            return
        finally:
            self.part.close()

    def step(self, stop: threading.Event | None = None) -> Counts:
        """One round: check the groups and gaps, drain, claim, read and apply; what it did."""
        done = Counts()
        if not self.part.may_read():
            self._reading = False
            if stop is not None:
                stop.wait(self.options.block_ms / 1000)
            return done
        if not self._reading:
            self._reading, self._recover = True, True
        try:
            self._round(done)
        except redis.ResponseError as exc:
            # NOGROUP: Redis lost the group (or the stream); UNBLOCKED: the stream went
            # while this consumer waited on it. Neither is fatal: the group is made again.
            if not str(exc).startswith(("NOGROUP", "UNBLOCKED")):
                raise
            logger.error("%s: %s; creating the group again", self.task, exc)
            self._recover = True
        return done

    def _round(self, done: Counts) -> None:
        if self._recover:
            self._check_groups()
            done.add(self.drain_own_pending())
            self.gaps.check(force=True)
            self._recover = False
        else:
            self.gaps.check()
        if self._claim.take():
            for stream in self.options.streams:
                claimed = self.claim_abandoned(stream)
                if claimed:
                    done.add(self.deliver({stream: claimed}, claimed=len(claimed)))
        batch = self._read(">", self.options.block_ms)
        size = sum(len(entries) for entries in batch.values())
        # Busy but short of a batch: gather what arrives next into the same batch, for one
        # transaction per gather_ms rather than one per handful of events. A smaller read (a
        # moderate rate) lingers a few ms only: each batch costs its round trips (six) and
        # wake-ups whatever it holds, and at a steady moderate rate a read is an ingest
        # batch or two.
        wait_ms = (
            self.options.gather_ms if size >= self.options.gather_min else self.options.linger_ms
        )
        if 0 < size < self.options.batch_size and wait_ms:
            time.sleep(wait_ms / 1000)
            for stream, entries in self._read(">", None, self.options.batch_size - size).items():
                batch.setdefault(stream, []).extend(entries)
        done.add(self.deliver(batch))
        self.part.chores(busy=size >= self.options.batch_size)

    def _check_groups(self) -> None:
        """Create the group where Redis lost it; a lost group, or positions beyond what the
        group was delivered, are gaps."""
        recorded = self.part.positions()
        for stream in ensure_groups(self.client, self.options.group, self.options.streams):
            self.gaps.group_created(stream, recorded.get(stream))
        self.gaps.compare_positions(recorded)

    def drain_own_pending(self) -> Counts:
        """Apply what this consumer read and did not acknowledge (a crash, an outage)."""
        done = Counts()
        while True:
            batch = self._read("0", None)
            if not any(batch.values()):
                return done
            done.add(self.deliver(batch))

    def _read(self, start: str, block_ms: int | None, count: int = 0) -> dict[str, list[Entry]]:
        return read_group(
            self.client,
            self.options.group,
            self.options.consumer,
            dict.fromkeys(self.options.streams, start),
            count or self.options.batch_size,
            block_ms,
        )

    def claim_abandoned(self, stream: str) -> list[Entry]:
        """Entries of ``stream`` another consumer read and left unacknowledged too long."""
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
                "%s: claimed %s entries of %s left pending by another consumer",
                self.task,
                len(entries),
                stream,
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

    def deliver(self, entries: dict[str, list[Entry]], claimed: int = 0) -> Counts:
        """Decode ``entries``, have the part apply them, then acknowledge; what it did."""
        counts = Counts(claimed=claimed)
        batch = decode_batch(entries, self.decode, counts, self.task)
        if counts.deleted:  # left the stream before they were applied: a gap, healed
            for stream, found in entries.items():
                if deleted := sum(1 for _, fields in found if fields is None):
                    self.gaps.entries_deleted(stream, deleted)
        if counts.entries == 0:
            return counts
        counts.applied = self.part.apply(batch)
        self._acknowledge(entries, counts, batch.last_ids)
        return counts

    def _acknowledge(
        self, entries: dict[str, list[Entry]], counts: Counts, last_ids: dict[str, str]
    ) -> None:
        """XACK the batch and add its counters, in one round trip where Redis allows."""
        key = consumer_stats_key(self.options.group)
        pipe: Any = self.client.pipeline(transaction=False)
        for stream, found in entries.items():
            if found:
                pipe.xack(stream, self.options.group, *[i for i, _ in found])
        for name in STORED_COUNTERS:
            if value := getattr(counts, name):
                pipe.hincrby(key, name, value)
        pipe.hset(
            key,
            mapping={
                "last_batch_at": f"{time.time():.3f}",
                **{f"acked:{s}": i for s, i in last_ids.items()},
            },
        )
        pipe.execute()


def decode_batch(
    entries: Mapping[str, list[Entry]], decode: Decode[E], counts: Counts, task: str
) -> Batch[E]:
    """The decoded events of ``entries`` in stream order; undecodable ones logged and counted,
    deleted ones (no fields) counted; the newest id of each stream whatever it held.

    Each stream's entries come in stream order, as every read of Redis returns them
    (XREADGROUP, XAUTOCLAIM from its cursor, XRANGE), so the last is the newest: comparing
    every id was a twentieth of an aggregator's CPU (py-spy).
    """
    events: list[Delivered[E]] = []
    last_ids: dict[str, str] = {}
    for stream, found in entries.items():
        if not found:
            continue
        last_ids[stream] = found[-1][0]
        for entry_id, fields in found:
            counts.entries += 1
            if fields is None:
                counts.deleted += 1
                continue
            try:
                events.append(Delivered(stream, entry_id, decode(fields)))
            except UndecodableEvent as exc:
                counts.undecodable += 1
                logger.error(
                    "%s: skipping undecodable entry %s of %s: %s", task, entry_id, stream, exc
                )
    return Batch(events, last_ids)
