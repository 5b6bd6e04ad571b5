"""HTTP telemetry in a process of its own, started and stopped by `iotp ingest`.

The web stack (FastAPI, uvicorn, their pool and the HTTP pipeline) is 15 MB of an ingest's
memory, and a second event loop contending for its interpreter lock; in a child process it
costs the MQTT ingest neither (docs/benchmarks.md, issue 23). To the operator nothing
changes: `iotp ingest` serves IOTP_INGEST_HTTP_PORT, logs to the same output, counts HTTP
messages in its own counters (Prometheus and `iotp status`), and ends with it.

- The parent binds the port (a taken port is a warning, as before; connections made while
  the child starts wait in the backlog) and hands the socket over.
- The child sends its counters' calls down a pipe as lines of JSON, which the parent
  applies to its own, and ``["ready"]`` once it serves.
- Told to stop (SIGTERM, to it or to the process group) it stores and answers what it
  accepted, then ends; it stops by itself if its parent is gone.
- If it ends on its own, the parent stops too, and fails if it failed, as when the HTTP
  pipeline failed in-process. The MQTT ingest does not wait for it to serve (it took half
  of ingest's start-up); if it does not within STARTUP_SECONDS, the parent stops and fails.

Its pipeline is the one the in-process server had: its own writer and ledger consumer
``<client id>:http``.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson

from ingest.counters import IngestCounters
from iotp.errors import ServiceUnavailable
from iotp.settings import Settings

logger = logging.getLogger(__name__)

# The server's own times (ingest/http_server.py): to start, to store what it accepted
# before it stops, and for uvicorn's graceful shutdown.
START_SECONDS = 15.0
DRAIN_SECONDS = 5.0
SHUTDOWN_SECONDS = 5.0
# The child's start: its imports, service checks and the registry's load, then the server's.
STARTUP_SECONDS = 30.0 + START_SECONDS
# Its stop: what it accepted stored, the server stopped (joined for twice its shutdown),
# and a margin for the process's exit.
STOP_SECONDS = DRAIN_SECONDS + 2 * SHUTDOWN_SECONDS + 5.0
PARENT_POLL_SECONDS = 0.5
# IngestCounters' methods the child may call on the parent's counters.
FORWARDED = frozenset({"received", "batch", "deadlettered", "retried"})


def http_client_id(client_id: str) -> str:
    """The name of the HTTP process's ledger consumer."""
    return f"{client_id}:http"


def http_listener(settings: Settings) -> socket.socket | None:
    """The listening socket of IOTP_INGEST_HTTP_PORT; None when the port is 0, or taken (a
    warning, as for the metrics port: several instances on one host)."""
    port = settings.ingest_http_port
    if not port:
        return None
    try:
        return socket.create_server((settings.ingest_http_host, port))
    except OSError as exc:
        logger.warning("HTTP telemetry port %s unavailable, not serving it: %s", port, exc)
        return None


class HttpChildFailed(RuntimeError):
    pass


class HttpChild:
    """The child process, from its start to its end, seen from the parent."""

    def __init__(
        self,
        settings: Settings,
        client_id: str,
        listener: socket.socket,
        counters: IngestCounters,
    ) -> None:
        self.settings, self.counters = settings, counters
        self.stopping = threading.Event()  # its end was asked for
        feed, feed_end = os.pipe()
        try:
            self.process = subprocess.Popen(  # noqa: S603 - our interpreter and module
                [
                    sys.executable,
                    "-m",
                    "ingest.http_process",
                    "--client-id",
                    client_id,
                    "--listen-fd",
                    str(listener.fileno()),
                    "--feed-fd",
                    str(feed_end),
                    "--log-level",
                    logging.getLevelName(logging.getLogger().getEffectiveLevel()),
                ],
                pass_fds=(listener.fileno(), feed_end),
                # Its settings are this process's: the environment, and the instance name
                # if `--instance` gave it.
                env={**os.environ, "IOTP_INGEST_INSTANCE": settings.ingest_instance},
            )
        finally:
            os.close(feed_end)
        self._feed, self._pending = feed, b""
        self.ready = threading.Event()  # it said it serves
        self.never_served = False  # it did not, within STARTUP_SECONDS

    def check_started(self, stop: threading.Event) -> None:
        """Wait up to STARTUP_SECONDS for it to serve; if it does not, end it and ``stop``."""
        if self.ready.wait(STARTUP_SECONDS) or self.stopping.is_set():
            return
        self.never_served = True
        logger.error(
            "the HTTP telemetry process did not start serving %s:%s in %.0f s; stopping ingest",
            self.settings.ingest_http_host,
            self.settings.ingest_http_port,
            STARTUP_SECONDS,
        )
        stop.set()

    def _received(self, chunk: bytes) -> None:
        *lines, self._pending = (self._pending + chunk).split(b"\n")
        for line in lines:
            self._apply(line)

    def watch(self, stop: threading.Event) -> None:
        """Apply the child's counters until it ends; if it ends before it was asked to,
        ``stop`` the ingest too.

        Code 0 is a clean stop by a signal to it or to the whole process group (a terminal's
        Ctrl-C, a supervisor's SIGTERM): this process is stopping as well.
        """
        with os.fdopen(self._feed, "rb") as feed:
            while chunk := feed.read1(65536):
                self._received(chunk)
        code = self.process.wait()
        if self.stopping.is_set():
            return
        if code == 0:
            logger.info("the HTTP telemetry process stopped; stopping ingest")
        else:
            logger.error("the HTTP telemetry process ended (code %s); stopping ingest", code)
        stop.set()

    def _apply(self, line: bytes) -> None:
        try:
            name, *args = orjson.loads(line)
        except (orjson.JSONDecodeError, ValueError):
            logger.warning("unreadable counters from the HTTP telemetry process: %r", line[:200])
            return
        if name == "ready":
            self.ready.set()
        elif name in FORWARDED:
            getattr(self.counters, name)(*args)

    @property
    def failed(self) -> bool:
        """It ended with an error before it was asked to stop."""
        return not self.stopping.is_set() and self.process.poll() not in (None, 0)

    def stop(self) -> None:
        """SIGTERM (it stores what it accepted, then ends), then SIGKILL past STOP_SECONDS."""
        self.stopping.set()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            logger.warning("the HTTP telemetry process did not stop in %.0f s", STOP_SECONDS)
            self.process.kill()
            self.process.wait()


@contextmanager
def serving_http_in_child(
    settings: Settings, client_id: str, counters: IngestCounters, stop: threading.Event
) -> Iterator[None]:
    """Serve HTTP telemetry from a child process while the block runs (nothing when the port
    is 0 or taken), its messages counted in ``counters``. The block does not wait for it
    to serve. If it fails on its own, or does not serve within STARTUP_SECONDS, ``stop`` is
    set and :class:`HttpChildFailed` raised when the block ends."""
    listener = http_listener(settings)
    if listener is None:
        yield
        return
    with listener:  # the child holds its own copy
        child = HttpChild(settings, client_id, listener, counters)
    watcher = threading.Thread(
        target=child.watch, args=(stop,), name="iotp-ingest-http-child", daemon=True
    )
    watcher.start()
    starting = threading.Thread(
        target=child.check_started, args=(stop,), name="iotp-ingest-http-start", daemon=True
    )
    starting.start()
    failed = False
    try:
        yield
    finally:
        failed = child.failed
        child.stop()
        child.ready.set()  # (ends the start's check)
        watcher.join()
        starting.join()
    if child.never_served:
        raise HttpChildFailed(
            f"the HTTP telemetry process did not start serving in {STARTUP_SECONDS:.0f} s"
        )
    if failed:
        raise HttpChildFailed(
            f"the HTTP telemetry process ended with code {child.process.returncode}"
        )


class ForwardedCounters(IngestCounters):
    """The child's counters: each call is also sent to the parent, which counts it as its
    own (one line of JSON per call; a lock keeps the pipeline's threads' lines whole)."""

    def __init__(self, feed: int) -> None:
        super().__init__()
        self._feed = feed
        self._lock = threading.Lock()

    def _send(self, *call: Any) -> None:
        line = orjson.dumps(call) + b"\n"
        with self._lock:
            view = memoryview(line)
            while view:
                view = view[os.write(self._feed, view) :]

    def ready(self) -> None:
        """Tell the parent that the server is serving."""
        self._send("ready")

    def received(self, messages: int) -> None:
        super().received(messages)
        self._send("received", messages)

    def batch(self, stored: int, duplicates: int, events: int, seconds: float) -> None:
        super().batch(stored, duplicates, events, seconds)
        self._send("batch", stored, duplicates, events, seconds)

    def deadlettered(self, reasons: list[str]) -> None:
        super().deadlettered(reasons)
        if reasons:
            self._send("deadlettered", reasons)

    def retried(self, service: str) -> None:
        super().retried(service)
        self._send("retried", service)


def main(argv: list[str] | None = None) -> None:
    """The child: serve on the inherited socket until SIGTERM, SIGINT or the parent's end."""
    parser = argparse.ArgumentParser(prog="python -m ingest.http_process")
    parser.add_argument("--client-id", required=True)
    parser.add_argument("--listen-fd", type=int, required=True)
    parser.add_argument("--feed-fd", type=int, required=True)
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)

    from iotp.command_line import load_settings, stop_on_signals
    from iotp.logs import configure_logging

    configure_logging(args.log_level)
    stop = stop_on_signals()
    parent = os.getppid()
    counters = ForwardedCounters(args.feed_fd)

    def serving() -> None:
        counters.ready()
        while not stop.wait(PARENT_POLL_SECONDS):
            if os.getppid() != parent:
                logger.warning("the ingest process that started this one is gone; stopping")
                stop.set()

    from ingest.service import run_http_ingest

    try:
        run_http_ingest(
            load_settings(),
            http_client_id(args.client_id),
            args.listen_fd,
            counters,
            stop,
            serving,
        )
    except ServiceUnavailable as exc:
        logger.error("%s", exc)
        sys.exit(1)
    finally:
        os.close(args.feed_fd)


if __name__ == "__main__":
    main()
