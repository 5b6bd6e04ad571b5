"""Serving HTTP telemetry, in the process `iotp ingest` starts for it (ingest/http_process.py).

Two threads: uvicorn on an event loop of its own (the requests, which only wait
on their completions), and an ingest pipeline over the HTTP inbox (its own writer, its own
database session and ledger consumer ``<client id>:http``, so that MQTT batches never wait
for HTTP ones). At the end, requests already accepted are stored and answered first (for up
to DRAIN_SECONDS), then the rest are answered 503, then the server stops.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import uvicorn

from ingest.http_inbox import HttpInbox
from ingest.http_process import DRAIN_SECONDS, SHUTDOWN_SECONDS, START_SECONDS
from ingest.http_telemetry import create_http_telemetry_app
from ingest.pipeline import IngestPipeline
from iotp.errors import ServiceUnavailable
from iotp.settings import Settings

logger = logging.getLogger(__name__)


@contextmanager
def serving_http_telemetry(
    settings: Settings,
    make_pipeline: Callable[[HttpInbox], IngestPipeline],
    stop: threading.Event,
    listener: socket.socket,
) -> Iterator[None]:
    """Serve ``POST /telemetry/{device_id}`` on ``listener`` while the block runs.

    If the HTTP pipeline fails, ``stop`` is set (the process ends) and the failure is raised
    when the block ends. ``listener`` is closed at the end.
    """
    port = listener.getsockname()[1]
    inbox = HttpInbox(settings.ingest_http_max_pending, settings.ingest_max_buffered_bytes)
    pipeline = make_pipeline(inbox)
    halt = threading.Event()
    failure: list[BaseException] = []

    def run_pipeline() -> None:
        try:
            pipeline.run(halt)
        except BaseException as exc:
            logger.exception("the HTTP telemetry pipeline failed; stopping ingest")
            failure.append(exc)
            inbox.abandon()
            stop.set()

    server = uvicorn.Server(
        uvicorn.Config(
            create_http_telemetry_app(settings, inbox),
            log_config=None,  # the process's logging is set up by its entry point
            log_level="warning",  # its start and stop lines would repeat ours
            access_log=False,
            timeout_graceful_shutdown=int(SHUTDOWN_SECONDS),
        )
    )
    serving = threading.Thread(
        target=server.run, kwargs={"sockets": [listener]}, name="iotp-ingest-http", daemon=True
    )
    writing = threading.Thread(target=run_pipeline, name="iotp-ingest-http-pipeline")
    try:
        writing.start()
        serving.start()
        _wait_started(server, serving, settings)
        logger.info("HTTP telemetry on %s:%s", settings.ingest_http_host, port)
        yield
    finally:
        inbox.close()
        if not inbox.drained(DRAIN_SECONDS):
            logger.warning("%s HTTP requests not stored before stopping", inbox.pending())
        halt.set()
        writing.join()
        inbox.abandon()
        server.should_exit = True
        serving.join(SHUTDOWN_SECONDS * 2)
        pipeline.store.close()
        listener.close()
    if failure:
        raise failure[0]


def _wait_started(server: uvicorn.Server, thread: threading.Thread, settings: Settings) -> None:
    deadline = time.monotonic() + START_SECONDS
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise ServiceUnavailable(
                "HTTP telemetry",
                "IOTP_INGEST_HTTP_PORT",
                f"{settings.ingest_http_host}:{settings.ingest_http_port}",
                "the server did not start (its stores did not answer: see the log above)",
            )
        time.sleep(0.05)
