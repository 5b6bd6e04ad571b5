"""When a failed delivery is tried again, and when it is given up: pure, clock passed in.

Unlike iotp.retry, which waits in-process for a service of ours to return, a delivery's
next attempt is a time stored with the delivery, so that a restarted notifier (or another
one) picks up the schedule where it was. The delay doubles from the first one up to a cap,
with "equal jitter" (half fixed, half random) so that the deliveries to a receiver that
was down do not all come back at the same instant.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from iotp.settings import Settings

DeliveryState = Literal["pending", "delivered", "failed"]


@dataclass(frozen=True)
class RetryPolicy:
    first_delay: float  # seconds before the second attempt, before jitter
    max_delay: float  # cap of one wait
    give_up_after: timedelta  # age of a delivery past which a failed attempt is the last

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(
            first_delay=settings.notify_backoff_first_seconds,
            max_delay=settings.notify_backoff_max_seconds,
            give_up_after=timedelta(hours=settings.notify_give_up_hours),
        )

    def delay(self, attempts: int, uniform: Callable[[], float] = random.random) -> float:
        """Seconds to wait after ``attempts`` failed attempts (1 after the first one)."""
        exponent = min(max(attempts, 1) - 1, 60)  # 2**60 seconds is past any cap
        capped = min(self.max_delay, self.first_delay * 2.0**exponent)
        return capped / 2 + capped / 2 * uniform()


@dataclass(frozen=True)
class Decision:
    state: DeliveryState
    next_attempt_at: datetime | None  # None once the delivery is finished


def after_attempt(
    policy: RetryPolicy,
    *,
    succeeded: bool,
    attempts: int,
    created_at: datetime,
    now: datetime,
    uniform: Callable[[], float] = random.random,
) -> Decision:
    """What becomes of a delivery after its attempt number ``attempts``."""
    if succeeded:
        return Decision("delivered", None)
    if now - created_at >= policy.give_up_after:
        return Decision("failed", None)
    return Decision("pending", now + timedelta(seconds=policy.delay(attempts, uniform)))
