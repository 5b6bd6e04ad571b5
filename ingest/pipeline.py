"""The ingest loop: take a batch, validate, store, publish, then acknowledge.

The order is what makes a crash harmless: readings and the ledger of their events commit
together; the events and dead letters reach Redis next; only then does the broker get its
acknowledgements. Anything not acknowledged comes back from the broker and is found
already stored; events committed but not published are republished from the ledger.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol, TypeVar

import psycopg
import redis

from ingest.counters import IngestCounters
from ingest.mqtt_source import InboundMessage
from ingest.payloads import DeviceLookup, Limits, ParsedMessage, parse_message
from ingest.publisher import StreamPublisher
from ingest.store import ReadingKey, StagedRow, StreamEntry, TelemetryStore
from iotp.events import RecordedReading, TelemetryRecorded, to_fields

logger = logging.getLogger(__name__)

T = TypeVar("T")
MAX_BACKOFF_SECONDS = 10.0


class MessageSource(Protocol):
    def take(
        self, max_messages: int, max_bytes: int, max_delay: float, stop: threading.Event
    ) -> list[InboundMessage]: ...
    def ack(self, messages: list[InboundMessage]) -> None: ...


@dataclass(frozen=True)
class BatchPolicy:
    max_messages: int
    max_bytes: int
    max_delay_seconds: float
    deadletter_payload_max_bytes: int


class Stopped(Exception):
    """Stop was asked while a service was still unreachable: leave the batch unacknowledged."""


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
        stats_key: str,
    ) -> None:
        self.source, self.store, self.publisher = source, store, publisher
        self.lookup, self.counters, self.limits, self.policy = lookup, counters, limits, policy
        self.stats_key = stats_key
        self._published: list[uuid.UUID] = []
        self._last_stats = 0.0

    def run(self, stop: threading.Event) -> None:
        try:
            self.recover(stop)
            while not stop.is_set():
                batch = self.source.take(
                    self.policy.max_messages,
                    self.policy.max_bytes,
                    self.policy.max_delay_seconds,
                    stop,
                )
                if batch:
                    self.handle(batch, stop)
                else:
                    self._idle(stop)
        except Stopped:
            logger.info("stopping with a batch unacknowledged; the broker will redeliver it")

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

    def handle(self, batch: list[InboundMessage], stop: threading.Event) -> None:
        self.counters.received(len(batch))
        parsed = self._retry(lambda: [self._parse(m) for m in batch], stop)
        rows = _staged_rows(batch, parsed)
        forget = list(self._published)
        committed = self._retry(
            lambda: self.store.write(rows, lambda new: _events(batch, parsed, new), forget), stop
        )
        self._published = [p for p in self._published if p not in forget]
        deadletters = _deadletters(batch, parsed, self.policy.deadletter_payload_max_bytes)
        self._retry(lambda: self.publisher.publish(committed.entries, deadletters), stop)
        self._published.append(committed.batch_id)
        self.source.ack(batch)
        self.counters.batch(
            stored=len(committed.new_readings),
            duplicates=len(rows) - len(committed.new_readings),
            events=len(committed.entries),
            seconds=(datetime.now(UTC) - batch[0].received_at).total_seconds(),
        )
        self.counters.deadlettered([d["reason"] for d in deadletters])
        self._report_stats(stop)

    def _parse(self, message: InboundMessage) -> ParsedMessage:
        return parse_message(
            message.topic, message.payload, message.received_at, self.lookup, self.limits
        )

    def _idle(self, stop: threading.Event) -> None:
        if self._published:
            self._retry(lambda: self.store.forget(self._published), stop)
            self._published.clear()
        self._report_stats(stop)

    def _report_stats(self, stop: threading.Event) -> None:
        """Counters to Redis for `iotp status`, at most once a second."""
        now = time.monotonic()
        if now - self._last_stats < 1.0:
            return
        self._last_stats = now
        stats = (self.stats_key, self.counters.snapshot())
        self._retry(lambda: self.publisher.publish((), (), stats), stop)

    def _retry(self, action: Callable[[], T], stop: threading.Event) -> T:
        """Run ``action`` until it succeeds; back off while PostgreSQL or Redis is away."""
        backoff = 0.2
        failures = 0
        error: Exception
        while True:
            try:
                result = action()
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                service, error = "postgresql", exc
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                service, error = "redis", exc
            else:
                if failures:
                    logger.info("%s is back after %s retries; resuming", service, failures)
                return result
            failures += 1
            self.counters.retried(service)
            if failures == 1 or failures % 10 == 0:
                logger.warning(
                    "%s unreachable, not acknowledging; retry %s in %.1fs: %s",
                    service,
                    failures,
                    backoff,
                    str(error).strip().splitlines()[0] if str(error) else error,
                )
            if stop.wait(backoff):
                raise Stopped()
            backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)


def _staged_rows(
    batch: Sequence[InboundMessage], parsed: Sequence[ParsedMessage]
) -> list[StagedRow]:
    rows: list[StagedRow] = []
    seq = 0
    for message, result in zip(batch, parsed, strict=True):
        if result.device_id is None:
            continue
        for reading in result.readings:
            for metric, value in reading.metrics.items():
                rows.append((seq, result.device_id, reading.ts, metric, value, message.received_at))
                seq += 1
    return rows


def _events(
    batch: Sequence[InboundMessage], parsed: Sequence[ParsedMessage], new: set[ReadingKey]
) -> list[StreamEntry]:
    """One TelemetryRecorded per message with newly stored readings, in message order."""
    unclaimed = set(new)  # the first message holding a reading is the one that stored it
    ingested_at = datetime.now(UTC)
    entries: list[StreamEntry] = []
    for result in parsed:
        device_id = result.device_id
        if device_id is None or not result.readings:
            continue
        readings: list[RecordedReading] = []
        for reading in result.readings:
            metrics = {}
            for metric, value in reading.metrics.items():
                key = (device_id, metric, reading.ts)
                if key in unclaimed:
                    unclaimed.discard(key)
                    metrics[metric] = value
            if metrics:
                readings.append(
                    RecordedReading(
                        ts=reading.ts,
                        metrics=metrics,
                        out_of_range=tuple(m for m in reading.out_of_range if m in metrics),
                    )
                )
        if readings:
            event = TelemetryRecorded(
                device_id=device_id, readings=tuple(readings), ingested_at=ingested_at
            )
            entries.append(to_fields(event))
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
