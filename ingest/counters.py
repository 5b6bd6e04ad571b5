"""Ingest counters: exposed to Prometheus, and snapshotted to Redis for `iotp status`."""

from __future__ import annotations

import time
from collections import Counter as Tally

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class IngestCounters:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self._received = Counter(
            "iotp_ingest_messages_received", "MQTT messages received", registry=r
        )
        self._stored = Counter(
            "iotp_ingest_readings_stored",
            "Data points newly stored (one metric at one ts)",
            registry=r,
        )
        self._duplicates = Counter(
            "iotp_ingest_readings_duplicate", "Data points skipped as already stored", registry=r
        )
        self._deadletters = Counter(
            "iotp_ingest_deadletters", "Dead-letter entries written", ["reason"], registry=r
        )
        self._batches = Counter("iotp_ingest_batches", "Batches committed", registry=r)
        self._events = Counter(
            "iotp_ingest_events_published", "TelemetryRecorded events published", registry=r
        )
        self._retries = Counter(
            "iotp_ingest_retries",
            "Retries while a service was unreachable",
            ["service"],
            registry=r,
        )
        self._batch_seconds = Histogram(
            "iotp_ingest_batch_seconds",
            "Time from a batch's first message to its acknowledgement",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.inflight = Gauge(
            "iotp_ingest_inflight_messages",
            "Messages received and not yet acknowledged",
            registry=r,
        )
        self.totals: Tally[str] = Tally()
        self.deadletter_reasons: Tally[str] = Tally()
        self.last_batch_seconds = 0.0
        self.started_at = time.time()

    def received(self, messages: int) -> None:
        self._received.inc(messages)
        self.totals["received"] += messages

    def batch(self, stored: int, duplicates: int, events: int, seconds: float) -> None:
        self._stored.inc(stored)
        self._duplicates.inc(duplicates)
        self._events.inc(events)
        self._batches.inc()
        self._batch_seconds.observe(seconds)
        self.totals.update(stored=stored, duplicates=duplicates, events=events, batches=1)
        self.last_batch_seconds = seconds

    def deadlettered(self, reasons: list[str]) -> None:
        for reason in reasons:
            self._deadletters.labels(reason).inc()
        self.deadletter_reasons.update(reasons)
        self.totals["deadletters"] += len(reasons)

    def retried(self, service: str) -> None:
        self._retries.labels(service).inc()
        self.totals[f"retries_{service}"] += 1

    def snapshot(self) -> dict[str, str | int | float]:
        """Flat values for the Redis hash that `iotp status` reads."""
        values: dict[str, str | int | float] = {
            key: self.totals[key]
            for key in ("received", "stored", "duplicates", "deadletters", "events", "batches")
        }
        values["last_batch_ms"] = round(self.last_batch_seconds * 1000, 1)
        values["started_at"] = self.started_at
        values["updated_at"] = time.time()
        return values
