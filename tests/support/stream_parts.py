"""A part for the group reader's own tests: it records each event once in PostgreSQL.

Its effect (one row per event id) and its progress (a position per stream) commit in one
transaction, as every real part's do; a heal records that it ran and what it was given.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Mapping
from typing import Any

import psycopg
import redis

from iotp.events import AnyEvent, from_fields
from iotp.group_reader import Batch, GroupReader, ReaderOptions, StreamPart

GROUP = "test-readers"
SCHEMA = """
CREATE TABLE IF NOT EXISTS reader_applied (
    event_id uuid PRIMARY KEY, stream text NOT NULL, entry_id text NOT NULL, consumer text
);
CREATE TABLE IF NOT EXISTS reader_positions (stream text PRIMARY KEY, last_id text NOT NULL);
TRUNCATE reader_applied, reader_positions;
"""


class RecordingPart(StreamPart[AnyEvent]):
    def __init__(self, database_url: str, consumer: str = "") -> None:
        self.database_url = database_url
        self.consumer = consumer
        self.heals: list[dict[str, str]] = []
        self.failures: list[Exception] = []  # raised by the next applies, one each
        self.after_commit: Callable[[], None] = lambda: None
        self._conn: psycopg.Connection[Any] | None = None

    def _db(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self.database_url, autocommit=True)
        return self._conn

    def apply(self, batch: Batch[AnyEvent]) -> int:
        if self.failures:
            raise self.failures.pop(0)
        conn = self._db()
        applied = 0
        with conn.transaction():
            for d in batch.events:
                cur = conn.execute(
                    "INSERT INTO reader_applied VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
                    (d.event.event_id, d.stream, d.entry_id, self.consumer),
                )
                applied += cur.rowcount
            for stream, last in batch.last_ids.items():
                conn.execute(
                    "INSERT INTO reader_positions VALUES (%s, %s)"
                    " ON CONFLICT (stream) DO UPDATE SET last_id = excluded.last_id",
                    (stream, last),
                )
        self.after_commit()
        return applied

    def positions(self) -> Mapping[str, str]:
        rows = self._db().execute("SELECT stream, last_id FROM reader_positions").fetchall()
        return dict(rows)

    def heal(self, delivered: Mapping[str, str]) -> None:
        self.heals.append(dict(delivered))
        with self._db().transaction():
            for stream, last in delivered.items():
                self._db().execute(
                    "INSERT INTO reader_positions VALUES (%s, %s)"
                    " ON CONFLICT (stream) DO UPDATE SET last_id = excluded.last_id",
                    (stream, last),
                )

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


def reader(
    client: redis.Redis, part: RecordingPart, streams: tuple[str, ...], **options: Any
) -> GroupReader[AnyEvent]:
    settings = {"consumer": part.consumer or "c1", "block_ms": 20, "claim_idle_ms": 200, **options}
    return GroupReader(
        client, part, ReaderOptions(group=GROUP, streams=streams, **settings), from_fields
    )


def die_after_commit(redis_url: str, database_url: str, stream: str) -> None:
    """Read one batch, commit it, and be killed (SIGKILL) before it is acknowledged."""
    part = RecordingPart(database_url, consumer="doomed")
    part.after_commit = lambda: os.kill(os.getpid(), signal.SIGKILL)
    reader(redis.Redis.from_url(redis_url), part, (stream,)).step()
    sys.exit("still alive after the commit")


if __name__ == "__main__":
    die_after_commit(*sys.argv[1:4])
