"""The TimescaleDB half of the migrations, run against TimescaleDB in PGlite (WASM).

A TimescaleDB server cannot be installed on our machines; PGlite compiled with the
extension can, through npm (`.ci/run` installs it). It serves one connection at a time
and has no COPY, which the migrations do not need.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from iotp.migrate import MigrationReport, migrate
from iotp.settings import Settings
from read_models import retention
from read_models.schema import READ_STORE_MIGRATIONS
from tests.support.timescale import unprepared_retention


def _settings(url: str, **changes: Any) -> Settings:
    return Settings(database_url=url, timescaledb="on", **changes)


def _jobs(url: str) -> dict[str, tuple[int, dict[str, Any]]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT proc_name, job_id, config FROM timescaledb_information.jobs"
            " WHERE hypertable_name = 'telemetry'"
        ).fetchall()
    return {name: (job_id, config) for name, job_id, config in rows}


@pytest.fixture(scope="module")
def migrated(timescale_url: str) -> MigrationReport:
    """The stores migrated once for the module, and that first run's report: every test here
    reads or changes them, so that any one of them runs on its own too."""
    return migrate(_settings(timescale_url, telemetry_retention_days=30), READ_STORE_MIGRATIONS)


pytestmark = [pytest.mark.timescaledb, pytest.mark.usefixtures("migrated")]


def test_migrations_make_telemetry_a_compressed_hypertable(
    timescale_url: str, migrated: MigrationReport
) -> None:
    report = migrated
    assert report.timescaledb
    assert report.applied == [
        "0001_devices",
        "0002_telemetry",
        "0003_telemetry_hypertable",
        "0004_ingest_ledger",
        "0005_telemetry_key_byte_order",
        "0006_ingest_ledger_uncompressed",
        "0010_alarms",
        "0020_webhooks",
        "0040_emqx_auth",
        "0050_consumer_recovery",
        "0060_api_keys",
        "0070_dashboard_accounts",
        "0080_device_profiles",
    ]
    assert "compression after 7 d" in report.policies
    assert "retention after 30 d" in report.policies
    assert "0060_rollup_tiers_hypertables" in report.read_store_applied
    assert "0080_rollup_columnar_hypertables" in report.read_store_applied
    assert "rollup_minute_columnar retention after 7 d" in report.policies
    assert "rollup_hour_columnar retention after 400 d" in report.policies
    assert "rollup_day_columnar retention off" in report.policies
    assert "rollup_minute_packed retention after 7 d" in report.policies
    assert "rollup_hour_packed retention after 400 d" in report.policies
    assert "rollup_day_packed retention off" in report.policies

    with psycopg.connect(timescale_url) as conn:
        hypertable = conn.execute(
            "SELECT compression_enabled FROM timescaledb_information.hypertables"
            " WHERE hypertable_name = 'telemetry'"
        ).fetchone()
        assert hypertable == (True,)
        segment_by = conn.execute(
            "SELECT attname FROM timescaledb_information.compression_settings"
            " WHERE hypertable_name = 'telemetry' AND segmentby_column_index IS NOT NULL"
            " ORDER BY segmentby_column_index"
        ).fetchall()
        assert segment_by == [("device_id",), ("metric",)]
        dimension = conn.execute(
            "SELECT column_name, time_interval FROM timescaledb_information.dimensions"
            " WHERE hypertable_name = 'telemetry'"
        ).fetchone()
        assert dimension is not None and dimension[0] == "ts"
        # The byte-ordered unique key replaced the constraint, on the hypertable too.
        keys = conn.execute(
            "SELECT indexdef FROM pg_indexes"
            " WHERE tablename = 'telemetry' AND indexdef LIKE '%UNIQUE%'"
        ).fetchall()
        assert [k for (k,) in keys] == [
            "CREATE UNIQUE INDEX telemetry_reading_key_c ON public.telemetry"
            ' USING btree (device_id COLLATE "C", metric COLLATE "C", ts)'
        ]

    jobs = _jobs(timescale_url)
    assert jobs["policy_compression"][1]["compress_after"] == "7 days"
    assert jobs["policy_retention"][1]["drop_after"] == "30 days"


def test_rollups_are_compressed_hypertables_dropped_by_chunk(timescale_url: str) -> None:
    with psycopg.connect(timescale_url) as conn:
        rows = conn.execute(
            "SELECT hypertable_name, compression_enabled FROM timescaledb_information.hypertables"
            " WHERE hypertable_schema = 'read_models' ORDER BY 1"
        ).fetchall()
        assert rows == [
            ("rollup_day_columnar", True),
            ("rollup_day_packed", True),
            ("rollup_hour_columnar", True),
            ("rollup_hour_packed", True),
            ("rollup_minute_columnar", True),
            ("rollup_minute_packed", True),
        ]
        # A batch holds a device's buckets, its metrics one after the other (0090).
        layouts = conn.execute(
            "SELECT hypertable::text, segmentby, orderby"
            " FROM timescaledb_information.hypertable_columnstore_settings"
            " WHERE hypertable::text LIKE 'read_models.rollup_%_columnar' ORDER BY 1"
        ).fetchall()
        assert layouts == [
            (f"read_models.rollup_{tier}_columnar", "device_id", "metric,bucket")
            for tier in ("day", "hour", "minute")
        ]
        jobs = conn.execute(
            "SELECT hypertable_name, proc_name, config FROM timescaledb_information.jobs"
            " WHERE hypertable_schema = 'read_models' ORDER BY 1, 2"
        ).fetchall()
    policies = {(name, proc): config for name, proc, config in jobs}
    assert policies[("rollup_minute_packed", "policy_retention")]["drop_after"] == "7 days"
    assert policies[("rollup_hour_packed", "policy_retention")]["drop_after"] == "400 days"
    assert ("rollup_day_packed", "policy_retention") not in policies
    assert policies[("rollup_minute_packed", "policy_compression")]["compress_after"] == "2 days"
    assert policies[("rollup_minute_columnar", "policy_retention")]["drop_after"] == "7 days"
    assert ("rollup_day_columnar", "policy_retention") not in policies
    assert policies[("rollup_minute_columnar", "policy_compression")]["compress_after"] == "1 day"


def test_the_retention_job_packs_and_drops_chunks_on_timescaledb(
    timescale_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same job on TimescaleDB: buckets packed into the hypertables, expired minutes
    gone by whole chunks, and the views read the same buckets."""

    unprepared_retention(monkeypatch)
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    settings = _settings(timescale_url)
    with psycopg.connect(timescale_url, autocommit=True) as conn:
        conn.execute(
            "TRUNCATE read_models.rollup_minute_recent, read_models.rollup_minute_packed,"
            " read_models.rollup_hour_recent, read_models.rollup_hour_packed"
        )
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO read_models.rollup_minute_recent VALUES ('d', 'm', %s, 1, %s, %s, %s)",
                [
                    (now - timedelta(minutes=n), float(n), float(n), float(n))
                    for n in range(0, 10 * 1440, 37)
                ],
            )
        before = conn.execute(
            "SELECT bucket, count, sum FROM read_models.rollup_minute"
            " WHERE bucket >= %s ORDER BY bucket",
            (now - timedelta(days=6),),
        ).fetchall()
    report = retention.run_retention(settings, now=now)
    assert report is not None
    assert report.rows["packed minute buckets"] > 0
    assert report.rows["compressed minute chunks"] >= 1
    assert report.rows["expired minute chunks"] >= 1
    with psycopg.connect(timescale_url, autocommit=True) as conn:
        after = conn.execute(
            "SELECT bucket, count, sum FROM read_models.rollup_minute"
            " WHERE bucket >= %s ORDER BY bucket",
            (now - timedelta(days=6),),
        ).fetchall()
        oldest = conn.execute("SELECT min(bucket) FROM read_models.rollup_minute").fetchone()
        # Packed by column, as scaled integers, into compressed chunks; no packed arrays.
        layout = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE scale = 0),"
            " (SELECT count(*) FROM read_models.rollup_minute_packed)"
            " FROM read_models.rollup_minute_columnar"
        ).fetchone()
        compressed = conn.execute(
            "SELECT count(*) FILTER (WHERE is_compressed), count(*)"
            " FROM timescaledb_information.chunks"
            " WHERE hypertable_name = 'rollup_minute_columnar' AND range_end <= %s",
            (now - timedelta(hours=1),),
        ).fetchone()
    assert after == before
    assert oldest is not None and oldest[0] >= now - timedelta(days=8)
    assert layout is not None and layout[0] > 0 and layout[0] == layout[1] and layout[2] == 0
    assert compressed is not None and compressed[0] == compressed[1] > 0


def test_late_readings_merge_into_compressed_buckets_on_timescaledb(
    timescale_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A late reading for a bucket packed and compressed already adds to it exactly; a value
    that is not a decimal keeps that bucket as float8, and the view reads both back."""

    unprepared_retention(monkeypatch)
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    settings = _settings(timescale_url)
    bucket = now - timedelta(hours=6)
    insert = "INSERT INTO read_models.rollup_minute_recent VALUES ('late', %s, %s, %s, %s, %s, %s)"
    with psycopg.connect(timescale_url, autocommit=True) as conn:
        conn.execute(insert, ("t", bucket, 2, 42.75, 21.37, 21.38))
        conn.execute(insert, ("v", bucket, 1, 1 / 3, 1 / 3, 1 / 3))
        # The device's other metric, in the same compressed batch: a late reading of one
        # metric reopens the batch, and must leave this one as it was.
        conn.execute(insert, ("w", bucket, 1, 5.5, 5.5, 5.5))
    assert retention.run_retention(settings, now=now) is not None
    with psycopg.connect(timescale_url, autocommit=True) as conn:
        conn.execute(insert, ("t", bucket, 1, 21.305, 21.305, 21.305))  # a late reading
        conn.execute(insert, ("v", bucket, 1, 0.5, 0.5, 0.5))
    report = retention.run_retention(settings, now=now)
    assert report is not None and report.rows["packed minute buckets"] == 2
    # The merge reopened the chunk (a batch decompressed into rows): the same run compressed
    # it again.
    assert report.rows["recompressed minute chunks (late readings)"] >= 1
    with psycopg.connect(timescale_url, autocommit=True) as conn:
        reopened = conn.execute(
            "SELECT i.is_compressed, c.status & 8 <> 0 FROM timescaledb_information.chunks i"
            " JOIN _timescaledb_catalog.chunk c"
            " ON c.schema_name = i.chunk_schema AND c.table_name = i.chunk_name"
            " WHERE i.hypertable_name = 'rollup_minute_columnar'"
            " AND i.range_start <= %s AND i.range_end > %s",
            (bucket, bucket),
        ).fetchall()
        rows = conn.execute(
            "SELECT metric, count, sum, min, max FROM read_models.rollup_minute"
            " WHERE device_id = 'late' ORDER BY metric"
        ).fetchall()
        stored = conn.execute(
            "SELECT metric, scale FROM read_models.rollup_minute_columnar"
            " WHERE device_id = 'late' ORDER BY metric"
        ).fetchall()
    assert rows == [
        ("t", 3, 64.055, 21.305, 21.38),
        ("v", 2, 1 / 3 + 0.5, 1 / 3, 0.5),
        ("w", 1, 5.5, 5.5, 5.5),
    ]
    assert stored == [("t", 3), ("v", None), ("w", 1)]
    assert reopened == [(True, False)]  # compressed, and no longer partial


def test_second_run_changes_nothing(timescale_url: str) -> None:
    before = _jobs(timescale_url)
    report = migrate(_settings(timescale_url, telemetry_retention_days=30), READ_STORE_MIGRATIONS)
    assert report.applied == []
    assert "retention after 30 d (unchanged)" in report.policies
    assert _jobs(timescale_url) == before


def test_policies_follow_the_settings(timescale_url: str) -> None:
    settings = _settings(
        timescale_url, telemetry_retention_days=0, telemetry_compress_after_days=14
    )
    migrate(settings, READ_STORE_MIGRATIONS)
    jobs = _jobs(timescale_url)
    assert "policy_retention" not in jobs
    assert jobs["policy_compression"][1]["compress_after"] == "14 days"


def test_readings_are_unique_and_bucketable_on_the_hypertable(timescale_url: str) -> None:
    with psycopg.connect(timescale_url) as conn:
        insert = (
            "INSERT INTO telemetry (device_id, ts, metric, value) VALUES (%s, %s, %s, %s)"
            " ON CONFLICT (device_id, metric, ts) DO NOTHING"
        )
        rows = [
            ("d1", "2026-11-01T10:00:00Z", "t", 1.0),
            ("d1", "2026-11-01T10:00:30Z", "t", 3.0),
            ("d1", "2026-11-01T10:00:00Z", "t", 9.0),
        ]
        inserted = 0
        for row in rows:
            inserted += conn.execute(insert, row).rowcount
        assert inserted == 2
        bucket = conn.execute(
            "SELECT time_bucket('1 minute', ts), count(*), avg(value) FROM telemetry GROUP BY 1"
        ).fetchall()
        assert [(count, avg) for _, count, avg in bucket] == [(2, 2.0)]
