"""The retry policy: what it retries, how long it waits, what it logs, and how it stops."""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time

import psycopg
import psycopg_pool
import pytest
import redis
import tenacity
from psycopg import errors

from iotp import retry
from iotp.retry import (
    FIRST_DELAY_SECONDS,
    MAX_DELAY_SECONDS,
    Stopped,
    backoff_seconds,
    retry_transient,
    retry_transient_async,
    service_of,
)

TRANSIENT = [
    psycopg.OperationalError("server closed the connection unexpectedly"),
    psycopg.InterfaceError("the cursor is closed"),
    psycopg_pool.PoolTimeout("couldn't get a connection after 30.00 sec"),
    redis.ConnectionError("Error 111 connecting to localhost:6379. Connection refused."),
    redis.TimeoutError("Timeout reading from socket"),
    redis.BusyLoadingError("Redis is loading the dataset in memory"),
    ConnectionResetError(104, "Connection reset by peer"),
    OSError(113, "No route to host"),
]
NOT_TRANSIENT = [
    ValueError("a bug"),
    errors.UniqueViolation("duplicate key value violates unique constraint"),
    psycopg.ProgrammingError("syntax error"),
    redis.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"),
]


class Flaky:
    """An action that raises ``error`` ``times`` times, then returns ``"done"``."""

    def __init__(self, times: int, error: BaseException) -> None:
        self.times, self.error, self.calls = times, error, 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.times:
            raise self.error
        return "done"


@pytest.fixture
def long_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every wait a minute long: a test that ends quickly was ended by its stop event."""
    monkeypatch.setitem(retry._POLICY, "wait", tenacity.wait_fixed(60))


@pytest.mark.parametrize("error", TRANSIENT, ids=lambda e: type(e).__name__)
def test_transient_errors_are_retried_until_the_action_succeeds(error: BaseException) -> None:
    action = Flaky(2, error)
    seen: list[BaseException] = []
    assert retry_transient(action, threading.Event(), task="test", on_retry=seen.append) == "done"
    assert action.calls == 3
    assert seen == [error, error]


def test_interface_error_is_retried_as_connection_loss() -> None:
    action = Flaky(1, psycopg.InterfaceError("connection already closed"))
    assert retry_transient(action, threading.Event(), task="aggregator") == "done"


@pytest.mark.parametrize("error", NOT_TRANSIENT, ids=lambda e: type(e).__name__)
def test_other_errors_propagate_at_once(error: BaseException) -> None:
    action = Flaky(1, error)
    with pytest.raises(type(error)) as raised:
        retry_transient(action, threading.Event(), task="test")
    assert raised.value is error
    assert action.calls == 1


def test_delays_grow_from_the_first_and_stay_under_the_cap() -> None:
    for attempt in range(1, 60):
        ceiling = min(FIRST_DELAY_SECONDS * 2 ** (attempt - 1), MAX_DELAY_SECONDS)
        for _ in range(20):
            delay = backoff_seconds(attempt)
            assert ceiling / 2 <= delay <= ceiling
    assert backoff_seconds(1) <= FIRST_DELAY_SECONDS
    assert max(backoff_seconds(40) for _ in range(200)) <= MAX_DELAY_SECONDS


def test_delays_are_jittered() -> None:
    assert len({backoff_seconds(8) for _ in range(20)}) > 1


def test_one_warning_per_retry_naming_the_service_and_the_delay(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="iotp.retry")
    action = Flaky(2, redis.ConnectionError("Connection refused.\nsecond line"))
    retry_transient(action, threading.Event(), task="relay")
    # Only iotp.retry's: a test before this one may leave a pool reconnecting in its thread.
    ours = [r for r in caplog.records if r.name == "iotp.retry"]
    warnings = [r.getMessage() for r in ours if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert warnings[0].startswith("relay: redis unreachable; retry 1 in 0.")
    assert warnings[0].endswith("s: Connection refused.")
    assert "retry 2 in " in warnings[1]
    infos = [r.getMessage() for r in ours if r.levelno == logging.INFO]
    assert infos == ["relay: redis is back after 2 retries; resuming"]


def test_success_at_first_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="iotp.retry")
    assert retry_transient(lambda: 42, threading.Event(), task="test") == 42
    assert [r for r in caplog.records if r.name == "iotp.retry"] == []


def test_success_at_first_leaves_nothing_for_the_cyclic_collector() -> None:
    """The hot paths run every batch through here: garbage in reference cycles would pile
    up for the cyclic collector, whose long pauses were the tail of ingest's latency."""
    gc.collect()
    gc.disable()
    try:
        for _ in range(200):
            assert retry_transient(lambda: 1, threading.Event(), task="test") == 1
        assert gc.collect() == 0
    finally:
        gc.enable()


@pytest.mark.usefixtures("long_waits")
def test_stop_ends_the_wait() -> None:
    stop = threading.Event()
    threading.Timer(0.1, stop.set).start()
    started = time.monotonic()
    with pytest.raises(Stopped):
        retry_transient(Flaky(10, psycopg.OperationalError("down")), stop, task="test")
    assert time.monotonic() - started < 5


def test_stop_already_set_gives_up_after_the_first_failure() -> None:
    stop = threading.Event()
    stop.set()
    action = Flaky(10, redis.TimeoutError("timeout"))
    with pytest.raises(Stopped):
        retry_transient(action, stop, task="test")
    assert action.calls == 1


def test_service_of_names_the_service() -> None:
    assert service_of(psycopg.OperationalError()) == "postgresql"
    assert service_of(psycopg_pool.PoolTimeout()) == "postgresql"
    assert service_of(redis.BusyLoadingError()) == "redis"
    assert service_of(ConnectionRefusedError()) == "network"


def test_async_transient_errors_are_retried() -> None:
    calls: list[BaseException] = []

    async def main() -> str:
        action = Flaky(2, psycopg.InterfaceError("closed"))

        async def attempt() -> str:
            return action()

        async def on_retry(error: BaseException) -> None:
            calls.append(error)

        return await retry_transient_async(
            attempt, asyncio.Event(), task="relay", on_retry=on_retry
        )

    assert asyncio.run(main()) == "done"
    assert len(calls) == 2


def test_async_other_errors_propagate_at_once() -> None:
    async def attempt() -> None:
        raise redis.ResponseError("NOGROUP")

    with pytest.raises(redis.ResponseError):
        asyncio.run(retry_transient_async(attempt, asyncio.Event(), task="relay"))


@pytest.mark.usefixtures("long_waits")
def test_async_stop_ends_the_wait() -> None:
    async def attempt() -> None:
        raise redis.ConnectionError("refused")

    async def main() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(0.1, stop.set)
        await retry_transient_async(attempt, stop, task="relay")

    started = time.monotonic()
    with pytest.raises(Stopped):
        asyncio.run(main())
    assert time.monotonic() - started < 5


def test_a_service_still_away_at_reconnect_is_retried() -> None:
    from iotp.errors import ServiceUnavailable
    from iotp.retry import TRANSIENT_ERRORS, service_of

    error = ServiceUnavailable("PostgreSQL", "IOTP_DATABASE_URL", "postgresql://x", "refused")
    assert isinstance(error, TRANSIENT_ERRORS)
    assert service_of(error) == "postgresql"
