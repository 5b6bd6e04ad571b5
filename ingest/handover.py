"""Stopping without parking telemetry in a session that nobody reads.

With a shared subscription the broker deals messages to every session in the group, the
sessions of stopped instances included. So an instance that stops while another one of
its group stays live hands its share back: it unsubscribes (the broker deals it nothing
new), stores and acknowledges everything its session already held, and only then ends the
session (expiry 0 at DISCONNECT). Nothing is lost: a message is either dealt to another
session or was delivered here and acknowledged after it was stored. The last live
instance keeps its session instead (ingest/presence.py decides, atomically), so what
arrives while it is down waits for its restart. A hand-back cut short (the deadline, a
broker away) keeps the session too: whatever it still holds is parked, never lost.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Protocol

import redis

logger = logging.getLogger(__name__)


class HandingBack(Protocol):
    """What a hand-back needs of a source (MqttSource, Mqtt5Source)."""

    @property
    def delivered(self) -> int: ...
    def unsubscribe(self, timeout: float) -> bool: ...
    def drained(self, timeout: float) -> bool: ...


ROUND_SECONDS = 1.0  # one round of drained(): acks out, then an UNSUBSCRIBE answered


def hand_back(source: HandingBack, deadline: float, give_up: Callable[[], bool]) -> bool:
    """Unsubscribe, then wait until the session is empty: True when it is, False once
    ``deadline`` (of time.monotonic) passed or ``give_up()`` says so."""
    source.unsubscribe(max(0.0, min(ROUND_SECONDS, deadline - time.monotonic())))
    while not give_up() and (left := deadline - time.monotonic()) > 0:
        if source.drained(min(ROUND_SECONDS, left)):
            return True
    return False


class Departure(threading.Thread):
    """Beside the pipeline: once ``when`` is set, empties the session if ``leave()`` says so,
    then halts the pipeline (``halt`` is the pipeline's stop). ``drained``: it may end.

    Emptying gives up after ``deadline_seconds`` or once ``abort`` is set.
    """

    def __init__(
        self,
        source: HandingBack,
        leave: Callable[[], bool],
        when: threading.Event,
        deadline_seconds: float | None = None,
        abort: threading.Event | None = None,
    ) -> None:
        super().__init__(name="iotp-ingest-departure", daemon=True)
        self.source, self.leave, self.when = source, leave, when
        self.deadline_seconds, self.abort = deadline_seconds, abort
        self.halt = threading.Event()
        self.drained = False

    def run(self) -> None:
        self.when.wait()
        try:
            if not self.halt.is_set():  # else the pipeline ended by itself: keep the session
                self._depart()
        except redis.RedisError as exc:
            logger.warning("cannot tell whether another instance stays live: %s", exc)
        finally:
            self.halt.set()

    def finish(self) -> None:
        """After the pipeline ended: wait for the decision, if one was under way."""
        self.when.set()
        if self.ident is not None:
            self.join()
        self.halt.set()

    def _depart(self) -> None:
        if not self.leave():
            return
        started, delivered = time.monotonic(), self.source.delivered
        seconds = math.inf if self.deadline_seconds is None else self.deadline_seconds
        self.drained = hand_back(self.source, started + seconds, self._give_up)
        if self.drained:
            logger.info(
                "emptied the session in %.1fs: received %s more messages, all stored and"
                " acknowledged",
                time.monotonic() - started,
                self.source.delivered - delivered,
            )
        else:
            logger.warning(
                "the session still held unacknowledged messages after %.1fs: keeping it;"
                " they wait for this instance's return or `iotp ingest --retire`",
                time.monotonic() - started,
            )

    def _give_up(self) -> bool:
        # the pipeline failed (nothing more gets stored), or the caller gave up
        return self.halt.is_set() or (self.abort is not None and self.abort.is_set())
