"""The ingest loop: take a batch, validate, store, publish, then acknowledge.

The order is what makes a crash harmless: readings and the ledger of their events commit
together; the events and dead letters reach Redis next; only then does the broker get its
acknowledgements. Anything not acknowledged comes back from the broker and is found
already stored; events committed but not published are republished from the ledger.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol, TypeVar

import redis

from ingest.counters import IngestCounters
from ingest.mqtt_source import InboundMessage
from ingest.payloads import DeviceLookup, Limits, ParsedMessage, parse_message
from ingest.publisher import StreamPublisher
from ingest.store import StagedRow, StreamEntry, TelemetryStore
from iotp.events import new_event_ids, telemetry_recorded_fields, utc_text
from iotp.periodic import Every
from iotp.retry import Stopped, retry_transient, service_of

logger = logging.getLogger(__name__)

T = TypeVar("T")
HANDOFF_POLL_SECONDS = 0.2
# One MQTT message (topic, payload, received at) to readings and rejections: the device
# profiles' router (ingest/profiles_runtime.py), or today's one topic and format.
MessageParser = Callable[[str, bytes, datetime, Limits], ParsedMessage]


class MessageSource(Protocol):
    def take(
        self,
        max_messages: int,
        max_bytes: int,
        max_delay: float,
        stop: threading.Event,
        gather_from: int = 1,
        linger: float = 0.0,
    ) -> list[InboundMessage]: ...
    def ack(self, messages: list[InboundMessage]) -> None: ...


@dataclass(frozen=True)
class BatchPolicy:
    max_messages: int
    max_bytes: int
    max_delay_seconds: float
    deadletter_payload_max_bytes: int
    # Gather for up to max_delay_seconds only when this many messages already wait (busy):
    # while the writer stores a batch the next one builds up anyway, and a moderate rate is
    # then not held for the delay (freshness),
    busy_messages: int = 1
    # but only for this linger: without one, at a steady moderate rate a batch was the one
    # or two messages of a socket read, and each batch's fixed CPU (two round trips, the
    # threads' wake-ups) was most of ingest's.
    linger_seconds: float = 0.0


@dataclass(frozen=True)
class PreparedBatch:
    """A validated batch, waiting for the writer. Its rows are laid out by the writer, as
    it stores them: a data point's row weighs more than the reading it comes from, and
    only one batch at a time needs them."""

    messages: list[InboundMessage]
    parsed: list[ParsedMessage]
    deadletters: list[StreamEntry]
    parse_seconds: float


class IngestPipeline:
    def __init__(
        self,
        source: MessageSource,
        store: TelemetryStore,
        publisher: StreamPublisher,
        lookup: DeviceLookup,
        counters: IngestCounters,
        limits: Limits,
        policy: BatchPolicy,
        stats_key: str | None,
        parse: MessageParser | None = None,
    ) -> None:
        self.source, self.store, self.publisher = source, store, publisher
        self.lookup, self.counters, self.limits, self.policy = lookup, counters, limits, policy
        self.stats_key = stats_key
        self.parse = parse or functools.partial(_parse_iotp, lookup=lookup)
        self._published: list[uuid.UUID] = []
        self._stats = Every(1.0)

    def run(self, stop: threading.Event) -> None:
        """Take and validate batches here while a writer thread stores the previous one.

        Two stages so that PostgreSQL's work on one batch overlaps Python's on the next;
        one writer, so batches still commit, publish and acknowledge in arrival order.
        """
        try:
            self.recover(stop)
        except Stopped:
            return
        handoff: queue.Queue[PreparedBatch | None] = queue.Queue(maxsize=1)
        # Batches prepared and not yet written: one being written, one prepared beside it. A
        # third, prepared while both wait, would not be stored any sooner, and a batched
        # message's parsed readings, rows and events weigh about 20 times its payload.
        in_flight = threading.BoundedSemaphore(2)
        failure: list[BaseException] = []
        writer = threading.Thread(
            target=self._write_loop,
            args=(handoff, stop, failure, in_flight),
            name="iotp-ingest-writer",
        )
        writer.start()
        try:
            while not stop.is_set() and writer.is_alive():
                # Taken (and gathered) while the writer is busy, as before; prepared only
                # once one of the two places is free.
                batch = self.source.take(
                    self.policy.max_messages,
                    self.policy.max_bytes,
                    self.policy.max_delay_seconds,
                    stop,
                    self.policy.busy_messages,
                    self.policy.linger_seconds,
                )
                if batch and _acquired(in_flight, writer):
                    _hand_to(writer, handoff, self.prepare(batch, stop))
        except Stopped:
            logger.info("stopping with a batch unacknowledged; the broker will redeliver it")
        finally:
            stop.set()
            _hand_to(writer, handoff, None)
            writer.join()
        if failure:
            raise failure[0]

    def _write_loop(
        self,
        handoff: queue.Queue[PreparedBatch | None],
        stop: threading.Event,
        failure: list[BaseException],
        in_flight: threading.BoundedSemaphore,
    ) -> None:
        try:
            while True:
                try:
                    prepared = handoff.get(timeout=HANDOFF_POLL_SECONDS)
                except queue.Empty:
                    if stop.is_set():
                        break
                    self._idle(stop)
                    continue
                if prepared is None:
                    break
                self.write(prepared, stop)
                del prepared  # before the reader, woken next, prepares another
                in_flight.release()
            self._report_stats(stop, force=True)  # however the loop noticed the stop
        except Stopped:
            logger.info("stopping with a batch unacknowledged; the broker will redeliver it")
        except BaseException as exc:
            logger.exception("the ingest writer failed")
            failure.append(exc)
            stop.set()

    def recover(self, stop: threading.Event) -> None:
        """Publish the events of batches that committed before a crash, then forget them."""
        leftovers = self._retry(self.store.unpublished, stop)
        for batch_id, entries in leftovers:
            self._retry(functools.partial(self.publisher.publish, entries), stop)
            self._published.append(batch_id)
        if leftovers:
            logger.info("republished the events of %s committed batches", len(leftovers))
            self._retry(lambda: self.store.forget(self._published), stop)
            self._published.clear()

    def prepare(self, batch: list[InboundMessage], stop: threading.Event) -> PreparedBatch:
        """Validate a batch: pure work, but for device look-ups."""
        started = time.perf_counter()
        parsed = self._retry(lambda: [self._parse(m) for m in batch], stop)
        return PreparedBatch(
            messages=batch,
            parsed=parsed,
            deadletters=_deadletters(batch, parsed, self.policy.deadletter_payload_max_bytes),
            parse_seconds=time.perf_counter() - started,
        )

    def write(self, prepared: PreparedBatch, stop: threading.Event) -> None:
        """Commit, publish, acknowledge: in that order, each retried until it succeeds."""
        batch, parsed = prepared.messages, prepared.parsed
        started = time.perf_counter()
        rows = _staged_rows(batch, parsed)
        forget = list(self._published)
        batch_id = uuid.uuid4()  # the same for every attempt: a retry finds its own commit
        committed = self._retry(
            lambda: self.store.write(
                rows, lambda new: _events(batch, parsed, new), forget, batch_id
            ),
            stop,
        )
        committed_at = time.perf_counter()
        row_count = len(rows)
        rows.clear()  # not needed past the commit, while the events are published
        self._published = [p for p in self._published if p not in forget]
        self._retry(lambda: self.publisher.publish(committed.entries, prepared.deadletters), stop)
        self._published.append(committed.batch_id)
        published_at = time.perf_counter()
        self.source.ack(batch)
        logger.debug(
            "batch: %s messages, %s rows (%s new), parse %.1f ms, commit %.1f ms,"
            " publish %.1f ms, ack %.1f ms",
            len(batch),
            row_count,
            len(committed.new_seqs),
            prepared.parse_seconds * 1000,
            (committed_at - started) * 1000,
            (published_at - committed_at) * 1000,
            (time.perf_counter() - published_at) * 1000,
        )
        self.counters.received(len(batch))
        self.counters.batch(
            stored=len(committed.new_seqs),
            duplicates=row_count - len(committed.new_seqs),
            events=len(committed.entries),
            seconds=(datetime.now(UTC) - batch[0].received_at).total_seconds(),
        )
        self.counters.deadlettered([d["reason"] for d in prepared.deadletters])
        self._report_stats(stop)

    def _parse(self, message: InboundMessage) -> ParsedMessage:
        return self.parse(message.topic, message.payload, message.received_at, self.limits)

    def _idle(self, stop: threading.Event) -> None:
        if self._published:
            self._retry(lambda: self.store.forget(self._published), stop)
            self._published.clear()
        self._report_stats(stop)

    def _report_stats(self, stop: threading.Event, force: bool = False) -> None:
        """Counters to Redis for `iotp status`, at most once a second (and when stopping).

        One attempt, never retried: the writer must not wait on a report while Redis is
        away, when batches can still be stored (their events wait in the ledger).
        """
        if self.stats_key is None or (not self._stats.take() and not force):
            return  # (no key: the counters are reported by another process)
        stats = (self.stats_key, self.counters.snapshot())
        try:
            self.publisher.publish((), (), stats)
        except (redis.RedisError, OSError) as exc:
            logger.debug("ingest counters not written to Redis: %s", exc)

    def _retry(self, action: Callable[[], T], stop: threading.Event) -> T:
        """Run ``action`` until it succeeds; back off while PostgreSQL or Redis is away."""
        return retry_transient(action, stop, task="ingest", on_retry=self._count_retry)

    def _count_retry(self, error: BaseException) -> None:
        self.counters.retried(service_of(error))


def _parse_iotp(
    topic: str, payload: bytes, received_at: datetime, limits: Limits, lookup: DeviceLookup
) -> ParsedMessage:
    return parse_message(topic, payload, received_at, lookup, limits)


def _acquired(in_flight: threading.BoundedSemaphore, writer: threading.Thread) -> bool:
    """Wait for a batch's place in flight; False if the writer ended (none will come)."""
    while writer.is_alive():
        if in_flight.acquire(timeout=HANDOFF_POLL_SECONDS):
            return True
    return False


def _hand_to(
    writer: threading.Thread, handoff: queue.Queue[PreparedBatch | None], item: PreparedBatch | None
) -> None:
    """Queue ``item`` for the writer thread, unless it ended (then nothing would take it)."""
    while writer.is_alive():
        try:
            handoff.put(item, timeout=HANDOFF_POLL_SECONDS)
            return
        except queue.Full:
            continue


def _staged_rows(
    batch: Sequence[InboundMessage], parsed: Sequence[ParsedMessage]
) -> list[StagedRow]:
    """The batch's data points, each key once; ``seq`` numbers the data points in walk order.

    A reading the batch holds twice (a redelivery landing in the same batch) keeps its first
    copy, so the stored value is the one the first message's event reports.
    """
    rows: list[StagedRow] = []
    # Repeats are rare: each reading costs one lookup of its (device, time), and its metrics
    # are compared only with the batch's earlier readings of that device at that time.
    taken: dict[tuple[str, datetime], list[Mapping[str, float]]] = {}
    seq = -1
    for message, result in zip(batch, parsed, strict=True):
        device_id = result.device_id
        if device_id is None:
            continue
        received_at = message.received_at
        for reading in result.readings:
            ts = reading.ts
            earlier = taken.get((device_id, ts))
            if earlier is None:
                taken[(device_id, ts)] = [reading.metrics]
                for metric, value in reading.metrics.items():
                    seq += 1
                    rows.append((seq, device_id, ts, metric, value, received_at))
                continue
            for metric, value in reading.metrics.items():
                seq += 1
                if not any(metric in metrics for metrics in earlier):
                    rows.append((seq, device_id, ts, metric, value, received_at))
            earlier.append(reading.metrics)
    return rows


def _events(
    batch: Sequence[InboundMessage], parsed: Sequence[ParsedMessage], new: set[int]
) -> list[StreamEntry]:
    """One TelemetryRecorded per message with newly stored readings, in message order.

    Walks the data points in the order :func:`_staged_rows` numbered them; a reading held
    twice in a batch is reported by the message whose copy was stored (the first).
    """
    ingested_at = utc_text(datetime.now(UTC))
    entries: list[StreamEntry] = []
    event_ids = new_event_ids(len(batch))
    # Usually every data point is new: then every reading is reported as parsed, and the
    # per-point look-ups below are skipped.
    everything = len(new) == sum(len(r.metrics) for p in parsed for r in p.readings)
    received: tuple[datetime | None, str] = (None, "")  # messages of one read share it
    seq = 0
    for message, result in zip(batch, parsed, strict=True):
        device_id = result.device_id
        if device_id is None:
            continue
        readings: list[tuple[datetime, dict[str, float], tuple[str, ...]]] = []
        if everything:
            readings = [(r.ts, r.metrics, r.out_of_range) for r in result.readings]
        else:
            for reading in result.readings:
                metrics = {}
                for metric, value in reading.metrics.items():
                    if seq in new:
                        metrics[metric] = value
                    seq += 1
                if metrics:
                    breaches = tuple(m for m in reading.out_of_range if m in metrics)
                    readings.append((reading.ts, metrics, breaches))
        if readings:
            if received[0] is not message.received_at:
                received = (message.received_at, utc_text(message.received_at))
            entries.append(
                telemetry_recorded_fields(
                    device_id, readings, received[1], ingested_at, next(event_ids)
                )
            )
    return entries


def _deadletters(
    batch: Sequence[InboundMessage], parsed: Sequence[ParsedMessage], payload_max: int
) -> list[StreamEntry]:
    entries: list[StreamEntry] = []
    for message, result in zip(batch, parsed, strict=True):
        if not result.rejections:
            continue
        payload = message.payload[:payload_max].decode("utf-8", "backslashreplace")
        for rejection in result.rejections:
            entries.append(
                {
                    "topic": message.topic.encode("utf-8", "backslashreplace").decode(),
                    "device_id": result.device_id or "",
                    "reason": rejection.reason,
                    "detail": rejection.detail,
                    "index": "" if rejection.index is None else str(rejection.index),
                    "payload": payload,
                    "payload_bytes": str(len(message.payload)),
                    "received_at": message.received_at.isoformat(),
                }
            )
    return entries
