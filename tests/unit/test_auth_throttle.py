"""The refused-credentials throttle: a sliding window per address, bounded memory."""

from __future__ import annotations

import pytest

from iotp import auth_throttle
from iotp.auth_throttle import FailureThrottle


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_address_past_the_limit_waits_until_its_oldest_failure_leaves_the_window() -> None:
    clock = Clock()
    throttle = FailureThrottle(limit=3, window=60, clock=clock)
    for step in range(3):
        assert throttle.retry_after("a") is None
        throttle.failed("a")
        clock.now += 10 if step < 2 else 0
    assert throttle.retry_after("a") == 40  # the first failure leaves the window at +60
    assert throttle.retry_after("b") is None
    clock.now += 39.5
    assert throttle.retry_after("a") == 1
    clock.now += 0.5
    assert throttle.retry_after("a") is None  # two failures left in the window
    throttle.failed("a")
    assert throttle.retry_after("a") == 10


def test_quiet_addresses_are_forgotten_and_memory_stays_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = Clock()
    throttle = FailureThrottle(limit=2, window=60, clock=clock)
    monkeypatch.setattr(auth_throttle, "MAX_ADDRESSES", 4)
    for address in "abcd":
        throttle.failed(address)
    clock.now += 61
    throttle.failed("e")  # the full table drops the addresses with nothing in the window
    assert set(throttle._failures) == {"e"}
    for address in "fgh":
        throttle.failed(address)
    throttle.failed("i")  # all within the window: everything goes rather than grow
    assert set(throttle._failures) == {"i"}
