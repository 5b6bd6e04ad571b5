"""Checking a device's own credentials (its MQTT username and password) over HTTP.

The password is checked against the device's stored hash (iotp.password_hash), the one the
broker checks. A password that passed is remembered for a short time, so that a device
posting every second costs one hash per window rather than one per request; what is kept is
an HMAC of the password under a key of this process's own, made at start, never the
password or anything that would let one be guessed offline. A device that is not active has
no credentials, as at the broker. A password rotated (or a device decommissioned) within
the window still passes until the window ends.
"""

from __future__ import annotations

import asyncio
import hmac
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from iotp.password_hash import verify_password

# Devices whose password is remembered at once; past it they are all forgotten (a flood
# of devices costs a hash each again, and memory stays bounded).
MAX_REMEMBERED = 100_000

HashLookup = Callable[[str], Awaitable[str | None]]


@dataclass(frozen=True, slots=True)
class _Remembered:
    digest: bytes
    until: float


class DeviceCredentials:
    """Device passwords checked against the write store, passes remembered for ``ttl`` s."""

    def __init__(
        self, stored_hash: HashLookup, ttl: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._stored_hash = stored_hash
        self._ttl = ttl
        self._clock = clock
        self._key = secrets.token_bytes(32)
        self._passed: dict[str, _Remembered] = {}

    async def verify(self, device_id: str, password: str) -> bool:
        """Whether ``password`` is the active device's password."""
        digest = hmac.new(
            self._key, f"{device_id}\x00{password}".encode("utf-8", "surrogateescape"), "sha256"
        ).digest()
        now = self._clock()
        remembered = self._passed.get(device_id)
        if (
            remembered is not None
            and remembered.until > now
            and hmac.compare_digest(remembered.digest, digest)
        ):
            return True
        stored = await self._stored_hash(device_id)
        if stored is None:
            return False
        # The hash is CPU work: off the event loop, so other requests go on meanwhile.
        if not await asyncio.to_thread(verify_password, password, stored):
            return False
        if self._ttl > 0:
            if len(self._passed) >= MAX_REMEMBERED:
                self._passed.clear()
            self._passed[device_id] = _Remembered(digest, now + self._ttl)
        return True
