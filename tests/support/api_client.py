"""The command API in the test's own process, its auth header, and what it wrote."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import redis
from fastapi.testclient import TestClient

from command_api.app import create_app
from iotp.events import AnyEvent, from_fields
from iotp.names import DEVICE_EVENTS_STREAM
from iotp.settings import Settings
from tests.support.servers import TEST_TOKEN
from tests.support.waiting import wait_for

AUTH = {"Authorization": f"Bearer {TEST_TOKEN}"}


@contextmanager
def running_api(settings: Settings, *, relay: bool = True) -> Iterator[TestClient]:
    with TestClient(create_app(settings, run_relay_task=relay)) as client:
        yield client


def stream_events(client: redis.Redis) -> list[tuple[str, AnyEvent]]:
    return [
        (entry_id, from_fields(fields)) for entry_id, fields in client.xrange(DEVICE_EVENTS_STREAM)
    ]


def wait_relayed(db: psycopg.Connection[Any]) -> None:
    """Wait until the relay has emptied the outbox onto the device events stream."""
    wait_for(
        lambda: db.execute("SELECT count(*) FROM outbox WHERE sent_at IS NULL").fetchone() == (0,)
    )


def relayed_events(db: psycopg.Connection[Any], client: redis.Redis) -> list[AnyEvent]:
    """The device events on the stream once the relay has emptied the outbox."""
    wait_relayed(db)
    return [event for _, event in stream_events(client)]


def counts(db: psycopg.Connection[Any]) -> tuple[int, int, int]:
    """(devices, outbox rows, idempotency keys) in the write store."""
    row = db.execute(
        "SELECT (SELECT count(*) FROM devices), (SELECT count(*) FROM outbox),"
        " (SELECT count(*) FROM idempotency_keys)"
    ).fetchone()
    assert row is not None
    return row[0], row[1], row[2]


THERMOSTAT: dict[str, Any] = {
    "device_id": "boiler-1",
    "name": "Boiler room thermostat",
    "kind": "thermostat",
    "location": {"lat": 52.37, "lon": 4.89},
    "metadata": {"floor": -1, "vendor": "Acme"},
    "metrics": [
        {"name": "temperature", "unit": "C", "min": -40, "max": 125},
        {"name": "humidity", "unit": "%", "min": 0, "max": 100},
    ],
}
