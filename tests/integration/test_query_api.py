"""The query API and liveness over a read store seeded through the real projection."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from iotp.events import (
    DeviceDecommissioned,
    DeviceRegistered,
    Event,
    RecordedReading,
    TelemetryRecorded,
)
from iotp.model import MetricSpec
from iotp.settings import Settings
from read_models import store
from read_models.app import create_query_app
from read_models.projection import fold
from tests.support.servers import TEST_TOKEN

AUTH = {"Authorization": f"Bearer {TEST_TOKEN}"}
SPECS = (MetricSpec(name="temp", min=0, max=50), MetricSpec(name="hum"))


def _apply(db: psycopg.Connection[Any], events: list[Event]) -> None:
    with db.transaction():
        store.apply_deltas(db, fold(events))


def _registered(
    device_id: str, at: datetime, kind: str = "thermostat", name: str | None = None
) -> Event:
    return DeviceRegistered(
        device_id=device_id,
        name=name or device_id.upper(),
        kind=kind,
        metrics=SPECS,
        occurred_at=at - timedelta(days=1),
    )


def _telemetry(device_id: str, ts: datetime, seen: datetime, **metrics: float) -> Event:
    breaching = tuple(m for m, v in metrics.items() if m == "temp" and not 0 <= v <= 50)
    return TelemetryRecorded(
        device_id=device_id,
        received_at=seen,
        ingested_at=seen,
        readings=(RecordedReading(ts=ts, metrics=metrics, out_of_range=breaching),),
    )


@pytest.fixture
def seeded(db: psycopg.Connection[Any], now: datetime) -> psycopg.Connection[Any]:
    events: list[Event] = [_registered(f"t{n}", now) for n in range(6)]
    events += [
        _registered("car-1", now, kind="tracker", name="Delivery van"),
        _registered("silent", now),
        _registered("gone", now),
    ]
    events.append(DeviceDecommissioned(device_id="gone", occurred_at=now))
    for n in range(6):
        for minute in range(90):
            ts = now - timedelta(minutes=minute)
            events.append(
                _telemetry(
                    f"t{n}", ts, now - timedelta(seconds=30), temp=20 + n + minute % 3, hum=40.0
                )
            )
    events.append(_telemetry("t5", now, now, temp=99.0))  # a breach, as its last value
    events.append(
        _telemetry("car-1", now - timedelta(hours=2), now - timedelta(hours=2), temp=10.0)
    )
    _apply(db, events)
    return db


@pytest.fixture
def api(settings: Settings, seeded: psycopg.Connection[Any]) -> Iterator[TestClient]:
    configured = settings.model_copy(
        update={"liveness_timeout_seconds": 600, "query_max_page_size": 5}
    )
    with TestClient(create_query_app(configured)) as client:
        yield client


def test_devices_list_filters_sorts_and_paginates(api: TestClient) -> None:
    page = api.get("/devices", headers=AUTH, params={"limit": 5}).json()
    assert page["total"] == 9 and page["limit"] == 5 and len(page["items"]) == 5
    assert [d["device_id"] for d in page["items"]] == ["car-1", "gone", "silent", "t0", "t1"]
    rest = api.get("/devices", headers=AUTH, params={"limit": 5, "offset": 5}).json()
    assert [d["device_id"] for d in rest["items"]] == ["t2", "t3", "t4", "t5"]
    trackers = api.get("/devices", headers=AUTH, params={"kind": "tracker"}).json()
    assert [d["device_id"] for d in trackers["items"]] == ["car-1"]
    assert trackers["items"][0]["liveness"] == "offline"
    by_name = api.get("/devices", headers=AUTH, params={"name": "van"}).json()
    assert [d["device_id"] for d in by_name["items"]] == ["car-1"]
    never = api.get("/devices", headers=AUTH, params={"liveness": "never_seen"}).json()
    assert {d["device_id"] for d in never["items"]} == {"silent", "gone"}
    retired = api.get("/devices", headers=AUTH, params={"status": "decommissioned"}).json()
    assert [d["device_id"] for d in retired["items"]] == ["gone"]
    newest = api.get(
        "/devices", headers=AUTH, params={"sort": "last_seen", "order": "desc", "limit": 1}
    ).json()
    assert newest["items"][0]["device_id"] == "t5"
    assert newest["items"][0]["last_values"] == {"temp": 99.0, "hum": 40.0}
    empty = api.get("/devices", headers=AUTH, params={"offset": 100}).json()
    assert empty["items"] == [] and empty["total"] == 9


def test_device_detail_stats_and_series(api: TestClient, now: datetime) -> None:
    device = api.get("/devices/t1", headers=AUTH).json()
    assert device["liveness"] == "online" and device["status"] == "active"
    assert device["readings"] == 180 and device["kind"] == "thermostat"
    stats = {s["metric"]: s for s in api.get("/devices/t1/stats", headers=AUTH).json()}
    assert stats["temp"]["count"] == 90 and stats["temp"]["min"] == 21.0
    assert stats["temp"]["max"] == 23.0 and stats["hum"]["mean"] == 40.0
    series = api.get(
        "/devices/t1/series",
        headers=AUTH,
        params={
            "metric": "temp",
            "from": (now - timedelta(minutes=30)).isoformat(),
            "to": (now + timedelta(minutes=1)).isoformat(),
            "bucket": "1m",
        },
    ).json()
    assert len(series) == 31
    assert all(p["count"] == 1 for p in series)
    hourly = api.get(
        "/devices/t1/series",
        headers=AUTH,
        params={
            "metric": "temp",
            "from": (now - timedelta(hours=3)).isoformat(),
            "to": (now + timedelta(hours=1)).isoformat(),
            "bucket": "1h",
        },
    ).json()
    assert sum(p["count"] for p in hourly) == 90
    breach = {s["metric"]: s for s in api.get("/devices/t5/stats", headers=AUTH).json()}
    assert breach["temp"]["breaches"] == 1 and breach["temp"]["last_out_of_range"] is True


def test_fleet_summary(api: TestClient) -> None:
    fleet = api.get("/fleet", headers=AUTH).json()
    assert fleet["registered"] == 9 and fleet["active"] == 8 and fleet["decommissioned"] == 1
    assert (fleet["online"], fleet["offline"], fleet["never_seen"]) == (6, 1, 1)
    assert fleet["by_kind"] == {"thermostat": 8, "tracker": 1}
    assert fleet["breaching_devices"] == 1
    assert len(fleet["readings_per_minute"]) >= 55  # the seeded 90 minutes, cut to the last hour
    assert fleet["readings_per_minute"][-1][1] == 6 * 2 + 1


def test_pipeline_reports_streams_and_groups(api: TestClient) -> None:
    pipeline = api.get("/pipeline", headers=AUTH).json()
    assert set(pipeline["streams"]) == {
        "iotp:events:devices",
        "iotp:events:telemetry",
        "iotp:events:alarms",
        "iotp:deadletter:telemetry",
    }
    assert pipeline["deadletters"] == 0 and pipeline["latest_deadletters"] == []


@pytest.mark.parametrize(
    ("path", "params", "status"),
    [
        ("/devices/nope", {}, 404),
        ("/devices/nope/stats", {}, 404),
        ("/devices/nope/series", {"metric": "temp"}, 404),
        ("/devices/" + "x" * 70, {}, 422),
        ("/devices", {"limit": 6}, 422),
        ("/devices", {"limit": 0}, 422),
        ("/devices", {"offset": -1}, 422),
        ("/devices", {"sort": "credential_hash"}, 422),
        ("/devices", {"status": "sleeping"}, 422),
        ("/devices", {"liveness": "maybe"}, 422),
        ("/devices/t1/series", {}, 422),
        ("/devices/t1/series", {"metric": "temp", "bucket": "5m"}, 422),
        ("/devices/t1/series", {"metric": "te mp"}, 422),
        ("/devices/t1/series", {"metric": "temp", "from": "yesterday"}, 422),
        (
            "/devices/t1/series",
            {"metric": "temp", "from": "2026-01-02T00:00:00Z", "to": "2026-01-01T00:00:00Z"},
            422,
        ),
        (
            "/devices/t1/series",
            {
                "metric": "temp",
                "from": "2000-01-01T00:00:00Z",
                "to": "2026-01-01T00:00:00Z",
                "bucket": "1m",
            },
            422,
        ),
    ],
)
def test_bad_requests_and_unknown_devices(
    api: TestClient, path: str, params: dict[str, Any], status: int
) -> None:
    answer = api.get(path, headers=AUTH, params=params)
    assert answer.status_code == status, answer.text
    assert "detail" in answer.json()


@pytest.mark.parametrize("path", ["/devices", "/devices/t1", "/fleet", "/pipeline"])
def test_every_read_needs_the_token(api: TestClient, path: str) -> None:
    assert api.get(path).status_code == 401
    assert api.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401


def test_query_token_defaults_to_the_api_token_and_can_differ(settings: Settings) -> None:
    own = settings.model_copy(update={"query_token": SecretStr("query-token-0123456789")})
    with TestClient(create_query_app(own)) as client:
        assert client.get("/fleet", headers=AUTH).status_code == 401
        assert (
            client.get(
                "/fleet", headers={"Authorization": "Bearer query-token-0123456789"}
            ).status_code
            == 200
        )


def test_liveness_changes_with_the_clock_and_no_event(
    settings: Settings, db: psycopg.Connection[Any]
) -> None:
    seen = datetime.now(UTC)
    _apply(
        db,
        [
            _registered("blinky", seen),
            _registered("quiet", seen),
            _telemetry("blinky", seen, seen, temp=20.0),
        ],
    )
    configured = settings.model_copy(update={"liveness_timeout_seconds": 2})
    with TestClient(create_query_app(configured)) as client:
        assert client.get("/devices/blinky", headers=AUTH).json()["liveness"] == "online"
        assert client.get("/devices/quiet", headers=AUTH).json()["liveness"] == "never_seen"
        time.sleep(max(0.0, 2.5 - (datetime.now(UTC) - seen).total_seconds()))
        assert client.get("/devices/blinky", headers=AUTH).json()["liveness"] == "offline"
    per_kind = settings.model_copy(
        update={"liveness_timeout_seconds": 2, "liveness_timeouts": {"thermostat": 3600}}
    )
    with TestClient(create_query_app(per_kind)) as client:
        assert client.get("/devices/blinky", headers=AUTH).json()["liveness"] == "online"
