"""A TimescaleDB read store made before migration 0090, whose compressed rollup batches hold
one series each, upgraded: its chunks keep their layout and read the same, late readings
still merge into them, and new chunks are compressed by device.

A module of its own: it needs a read store migrated only up to 0080 (each module of this
directory gets its own PGlite)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from iotp import migrate as migrations
from iotp.settings import Settings
from read_models import retention
from read_models.schema import READ_STORE_MIGRATIONS
from tests.support.timescale import unprepared_retention

pytestmark = pytest.mark.timescaledb

_INSERT = "INSERT INTO read_models.rollup_minute_recent VALUES ('d', %s, %s, 1, %s, %s, %s)"


def _minutes(conn: psycopg.Connection[Any], start: datetime, hours: int) -> None:
    with conn.cursor() as cur:
        cur.executemany(
            _INSERT,
            [
                (metric, start + timedelta(minutes=n), value, value, value)
                for n in range(hours * 60)
                for metric, value in (("a", 20 + n / 100), ("b", 50 - n / 10))
            ],
        )


def _layouts(conn: psycopg.Connection[Any]) -> set[str | None]:
    rows = conn.execute(
        "SELECT segmentby FROM timescaledb_information.chunk_columnstore_settings"
        " WHERE hypertable::text = 'read_models.rollup_minute_columnar'"
    ).fetchall()
    return {segmentby for (segmentby,) in rows}


def _view(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT metric, bucket, count, sum, min, max FROM read_models.rollup_minute"
        " WHERE device_id = 'd' ORDER BY metric, bucket"
    ).fetchall()


def test_chunks_compressed_by_series_read_the_same_after_0090(
    timescale_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    unprepared_retention(monkeypatch)
    settings = Settings(database_url=timescale_url, timescaledb="on")
    shipped = migrations.load_migrations
    monkeypatch.setattr(
        migrations,
        "load_migrations",
        lambda package=migrations.WRITE_MIGRATIONS: [
            m for m in shipped(package) if m.version < "0090"
        ],
    )
    migrations.migrate(settings, READ_STORE_MIGRATIONS)
    now = datetime(2026, 12, 7, 12, tzinfo=UTC)
    with psycopg.connect(timescale_url, autocommit=True, prepare_threshold=None) as conn:
        _minutes(conn, now - timedelta(hours=10), 8)
    assert retention.run_retention(settings, now=now) is not None
    with psycopg.connect(timescale_url, autocommit=True, prepare_threshold=None) as conn:
        before = _view(conn)
        assert _layouts(conn) == {"device_id,metric"}

    monkeypatch.setattr(migrations, "load_migrations", shipped)
    report = migrations.migrate(settings, READ_STORE_MIGRATIONS)
    assert any("0090" in applied for applied in report.read_store_applied), report
    with psycopg.connect(timescale_url, autocommit=True, prepare_threshold=None) as conn:
        assert _view(conn) == before
        # A late reading into an old chunk, and hours that fill new chunks.
        late = now - timedelta(hours=9)
        conn.execute(_INSERT, ("a", late, 1.5, 1.5, 1.5))
        _minutes(conn, now - timedelta(hours=2), 8)
    later = now + timedelta(hours=7)
    assert retention.run_retention(settings, now=later) is not None
    with psycopg.connect(timescale_url, autocommit=True, prepare_threshold=None) as conn:
        after = _view(conn)
        assert _layouts(conn) == {"device_id,metric", "device_id"}
    merged = [row for row in after if row[:2] == ("a", late)]
    (_, _, count, total, low, high) = next(row for row in before if row[:2] == ("a", late))
    assert merged == [("a", late, count + 1, total + 1.5, min(low, 1.5), max(high, 1.5))]
    untouched = [row for row in after if row[1] < now - timedelta(hours=2)]
    assert sorted(untouched) == sorted([row for row in before if row[:2] != ("a", late)] + merged)
    assert len(after) == 2 * 60 * 16
