"""The platform a benchmark runs: `iotp` child processes, and its progress read off Redis.

Progress comes from two O(1) Redis calls, never from counting table rows while the
platform runs (a ``count(*)`` every few milliseconds would be PostgreSQL's biggest load):
- stored: events ever added to the telemetry stream (summed over its shards). Ingest
  publishes a message's event only after its readings committed, so this counts messages
  stored.
- applied: events the aggregator group has read and acknowledged; an aggregator
  acknowledges only after the read models committed.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import redis

from benchmarks.processes import peak_rss_mb
from benchmarks.stores import BENCH_TOKEN
from iotp.event_shards import telemetry_streams
from iotp.processes import IotpProcess, ProcessFailed, iotp_environment
from iotp.redis_client import redis_for, text
from iotp.settings import Settings
from read_models.consumer import AGGREGATOR_GROUP

INSTANCE = "bench"
SAMPLE_SECONDS = 0.25
STOP_GRACE_SECONDS = 30.0


class BenchProcess(IotpProcess):
    """An `iotp` service a benchmark runs (the one launcher), seen by psutil for CPU and memory.

    Its CPU time is read from /proc through psutil while it runs (CpuMeter), before it is
    stopped: unlike processes.reap(), nothing here waits for it behind the launcher's back.
    """

    @property
    def ps(self) -> psutil.Process:
        return psutil.Process(self.pid)

    def family(self) -> list[psutil.Process]:
        """The process and those it started (ingest's HTTP telemetry process), whose CPU is
        the command's too."""
        try:
            return [self.ps, *self.ps.children(recursive=True)]
        except psutil.NoSuchProcess:
            return [self.ps]

    def peak_rss_mb(self) -> float:
        """The largest peak RSS of the command's processes (the target is per process)."""
        return max(peak_rss_mb(process) for process in self.family())


def start_service(
    settings: Settings, args: Sequence[str], log: Path, ready: str | None = None, **extra: str
) -> BenchProcess:
    """Start ``iotp ARGS`` with only the bench's settings (and ``extra``); wait for ``ready``."""
    env = iotp_environment(
        {
            "database_url": settings.database_url,
            "redis_url": settings.redis_url,
            "redis_cluster": str(settings.redis_cluster).lower(),
            "event_shards": str(settings.event_shards),
            "api_token": BENCH_TOKEN,
            **extra,
        },
        inherit_settings=False,
    )
    child = BenchProcess(args, env, log).start()
    if ready is not None:
        try:
            child.wait_for(ready)
        except ProcessFailed:
            child.stop(STOP_GRACE_SECONDS)
            raise
    return child


INGEST_READY = "subscribed to"
# Ingest ingests before its HTTP telemetry process serves; it has started once that serves
# (its log) or was not started (the port was taken: its warning).
INGEST_HTTP_STARTED = ("HTTP telemetry on", "HTTP telemetry port")


def wait_started(ingest: BenchProcess, timeout: float = 60.0) -> None:
    """Wait until ``ingest`` is subscribed and its HTTP telemetry process, if any, serves:
    start-up over, so that what is timed next is ingesting."""
    ingest.wait_for(INGEST_READY, timeout)
    wait_logged([ingest], INGEST_HTTP_STARTED, timeout)


def wait_logged(
    children: Sequence[BenchProcess], markers: Sequence[str], timeout: float = 60.0
) -> None:
    """Wait until one of ``children`` has logged one of ``markers``
    (:meth:`IotpProcess.wait_for` for several processes and texts); raise if one ends
    first, or none does in time."""
    deadline = time.monotonic() + timeout
    while not any(marker in child.output() for child in children for marker in markers):
        for child in children:
            child.check()
        if time.monotonic() > deadline:
            names = ", ".join(child.name for child in children)
            raise ProcessFailed(f"none of {names} logged any of {markers!r} in {timeout:.0f}s")
        time.sleep(0.02)


def start_ingest(
    settings: Settings, mqtt_url: str, log: Path, *, wait: bool = True, **extra: str
) -> BenchProcess:
    """An ingest, started (:func:`wait_started`) on return; without ``wait``, only launched
    (``INGEST_READY`` in its log says when it is subscribed), so that several start
    together."""
    extra.setdefault("ingest_instance", INSTANCE)
    extra.setdefault("log_level", os.environ.get("IOTP_BENCH_INGEST_LOG_LEVEL", "INFO"))
    child = start_service(
        settings, ["ingest"], log, None, mqtt_url=mqtt_url, ingest_metrics_port="0", **extra
    )
    if wait:
        try:
            wait_started(child)
        except ProcessFailed:
            child.stop(STOP_GRACE_SECONDS)
            raise
    return child


def start_aggregator(settings: Settings, log: Path, **extra: str) -> BenchProcess:
    extra.setdefault("aggregator_instance", INSTANCE)
    return start_service(settings, ["aggregate"], log, "aggregating as", **extra)


def event_counts(client: redis.Redis, shards: int = 1) -> tuple[int, int]:
    """(events ever added to the telemetry streams, events the aggregators acknowledged),
    summed over the ``shards`` telemetry streams."""
    added = applied = 0
    for stream in telemetry_streams(shards):
        shard_added, shard_applied = _stream_counts(client, stream)
        added += shard_added
        applied += shard_applied
    return added, applied


def _stream_counts(client: redis.Redis, stream_name: str) -> tuple[int, int]:
    try:
        stream: Any = client.xinfo_stream(stream_name)
    except redis.ResponseError:  # no stream yet
        return 0, 0
    added = int(stream["entries-added"])
    for group in client.xinfo_groups(stream_name):
        if text(group["name"]) == AGGREGATOR_GROUP:
            read = group.get("entries-read")
            # Redis reports entries-read as unknown after some trims; the lag still holds.
            done = (added - int(group["lag"] or 0)) if read is None else int(read)
            return added, done - int(group["pending"])
    return added, 0


@dataclass
class Progress:
    """Samples the event counts in a thread, from ``start()``."""

    redis_url: str
    cluster: bool = False  # IOTP_REDIS_CLUSTER of the platform measured
    shards: int = 1  # its IOTP_EVENT_SHARDS
    samples: list[tuple[float, int, int]] = field(default_factory=list)  # (s, stored, applied)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    started: float = 0.0

    def start(self) -> None:
        self.started = time.perf_counter()
        self._thread = threading.Thread(target=self._run, name="bench-progress", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        client = redis_for(self.redis_url, self.cluster)
        while True:
            stored, applied = event_counts(client, self.shards)
            self.samples.append((time.perf_counter() - self.started, stored, applied))
            if self._stop.wait(SAMPLE_SECONDS):
                return

    def wait(
        self, stored: int, applied: int, timeout: float, children: list[BenchProcess]
    ) -> tuple[float | None, float | None]:
        """Seconds from start until ``stored`` and ``applied`` events; None if not reached."""
        client = redis_for(self.redis_url, self.cluster)
        stored_at: float | None = None
        applied_at: float | None = None
        while True:
            now = time.perf_counter() - self.started
            have_stored, have_applied = event_counts(client, self.shards)
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
