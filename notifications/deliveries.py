"""Posting deliveries: at least once, one attempt at a time per delivery, retried until due.

A worker locks one due delivery (``FOR UPDATE SKIP LOCKED``: other workers and other
notifier processes pass over it), posts it, and records the outcome in the same transaction.
So a delivery is marked delivered only after its receiver answered 2xx; a crash between the
answer and the commit releases the lock and the delivery is posted again, with the same
``Idempotency-Key``, which the receiver uses to recognise it.

Each attempt resolves the webhook's host, refuses an address that is not public (a refusal
fails the delivery at once: retrying would not change the rule) and connects to the address
it checked (:mod:`notifications.targets`). The secret is decrypted only to sign.
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
from iotp.public_address import TargetRefused
from iotp.retry import Stopped, retry_transient
from iotp.webhook_secrets import SecretBox, SecretKeyMissing, SecretUndecryptable
from notifications.backoff import Decision, RetryPolicy, after_attempt
from notifications.signing import delivery_headers
from notifications.targets import pinned_target

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
class Sender:
    """How a worker posts: its HTTP client, whether private targets are allowed, the key."""

    http: httpx.Client
    secrets: SecretBox
    allow_private_targets: bool = False


@dataclass(frozen=True)
class Attempt:
    status: int | None  # the receiver's HTTP status; None when there was no answer
    error: str | None  # why it did not count as delivered
    refused: bool = False  # not posted, and never will be: the delivery fails now

    @property
    def succeeded(self) -> bool:
        return self.error is None


def _failure(prefix: str, exc: BaseException, *, refused: bool = False) -> Attempt:
    return Attempt(None, f"{prefix}: {first_line(exc)}"[:MAX_ERROR_LENGTH], refused)


def post(sender: Sender, row: dict[str, Any], timestamp: int) -> Attempt:
    """One attempt: POST the stored body to the checked address, signed when there is a secret."""
    body = row["body"].encode()
    try:
        secret = None if row["secret"] is None else sender.secrets.open(row["secret"])
    except (SecretKeyMissing, SecretUndecryptable) as exc:
        return _failure("cannot decrypt the webhook's secret", exc)
    try:
        target = pinned_target(row["url"], allow_private=sender.allow_private_targets)
    except TargetRefused as exc:
        return _failure("refused", exc, refused=True)
    except OSError as exc:  # the name does not resolve (now): tried again later
        return _failure("cannot resolve the URL's host", exc)
    headers = delivery_headers(str(row["delivery_id"]), row["event_type"], body, secret, timestamp)
    headers["Host"] = target.host_header
    try:
        # Streamed and never read: only the status counts, whatever size of body comes back.
        with sender.http.stream(
            "POST", target.url, content=body, headers=headers, extensions=target.extensions
        ) as answer:
            status = answer.status_code
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        return _failure(type(exc).__name__, exc)
    if 200 <= status < 300:
        return Attempt(status, None)
    return Attempt(status, f"HTTP {status}")


def deliver_next(conn: psycopg.Connection[Any], sender: Sender, policy: RetryPolicy) -> bool:
    """Post the most overdue delivery no one else holds; False when none is due."""
    with conn.transaction():
        row = conn.execute(_CLAIM_DUE).fetchone()
        if row is None:
            return False
        if row["deleted_at"] is not None:
            conn.execute(_CANCEL, (row["delivery_id"],))
            return True
        now: datetime = row["now"]
        attempt = post(sender, row, int(now.timestamp()))
        attempts = row["attempts"] + 1
        decision = (
            Decision("failed", None)
            if attempt.refused
            else after_attempt(
                policy,
                succeeded=attempt.succeeded,
                attempts=attempts,
                created_at=row["created_at"],
                now=now,
            )
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
        sender: Sender,
        policy: RetryPolicy,
        wake: threading.Event,
        poll_seconds: float,
        on_progress: Callable[[], None] = lambda: None,
    ) -> None:
        self.sender, self.policy = sender, policy
        self.wake, self.poll_seconds, self.on_progress = wake, poll_seconds, on_progress
        self._db = ReconnectingConnection(connect)

    def close(self) -> None:
        self._db.close()

    def step(self, stop: threading.Event | None = None) -> int:
        """Post every due delivery (until ``stop``); how many attempts were made."""
        made = 0
        while not (stop is not None and stop.is_set()) and deliver_next(
            self._db(), self.sender, self.policy
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
