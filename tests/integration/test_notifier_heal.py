"""The notifier's heal over the real PostgreSQL and Redis: after the alarm stream is lost,
every alarm event the outbox retains gets its deliveries, once."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from uuid import UUID

import psycopg
import pytest
import redis
from fastapi.testclient import TestClient
from psycopg.rows import dict_row

from alarms import state
from iotp.events import AlarmAcknowledged, AlarmCleared, AlarmRaised, from_fields
from iotp.names import ALARM_EVENTS_STREAM
from iotp.settings import Settings
from notifications.delivery_rows import record_deliveries
from notifications.heal import record_retained_deliveries
from tests.support.alarm_traffic import register, store_and_evaluate
from tests.support.api_client import AUTH, running_api, wait_relayed


@pytest.fixture
def api(settings: Settings) -> Iterator[TestClient]:
    with running_api(settings) as client:
        yield client


@pytest.fixture
def conn(database_url: str) -> Iterator[state.Conn]:
    """A write-store connection as the notifier has it (dict rows, autocommit)."""
    with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as found:
        yield found


def webhook(api: TestClient, *severities: str) -> UUID:
    body: dict[str, Any] = {"url": "https://hooks.example/alarms"}
    if severities:
        body["severities"] = list(severities)
    answer = api.post("/webhooks", json=body, headers=AUTH)
    assert answer.status_code == 201, answer.text
    return UUID(answer.json()["webhook_id"])


def alarm_events(db: psycopg.Connection[Any]) -> list[Any]:
    rows = db.execute(
        "SELECT fields FROM outbox WHERE stream = %s ORDER BY id", (ALARM_EVENTS_STREAM,)
    ).fetchall()
    return [from_fields(fields) for (fields,) in rows]


def deliveries(db: psycopg.Connection[Any]) -> set[tuple[UUID, UUID]]:
    rows = db.execute("SELECT webhook_id, event_id FROM webhook_deliveries").fetchall()
    return {(webhook_id, event_id) for webhook_id, event_id in rows}


def test_a_lost_alarm_stream_is_healed_from_the_outbox_once(
    api: TestClient,
    db: psycopg.Connection[Any],
    conn: state.Conn,
    redis_client: redis.Redis,
) -> None:
    every, major, critical = webhook(api), webhook(api, "major"), webhook(api, "critical")
    register(api, "boiler-1")
    store_and_evaluate(db, conn, "boiler-1", [(1, 70.0), (2, 71.0), (3, 72.0)])
    ((alarm_id,),) = db.execute("SELECT alarm_id FROM alarms").fetchall()
    ack = {"acknowledged_by": "alice"}
    assert api.post(f"/alarms/{alarm_id}/acknowledge", json=ack, headers=AUTH).status_code == 200
    store_and_evaluate(db, conn, "boiler-1", [(4, 20.0), (5, 20.0), (6, 20.0)])
    wait_relayed(db)
    raised, acknowledged, cleared = events = alarm_events(db)
    assert isinstance(raised, AlarmRaised) and raised.severity == "major"
    assert isinstance(acknowledged, AlarmAcknowledged) and isinstance(cleared, AlarmCleared)
    assert redis_client.xlen(ALARM_EVENTS_STREAM) == 3

    # The notifier recorded the raise, then Redis lost the stream with the rest.
    with conn.transaction():
        assert record_deliveries(conn, raised) == 2
    redis_client.delete(ALARM_EVENTS_STREAM)
    conn.execute(
        "INSERT INTO notifier_positions (stream, last_id) VALUES (%s, '99999999-0')",
        (ALARM_EVENTS_STREAM,),
    )

    assert record_retained_deliveries(conn, {ALARM_EVENTS_STREAM: "0-0"}) == 4
    expected = {(hook, e.event_id) for hook in (every, major) for e in events}
    assert deliveries(db) == expected
    assert not {hook for hook, _ in deliveries(db)} & {critical}
    assert db.execute("SELECT count(*) FROM notifier_positions").fetchone() == (0,)

    assert record_retained_deliveries(conn, {ALARM_EVENTS_STREAM: "5-0"}) == 0
    assert deliveries(db) == expected
    positions = db.execute("SELECT stream, last_id FROM notifier_positions").fetchall()
    assert positions == [(ALARM_EVENTS_STREAM, "5-0")]
