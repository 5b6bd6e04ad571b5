"""The store reports exactly the data points it wrote, also when a batch is partly stored."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from ingest.store import StagedRow, TelemetryStore

T0 = datetime(2026, 11, 24, 10, tzinfo=UTC)


def _rows(seqs: range, value: float) -> list[StagedRow]:
    return [(n, "d1", T0 + timedelta(seconds=n), "temp", value, T0) for n in seqs]


def _stored(db: psycopg.Connection[Any]) -> dict[datetime, float]:
    return dict(db.execute("SELECT ts, value FROM telemetry ORDER BY ts").fetchall())


def test_new_rows_are_reported_all_new_partly_new_and_none_new(
    database_url: str, db: psycopg.Connection[Any]
) -> None:
    store = TelemetryStore(database_url, "test-store")
    try:
        first = store.write(_rows(range(0, 4), 1.0), lambda new: [{"n": str(len(new))}])
        assert first.new_seqs == {0, 1, 2, 3}
        assert first.entries == [{"n": "4"}]
        # A redelivery of 2..3 beside new 4..5: only the new ones, the stored values kept.
        partly = store.write(_rows(range(2, 6), 9.0), lambda new: [])
        assert partly.new_seqs == {4, 5}
        again = store.write(_rows(range(0, 6), 7.0), lambda new: [])
        assert again.new_seqs == set()
    finally:
        store.close()
    stored = _stored(db)
    assert [stored[T0 + timedelta(seconds=n)] for n in range(6)] == [1.0] * 4 + [9.0] * 2
    assert db.execute("SELECT count(*) FROM ingest_ledger").fetchone() == (1,)
