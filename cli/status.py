"""What `iotp status` reports: ingest counters, streams and the outbox backlog.

An operator tool: unlike the read side it may read the write store (the outbox backlog).
"""

from __future__ import annotations

import time
from typing import Any

import redis
from rich.console import Console
from rich.table import Table

from command_api.outbox import OUTBOX_BACKLOG_SQL
from iotp.db import connect
from iotp.names import (
    DEVICE_EVENTS_STREAM,
    TELEMETRY_DEADLETTER_STREAM,
    TELEMETRY_EVENTS_STREAM,
)
from iotp.redis_client import ingest_stats, redis_unavailable
from iotp.settings import Settings

STREAMS = (DEVICE_EVENTS_STREAM, TELEMETRY_EVENTS_STREAM, TELEMETRY_DEADLETTER_STREAM)

# Each ingest counter, and the heading that says what it counts: a message may carry several
# readings, and a reading several values (one metric at one time), so the units differ.
INGEST_COLUMNS = {
    "received": "messages received",
    "stored": "values stored",
    "duplicates": "duplicate values",
    "deadletters": "dead letters",
    "batches": "batches",
    "last_batch_ms": "last batch ms",
}


def collect_status(settings: Settings) -> dict[str, Any]:
    client = redis.Redis.from_url(
        settings.redis_url, socket_connect_timeout=5, decode_responses=True
    )
    try:
        ingest = ingest_stats(client)
        streams = {name: client.xlen(name) for name in STREAMS}
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise redis_unavailable(settings.redis_url, exc) from exc
    finally:
        client.close()
    with connect(settings.database_url) as conn:
        row = conn.execute(OUTBOX_BACKLOG_SQL).fetchone()
    return {"ingest": ingest, "streams": streams, "outbox_backlog": row[0] if row else None}


def render_status(report: dict[str, Any]) -> None:
    console = Console()
    table = Table(title="ingest processes")
    table.add_column("client id")
    for heading in (*INGEST_COLUMNS.values(), "updated s ago"):
        table.add_column(heading, justify="right")
    now = time.time()
    for client_id, values in sorted(report["ingest"].items()):
        table.add_row(
            client_id,
            *(str(values.get(key, "")) for key in INGEST_COLUMNS),
            f"{now - float(values.get('updated_at', now)):.0f}",
        )
    if report["ingest"]:
        console.print(table)
    else:
        console.print("no ingest process reported in the last 2 minutes")
    streams = Table(title="streams")
    streams.add_column("stream")
    streams.add_column("entries", justify="right")
    for name, length in report["streams"].items():
        streams.add_row(name, str(length))
    console.print(streams)
    console.print(f"outbox backlog: {report['outbox_backlog']}")
