"""Writing telemetry batches: binary COPY into staging, then an idempotent insert.

One transaction per batch holds the new rows and the ledger entry of the batch's events,
so that a batch either committed with its events recorded, or did not happen at all.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
import psycopg

from iotp.db import ReconnectingConnection

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


def _store_rows(
    conn: psycopg.Connection[Any], cur: psycopg.Cursor[Any], rows: Sequence[StagedRow]
) -> set[int]:
    """Insert the batch's new rows; the staging seq of each one that was not stored before.

    First straight into the table (one pass, what PostgreSQL spends least on); a batch that
    holds a reading stored before (a redelivery after a crash) fails that on the unique key,
    and goes through staging, which skips the stored readings and says which were new.
    """
    try:
        # In a savepoint: a failed COPY leaves nothing behind.
        with conn.transaction(), cur.copy(_COPY_DIRECT) as copy:
            copy.set_types(_COPY_DIRECT_TYPES)
            for row in rows:
                copy.write_row(row[1:])
        return {row[0] for row in rows}
    except psycopg.errors.UniqueViolation:
        pass
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

    def _open(self) -> psycopg.Connection[Any]:
        conn = psycopg.connect(self._url, connect_timeout=5)
        conn.execute(_STAGING)  # a temporary table: each session makes its own
        conn.commit()
        return conn

    def close(self) -> None:
        self._connection.close()

    def write(
        self,
        rows: Sequence[StagedRow],
        events_for: Callable[[set[int]], list[StreamEntry]],
        forget: Sequence[uuid.UUID] = (),
    ) -> CommittedBatch:
        """Store ``rows`` (skipping readings already stored) with the ledger of their events."""
        conn = self._connection()
        batch_id = uuid.uuid4()
        try:
            with conn.transaction(), conn.cursor(binary=True) as cur:
                if forget:
                    cur.execute(
                        "DELETE FROM ingest_ledger WHERE batch_id = ANY(%s)", (list(forget),)
                    )
                new = _store_rows(conn, cur, rows) if rows else set()
                entries = events_for(new)
                if entries:
                    cur.execute(
                        "INSERT INTO ingest_ledger (batch_id, consumer, entries)"
                        " VALUES (%s, %s, %s)",
                        (batch_id, self.consumer, orjson.dumps(entries)),
                    )
        except psycopg.OperationalError:
            self.close()
            raise
        return CommittedBatch(batch_id, new, entries)

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
