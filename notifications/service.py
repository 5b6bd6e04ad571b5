"""Wiring of one notifier process (`iotp notify`): the intake, the delivery workers, the log.

Each runs in a thread of its own with its own connections and rides out outages of
PostgreSQL and Redis (iotp.retry); an unexpected error in any of them stops the process, so
that its supervisor restarts it. Nothing is lost by stopping anywhere: the intake
acknowledges only what it committed, deliveries are retried from the database, and the log
catches up from the delivery rows.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import httpx
import psycopg
from psycopg.rows import dict_row

from iotp.db import connect
from iotp.preflight import (
    READ_DATABASE_SETTING,
    require_migrated_database,
    require_read_store,
    require_redis,
)
from iotp.redis_client import redis_for
from iotp.settings import Settings
from iotp.webhook_secrets import SecretBox
from notifications.backoff import RetryPolicy
from notifications.deliveries import DeliveryWorker, Sender
from notifications.delivery_log import DeliveryLog
from notifications.intake import NOTIFIER_GROUP, IntakeOptions, alarm_intake
from notifications.secret_rotation import reseal_secrets

logger = logging.getLogger(__name__)

Runnable = Callable[[threading.Event], None]


class NotifierFailed(RuntimeError):
    """A part of the notifier stopped on an error that is not an outage."""


def _connector(url: str, setting: str) -> Callable[[], psycopg.Connection[Any]]:
    def open_connection() -> psycopg.Connection[Any]:
        return connect(url, setting=setting, autocommit=True, row_factory=dict_row)

    return open_connection


def http_client(settings: Settings) -> httpx.Client:
    """The client deliveries are posted with: bounded in time, never following a redirect.

    No connection is kept for reuse: a delivery connects to an address with the TLS server
    name of its own webhook, and a kept connection would serve another name at that address.
    """
    return httpx.Client(
        timeout=settings.notify_timeout_seconds,
        follow_redirects=False,
        limits=httpx.Limits(max_keepalive_connections=0),
    )


def run_notifier(settings: Settings, stop: threading.Event) -> None:
    """Notify until ``stop`` is set. Raises :class:`ServiceUnavailable` if a service is down."""
    require_migrated_database(settings)
    require_read_store(settings)
    require_redis(settings)
    secrets = SecretBox(settings.notify_secret_key)  # a malformed key stops the start here
    write = _connector(settings.database_url, "IOTP_DATABASE_URL")
    with write() as conn:
        reseal_secrets(conn, secrets)
    read = _connector(settings.read_url(), READ_DATABASE_SETTING)
    client = redis_for(
        settings.redis_url, settings.redis_cluster, socket_connect_timeout=5, socket_timeout=30
    )
    due, changed = threading.Event(), threading.Event()

    def recorded() -> None:
        due.set()
        changed.set()

    intake = alarm_intake(
        client,
        write,
        IntakeOptions(
            consumer=settings.notifier_consumer(),
            batch_size=settings.notify_batch_size,
            block_ms=settings.notify_block_ms,
            claim_idle_ms=settings.notify_claim_idle_ms,
        ),
        on_recorded=recorded,
    )
    clients = [http_client(settings) for _ in range(settings.notify_workers)]
    policy = RetryPolicy.from_settings(settings)
    parts: dict[str, Runnable] = {"intake": intake.run}
    for number, http in enumerate(clients):
        sender = Sender(http, secrets, settings.notify_allow_private_targets)
        worker = DeliveryWorker(
            write, sender, policy, due, settings.notify_poll_seconds, changed.set
        )
        parts[f"delivery-{number}"] = worker.run
    parts["log"] = DeliveryLog(
        write, read, changed, settings.notify_poll_seconds, settings.notify_keep_days
    ).run
    logger.info(
        "notifying as %s in group %s with %s delivery workers",
        settings.notifier_consumer(),
        NOTIFIER_GROUP,
        settings.notify_workers,
    )
    try:
        run_parts(parts, stop)
    finally:
        for http in clients:
            http.close()
        client.close()


def run_parts(parts: dict[str, Runnable], stop: threading.Event) -> None:
    """Run every part in its own thread until ``stop``; the first unexpected error stops all."""
    failures: list[tuple[str, BaseException]] = []

    def guarded(name: str, part: Runnable) -> Callable[[], None]:
        def body() -> None:
            try:
                part(stop)
            except BaseException as exc:
                logger.exception("notifier %s failed", name)
                failures.append((name, exc))
                stop.set()

        return body

    threads = [
        threading.Thread(target=guarded(name, part), name=f"notifier-{name}", daemon=True)
        for name, part in parts.items()
    ]
    for thread in threads:
        thread.start()
    while not stop.wait(1.0):  # a timed wait lets the main thread take signals promptly
        pass
    for thread in threads:
        thread.join()
    if failures:
        name, error = failures[0]
        raise NotifierFailed(f"notifier {name} failed: {error}") from error
