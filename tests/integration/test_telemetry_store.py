"""The store reports exactly the data points it wrote, also when a batch is partly stored."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from ingest.store import ONE_STATEMENT_ROWS, StagedRow, TelemetryStore
from iotp.events import TelemetryRecorded, from_fields, telemetry_recorded_fields

T0 = datetime(2026, 11, 24, 10, tzinfo=UTC)


def _rows(seqs: range, value: float) -> list[StagedRow]:
    return [(n, "d1", T0 + timedelta(seconds=n), "temp", value, T0) for n in seqs]


def _stored(db: psycopg.Connection[Any]) -> dict[datetime, float]:
    return dict(db.execute("SELECT ts, value FROM telemetry ORDER BY ts").fetchall())


# A small batch goes in one statement, a larger one by COPY: both report the same.
@pytest.mark.parametrize("k", [1, ONE_STATEMENT_ROWS], ids=["one statement", "copy"])
def test_new_rows_are_reported_all_new_partly_new_and_none_new(
    database_url: str, db: psycopg.Connection[Any], k: int
) -> None:
    store = TelemetryStore(database_url, "test-store")
    try:
        first = store.write(_rows(range(0, 4 * k), 1.0), lambda new: [{"n": str(len(new))}])
        assert first.new_seqs == set(range(4 * k))
        assert first.entries == [{"n": str(4 * k)}]
        # A redelivery of 2k..4k beside new 4k..6k: only the new ones, the stored values kept.
        partly = store.write(_rows(range(2 * k, 6 * k), 9.0), lambda new: [{"n": str(len(new))}])
        assert partly.new_seqs == set(range(4 * k, 6 * k))
        assert partly.entries == [{"n": str(2 * k)}]
        again = store.write(_rows(range(0, 6 * k), 7.0), lambda new: [])
        assert again.new_seqs == set()
    finally:
        store.close()
    stored = _stored(db)
    assert [stored[T0 + timedelta(seconds=n)] for n in range(6 * k)] == [1.0] * 4 * k + [
        9.0
    ] * 2 * k
    assert db.execute("SELECT count(*) FROM ingest_ledger").fetchone() == (2,)


@pytest.mark.parametrize("k", [1, ONE_STATEMENT_ROWS], ids=["one statement", "copy"])
def test_a_batch_forgets_the_ledger_rows_it_is_given_only_if_it_commits(
    database_url: str, db: psycopg.Connection[Any], k: int
) -> None:
    store = TelemetryStore(database_url, "test-store")
    ledger = "SELECT batch_id FROM ingest_ledger ORDER BY created_at"
    try:
        first = store.write(_rows(range(0, 2 * k), 1.0), lambda new: [{"n": "first"}])
        # This one holds a stored reading: its first attempt fails whole, forgetting
        # nothing; the second forgets the first batch's row and records its own.
        second = store.write(
            _rows(range(k, 3 * k), 2.0), lambda new: [{"n": "second"}], [first.batch_id]
        )
        assert db.execute(ledger).fetchall() == [(second.batch_id,)]
        third = store.write(
            _rows(range(3 * k, 4 * k), 3.0), lambda new: [{"n": "third"}], [second.batch_id]
        )
        assert third.new_seqs == set(range(3 * k, 4 * k))
        assert db.execute(ledger).fetchall() == [(third.batch_id,)]
        assert store.unpublished() == [(third.batch_id, [{"n": "third"}])]
    finally:
        store.close()
    assert len(_stored(db)) == 4 * k


def _events_of(rows: list[StagedRow]) -> Callable[[set[int]], list[dict[str, str]]]:
    """The events ingest would record: one of the newly stored readings."""

    def events_for(new: set[int]) -> list[dict[str, str]]:
        readings = [(row[2], {row[3]: row[4]}, ()) for row in rows if row[0] in new]
        fields = telemetry_recorded_fields("d1", readings, T0, T0)  # type: ignore[arg-type]
        return [fields] if readings else []

    return events_for


@pytest.mark.parametrize("k", [1, ONE_STATEMENT_ROWS], ids=["one statement", "copy"])
@pytest.mark.parametrize("committed", [True, False], ids=["committed", "not committed"])
def test_a_retry_after_a_lost_answer_finds_whether_its_batch_committed(
    database_url: str, db: psycopg.Connection[Any], k: int, committed: bool
) -> None:
    """The connection breaks after the batch committed (the answer is lost) or before: the
    retry, with the same batch id, reports the same batch once, events and all."""
    store = TelemetryStore(database_url, "test-store")
    rows = _rows(range(0, 2 * k), 1.0)
    batch_id = uuid.uuid4()
    write_all_new = store._write_all_new

    def break_connection(conn: psycopg.Connection[Any], *args: Any) -> Any:
        if committed:
            write_all_new(conn, *args)
        conn.close()
        raise psycopg.OperationalError("server closed the connection unexpectedly")

    store._write_all_new = break_connection  # type: ignore[method-assign]
    try:
        with pytest.raises(psycopg.OperationalError):
            store.write(rows, _events_of(rows), (), batch_id)
        ledger = db.execute("SELECT count(*) FROM ingest_ledger").fetchone()
        assert ledger == ((1,) if committed else (0,))
        store._write_all_new = write_all_new  # type: ignore[method-assign]
        again = store.write(rows, _events_of(rows), (), batch_id)
    finally:
        store.close()
    assert again.batch_id == batch_id
    assert again.new_seqs == set(range(2 * k))
    (event,) = [from_fields(entry) for entry in again.entries]
    assert isinstance(event, TelemetryRecorded) and len(event.readings) == 2 * k
    assert db.execute("SELECT batch_id FROM ingest_ledger").fetchall() == [(batch_id,)]
    assert len(_stored(db)) == 2 * k
