"""Slowing down guessed credentials: refused attempts counted per client address.

Past ``limit`` refused credentials from one address within ``window`` seconds, that
address is answered 429 (with Retry-After) for everything it sends, a right key included,
until its oldest counted failure leaves the window: a guesser learns nothing more for that
long. The count is per API process (a few processes behind a balancer multiply the limit by
their number); the totals go to Redis for /pipeline.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable

import redis
import redis.asyncio as aioredis

from iotp.names import AUTH_FAILURES_KEY

logger = logging.getLogger(__name__)

# Addresses followed at once; past it the ones with no failure left in the window go first,
# then (a flood from very many addresses) everything: memory stays bounded either way.
MAX_ADDRESSES = 50_000


class FailureThrottle:
    """Refused credentials per client address, in a sliding window."""

    def __init__(
        self, limit: int, window: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = limit
        self.window = window
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}

    def retry_after(self, address: str) -> int | None:
        """Seconds until ``address`` may try again, or None when it may now."""
        failures = self._failures.get(address)
        if failures is None:
            return None
        now = self._clock()
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        if not failures:
            del self._failures[address]
            return None
        if len(failures) < self.limit:
            return None
        return max(1, math.ceil(failures[0] + self.window - now))

    def failed(self, address: str) -> None:
        """Count a refused credential from ``address``."""
        if address not in self._failures and len(self._failures) >= MAX_ADDRESSES:
            self._forget_quiet()
        failures = self._failures.setdefault(address, deque(maxlen=self.limit))
        failures.append(self._clock())

    def _forget_quiet(self) -> None:
        cutoff = self._clock() - self.window
        for address in [a for a, f in self._failures.items() if not f or f[-1] <= cutoff]:
            del self._failures[address]
        if len(self._failures) >= MAX_ADDRESSES:
            self._failures.clear()


class FailureCounter:
    """Adds an API's refused and throttled requests to Redis (AUTH_FAILURES_KEY).

    Best effort: a Redis that does not answer costs a log line, never the answer itself.
    """

    def __init__(self, api: str, client: Callable[[], aioredis.Redis | None]) -> None:
        self.api = api
        self._client = client

    async def add(self, outcome: str) -> None:
        client = self._client()
        if client is None:
            return
        try:
            async with client.pipeline(transaction=False) as pipe:
                pipe.hincrby(AUTH_FAILURES_KEY, f"{self.api}:{outcome}", 1)
                pipe.hset(AUTH_FAILURES_KEY, "last_failure_at", f"{time.time():.3f}")
                await pipe.execute()
        except (redis.RedisError, OSError) as exc:
            logger.warning("could not count a refused request in Redis: %s", exc)
