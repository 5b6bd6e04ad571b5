"""Export of one device's readings or rollups for a bounded time range, as CSV or Parquet.

Memory stays bounded whatever the range holds: rows come from a server-side (named) cursor
``CHUNK_ROWS`` at a time, and each chunk is encoded and handed to the client before the next
is fetched (a CSV block, or one Parquet row group). The range is half-open ``[start, end)``
and at most ``IOTP_EXPORT_MAX_DAYS`` long. Raw readings exist only in the write store's
``telemetry`` table (the read models keep rollups, not readings), so ``source=raw`` reads
that table, in a read-only transaction; the rollups come from the read store, like
``/series``. Each export holds a connection of its own for its duration, never one of the
query API's pool.
"""

from __future__ import annotations

import csv
import io
import logging
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask

from iotp.http_errors import error_responses, invalid
from iotp.settings import Settings
from read_models import queries
from read_models.rollup_tiers import BY_SOURCE, range_sql
from read_models.routes import DeviceIdPath

logger = logging.getLogger(__name__)

ExportFormat = Literal["csv", "parquet"]
ExportSource = Literal["raw", "minute", "hour", "day"]
CHUNK_ROWS = 10_000
DEFAULT_WINDOW = timedelta(days=1)
PARQUET_MEDIA_TYPE = "application/vnd.apache.parquet"
MEDIA_TYPES: dict[ExportFormat, str] = {
    "csv": "text/csv; charset=utf-8",
    "parquet": PARQUET_MEDIA_TYPE,
}
Row = tuple[Any, ...]

router = APIRouter()


@dataclass(frozen=True)
class Column:
    name: str
    arrow_type: pa.DataType


_TIME = pa.timestamp("us", tz="UTC")
RAW_COLUMNS = (
    Column("device_id", pa.string()),
    Column("metric", pa.string()),
    Column("ts", _TIME),
    Column("value", pa.float64()),
)
ROLLUP_COLUMNS = (
    Column("device_id", pa.string()),
    Column("metric", pa.string()),
    Column("bucket", _TIME),
    Column("count", pa.int64()),
    Column("mean", pa.float64()),
    Column("min", pa.float64()),
    Column("max", pa.float64()),
)
# Ordered as the tables' keys are indexed, so that PostgreSQL streams rows off the index
# instead of sorting the whole range before sending the first one.
_RAW_SQL = """
    SELECT device_id, metric, ts, value FROM telemetry
    WHERE device_id COLLATE "C" = %(device)s AND ts >= %(start)s AND ts < %(end)s
    ORDER BY device_id COLLATE "C", metric COLLATE "C", ts
"""
_ROLLUP_SQL = """
    SELECT device_id, metric, bucket, count, sum / count AS mean, min, max FROM ({buckets}) AS r
    ORDER BY device_id, metric, bucket
"""


@dataclass(frozen=True)
class ExportRequest:
    """What to export: one device, one source, the half-open range [start, end)."""

    device_id: str
    source: ExportSource
    start: datetime
    end: datetime

    @property
    def columns(self) -> tuple[Column, ...]:
        return RAW_COLUMNS if self.source == "raw" else ROLLUP_COLUMNS

    def sql(self) -> str:
        if self.source == "raw":
            return _RAW_SQL
        tier = BY_SOURCE[self.source]
        return _ROLLUP_SQL.format(buckets=range_sql(tier, "device_id = %(device)s"))

    def file_name(self, file_format: ExportFormat) -> str:
        """A file name safe in a header and on any file system."""
        safe_id = re.sub(r"[^A-Za-z0-9_-]", "_", self.device_id)[:64]
        span = f"{self.start:%Y%m%dT%H%M%SZ}-{self.end:%Y%m%dT%H%M%SZ}"
        return f"{safe_id}-{self.source}-{span}.{file_format}"


def export_window(
    start: datetime | None, end: datetime | None, max_days: int, now: datetime
) -> tuple[datetime, datetime]:
    """[start, end) in UTC: defaults to the day before ``end`` (itself ``now`` by default);
    refused (422) when empty or longer than ``max_days``."""
    end = _utc(end, "end") if end is not None else now
    if start is None:
        try:
            start = end - DEFAULT_WINDOW
        except OverflowError:
            raise invalid(("query", "end"), "end must be later than 0001-01-02") from None
    start = _utc(start, "start")
    if end <= start:
        raise invalid(("query", "end"), "end must be after start")
    if end - start > timedelta(days=max_days):
        raise invalid(
            ("query", "end"),
            f"the range is over {max_days} days (IOTP_EXPORT_MAX_DAYS): export it in parts",
            "range_too_long",
        )
    return start, end


def fetch_chunks(conn: psycopg.Connection[Any], export: ExportRequest) -> Iterator[list[Row]]:
    """The export's rows, ``CHUNK_ROWS`` at a time, from a server-side cursor."""
    with conn.cursor(name="iotp_export") as cursor:
        cursor.itersize = CHUNK_ROWS
        cursor.execute(
            export.sql().encode(),
            {"device": export.device_id, "start": export.start, "end": export.end},
        )
        while rows := cursor.fetchmany(CHUNK_ROWS):
            yield rows


def csv_chunks(columns: tuple[Column, ...], chunks: Iterable[list[Row]]) -> Iterator[bytes]:
    """A header line, then one block of CSV lines per chunk; times in ISO 8601 UTC."""
    yield (",".join(column.name for column in columns) + "\r\n").encode()
    for rows in chunks:
        text = io.StringIO()
        writer = csv.writer(text)
        writer.writerows(tuple(_csv_value(v) for v in row) for row in rows)
        yield text.getvalue().encode()


def parquet_chunks(columns: tuple[Column, ...], chunks: Iterable[list[Row]]) -> Iterator[bytes]:
    """A Parquet file, one row group per chunk, handed on as each row group is written."""
    schema = pa.schema([(column.name, column.arrow_type) for column in columns])
    sink = _TakenBytes()
    with pq.ParquetWriter(sink, schema, compression="zstd") as writer:
        for rows in chunks:
            arrays = [
                pa.array(values, type=column.arrow_type)
                for column, values in zip(columns, zip(*rows, strict=True), strict=True)
            ]
            writer.write_table(pa.Table.from_arrays(arrays, schema=schema))
            yield sink.take()
    if tail := sink.take():  # the footer, written on close
        yield tail


ENCODERS: dict[ExportFormat, Callable[[tuple[Column, ...], Iterable[list[Row]]], Iterator[bytes]]]
ENCODERS = {"csv": csv_chunks, "parquet": parquet_chunks}


def export_bytes(
    conn: psycopg.Connection[Any], export: ExportRequest, file_format: ExportFormat
) -> bytes:
    """The whole file at once, for a range known to be small (the dashboard's shown range)."""
    with conn.transaction():
        return b"".join(ENCODERS[file_format](export.columns, fetch_chunks(conn, export)))


@router.get(
    "/devices/{device_id}/export",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "The file, streamed",
            "content": {
                "text/csv": {"schema": {"type": "string"}},
                PARQUET_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}},
            },
        },
        **error_responses(401, 404, 422, 503),
    },
)
def export_device(
    request: Request,
    device_id: DeviceIdPath,
    file_format: Annotated[ExportFormat, Query(alias="format")] = "csv",
    source: ExportSource = "raw",
    start: datetime | None = None,
    end: datetime | None = None,
) -> StreamingResponse:
    """One device's raw readings or minute/hour rollups in [start, end) as CSV or Parquet
    (default: the last day; at most IOTP_EXPORT_MAX_DAYS)."""
    settings: Settings = request.app.state.settings
    first, last = export_window(start, end, settings.export_max_days, datetime.now(UTC))
    with request.app.state.pool.connection(timeout=10) as db:
        if not queries.device_exists(db, device_id):
            raise HTTPException(404, f"device {device_id!r} is not known to the read models")
    export = ExportRequest(device_id, source, first, last)
    # Rollups come from wherever the query API's pool reads (the read store or its replica).
    url = settings.database_url if source == "raw" else request.app.state.pool.conninfo
    try:
        conn = psycopg.connect(url, connect_timeout=5)
    except psycopg.OperationalError as exc:
        store = "write store" if source == "raw" else "read store"
        logger.warning("export of %s: the %s does not answer: %s", device_id, store, exc)
        raise HTTPException(503, f"{store} unavailable, retry later") from exc
    conn.read_only = True
    return StreamingResponse(
        _streamed(conn, export, file_format),
        media_type=MEDIA_TYPES[file_format],
        headers={
            "Content-Disposition": f'attachment; filename="{export.file_name(file_format)}"',
            "Cache-Control": "no-store",
        },
        background=BackgroundTask(conn.close),
    )


def _streamed(
    conn: psycopg.Connection[Any], export: ExportRequest, file_format: ExportFormat
) -> Iterator[bytes]:
    # Closed here too: a client that goes away ends the stream early, and the connection with it.
    try:
        with conn.transaction():
            yield from ENCODERS[file_format](export.columns, fetch_chunks(conn, export))
    except psycopg.Error:
        logger.exception("export of %s (%s) failed mid-stream", export.device_id, export.source)
        raise
    finally:
        conn.close()


class _TakenBytes(io.RawIOBase):
    """A write-only file whose written bytes are taken away in pieces."""

    def __init__(self) -> None:
        super().__init__()
        self._parts: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self._parts.append(chunk)
        return len(chunk)

    def take(self) -> bytes:
        taken, self._parts = b"".join(self._parts), []
        return taken


def _csv_value(value: Any) -> Any:
    return value.astimezone(UTC).isoformat() if isinstance(value, datetime) else value


def _utc(value: datetime, name: str) -> datetime:
    try:
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    except OverflowError:  # an offset that moves it out of years 1-9999
        raise invalid(("query", name), f"{name} is out of range in UTC") from None
