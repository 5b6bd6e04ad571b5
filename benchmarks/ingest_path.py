"""`iotp bench ingest-path`: CPU per message of ingest's own Python work, without any I/O.

Parsing and validating the payloads, laying out the COPY rows, building the events: the
steps `IngestPipeline` runs for every message between paho's callback and the database.
Measured with ``time.process_time`` over whole batches, best of ``rounds``: CPU time of this
process alone, so it is steady where the end-to-end benches move with the machine's load.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from benchmarks.processes import machine
from ingest.mqtt_source import InboundMessage
from ingest.payloads import DeviceInfo, Limits, MetricRange, ParsedMessage
from ingest.pipeline import _events, _staged_rows
from ingest.profiles_runtime import ProfileBook, ProfileRouter

DEVICES = 100
_RANGES = {
    "temperature": MetricRange(-40, 85),
    "humidity": MetricRange(0, 100),
    "battery": MetricRange(0, 100),
}


def _messages(count: int) -> list[InboundMessage]:
    now = datetime.now(UTC)
    return [
        InboundMessage(
            f"devices/dev-{n % DEVICES:04d}/telemetry",
            orjson.dumps(
                {
                    "ts": (now - timedelta(seconds=count - n)).isoformat(),
                    "metrics": {"temperature": 20.5 + n % 7, "humidity": 40.0 + n % 11,
                                "battery": 99.0},
                }
            ),
            n % 65535 + 1,
            1,
            1,
            now,
        )
        for n in range(count)
    ]  # fmt: skip


def _best_us_per_message(work: Callable[[], Any], messages: int, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        started = time.process_time()
        work()
        best = min(best, time.process_time() - started)
    return round(best / messages * 1e6, 2)


def run_ingest_path_bench(messages: int, rounds: int) -> dict[str, Any]:
    """Microseconds of CPU per single-reading message (three metrics) for each step."""
    devices = {
        f"dev-{n:04d}": DeviceInfo(f"dev-{n:04d}", "active", _RANGES) for n in range(DEVICES)
    }
    batch = _messages(messages)
    limits = Limits()

    # As ingest parses: by the profile the topic belongs to (here the built-in one).
    router = ProfileRouter(ProfileBook(), devices.get)

    def parse() -> list[ParsedMessage]:
        return [router.parse(m.topic, m.payload, m.received_at, limits) for m in batch]

    parsed = parse()
    rows = _staged_rows(batch, parsed)
    new = {row[0] for row in rows}
    gc.freeze()  # as ingest does after start-up (iotp.runtime.settle_gc)
    steps = {
        "parse": parse,
        "rows": lambda: _staged_rows(batch, parsed),
        "events": lambda: _events(batch, parsed, new),
    }
    report = {name: _best_us_per_message(work, messages, rounds) for name, work in steps.items()}
    return {
        "machine": machine(),
        "messages_per_batch": messages,
        "rounds": rounds,
        "us_per_message": {**report, "total": round(sum(report.values()), 2)},
    }
