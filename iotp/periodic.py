"""Chores a long-running loop does now and then: reclaiming, housekeeping, reports."""

from __future__ import annotations

import time
from collections.abc import Callable


class Every:
    """A chore due at the first asking, then once ``seconds`` have passed since it was done.

    "Never done" is not kept as 0.0: monotonic time counts from boot, so on a machine up for
    less than the period 0.0 reads as "just done" and the first round is skipped; a leader
    started after a reboot then applied new entries before its predecessor's pending ones.
    """

    def __init__(self, seconds: float, clock: Callable[[], float] | None = None) -> None:
        self.seconds = seconds
        self._clock = clock
        self._done_at: float | None = None

    def _now(self) -> float:
        # time.monotonic looked up at each call, not bound once, so that a test can play a
        # freshly booted machine for every chore in the process.
        return self._clock() if self._clock is not None else time.monotonic()

    def due(self) -> bool:
        """Whether the chore is due now; asking does not count as doing it."""
        return self._done_at is None or self._now() - self._done_at >= self.seconds

    def done(self) -> None:
        """The chore was done (or started) now: next due a period from now."""
        self._done_at = self._now()

    def take(self) -> bool:
        """Whether the chore is due; if so it counts as done now (for chores that cannot
        fail half-way, or that should wait a period even when they do)."""
        if not self.due():
            return False
        self.done()
        return True

    def again(self) -> None:
        """Make the chore due at the next asking."""
        self._done_at = None
