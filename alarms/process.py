"""The alarm process: telemetry events in, AlarmRaised and AlarmCleared out through the outbox.

Each batch's evaluation state, alarms, outbox events and stream positions commit in one
PostgreSQL transaction, and only then is the batch acknowledged (XACK). A crash before the
commit redoes the whole batch; a crash after it finds the entries at or below the recorded
positions and skips them, so no alarm is raised twice and no transition is missed. Offline
alarms come from a timer in this process (database clock), in transactions of their own.

One process leads (a session advisory lock); the others wait for the lock. All of them read
under one consumer name, so a new leader finds what a dead one read and did not acknowledge
as its own pending entries and applies them first (no XAUTOCLAIM needed). A reading that
still arrives after a newer one of its device was applied is late, and changes nothing
(alarms.rules).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import psycopg
import redis

from alarms import state
from alarms.evaluation import BatchEvaluation, OfflineSweep
from iotp.db import ReconnectingConnection
from iotp.event_shards import Entry, ensure_groups, read_group, telemetry_streams
from iotp.events import TelemetryFacts, TelemetryRecorded, UndecodableEvent, from_fields_to_fold
from iotp.names import ALARM_EVENTS_STREAM
from iotp.periodic import Every
from iotp.redis_client import split_id
from iotp.retry import Stopped, retry_transient

logger = logging.getLogger(__name__)

ALARM_GROUP = "iotp-alarms"
ALARM_CONSUMER = "alarms"
LEADER_LOCK_KEY = 0x10770017
REDRAIN_SECONDS = 30.0


@dataclass(frozen=True)
class AlarmOptions:
    batch_size: int = 1000
    block_ms: int = 500
    tick_seconds: float = 1.0
    liveness_timeout_seconds: int = 300
    liveness_timeouts: Mapping[str, int] = field(default_factory=dict)
    event_shards: int = 1

    @property
    def streams(self) -> tuple[str, ...]:
        return telemetry_streams(self.event_shards)


Reading = TelemetryRecorded | TelemetryFacts


class AlarmProcess:
    def __init__(
        self,
        client: redis.Redis,
        connect: Callable[[], psycopg.Connection[Any]],
        options: AlarmOptions,
    ) -> None:
        self.client = client
        self.options = options
        self._db = ReconnectingConnection(connect)
        self._leading = False
        self._tick = Every(options.tick_seconds)
        self._drain = Every(REDRAIN_SECONDS)
        self.raised = 0
        self.cleared = 0

    def _connection(self) -> psycopg.Connection[Any]:
        if self._db.closed:
            self._leading = False  # the lock was the old session's
        return self._db()

    def close(self) -> None:
        self._leading = False
        self._db.close()

    def run(self, stop: threading.Event) -> None:
        """Evaluate until ``stop`` is set, riding out PostgreSQL and Redis outages."""

        def retry(action: Callable[[], object]) -> None:
            retry_transient(action, stop, task="alarms", on_retry=lambda _: self.close())

        try:
            while not stop.is_set():
                retry(lambda: self.step(stop))
        except Stopped:
            return

    def lead(self) -> bool:
        """Whether this process leads: it takes the leader lock when it is free."""
        if self._leading:
            return True
        row = (
            self._connection()
            .execute("SELECT pg_try_advisory_lock(%s) AS got", (LEADER_LOCK_KEY,))
            .fetchone()
        )
        if row is not None and row["got"]:
            ensure_groups(self.client, ALARM_GROUP, self.options.streams)
            self._leading = True
            self._drain.again()
            logger.info("alarms: leading (group %s)", ALARM_GROUP)
        return self._leading

    def step(self, stop: threading.Event) -> int:
        """One round: lead or wait, apply pending then new entries, and tick the timer."""
        if not self.lead():
            stop.wait(self.options.tick_seconds)
            return 0
        if self._drain.due():
            self.drain_pending()
        batch = read_group(
            self.client,
            ALARM_GROUP,
            ALARM_CONSUMER,
            dict.fromkeys(self.options.streams, ">"),
            self.options.batch_size,
            min(self.options.block_ms, int(self.options.tick_seconds * 1000)),
        )
        applied = self.process(batch)
        full = sum(len(entries) for entries in batch.values()) >= self.options.batch_size
        if not full and self._tick.due():
            self.tick()
        return applied

    def drain_pending(self) -> None:
        """Apply what was read under this consumer name and never acknowledged."""
        self._drain.done()
        while True:
            batch = read_group(
                self.client,
                ALARM_GROUP,
                ALARM_CONSUMER,
                dict.fromkeys(self.options.streams, "0"),
                self.options.batch_size,
            )
            if not any(batch.values()):
                return
            self.process(batch)

    def process(self, batch: dict[str, list[Entry]]) -> int:
        """Apply one batch in one transaction, then acknowledge it; readings applied."""
        if not any(batch.values()):
            return 0
        conn = self._connection()
        with conn.transaction():
            state.share_rules_lock(conn)
            done = state.positions(conn)
            fresh = self._fresh(batch, done)
            evaluation = BatchEvaluation(conn, state.database_now(conn))
            evaluation.apply(fresh)
            state.write_events(conn, ALARM_EVENTS_STREAM, list(evaluation.events))
            for stream, entries in batch.items():
                if entries:
                    last = max((i for i, _ in entries), key=split_id)
                    if stream not in done or split_id(last) > split_id(done[stream]):
                        state.save_position(conn, stream, last)
        for stream, entries in batch.items():
            if entries:
                self.client.xack(stream, ALARM_GROUP, *[i for i, _ in entries])
        self._count(evaluation.raised, evaluation.cleared)
        return len(fresh)

    def _fresh(
        self, batch: dict[str, list[Entry]], done: Mapping[str, str]
    ) -> list[tuple[str, Reading]]:
        """The batch's telemetry events after the recorded positions, as (position, event)."""
        found: list[tuple[str, Reading]] = []
        for stream, entries in batch.items():
            floor = split_id(done[stream]) if stream in done else None
            for entry_id, fields in sorted(entries, key=lambda e: split_id(e[0])):
                if fields is None or (floor is not None and split_id(entry_id) <= floor):
                    continue
                try:
                    event = from_fields_to_fold(fields)
                except UndecodableEvent as exc:
                    logger.error("skipping undecodable entry %s of %s: %s", entry_id, stream, exc)
                    continue
                if isinstance(event, TelemetryRecorded | TelemetryFacts):
                    found.append((f"{stream}/{entry_id}", event))
        return found

    def tick(self) -> None:
        """The offline timer: raise for devices silent past their timeout, in one transaction."""
        self._tick.done()
        conn = self._connection()
        with conn.transaction():
            state.share_rules_lock(conn)
            sweep = OfflineSweep(
                conn,
                state.database_now(conn),
                self.options.liveness_timeout_seconds,
                self.options.liveness_timeouts,
            )
            sweep.run()
            state.write_events(conn, ALARM_EVENTS_STREAM, list(sweep.events))
        self._count(sweep.raised, sweep.cleared)

    def _count(self, raised: int, cleared: int) -> None:
        if raised or cleared:
            logger.info("alarms: %s raised, %s cleared", raised, cleared)
        self.raised += raised
        self.cleared += cleared
