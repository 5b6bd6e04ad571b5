"""Writing telemetry batches: binary COPY straight into the table, or, for a batch holding a
reading stored before, into staging and then an idempotent insert.

One transaction per batch holds the new rows and the ledger entry of the batch's events,
so that a batch either committed with its events recorded, or did not happen at all.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
import psycopg

from iotp.db import ReconnectingConnection
from iotp.pg_arrays import float8s, register_pg_arrays, texts, timestamptzs

logger = logging.getLogger(__name__)

# (seq, device_id, ts, metric, value, received_at); no two rows of a batch share a key
StagedRow = tuple[int, str, datetime, str, float, datetime]
StreamEntry = dict[str, str]

_STAGING = (
    "CREATE TEMP TABLE IF NOT EXISTS telemetry_staging ("
    " seq int4, device_id text, ts timestamptz, metric text, value float8,"
    " received_at timestamptz) ON COMMIT DELETE ROWS"
)
_COPY = (
    "COPY telemetry_staging (seq, device_id, ts, metric, value, received_at)"
    " FROM STDIN (FORMAT BINARY)"
)
_COPY_TYPES = ["int4", "text", "timestamptz", "text", "float8", "timestamptz"]
# Usually every reading of a batch is new: then it goes straight into the table, in one pass.
_COPY_DIRECT = (
    "COPY telemetry (device_id, ts, metric, value, received_at) FROM STDIN (FORMAT BINARY)"
)
_COPY_DIRECT_TYPES = _COPY_TYPES[1:]
# Staging holds each reading once (the pipeline drops a batch's own repeats), so a plain
# insert with ON CONFLICT needs no sort; usually every row is new and the row count says so.
_INSERT = (
    "INSERT INTO telemetry (device_id, ts, metric, value, received_at)"
    " SELECT device_id, ts, metric, value, received_at FROM telemetry_staging"
    " ON CONFLICT (device_id, metric, ts) DO NOTHING"
)
# Otherwise (a redelivery), the new rows are the ones this transaction wrote: their xmin.
# (COLLATE "C" as in the unique key, migration 0005, so that the join can use it.)
_NEW_SEQS = (
    "SELECT s.seq FROM telemetry_staging s JOIN telemetry t"
    ' ON t.device_id COLLATE "C" = s.device_id AND t.metric COLLATE "C" = s.metric'
    " AND t.ts = s.ts WHERE t.xmin = pg_current_xact_id()::xid"
)


_FORGET = "DELETE FROM ingest_ledger WHERE batch_id = ANY(%s)"
_RECORD = "INSERT INTO ingest_ledger (batch_id, consumer, entries) VALUES (%s, %s, %s)"
_FORGET_AND_RECORD = f"WITH forgotten AS ({_FORGET}) {_RECORD}"

# A small batch, every reading new, in one statement: its own transaction (the connection is
# in autocommit), one round trip where the COPY's transaction takes five. At a moderate rate
# batches are a handful of messages, and those round trips were most of ingest's CPU and a
# sixth of PostgreSQL's for each (6 messages: 465 µs of ingest's CPU and 495 µs of
# PostgreSQL's, against 215 and 420). Past ONE_STATEMENT_ROWS the COPY costs less of both.
ONE_STATEMENT_ROWS = 256
_INSERT_AND_RECORD = f"""WITH forgotten AS ({_FORGET}), stored AS (
    INSERT INTO telemetry (device_id, ts, metric, value, received_at)
    SELECT * FROM unnest(%b::text[], %b::timestamptz[], %b::text[], %b::float8[],
        %b::timestamptz[])
) {_RECORD}"""  # noqa: S608 - it interpolates constant statements only


def _store_with_staging(cur: psycopg.Cursor[Any], rows: Sequence[StagedRow]) -> set[int]:
    """Insert the batch's rows that were not stored before; the staging seq of each.

    The path of a batch that holds a reading stored before (a redelivery after a crash):
    staging skips the stored readings and says which were new.
    """
    with cur.copy(_COPY) as copy:
        copy.set_types(_COPY_TYPES)
        for row in rows:
            copy.write_row(row)
    cur.execute(_INSERT)
    if cur.rowcount == len(rows):
        return {row[0] for row in rows}
    if cur.rowcount <= 0:
        return set()
    cur.execute("ANALYZE telemetry_staging")
    cur.execute(_NEW_SEQS)
    return {seq for (seq,) in cur.fetchall()}


@dataclass(frozen=True)
class CommittedBatch:
    batch_id: uuid.UUID
    new_seqs: set[int]  # staging seq of every data point that was not stored before
    entries: list[StreamEntry]


class TelemetryStore:
    """Owns one connection; reconnects after the database went away."""

    def __init__(self, database_url: str, consumer: str) -> None:
        self._url = database_url
        self.consumer = consumer
        self._connection = ReconnectingConnection(self._open)
        # A batch whose write lost its connection: it may have committed all the same
        # (the answer to its COMMIT, or to its one statement, was what got lost).
        self._unsure: uuid.UUID | None = None

    def _open(self) -> psycopg.Connection[Any]:
        # Autocommit: a batch's transaction is explicit (conn.transaction()), or one statement.
        conn = psycopg.connect(self._url, connect_timeout=5, autocommit=True)
        conn.execute(_STAGING)  # a temporary table: each session makes its own
        register_pg_arrays(conn)
        return conn

    def close(self) -> None:
        self._connection.close()

    def write(
        self,
        rows: Sequence[StagedRow],
        events_for: Callable[[set[int]], list[StreamEntry]],
        forget: Sequence[uuid.UUID] = (),
        batch_id: uuid.UUID | None = None,
    ) -> CommittedBatch:
        """Store ``rows`` (skipping readings already stored) with the ledger of their events.

        Retried with the same ``batch_id`` after a lost connection, it first looks for that
        batch in the ledger: found, the batch committed, and it is reported with the events
        it recorded then. Otherwise the retry would find its own readings stored before,
        report none of them new, and leave the first attempt's events in the ledger
        unpublished until the next start.
        """
        conn = self._connection()
        batch_id = batch_id or uuid.uuid4()
        try:
            committed = None
            if self._unsure == batch_id:
                committed = self._committed_before(conn, batch_id, rows)
            if committed is None:
                committed = self._write_all_new(conn, batch_id, rows, events_for, forget)
            if committed is None:  # a reading of the batch was stored before
                committed = self._write_through_staging(conn, batch_id, rows, events_for, forget)
        except psycopg.OperationalError:
            self._unsure = batch_id
            self.close()
            raise
        self._unsure = None
        return committed

    def _committed_before(
        self, conn: psycopg.Connection[Any], batch_id: uuid.UUID, rows: Sequence[StagedRow]
    ) -> CommittedBatch | None:
        """The batch as an earlier attempt committed it, if it did (its ledger row says)."""
        found = conn.execute(
            "SELECT entries FROM ingest_ledger WHERE batch_id = %s", (batch_id,)
        ).fetchone()
        if found is None:
            return None
        entries: list[StreamEntry] = orjson.loads(found[0])
        # Its events hold exactly the readings it stored: the new data points.
        stored = {
            (event["device_id"], datetime.fromisoformat(reading["ts"]), metric)
            for event in (orjson.loads(entry["data"]) for entry in entries)
            for reading in event["readings"]
            for metric in reading["metrics"]
        }
        new = {row[0] for row in rows if (row[1], row[2], row[3]) in stored}
        logger.info("batch %s had committed before its connection was lost", batch_id)
        return CommittedBatch(batch_id, new, entries)

    def _write_all_new(
        self,
        conn: psycopg.Connection[Any],
        batch_id: uuid.UUID,
        rows: Sequence[StagedRow],
        events_for: Callable[[set[int]], list[StreamEntry]],
        forget: Sequence[uuid.UUID],
    ) -> CommittedBatch | None:
        """The usual batch, every reading new: straight into the table, in one pass.

        A small batch in one statement (_INSERT_AND_RECORD); a larger one by COPY, in five
        round trips (BEGIN, the COPY's two, the ledger, COMMIT), with no savepoint around the
        COPY. None, with nothing kept, when the unique key finds a reading stored before.
        """
        new = {row[0] for row in rows}
        entries = events_for(new)
        if rows and entries and len(rows) <= ONE_STATEMENT_ROWS:
            try:
                conn.execute(
                    _INSERT_AND_RECORD,
                    (
                        list(forget),
                        texts([row[1] for row in rows]),
                        timestamptzs([row[2] for row in rows]),
                        texts([row[3] for row in rows]),
                        float8s([row[4] for row in rows]),
                        timestamptzs([row[5] for row in rows]),
                        batch_id,
                        self.consumer,
                        orjson.dumps(entries),
                    ),
                )
            except psycopg.errors.UniqueViolation:
                return None  # (the statement stored nothing)
            return CommittedBatch(batch_id, new, entries)
        try:
            with conn.transaction(), conn.cursor(binary=True) as cur:
                if rows:
                    with cur.copy(_COPY_DIRECT) as copy:
                        copy.set_types(_COPY_DIRECT_TYPES)
                        for row in rows:
                            copy.write_row(row[1:])
                self._ledger(cur, batch_id, entries, forget)
        except psycopg.errors.UniqueViolation:
            return None  # (the transaction rolled back)
        return CommittedBatch(batch_id, new, entries)

    def _write_through_staging(
        self,
        conn: psycopg.Connection[Any],
        batch_id: uuid.UUID,
        rows: Sequence[StagedRow],
        events_for: Callable[[set[int]], list[StreamEntry]],
        forget: Sequence[uuid.UUID],
    ) -> CommittedBatch:
        with conn.transaction(), conn.cursor(binary=True) as cur:
            new = _store_with_staging(cur, rows)
            entries = events_for(new)
            self._ledger(cur, batch_id, entries, forget)
        return CommittedBatch(batch_id, new, entries)

    def _ledger(
        self,
        cur: psycopg.Cursor[Any],
        batch_id: uuid.UUID,
        entries: list[StreamEntry],
        forget: Sequence[uuid.UUID],
    ) -> None:
        """The batch's events into the ledger, and the entries already published out of it:
        one statement."""
        record = (batch_id, self.consumer, orjson.dumps(entries))
        if entries and forget:
            cur.execute(_FORGET_AND_RECORD, (list(forget), *record))
        elif entries:
            cur.execute(_RECORD, record)
        elif forget:
            cur.execute(_FORGET, (list(forget),))

    def forget(self, batch_ids: Sequence[uuid.UUID]) -> None:
        """Drop ledger entries whose events are on the stream."""
        if not batch_ids:
            return
        conn = self._connection()
        try:
            with conn.transaction():
                conn.execute(
                    "DELETE FROM ingest_ledger WHERE batch_id = ANY(%s)", (list(batch_ids),)
                )
        except psycopg.OperationalError:
            self.close()
            raise

    def unpublished(self) -> list[tuple[uuid.UUID, list[StreamEntry]]]:
        """Ledger entries this consumer left behind (it crashed before publishing them)."""
        conn = self._connection()
        try:
            with conn.transaction():
                rows = conn.execute(
                    "SELECT batch_id, entries FROM ingest_ledger WHERE consumer = %s"
                    " ORDER BY created_at",
                    (self.consumer,),
                ).fetchall()
        except psycopg.OperationalError:
            self.close()
            raise
        return [(batch_id, orjson.loads(entries)) for batch_id, entries in rows]
