"""GET /devices/{id}/export: the files hold exactly the stored rows, bounds and hostile input
are refused, and a large export is streamed chunk by chunk from a server-side cursor."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from iotp.events import DeviceRegistered, Event, RecordedReading, TelemetryRecorded
from iotp.model import MetricSpec
from iotp.settings import Settings
from local_platform.broker import free_port
from read_models import store
from read_models.app import create_query_app
from read_models.export import (
    CHUNK_ROWS,
    ExportRequest,
    csv_chunks,
    fetch_chunks,
    parquet_chunks,
)
from read_models.projection import fold
from tests.support.servers import TEST_TOKEN

AUTH = {"Authorization": f"Bearer {TEST_TOKEN}"}
NOW = datetime.now(UTC).replace(second=0, microsecond=0)
DEVICE = "boiler.1-a_b"
MAX_DAYS = 3


def _iso(value: datetime) -> str:
    return value.isoformat()


@pytest.fixture
def seeded(db: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    """DEVICE with 120 minutes of temp and hum readings in both stores, and an idle device."""
    events: list[Event] = [
        DeviceRegistered(
            device_id=device,
            name=device,
            kind="thermostat",
            metrics=(MetricSpec(name="temp"), MetricSpec(name="hum")),
            occurred_at=NOW - timedelta(days=1),
        )
        for device in (DEVICE, "idle")
    ]
    rows = []
    for minute in range(120):
        # Microseconds and long fractions, so that a lossy encoding would show.
        ts = NOW - timedelta(minutes=minute, microseconds=123457)
        metrics = {"temp": 20 + minute / 7, "hum": 40.0 + minute % 3}
        rows += [(DEVICE, ts, metric, value) for metric, value in metrics.items()]
        events.append(
            TelemetryRecorded(
                device_id=DEVICE,
                ingested_at=NOW,
                readings=(RecordedReading(ts=ts, metrics=metrics),),
            )
        )
    with (
        db.cursor() as cur,
        cur.copy("COPY telemetry (device_id, ts, metric, value) FROM STDIN") as copy,
    ):
        for row in rows:
            copy.write_row(row)
    with db.transaction():
        store.apply_deltas(db, fold(events))
    return db


@pytest.fixture
def api(settings: Settings, seeded: psycopg.Connection[Any]) -> Iterator[TestClient]:
    configured = settings.model_copy(update={"export_max_days": MAX_DAYS})
    with TestClient(create_query_app(configured)) as client:
        yield client


@pytest.fixture
def bare_api(settings: Settings) -> Iterator[TestClient]:
    """The query API over empty stores: enough for what is refused before any read."""
    with TestClient(create_query_app(settings)) as client:
        yield client


def _export(api: TestClient, device: str = DEVICE, **params: str) -> Any:
    return api.get(f"/devices/{device}/export", headers=AUTH, params=params)


def _stored_raw(
    db: psycopg.Connection[Any], start: datetime, end: datetime
) -> list[tuple[Any, ...]]:
    return db.execute(
        "SELECT device_id, metric, ts, value FROM telemetry"
        " WHERE device_id = %s AND ts >= %s AND ts < %s ORDER BY metric, ts",
        (DEVICE, start, end),
    ).fetchall()


def _csv_rows(body: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(body.decode())))


def test_csv_of_raw_readings_equals_the_stored_rows(api: TestClient, seeded: Any) -> None:
    start, end = NOW - timedelta(minutes=30), NOW - timedelta(minutes=5)
    answer = _export(api, format="csv", source="raw", start=_iso(start), end=_iso(end))
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "text/csv; charset=utf-8"
    disposition = answer.headers["content-disposition"]
    assert disposition.startswith('attachment; filename="boiler_1-a_b-raw-')
    assert disposition.endswith('.csv"')
    parsed = [
        (r["device_id"], r["metric"], datetime.fromisoformat(r["ts"]), float(r["value"]))
        for r in _csv_rows(answer.content)
    ]
    stored = _stored_raw(seeded, start, end)
    assert len(stored) == 50 and parsed == stored
    assert all(ts.tzinfo == UTC for _, _, ts, _ in parsed)


def test_parquet_of_raw_readings_equals_the_stored_rows(api: TestClient, seeded: Any) -> None:
    start, end = NOW - timedelta(hours=3), NOW + timedelta(minutes=1)
    answer = _export(api, format="parquet", source="raw", start=_iso(start), end=_iso(end))
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/vnd.apache.parquet"
    assert answer.headers["content-disposition"].endswith('.parquet"')
    table = pq.read_table(io.BytesIO(answer.content))
    assert table.column_names == ["device_id", "metric", "ts", "value"]
    parsed = [tuple(row.values()) for row in table.to_pylist()]
    stored = _stored_raw(seeded, start, end)
    assert len(stored) == 240 and parsed == stored


@pytest.mark.parametrize("source", ["minute", "hour"])
def test_rollups_equal_the_read_models(api: TestClient, seeded: Any, source: str) -> None:
    start, end = NOW - timedelta(hours=3), NOW + timedelta(hours=1)
    stored = seeded.execute(
        f"SELECT device_id, metric, bucket, count, sum / count, min, max"
        f" FROM read_models.rollup_{source} WHERE device_id = %s ORDER BY metric, bucket",
        (DEVICE,),
    ).fetchall()
    assert stored
    window = {"source": source, "start": _iso(start), "end": _iso(end)}
    as_csv = _csv_rows(_export(api, format="csv", **window).content)
    assert [
        (
            r["device_id"],
            r["metric"],
            datetime.fromisoformat(r["bucket"]),
            int(r["count"]),
            float(r["mean"]),
            float(r["min"]),
            float(r["max"]),
        )
        for r in as_csv
    ] == stored
    table = pq.read_table(io.BytesIO(_export(api, format="parquet", **window).content))
    assert table.column_names == ["device_id", "metric", "bucket", "count", "mean", "min", "max"]
    assert [tuple(row.values()) for row in table.to_pylist()] == stored


def test_an_empty_range_is_a_file_with_no_rows(api: TestClient) -> None:
    window = {"start": _iso(NOW - timedelta(days=2)), "end": _iso(NOW - timedelta(days=1))}
    as_csv = _export(api, format="csv", **window)
    assert as_csv.status_code == 200
    assert as_csv.content == b"device_id,metric,ts,value\r\n"
    as_parquet = _export(api, format="parquet", source="hour", **window)
    table = pq.read_table(io.BytesIO(as_parquet.content))
    assert table.num_rows == 0 and table.column_names[2] == "bucket"
    idle = _export(api, device="idle", format="csv")
    assert idle.status_code == 200 and len(_csv_rows(idle.content)) == 0


def test_the_default_window_is_the_last_day(api: TestClient) -> None:
    answer = _export(api)
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/csv")
    assert len(_csv_rows(answer.content)) == 240
    only_end = _export(api, end=_iso(NOW - timedelta(minutes=60)))
    assert len(_csv_rows(only_end.content)) == 2 * 60  # minutes 60..119 before NOW


@pytest.mark.parametrize(
    ("start", "end", "message"),
    [
        (NOW, NOW, "end must be after start"),
        (NOW, NOW - timedelta(hours=1), "end must be after start"),
        (NOW - timedelta(days=MAX_DAYS, seconds=1), NOW, "IOTP_EXPORT_MAX_DAYS"),
        (datetime(2000, 1, 1, tzinfo=UTC), None, "IOTP_EXPORT_MAX_DAYS"),
    ],
)
def test_bounds_are_refused_in_the_error_shape(
    api: TestClient, start: datetime, end: datetime | None, message: str
) -> None:
    params = {"start": _iso(start)} | ({"end": _iso(end)} if end else {})
    answer = _export(api, **params)
    assert answer.status_code == 422
    (issue,) = answer.json()["detail"]
    assert issue["loc"] == ["query", "end"] and message in issue["msg"]


def test_exactly_the_maximum_range_is_allowed(api: TestClient) -> None:
    answer = _export(api, start=_iso(NOW - timedelta(days=MAX_DAYS)), end=_iso(NOW))
    assert answer.status_code == 200


def test_unknown_device_is_404(api: TestClient) -> None:
    answer = _export(api, device="ghost")
    assert answer.status_code == 404
    assert answer.json() == {"detail": "device 'ghost' is not known to the read models"}


def test_the_token_is_required(api: TestClient) -> None:
    assert api.get(f"/devices/{DEVICE}/export").status_code == 401


@pytest.mark.parametrize(
    "device",
    ["a%00b", "x" * 65, "caf%C3%A9", "a%20b", "%27%3B--", "a%0Ab", "..%5C..%5Cetc"],
)
def test_hostile_device_ids_are_refused(bare_api: TestClient, device: str) -> None:
    answer = _export(bare_api, device=device)
    assert answer.status_code == 422
    assert answer.json()["detail"][0]["loc"] == ["path", "device_id"]


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("format", "xlsx"),
        ("format", "CSV"),
        ("format", ""),
        ("source", "second"),
        ("source", "raw;DROP TABLE telemetry"),
        ("start", "yesterday"),
        ("start", "2026-13-01T00:00:00Z"),
        ("end", "\x00"),
        ("end", "9" * 400),
        ("start", "0001-01-01T00:00:00+01:00"),
        ("end", "9999-12-31T23:59:59-01:00"),
        ("end", "0001-01-01T12:00:00Z"),
    ],
)
def test_hostile_parameters_are_refused(bare_api: TestClient, param: str, value: str) -> None:
    answer = _export(bare_api, **{param: value})
    assert answer.status_code == 422, answer.text
    (issue, *_) = answer.json()["detail"]
    assert issue["loc"][0] == "query" and issue["msg"]


@pytest.fixture
def large(seeded: psycopg.Connection[Any]) -> int:
    """200,000 more readings of DEVICE, one a second over the two days before the seed."""
    seeded.execute(
        "INSERT INTO telemetry (device_id, ts, metric, value)"
        " SELECT %s, %s - n * INTERVAL '1 second', 'load', n FROM generate_series(1, 200000) n",
        (DEVICE, NOW - timedelta(hours=3)),
    )
    return 200_000


def test_a_large_export_streams_from_a_server_side_cursor(settings: Settings, large: int) -> None:
    export = ExportRequest(DEVICE, "raw", NOW - timedelta(days=3), NOW - timedelta(hours=2))
    with psycopg.connect(settings.database_url) as conn:
        chunks = csv_chunks(export.columns, fetch_chunks(conn, export))
        header = next(chunks)
        first = next(chunks)
        # The rows wait in PostgreSQL behind a cursor, not in this process.
        cursors = conn.execute("SELECT name FROM pg_cursors").fetchall()
        assert ("iotp_export",) in cursors
        sizes = [first.count(b"\n"), *(chunk.count(b"\n") for chunk in chunks)]
    assert header == b"device_id,metric,ts,value\r\n"
    assert len(sizes) == large // CHUNK_ROWS and max(sizes) == CHUNK_ROWS and sum(sizes) == large
    with psycopg.connect(settings.database_url) as conn:
        pieces = list(parquet_chunks(export.columns, fetch_chunks(conn, export)))
    # Each row group leaves as soon as it is written; the last piece is the footer.
    assert len(pieces) == large // CHUNK_ROWS + 1 and all(pieces)
    assert pq.ParquetFile(io.BytesIO(b"".join(pieces))).metadata.num_rows == large


def test_a_large_export_over_http_is_chunked(api: TestClient, large: int) -> None:
    window = {"start": _iso(NOW - timedelta(days=3)), "end": _iso(NOW - timedelta(hours=2))}
    as_csv = _export(api, format="csv", **window)
    # A streamed answer has no length known in advance.
    assert "content-length" not in as_csv.headers
    assert as_csv.content.count(b"\n") == large + 1
    as_parquet = _export(api, format="parquet", **window)
    assert "content-length" not in as_parquet.headers
    parquet = pq.ParquetFile(io.BytesIO(as_parquet.content))
    # One row group per fetched chunk: the file was written as the rows came.
    assert parquet.metadata.num_rows == large
    assert parquet.num_row_groups == large // CHUNK_ROWS


def test_a_write_store_that_does_not_answer_is_503(
    settings: Settings, seeded: psycopg.Connection[Any]
) -> None:
    away = settings.model_copy(
        update={
            "database_url": f"postgresql://127.0.0.1:{free_port()}/x",
            "read_database_url": settings.database_url,
        }
    )
    with TestClient(create_query_app(away)) as client:
        raw = client.get(f"/devices/{DEVICE}/export", headers=AUTH)
        assert raw.status_code == 503
        assert raw.json() == {"detail": "write store unavailable, retry later"}
        rollups = client.get(f"/devices/{DEVICE}/export", headers=AUTH, params={"source": "hour"})
        assert rollups.status_code == 200 and len(_csv_rows(rollups.content)) > 0
