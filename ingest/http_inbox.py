"""HTTP telemetry into the ingest pipeline: the requests waiting for their batch's commit.

An HTTP request is put in the :class:`HttpInbox`, which is the message source of an
:class:`HttpIngestPipeline`: the same validation, de-duplication, commit, events and dead
letters as a broker's messages, in the same order. The pipeline acknowledges a batch only
after it committed and published it; that acknowledgement settles each request's
:class:`Completion`, which wakes the waiting request on its own event loop (the writer
thread never waits for it). What the inbox still holds when ingest stops is settled as not
stored, so the device sends it again; a reading sent twice is stored once.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ingest.mqtt_source import InboundMessage
from ingest.payloads import DeviceLookup, Limits, ParsedMessage, parse_device_message
from ingest.pipeline import IngestPipeline

POLL_SECONDS = 0.2


class Completion:
    """The answer to one request: settled from any thread, awaited on the request's loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._future: asyncio.Future[ParsedMessage | None] = loop.create_future()

    def settle(self, parsed: ParsedMessage | None) -> None:
        """What became of the message (None: not stored); never blocks."""
        # A closed loop means nobody waits any more.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._set, parsed)

    def _set(self, parsed: ParsedMessage | None) -> None:
        if not self._future.done():  # the request may have given up (client gone, timeout)
            self._future.set_result(parsed)

    async def wait(self) -> ParsedMessage | None:
        """The parsed message once committed and published; None if it was not stored."""
        return await self._future


@dataclass(slots=True)
class HttpMessage(InboundMessage):
    """A POSTed payload: ``mid``, ``qos`` and ``epoch`` are 0, so no broker ack is sent."""

    device_id: str = ""
    metric: str | None = None  # the metric of a plain payload (?metric=)
    completion: Completion | None = None
    parsed: ParsedMessage | None = None  # set by the pipeline, for the answer


def http_message(
    device_id: str,
    payload: bytes,
    received_at: datetime,
    completion: Completion,
    metric: str | None = None,
) -> HttpMessage:
    # The dead letter's "topic" says where the payload came from.
    topic = f"POST /telemetry/{device_id}"
    return HttpMessage(topic, payload, 0, 0, 0, received_at, device_id, metric, completion)


class Offer(enum.Enum):
    ACCEPTED = "accepted"
    FULL = "full"  # ingest is behind: answer 429
    CLOSED = "closed"  # ingest is stopping: answer 503


class HttpInbox:
    """The pipeline's message source for HTTP requests, bounded by what waits for a commit.

    A request counts from :meth:`offer` until its batch is acknowledged, so the bound says
    how far the writer is behind, not only how full the queue is.
    """

    def __init__(self, max_pending: int, max_pending_bytes: int) -> None:
        self.max_pending, self.max_pending_bytes = max_pending, max_pending_bytes
        self._queue: deque[HttpMessage] = deque()
        self._unsettled: dict[int, HttpMessage] = {}  # by id(): accepted, not yet answered
        self._pending_bytes = 0
        self._closed = False
        self._cond = threading.Condition()

    def offer(self, message: HttpMessage) -> Offer:
        with self._cond:
            if self._closed:
                return Offer.CLOSED
            size = len(message.payload)
            # One request is always let in, however large: a lone one cannot be "behind".
            if self._unsettled and (
                len(self._unsettled) >= self.max_pending
                or self._pending_bytes + size > self.max_pending_bytes
            ):
                return Offer.FULL
            self._queue.append(message)
            self._unsettled[id(message)] = message
            self._pending_bytes += size
            self._cond.notify_all()
        return Offer.ACCEPTED

    def pending(self) -> int:
        with self._cond:
            return len(self._unsettled)

    def take(
        self,
        max_messages: int,
        max_bytes: int,
        max_delay: float,
        stop: threading.Event,
        gather_from: int = 1,
        linger: float = 0.0,
    ) -> list[InboundMessage]:
        """What waits, up to the limits, once there is something; no gathering delay and no
        lingering: a device waits for the answer, and while a batch is written the next one
        builds up."""
        batch: list[InboundMessage] = []
        size = 0
        with self._cond:
            while not self._queue:  # (closed, nothing more comes: it waits for the stop)
                if stop.is_set():
                    return batch
                self._cond.wait(POLL_SECONDS)
            while self._queue and len(batch) < max_messages and size < max_bytes:
                message = self._queue.popleft()
                batch.append(message)
                size += len(message.payload)
        return batch

    def ack(self, messages: list[InboundMessage]) -> None:
        """The batch is committed and its events published: answer its requests."""
        settled = [m for m in messages if isinstance(m, HttpMessage)]
        with self._cond:
            for message in settled:
                if self._unsettled.pop(id(message), None) is not None:
                    self._pending_bytes -= len(message.payload)
            self._cond.notify_all()
        for message in settled:
            if message.completion is not None:
                message.completion.settle(message.parsed)

    def close(self) -> None:
        """Take no more requests; what is queued or in the pipeline still completes."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def drained(self, timeout: float) -> bool:
        """Wait until every accepted request was answered, for up to ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._unsettled:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
        return True

    def abandon(self) -> None:
        """Answer every request still waiting as not stored (the pipeline has stopped)."""
        with self._cond:
            self._closed = True
            left = list(self._unsettled.values())
            self._unsettled.clear()
            self._queue.clear()
            self._pending_bytes = 0
        for message in left:
            if message.completion is not None:
                message.completion.settle(None)


# One payload a device POSTed (device id, payload, received at, limits, the metric a
# ``plain`` payload holds) to readings and rejections: the device profiles' router
# (ingest.profiles_runtime.ProfileRouter.parse_for_device), or today's iotp format.
DeviceParser = Callable[[str, bytes, datetime, Limits, str | None], ParsedMessage]


def iotp_device_parser(lookup: DeviceLookup) -> DeviceParser:
    """Every device speaks iotp's format: as ingest.payloads.parse_message, by device id."""

    def parse(
        device_id: str, payload: bytes, received_at: datetime, limits: Limits, metric: str | None
    ) -> ParsedMessage:
        return parse_device_message(device_id, payload, received_at, lookup, limits)

    return parse


class HttpIngestPipeline(IngestPipeline):
    """The ingest pipeline over an :class:`HttpInbox`: the device comes from the request's
    path, not a topic, and each message keeps its own parse result for its answer.

    ``parse_for_device`` is the one place HTTP telemetry chooses a parser: the device's
    profile's format when given the profiles' router, else iotp's.
    """

    def __init__(
        self, *args: Any, parse_for_device: DeviceParser | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.parse_for_device = parse_for_device or iotp_device_parser(self.lookup)

    def _parse(self, message: InboundMessage) -> ParsedMessage:
        if not isinstance(message, HttpMessage):  # the inbox holds nothing else
            return super()._parse(message)
        parsed = self.parse_for_device(
            message.device_id, message.payload, message.received_at, self.limits, message.metric
        )
        message.parsed = parsed
        return parsed
