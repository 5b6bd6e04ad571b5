"""The command API against real PostgreSQL and Redis: rows, events and answers."""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import redis

from command_api.credentials import verify_password
from iotp.events import (
    DeviceCredentialsRotated,
    DeviceDecommissioned,
    DeviceRegistered,
    DeviceUpdated,
)
from iotp.names import DEVICE_EVENTS_STREAM
from iotp.settings import Settings
from tests.support.api_client import (
    AUTH,
    THERMOSTAT,
    counts,
    relayed_events,
    running_api,
)


def _register(client: Any, body: dict[str, Any] | None = None, **headers: str) -> Any:
    return client.post("/devices", json=body or THERMOSTAT, headers={**AUTH, **headers})


def test_register_writes_the_device_and_exactly_one_event(
    settings: Settings, db: psycopg.Connection[Any], redis_client: redis.Redis
) -> None:
    with running_api(settings) as client:
        response = _register(client)
        assert response.status_code == 201, response.text
        body = response.json()
        events = relayed_events(db, redis_client)

    assert body["device_id"] == "boiler-1"
    creds = body["credentials"]
    assert creds["username"] == "boiler-1"
    assert creds["topic"] == "devices/boiler-1/telemetry"
    assert len(creds["password"]) >= 32
    assert response.headers["location"] == "/devices/boiler-1"

    row = db.execute(
        "SELECT name, kind, lat, lon, metadata, metrics, status, credential_hash"
        " FROM devices WHERE device_id = 'boiler-1'"
    ).fetchone()
    assert row is not None
    name, kind, lat, lon, metadata, metrics, status, credential_hash = row
    assert (name, kind, lat, lon, status) == (
        "Boiler room thermostat",
        "thermostat",
        52.37,
        4.89,
        "active",
    )
    assert metadata == {"floor": -1, "vendor": "Acme"}
    assert metrics[0] == {"name": "temperature", "unit": "C", "min": -40.0, "max": 125.0}
    assert creds["password"] not in credential_hash
    assert verify_password(creds["password"], credential_hash)

    assert len(events) == 1
    event = events[0]
    assert isinstance(event, DeviceRegistered)
    assert str(event.event_id) == body["event_id"]
    assert event.device_id == "boiler-1"
    assert event.kind == "thermostat"
    assert [m.name for m in event.metrics] == ["temperature", "humidity"]
    assert event.location is not None and event.location.lat == 52.37
    raw = redis_client.xrange(DEVICE_EVENTS_STREAM)[0][1]
    assert raw["type"] == "DeviceRegistered"
    assert raw["event_id"] == body["event_id"]
    assert raw["device_id"] == "boiler-1"
    assert raw["schema_version"] == "1"
    assert "password" not in raw["data"] and creds["password"] not in raw["data"]


def test_generated_device_id_when_absent(
    settings: Settings, db: psycopg.Connection[Any], redis_client: redis.Redis
) -> None:
    body = {"name": "Tracker", "kind": "tracker"}
    with running_api(settings) as client:
        first, second = _register(client, body), _register(client, body)
    assert first.status_code == second.status_code == 201
    assert first.json()["device_id"] != second.json()["device_id"]
    assert counts(db)[0] == 2


def test_duplicate_id_is_409_and_emits_no_second_event(
    settings: Settings, db: psycopg.Connection[Any], redis_client: redis.Redis
) -> None:
    with running_api(settings) as client:
        assert _register(client).status_code == 201
        again = _register(client, {**THERMOSTAT, "name": "Other"})
        events = relayed_events(db, redis_client)
    assert again.status_code == 409
    assert "already registered" in again.json()["detail"]
    assert len(events) == 1
    assert counts(db)[:2] == (1, 1)
    name = db.execute("SELECT name FROM devices").fetchone()
    assert name == ("Boiler room thermostat",)


def test_idempotency_key_replays_the_first_answer(
    settings: Settings, db: psycopg.Connection[Any], redis_client: redis.Redis
) -> None:
    with running_api(settings) as client:
        first = _register(client, **{"Idempotency-Key": "req-42"})
        retry = _register(client, **{"Idempotency-Key": "req-42"})
        other_body = _register(
            client, {**THERMOSTAT, "device_id": "boiler-2"}, **{"Idempotency-Key": "req-42"}
        )
        plain_retry = _register(client)
        events = relayed_events(db, redis_client)
    assert first.status_code == retry.status_code == 201
    assert retry.json() == first.json()
    assert retry.headers.get("idempotent-replayed") == "true"
    assert other_body.status_code == 422
    assert "Idempotency-Key" in other_body.json()["detail"][0]["msg"]
    assert plain_retry.status_code == 409
    assert len(events) == 1
    assert counts(db) == (1, 1, 1)
    stored = db.execute("SELECT response::text, secret_seed FROM idempotency_keys").fetchone()
    assert stored is not None
    assert first.json()["credentials"]["password"] not in stored[0]
    hashed = db.execute("SELECT credential_hash FROM devices").fetchone()
    assert hashed is not None
    assert verify_password(retry.json()["credentials"]["password"], hashed[0])


def test_concurrent_retries_with_one_key_register_once(
    settings: Settings, db: psycopg.Connection[Any], redis_client: redis.Redis
) -> None:
    answers: list[Any] = []
    with running_api(settings) as client:

        def call() -> None:
            answers.append(
                _register(client, {**THERMOSTAT, "device_id": None}, **{"Idempotency-Key": "same"})
            )

        threads = [threading.Thread(target=call) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        events = relayed_events(db, redis_client)
    assert {a.status_code for a in answers} == {201}
    assert len({a.json()["device_id"] for a in answers}) == 1
    assert len(events) == 1
    assert counts(db) == (1, 1, 1)


def test_update_decommission_and_rotate_each_emit_their_event(
    settings: Settings, db: psycopg.Connection[Any], redis_client: redis.Redis
) -> None:
    with running_api(settings) as client:
        password = _register(client).json()["credentials"]["password"]
        update = client.patch(
            "/devices/boiler-1", headers=AUTH, json={"name": "Boiler B", "location": None}
        )
        same = client.patch("/devices/boiler-1", headers=AUTH, json={"name": "Boiler B"})
        rotate = client.post("/devices/boiler-1/credentials", headers=AUTH)
        decommission = client.post(
            "/devices/boiler-1/decommission", headers=AUTH, json={"reason": "replaced"}
        )
        after = [
            client.patch("/devices/boiler-1", headers=AUTH, json={"name": "x"}),
            client.post("/devices/boiler-1/decommission", headers=AUTH),
            client.post("/devices/boiler-1/credentials", headers=AUTH),
        ]
        events = relayed_events(db, redis_client)

    assert update.status_code == 200, update.text
    assert update.json()["changed"] == ["name", "location"]
    assert same.status_code == 200
    assert same.json() == {"device_id": "boiler-1", "event_id": None, "changed": []}
    assert rotate.status_code == 200
    new_password = rotate.json()["credentials"]["password"]
    assert new_password != password
    assert decommission.status_code == 200
    assert [a.status_code for a in after] == [409, 409, 409]
    assert all("decommissioned" in a.json()["detail"] for a in after)

    kinds = [type(e) for e in events]
    assert kinds == [
        DeviceRegistered,
        DeviceUpdated,
        DeviceCredentialsRotated,
        DeviceDecommissioned,
    ]
    updated, rotated, retired = events[1], events[2], events[3]
    assert isinstance(updated, DeviceUpdated)
    assert updated.name == "Boiler B" and updated.location is None
    assert updated.kind == "thermostat"
    assert str(updated.event_id) == update.json()["event_id"]
    assert isinstance(rotated, DeviceCredentialsRotated) and rotated.username == "boiler-1"
    assert isinstance(retired, DeviceDecommissioned) and retired.reason == "replaced"

    row = db.execute(
        "SELECT name, lat, status, decommissioned_at IS NOT NULL, credential_hash FROM devices"
    ).fetchone()
    assert row is not None
    assert row[:4] == ("Boiler B", None, "decommissioned", True)
    assert verify_password(new_password, row[4])
    assert not verify_password(password, row[4])


def test_unknown_device_is_404_and_writes_nothing(
    settings: Settings, db: psycopg.Connection[Any], redis_client: redis.Redis
) -> None:
    with running_api(settings) as client:
        answers = [
            client.patch("/devices/nope", headers=AUTH, json={"name": "x"}),
            client.post("/devices/nope/decommission", headers=AUTH),
            client.post("/devices/nope/credentials", headers=AUTH),
        ]
    assert [a.status_code for a in answers] == [404, 404, 404]
    assert all("not registered" in a.json()["detail"] for a in answers)
    assert counts(db) == (0, 0, 0)
    assert redis_client.exists(DEVICE_EVENTS_STREAM) == 0


def test_healthz_reports_both_services(settings: Settings) -> None:
    with running_api(settings) as client:
        answer = client.get("/healthz")
    assert answer.status_code == 200
    assert answer.json()["database"]["reachable"] is True
    assert answer.json()["redis"]["reachable"] is True
    assert answer.json()["outbox_backlog"] == 0


def test_openapi_documents_the_commands(settings: Settings) -> None:
    with running_api(settings) as client:
        spec = client.get("/openapi.json").json()
        docs = client.get("/docs")
    assert docs.status_code == 200
    assert {
        "/devices",
        "/devices/{device_id}",
        "/devices/{device_id}/decommission",
        "/devices/{device_id}/credentials",
        "/healthz",
    } <= set(spec["paths"])
