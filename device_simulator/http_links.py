"""Simulated devices without MQTT: each posts to ingest's HTTP endpoint with its own credentials.

A post counts as acknowledged when ingest answered after its commit: 202 (stored) or 422
(dead-lettered, as a broker acknowledges a message ingest then dead-letters). 429 and 503
are waited out as a device would, within ``ACK_WAIT_SECONDS``; any other answer (401, 403
for another device's path, 413) counts as refused, as a PUBACK with a failure reason code.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import httpx

from device_simulator.connections import ACK_WAIT_SECONDS
from device_simulator.registration import SimulatedDevice

logger = logging.getLogger(__name__)

HANDLED = frozenset({202, 422})  # ingest committed it: stored, or dead-lettered
RETRIED = frozenset({429, 503})
MAX_CONNECTIONS = 200


class HttpLink:
    """One device's way to ingest over HTTP (the connection pool is the fleet's)."""

    def __init__(self, identity: SimulatedDevice, client: httpx.AsyncClient) -> None:
        self.client = client
        self.auth = httpx.BasicAuth(identity.username, identity.password)
        self.refused = 0
        self._logged = False

    async def publish(self, topic: str, payload: bytes, qos: int) -> None:
        """POST ``payload`` to the path ``topic``; returns once ingest answered.

        Raises :class:`httpx.HTTPError` when ingest cannot be reached.
        """
        deadline = time.monotonic() + ACK_WAIT_SECONDS
        while True:
            answer = await self.client.post(topic, content=payload, auth=self.auth)
            if answer.status_code in HANDLED:
                return
            wait = _retry_after(answer)
            if answer.status_code in RETRIED and time.monotonic() + wait < deadline:
                await asyncio.sleep(wait)
                continue
            self.refused += 1
            if not self._logged:  # one line per device is enough to read
                self._logged = True
                logger.warning("POST %s: %s %s", topic, answer.status_code, answer.text[:200])
            return


@asynccontextmanager
async def http_links(devices: Sequence[SimulatedDevice], url: str) -> AsyncIterator[list[HttpLink]]:
    """One link per device, over one connection pool to ingest's HTTP endpoint at ``url``."""
    limits = httpx.Limits(max_connections=min(MAX_CONNECTIONS, max(1, len(devices))))
    async with httpx.AsyncClient(base_url=url, timeout=ACK_WAIT_SECONDS, limits=limits) as client:
        yield [HttpLink(device, client) for device in devices]


def _retry_after(answer: httpx.Response) -> float:
    value = answer.headers.get("Retry-After", "1")
    return float(value) if value.isdigit() else 1.0
