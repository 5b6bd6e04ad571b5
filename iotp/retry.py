"""One retry policy for transient errors: every loop that talks to PostgreSQL, Redis or the broker.

An action that failed because a service went away for a while is run again, after a capped
exponential back-off with jitter, until it succeeds or the process is told to stop; any other
error propagates at once. The caller makes the action safe to repeat (a transaction that
rolled back, a batch not yet acknowledged): nothing here decides what a retry may redo.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import psycopg
import psycopg_pool
import redis
import tenacity

from iotp.errors import ServiceUnavailable, first_line

logger = logging.getLogger(__name__)

T = TypeVar("T")

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    # PostgreSQL: connection refused or lost, server shutting down, no pooled connection in time
    psycopg.OperationalError,
    psycopg.InterfaceError,
    psycopg_pool.PoolTimeout,  # an OperationalError: named for the reader
    # Redis: connection refused or lost, a restarted server still loading its data, a timeout
    redis.ConnectionError,
    redis.BusyLoadingError,  # a ConnectionError: named for the reader
    redis.TimeoutError,
    # a socket error a client library did not wrap (refused, reset, unreachable, timed out)
    OSError,
    # a reconnect inside a running loop that found the service still away (iotp.db.connect
    # and open_redis say so this way; at start-up the same error ends the process instead)
    ServiceUnavailable,
)

FIRST_DELAY_SECONDS = 0.2
MAX_DELAY_SECONDS = 10.0

# "Equal jitter": half of the capped exponential delay is fixed, the other half random, so
# that processes which lost a service together do not all come back at the same instant.
# Retry n waits between d/2 and d, where d = min(FIRST_DELAY * 2**(n-1), MAX_DELAY).
_HALF = {"multiplier": FIRST_DELAY_SECONDS / 2, "max": MAX_DELAY_SECONDS / 2}
BACKOFF = tenacity.wait_exponential(**_HALF) + tenacity.wait_random_exponential(**_HALF)

_POLICY: dict[str, Any] = {
    "retry": tenacity.retry_if_exception_type(TRANSIENT_ERRORS),
    "wait": BACKOFF,
    "stop": tenacity.stop_never,
    "reraise": True,
}

OnRetry = Callable[[BaseException], None]
AsyncOnRetry = Callable[[BaseException], Awaitable[None]]


class Stopped(Exception):
    """Stop was asked while a service was still unreachable: the action did not succeed."""


def service_of(exc: BaseException) -> str:
    """Which service a transient error came from, for log lines and counters."""
    if isinstance(exc, ServiceUnavailable):
        return exc.service.lower()
    if isinstance(exc, psycopg.Error):
        return "postgresql"
    if isinstance(exc, redis.RedisError):
        return "redis"
    return "network"


def backoff_seconds(retry: int) -> float:
    """How long the policy waits before retry number ``retry`` (1 for the first retry)."""
    state = tenacity.RetryCallState(tenacity.Retrying(), None, (), {})
    state.attempt_number = retry
    return float(BACKOFF(state))


def retry_transient(
    action: Callable[[], T],
    stop: threading.Event,
    *,
    task: str,
    on_retry: OnRetry | None = None,
) -> T:
    """``action()``, run again after each transient error until it succeeds.

    Raises :class:`Stopped` when ``stop`` is set during a wait; ``on_retry`` is called with
    each transient error before the wait (to drop a broken connection, count the retry).
    """
    # The first attempt outside tenacity: nearly every call succeeds at once, and a
    # tenacity call leaves objects in reference cycles (its retry state) for the cyclic
    # collector, whose pauses were the tail of ingest's latency (iotp bench freshness).
    try:
        return action()
    except TRANSIENT_ERRORS as exc:
        first_failure: list[BaseException] = [exc]

    attempts = _Attempts(task)

    def before_sleep(state: tenacity.RetryCallState) -> None:
        error = attempts.failed(state)
        if on_retry is not None:
            on_retry(error)

    def sleep(seconds: float) -> None:
        if stop.wait(seconds):
            raise Stopped(f"{task}: stopped while a service was unreachable")

    def attempt() -> T:
        if first_failure:  # tenacity's attempt 1: the failure above, logged and waited for
            raise first_failure.pop()
        return action()

    result = tenacity.Retrying(sleep=sleep, before_sleep=before_sleep, **_POLICY)(attempt)
    attempts.succeeded()
    return result


async def retry_transient_async(
    action: Callable[[], Awaitable[T]],
    stop: asyncio.Event,
    *,
    task: str,
    on_retry: AsyncOnRetry | None = None,
) -> T:
    """The asyncio form of :func:`retry_transient`, stopped by an :class:`asyncio.Event`."""
    # The first attempt outside tenacity, as in retry_transient (the relay's every round).
    try:
        return await action()
    except TRANSIENT_ERRORS as exc:
        first_failure: list[BaseException] = [exc]

    attempts = _Attempts(task)

    async def before_sleep(state: tenacity.RetryCallState) -> None:
        error = attempts.failed(state)
        if on_retry is not None:
            await on_retry(error)

    async def sleep(seconds: float) -> None:
        try:
            await asyncio.wait_for(stop.wait(), timeout=seconds)
        except TimeoutError:
            return
        raise Stopped(f"{task}: stopped while a service was unreachable")

    async def attempt() -> T:
        if first_failure:  # tenacity's attempt 1: the failure above, logged and waited for
            raise first_failure.pop()
        return await action()

    retrying = tenacity.AsyncRetrying(sleep=sleep, before_sleep=before_sleep, **_POLICY)
    result: T = await retrying(attempt)
    attempts.succeeded()
    return result


class _Attempts:
    """The log lines of one retried action: one per retry, and one when it succeeds again."""

    def __init__(self, task: str) -> None:
        self.task = task
        self.retries = 0
        self.service = ""

    def failed(self, state: tenacity.RetryCallState) -> BaseException:
        assert state.outcome is not None
        assert state.next_action is not None
        error = state.outcome.exception()
        assert error is not None
        self.retries, self.service = state.attempt_number, service_of(error)
        logger.warning(
            "%s: %s unreachable; retry %s in %.1fs: %s",
            self.task,
            self.service,
            self.retries,
            state.next_action.sleep,
            first_line(error),
        )
        return error

    def succeeded(self) -> None:
        if self.retries:
            logger.info(
                "%s: %s is back after %s retries; resuming", self.task, self.service, self.retries
            )
