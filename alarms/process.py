"""The alarm process: telemetry events in, AlarmRaised and AlarmCleared out through the outbox.

Each batch's evaluation state, alarms, outbox events and stream positions commit in one
PostgreSQL transaction; :class:`iotp.group_reader.GroupReader` acknowledges the batch after
the commit. A crash before the commit redoes the whole batch; a crash after it finds the
entries at or below the recorded positions and skips them, so no alarm is raised twice and
no transition is missed. Readings whose events left Redis unapplied are evaluated from the
telemetry table (:mod:`alarms.heal`). Offline alarms come from a timer in this process
(database clock), in transactions of their own.

One process leads (a session advisory lock); the others wait for the lock. All of them read
under one consumer name, so a new leader finds what a dead one read and did not acknowledge
as its own pending entries and applies them first. A reading that still arrives after a
newer one of its device was applied is late, and changes nothing (alarms.rules).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import psycopg
import redis

from alarms import state
from alarms.evaluation import BatchEvaluation, OfflineSweep
from alarms.heal import reevaluate_from_write_store
from iotp.db import ReconnectingConnection
from iotp.event_shards import telemetry_streams
from iotp.events import AnyEvent, TelemetryFacts, TelemetryRecorded, from_fields_to_fold
from iotp.group_reader import Batch, GroupReader, ReaderOptions, StreamPart
from iotp.periodic import Every
from iotp.redis_client import split_id

logger = logging.getLogger(__name__)

ALARM_GROUP = "iotp-alarms"
ALARM_CONSUMER = "alarms"
LEADER_LOCK_KEY = 0x10770017

Reading = TelemetryRecorded | TelemetryFacts


@dataclass(frozen=True)
class AlarmOptions:
    batch_size: int = 1000
    block_ms: int = 500
    tick_seconds: float = 1.0
    liveness_timeout_seconds: int = 300
    liveness_timeouts: Mapping[str, int] = field(default_factory=dict)
    event_shards: int = 1
    # A leader that failed mid-batch finds its entries here again (one consumer name for all).
    claim_idle_ms: int = 30_000

    @property
    def streams(self) -> tuple[str, ...]:
        return telemetry_streams(self.event_shards)

    def reader(self) -> ReaderOptions:
        return ReaderOptions(
            group=ALARM_GROUP,
            consumer=ALARM_CONSUMER,
            streams=self.streams,
            batch_size=self.batch_size,
            # The timer is ticked between reads: a read waits no longer than a tick.
            block_ms=min(self.block_ms, int(self.tick_seconds * 1000)),
            claim_idle_ms=self.claim_idle_ms,
            shards=self.event_shards,
            task="alarms",
        )


class AlarmEvaluator(StreamPart[AnyEvent | TelemetryFacts]):
    """Evaluates batches of readings against the rules, while it holds the leader lock."""

    def __init__(
        self, connect: Callable[[], psycopg.Connection[Any]], options: AlarmOptions
    ) -> None:
        self.options = options
        self._db = ReconnectingConnection(connect)
        self._leading = False
        self._tick = Every(options.tick_seconds)
        self.raised = 0
        self.cleared = 0

    def _connection(self) -> psycopg.Connection[Any]:
        if self._db.closed:
            self._leading = False  # the lock was the old session's
        return self._db()

    def close(self) -> None:
        # Released here rather than left to the server, which frees a session's locks only
        # once its backend has exited: a standby takes over as soon as this returns.
        if self._leading and not self._db.closed:
            try:
                self._db().execute("SELECT pg_advisory_unlock(%s)", (LEADER_LOCK_KEY,))
            except psycopg.Error as exc:
                logger.warning("alarms: could not release the leader lock: %s", exc)
        self._leading = False
        self._db.close()

    def may_read(self) -> bool:
        """Whether this process leads: it takes the leader lock when it is free."""
        if self._leading:
            return True
        row = (
            self._connection()
            .execute("SELECT pg_try_advisory_lock(%s) AS got", (LEADER_LOCK_KEY,))
            .fetchone()
        )
        if row is not None and row["got"]:
            self._leading = True
            logger.info("alarms: leading (group %s)", ALARM_GROUP)
        return self._leading

    def apply(self, batch: Batch[AnyEvent | TelemetryFacts]) -> int:
        conn = self._connection()
        with conn.transaction():
            state.share_rules_lock(conn)
            done = state.positions(conn)
            fresh = _after_positions(batch, done)
            evaluation = BatchEvaluation(conn, state.database_now(conn))
            evaluation.apply(fresh)
            state.write_events(conn, list(evaluation.events))
            for stream, last in batch.last_ids.items():
                if stream not in done or split_id(last) > split_id(done[stream]):
                    state.save_position(conn, stream, last)
        self._count(evaluation.raised, evaluation.cleared)
        return len(fresh)

    def positions(self) -> Mapping[str, str]:
        return state.positions(self._connection())

    def heal(self, delivered: Mapping[str, str]) -> None:
        report = reevaluate_from_write_store(self._connection(), delivered)
        self._count(report.raised, report.cleared)

    def chores(self, busy: bool) -> None:
        if not busy and self._tick.due():
            self.tick()

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
            state.write_events(conn, list(sweep.events))
        self._count(sweep.raised, sweep.cleared)

    def _count(self, raised: int, cleared: int) -> None:
        if raised or cleared:
            logger.info("alarms: %s raised, %s cleared", raised, cleared)
        self.raised += raised
        self.cleared += cleared


def _after_positions(
    batch: Batch[AnyEvent | TelemetryFacts], done: Mapping[str, str]
) -> list[tuple[str, Reading]]:
    """The batch's readings after the recorded positions, as (position, event), in order."""
    found: list[tuple[str, Reading]] = []
    for delivered in sorted(batch.events, key=lambda d: (d.stream, split_id(d.entry_id))):
        floor = done.get(delivered.stream)
        if floor is not None and split_id(delivered.entry_id) <= split_id(floor):
            continue
        if isinstance(delivered.event, TelemetryRecorded | TelemetryFacts):
            found.append((f"{delivered.stream}/{delivered.entry_id}", delivered.event))
    return found


def alarm_process(
    client: redis.Redis, connect: Callable[[], psycopg.Connection[Any]], options: AlarmOptions
) -> GroupReader[AnyEvent | TelemetryFacts]:
    """The alarm process: the group reader feeding an :class:`AlarmEvaluator`."""
    return GroupReader(
        client, AlarmEvaluator(connect, options), options.reader(), from_fields_to_fold
    )
