"""Posting deliveries: at least once, one attempt at a time per delivery, retried until due.

A worker locks one due delivery (``FOR UPDATE SKIP LOCKED``: other workers and other
notifier processes pass over it), posts it, and records the outcome in the same transaction.
So a delivery is marked delivered only after its receiver answered 2xx; a crash between the
answer and the commit releases the lock and the delivery is posted again, with the same
``Idempotency-Key``, which the receiver uses to recognise it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
import psycopg

from iotp.db import ReconnectingConnection
from iotp.errors import first_line
from iotp.retry import Stopped, retry_transient
from notifications.backoff import RetryPolicy, after_attempt
from notifications.signing import delivery_headers

logger = logging.getLogger(__name__)

MAX_ERROR_LENGTH = 500

_CLAIM_DUE = """
SELECT d.delivery_id, d.event_type, d.body, d.attempts, d.created_at, w.url, w.secret,
       w.deleted_at, now() AS now
FROM webhook_deliveries d JOIN webhooks w USING (webhook_id)
WHERE d.state = 'pending' AND d.next_attempt_at <= now()
ORDER BY d.next_attempt_at
LIMIT 1
FOR UPDATE OF d SKIP LOCKED
"""
_RECORD_ATTEMPT = """
UPDATE webhook_deliveries
SET attempts = attempts + 1, last_attempt_at = %(now)s, last_status = %(status)s,
    last_error = %(error)s, state = %(state)s,
    next_attempt_at = coalesce(%(next_attempt_at)s, next_attempt_at),
    finished_at = CASE WHEN %(state)s = 'pending' THEN NULL ELSE %(now)s END,
    revision = revision + 1
WHERE delivery_id = %(delivery_id)s
"""
# A delivery recorded while its webhook was being deleted (the deletion cancels the ones
# already there) has nowhere to go either.
_CANCEL = (
    "UPDATE webhook_deliveries SET state = 'failed', last_error = 'webhook deleted',"
    " finished_at = now(), revision = revision + 1 WHERE delivery_id = %s"
)


@dataclass(frozen=True)
class Attempt:
    status: int | None  # the receiver's HTTP status; None when there was no answer
    error: str | None  # why it did not count as delivered

    @property
    def succeeded(self) -> bool:
        return self.error is None


def post(http: httpx.Client, row: dict[str, Any], timestamp: int) -> Attempt:
    """One attempt: POST the stored body, signed when the webhook has a secret."""
    body = row["body"].encode()
    headers = delivery_headers(
        str(row["delivery_id"]), row["event_type"], body, row["secret"], timestamp
    )
    try:
        # Streamed and never read: only the status counts, whatever size of body comes back.
        with http.stream("POST", row["url"], content=body, headers=headers) as answer:
            status = answer.status_code
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        return Attempt(None, f"{type(exc).__name__}: {first_line(exc)}"[:MAX_ERROR_LENGTH])
    if 200 <= status < 300:
        return Attempt(status, None)
    return Attempt(status, f"HTTP {status}")


def deliver_next(conn: psycopg.Connection[Any], http: httpx.Client, policy: RetryPolicy) -> bool:
    """Post the most overdue delivery no one else holds; False when none is due."""
    with conn.transaction():
        row = conn.execute(_CLAIM_DUE).fetchone()
        if row is None:
            return False
        if row["deleted_at"] is not None:
            conn.execute(_CANCEL, (row["delivery_id"],))
            return True
        now: datetime = row["now"]
        attempt = post(http, row, int(now.timestamp()))
        attempts = row["attempts"] + 1
        decision = after_attempt(
            policy,
            succeeded=attempt.succeeded,
            attempts=attempts,
            created_at=row["created_at"],
            now=now,
        )
        conn.execute(
            _RECORD_ATTEMPT,
            {
                "delivery_id": row["delivery_id"],
                "now": now,
                "status": attempt.status,
                "error": attempt.error,
                "state": decision.state,
                "next_attempt_at": decision.next_attempt_at,
            },
        )
    if decision.state == "failed":
        logger.warning(
            "gave up delivery %s after %s attempts: %s", row["delivery_id"], attempts, attempt.error
        )
    elif not attempt.succeeded:
        logger.info(
            "delivery %s attempt %s failed (%s); next at %s",
            row["delivery_id"],
            attempts,
            attempt.error,
            decision.next_attempt_at,
        )
    return True


class DeliveryWorker:
    """Posts due deliveries until stopped; sleeps until woken or the poll interval passes."""

    def __init__(
        self,
        connect: Callable[[], psycopg.Connection[Any]],
        http: httpx.Client,
        policy: RetryPolicy,
        wake: threading.Event,
        poll_seconds: float,
        on_progress: Callable[[], None] = lambda: None,
    ) -> None:
        self.http, self.policy = http, policy
        self.wake, self.poll_seconds, self.on_progress = wake, poll_seconds, on_progress
        self._db = ReconnectingConnection(connect)

    def close(self) -> None:
        self._db.close()

    def step(self, stop: threading.Event | None = None) -> int:
        """Post every due delivery (until ``stop``); how many attempts were made."""
        made = 0
        while not (stop is not None and stop.is_set()) and deliver_next(
            self._db(), self.http, self.policy
        ):
            made += 1
        if made:
            self.on_progress()
        return made

    def run(self, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                retry_transient(
                    lambda: self.step(stop),
                    stop,
                    task="notifier delivery",
                    on_retry=lambda _: self.close(),
                )
                if self.wake.wait(self.poll_seconds):
                    self.wake.clear()
        except Stopped:
            return
        finally:
            self.close()
