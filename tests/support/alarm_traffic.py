"""Readings for the alarm tables: stored as ingest stores them, and evaluated as the alarm
process evaluates a batch (one transaction: evaluation state, alarms, outbox events)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from fastapi.testclient import TestClient

from alarms import state
from alarms.evaluation import BatchEvaluation
from iotp.events import RecordedReading, TelemetryRecorded
from iotp.names import TELEMETRY_EVENTS_STREAM
from tests.support.api_client import AUTH

# Readings are timed from here, and received now: the heal looks back from the receive time.
T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
TEMP = [{"name": "temp", "unit": "C", "min": -40, "max": 60}, {"name": "hum"}]


def register(api: TestClient, device_id: str, kind: str = "boiler") -> None:
    body = {"device_id": device_id, "name": device_id, "kind": kind, "metrics": TEMP}
    answer = api.post("/devices", json=body, headers=AUTH)
    assert answer.status_code == 201, answer.text


def at(second: int) -> datetime:
    return T0 + timedelta(seconds=second)


def store(
    db: psycopg.Connection[Any],
    device_id: str,
    readings: Iterable[tuple[int, float]],
    received: datetime | None = None,
) -> None:
    """The telemetry rows of readings (second after T0, temperature), as ingest stores them."""
    heard = received or datetime.now(UTC)
    with db.cursor() as cur:
        cur.executemany(
            "INSERT INTO telemetry (device_id, ts, metric, value, received_at)"
            " VALUES (%s, %s, 'temp', %s, %s)",
            [(device_id, at(second), temp, heard) for second, temp in readings],
        )


def evaluate(
    conn: state.Conn, device_id: str, readings: Iterable[tuple[int, float]]
) -> BatchEvaluation:
    """One batch of the alarm process: each reading as a TelemetryRecorded event of its own."""
    heard = datetime.now(UTC)
    batch = [
        (
            f"{TELEMETRY_EVENTS_STREAM}/{second}-0",
            TelemetryRecorded(
                device_id=device_id,
                readings=(RecordedReading(ts=at(second), metrics={"temp": temp}),),
                received_at=heard,
                ingested_at=heard,
            ),
        )
        for second, temp in readings
    ]
    with conn.transaction():
        state.share_rules_lock(conn)
        evaluation = BatchEvaluation(conn, state.database_now(conn))
        evaluation.apply(batch)
        state.write_events(conn, list(evaluation.events))
    return evaluation


def store_and_evaluate(
    db: psycopg.Connection[Any],
    conn: state.Conn,
    device_id: str,
    readings: Iterable[tuple[int, float]],
) -> BatchEvaluation:
    """Readings stored, then evaluated by the alarm process: nothing is missing."""
    readings = list(readings)
    store(db, device_id, readings)
    return evaluate(conn, device_id, readings)
