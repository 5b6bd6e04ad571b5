"""The platform a benchmark runs: `iotp` child processes, and its progress read off Redis.

Progress comes from two O(1) Redis calls, never from counting table rows while the
platform runs (a ``count(*)`` every few milliseconds would be PostgreSQL's biggest load):
- stored: events ever added to the telemetry stream. Ingest publishes a message's event
  only after its readings committed, so this counts messages stored.
- applied: events the aggregator group has read and acknowledged; an aggregator
  acknowledges only after the read models committed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import redis

from benchmarks.processes import peak_rss_mb
from benchmarks.stores import child_env
from iotp.names import TELEMETRY_EVENTS_STREAM
from iotp.settings import Settings
from read_models.consumer import AGGREGATOR_GROUP

INSTANCE = "bench"
SAMPLE_SECONDS = 0.25


class Child:
    """One `iotp` command run by a benchmark, its output appended to a log file."""

    def __init__(self, command: str, env: dict[str, str], log: Path) -> None:
        self.command, self.log = command, log
        self._offset = log.stat().st_size if log.exists() else 0
        self.process = subprocess.Popen(  # noqa: S603 - our own interpreter and command
            [sys.executable, "-m", "cli", command],
            env=env,
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
        )
        self.ps = psutil.Process(self.process.pid)

    def output(self) -> str:
        with self.log.open("rb") as handle:
            handle.seek(self._offset)
            return handle.read().decode("utf-8", "replace")

    def wait_for(self, text: str, timeout: float = 60) -> None:
        """Wait until this run of the command has logged ``text``."""
        deadline = time.monotonic() + timeout
        while text not in self.output():
            self.check()
            if time.monotonic() > deadline:
                raise RuntimeError(f"iotp {self.command} did not start:\n{self.output()[-3000:]}")
            time.sleep(0.02)

    def check(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(f"iotp {self.command} died:\n{self.output()[-3000:]}")

    def peak_rss_mb(self) -> float:
        return peak_rss_mb(self.ps)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_ingest(settings: Settings, mqtt_url: str, log: Path, **extra: str) -> Child:
    extra.setdefault("ingest_instance", INSTANCE)
    env = child_env(
        settings,
        mqtt_url=mqtt_url,
        ingest_metrics_port="0",
        log_level=os.environ.get("IOTP_BENCH_INGEST_LOG_LEVEL", "INFO"),
        **extra,
    )
    child = Child("ingest", env, log)
    child.wait_for("subscribed to")
    return child


def start_aggregator(settings: Settings, log: Path, **extra: str) -> Child:
    extra.setdefault("aggregator_instance", INSTANCE)
    env = child_env(settings, **extra)
    child = Child("aggregate", env, log)
    child.wait_for("aggregating as")
    return child


def event_counts(client: redis.Redis) -> tuple[int, int]:
    """(events ever added to the telemetry stream, events the aggregators acknowledged)."""
    try:
        stream: Any = client.xinfo_stream(TELEMETRY_EVENTS_STREAM)
    except redis.ResponseError:  # no stream yet
        return 0, 0
    added = int(stream["entries-added"])
    for group in client.xinfo_groups(TELEMETRY_EVENTS_STREAM):
        if _text(group["name"]) == AGGREGATOR_GROUP:
            read = group.get("entries-read")
            # Redis reports entries-read as unknown after some trims; the lag still holds.
            done = (added - int(group["lag"] or 0)) if read is None else int(read)
            return added, done - int(group["pending"])
    return added, 0


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


@dataclass
class Progress:
    """Samples the event counts in a thread, from ``start()``."""

    redis_url: str
    samples: list[tuple[float, int, int]] = field(default_factory=list)  # (s, stored, applied)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    started: float = 0.0

    def start(self) -> None:
        self.started = time.perf_counter()
        self._thread = threading.Thread(target=self._run, name="bench-progress", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        client = redis.Redis.from_url(self.redis_url)
        while True:
            stored, applied = event_counts(client)
            self.samples.append((time.perf_counter() - self.started, stored, applied))
            if self._stop.wait(SAMPLE_SECONDS):
                return

    def wait(
        self, stored: int, applied: int, timeout: float, children: list[Child]
    ) -> tuple[float | None, float | None]:
        """Seconds from start until ``stored`` and ``applied`` events; None if not reached."""
        client = redis.Redis.from_url(self.redis_url)
        stored_at: float | None = None
        applied_at: float | None = None
        while True:
            now = time.perf_counter() - self.started
            have_stored, have_applied = event_counts(client)
            if stored_at is None and have_stored >= stored:
                stored_at = now
            if applied_at is None and have_applied >= applied:
                applied_at = now
            if (stored_at is not None and applied_at is not None) or now > timeout:
                return stored_at, applied_at
            for child in children:
                child.check()
            time.sleep(0.01)

    def stop(self) -> list[tuple[float, int, int]]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return self.samples
