"""Reads from a real streaming replica (IOTP_READ_REPLICA_URL): the query API and the dashboard
read there, /pipeline and the Pipeline page report its delay, the preflight refuses a primary."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
import redis
from fastapi.testclient import TestClient
from pydantic import SecretStr
from streamlit.testing.v1 import AppTest

from dashboard import data as dashboard_data
from iotp.errors import ConfigurationError, ServiceUnavailable
from iotp.events import DeviceRegistered
from iotp.names import DEVICE_EVENTS_STREAM
from iotp.preflight import require_read_replica
from iotp.settings import Settings
from local_platform.broker import free_port
from read_models import store
from read_models.app import create_query_app, run_query_api
from read_models.consumer import AGGREGATOR_GROUP
from read_models.projection import fold
from read_models.read_lag import ReplicaHealth, read_lag_seconds
from tests.support.dashboard_pages import dashboard_settings, run_page
from tests.support.replica import StreamingReplica
from tests.support.servers import SERVERS, TEST_TOKEN

AUTH = {"Authorization": f"Bearer {TEST_TOKEN}"}
READ_TABLES = (
    "read_models.devices, read_models.device_activity, read_models.metric_stats,"
    " read_models.rollup_minute_recent, read_models.rollup_hour_recent,"
    " read_models.rollup_day_recent, read_models.rollup_minute_packed,"
    " read_models.rollup_hour_packed, read_models.rollup_day_packed, read_models.fleet_minute,"
    " read_models.tracking, read_models.applied_events"
)


@pytest.fixture
def primary(
    streaming_replica: StreamingReplica, redis_client: redis.Redis
) -> Iterator[psycopg.Connection[Any]]:
    """The primary's database, its read models emptied, and the replica caught up with it."""
    with psycopg.connect(streaming_replica.primary_url, autocommit=True) as conn:
        conn.execute(f"TRUNCATE {READ_TABLES}")
        streaming_replica.wait_until_replayed(conn)
        yield conn


@pytest.fixture
def replica_settings(streaming_replica: StreamingReplica, primary: Any) -> Settings:
    return Settings(
        database_url=streaming_replica.primary_url,
        read_replica_url=streaming_replica.replica_url,
        redis_url=SERVERS.redis,
        api_token=SecretStr(TEST_TOKEN),
    )


def _register(primary: psycopg.Connection[Any], *device_ids: str) -> None:
    events = [
        DeviceRegistered(device_id=d, name=f"Room {d}", kind="thermostat", metrics=())
        for d in device_ids
    ]
    with primary.transaction():
        store.apply_deltas(primary, fold(events))


@contextmanager
def _paused_replay(replica: StreamingReplica) -> Iterator[None]:
    """Replay paused on the replica for the block (WAL still arrives); resumed however it ends."""
    with psycopg.connect(replica.replica_url, autocommit=True) as standby:
        standby.execute("SELECT pg_wal_replay_pause()")
        try:
            yield
        finally:
            standby.execute("SELECT pg_wal_replay_resume()")


def _device_ids(client: TestClient) -> list[str]:
    answer = client.get("/devices", headers=AUTH)
    assert answer.status_code == 200
    return [item["device_id"] for item in answer.json()["items"]]


def _pipeline(client: TestClient) -> dict[str, Any]:
    answer = client.get("/pipeline", headers=AUTH)
    assert answer.status_code == 200
    report: dict[str, Any] = answer.json()
    return report


def test_the_query_api_reads_the_replica(
    streaming_replica: StreamingReplica,
    primary: psycopg.Connection[Any],
    replica_settings: Settings,
) -> None:
    _register(primary, "r1", "r2")
    streaming_replica.wait_until_replayed(primary)
    with TestClient(create_query_app(replica_settings)) as client:
        assert _device_ids(client) == ["r1", "r2"]
        assert client.get("/fleet", headers=AUTH).json()["registered"] == 2
        assert client.get("/devices/r2", headers=AUTH).json()["name"] == "Room r2"
        with _paused_replay(streaming_replica):
            _register(primary, "r3")
            streaming_replica.wait_until_received(primary)
            # On the primary already, not yet on the replica the API reads.
            assert _device_ids(client) == ["r1", "r2"]
            assert client.get("/devices/r3", headers=AUTH).status_code == 404
        streaming_replica.wait_until_replayed(primary)
        assert _device_ids(client) == ["r1", "r2", "r3"]


def test_pipeline_reports_a_caught_up_replica(
    primary: psycopg.Connection[Any], replica_settings: Settings
) -> None:
    with TestClient(create_query_app(replica_settings)) as client:
        report = _pipeline(client)
    assert report["replica"] == {
        "url_host": "127.0.0.1",
        "caught_up": True,
        "replay_delay_seconds": 0.0,
        "replay_paused": False,
    }
    assert report["read_lag_seconds"] == 0.0  # no consumer group waits for anything either


def test_a_paused_replica_reports_its_delay_in_the_read_lag(
    streaming_replica: StreamingReplica,
    primary: psycopg.Connection[Any],
    replica_settings: Settings,
) -> None:
    _register(primary, "p1")  # so that the replica has replayed a transaction to date from
    streaming_replica.wait_until_replayed(primary)
    with TestClient(create_query_app(replica_settings)) as client:
        with _paused_replay(streaming_replica):
            _register(primary, "p2")
            streaming_replica.wait_until_received(primary)
            time.sleep(0.2)  # a delay large enough to tell from zero, not a timed assertion
            behind = _pipeline(client)
        streaming_replica.wait_until_replayed(primary)
        caught_up = _pipeline(client)
    replica = behind["replica"]
    assert replica["caught_up"] is False and replica["replay_paused"] is True
    assert replica["replay_delay_seconds"] >= 0.2
    assert behind["read_lag_seconds"] >= replica["replay_delay_seconds"]
    assert caught_up["replica"]["caught_up"] is True
    assert caught_up["replica"]["replay_delay_seconds"] == 0.0
    assert caught_up["read_lag_seconds"] == 0.0


def test_the_read_lag_adds_the_aggregators_delay(
    primary: psycopg.Connection[Any], replica_settings: Settings, redis_client: redis.Redis
) -> None:
    """Entries a group has not applied count from when they were added (their stream ids)."""
    minute_ago = int(datetime.now(UTC).timestamp() * 1000) - 60_000
    redis_client.xgroup_create(DEVICE_EVENTS_STREAM, AGGREGATOR_GROUP, id="0", mkstream=True)
    redis_client.xadd(DEVICE_EVENTS_STREAM, {"event": "x"}, id=f"{minute_ago}-0")
    redis_client.xadd(DEVICE_EVENTS_STREAM, {"event": "y"}, id=f"{minute_ago + 30_000}-0")
    with TestClient(create_query_app(replica_settings)) as client:
        undelivered = _pipeline(client)["read_lag_seconds"]
        # One delivered, not acknowledged: pending; the older one still counts.
        redis_client.xreadgroup(AGGREGATOR_GROUP, "c1", {DEVICE_EVENTS_STREAM: ">"}, count=1)
        pending = _pipeline(client)["read_lag_seconds"]
        redis_client.xack(DEVICE_EVENTS_STREAM, AGGREGATOR_GROUP, f"{minute_ago}-0")
        second = _pipeline(client)["read_lag_seconds"]
        redis_client.xreadgroup(AGGREGATOR_GROUP, "c1", {DEVICE_EVENTS_STREAM: ">"}, count=1)
        redis_client.xack(DEVICE_EVENTS_STREAM, AGGREGATOR_GROUP, f"{minute_ago + 30_000}-0")
        none = _pipeline(client)["read_lag_seconds"]
    assert 60 <= undelivered < 3600 and 60 <= pending < 3600
    assert 30 <= second < 60
    assert none == 0.0


def test_an_unknown_replay_delay_leaves_the_read_lag_unknown(redis_client: redis.Redis) -> None:
    """A standby that has replayed no transaction since it started has no time to count from."""
    never = ReplicaHealth(
        url_host="h", caught_up=False, replay_delay_seconds=None, replay_paused=False
    )
    assert read_lag_seconds(redis_client, [], never) is None


def test_without_a_replica_the_pipeline_report_is_unchanged(settings: Settings) -> None:
    with TestClient(create_query_app(settings)) as client:
        report = _pipeline(client)
    assert "replica" not in report and "read_lag_seconds" not in report
    assert {"streams", "groups", "outbox_backlog", "alerts"} <= set(report)


def _metrics(app: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in app.metric}


def test_the_dashboard_reads_the_replica_and_shows_its_delay(
    streaming_replica: StreamingReplica,
    primary: psycopg.Connection[Any],
    replica_settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _register(primary, "s1")
    streaming_replica.wait_until_replayed(primary)
    monkeypatch.setenv("IOTP_READ_REPLICA_URL", streaming_replica.replica_url)
    with dashboard_settings(replica_settings, monkeypatch):
        caught_up = _metrics(run_page("pipeline.py"))
        with _paused_replay(streaming_replica):
            _register(primary, "s2")
            streaming_replica.wait_until_received(primary)
            fleet = run_page("fleet.py")
            behind = _metrics(run_page("pipeline.py"))
    assert not fleet.exception
    assert _metrics(fleet)["Registered"] == "1"  # the primary has 2: the page reads the replica
    assert list(fleet.dataframe[0].value["name"]) == ["Room s1"]
    assert caught_up["Replica"] == "127.0.0.1"
    assert caught_up["Replica caught up"] == "yes"
    assert caught_up["Replay delay"] == "0.0 s" and caught_up["Read lag"] == "0.0 s"
    assert behind["Replica caught up"] == "no (replay paused)"
    assert behind["Replay delay"] != "0.0 s" and behind["Read lag"] != "0.0 s"


def test_the_dashboard_names_the_replica_setting_when_it_does_not_answer(
    replica_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"postgresql://127.0.0.1:{free_port()}/iotp"
    monkeypatch.setenv("IOTP_READ_REPLICA_URL", url)
    with dashboard_settings(replica_settings, monkeypatch):
        app = run_page("pipeline.py")  # one read: one pool timeout to wait for
        pool = dashboard_data._pool(url)  # the page's own, from the process's cache
        assert not pool.closed
    assert not app.exception
    assert "IOTP_READ_REPLICA_URL" in app.error[0].value
    assert pool.closed  # released with the cache: no thread left reconnecting to nothing


def test_the_preflight_accepts_a_replica_and_no_replica(
    replica_settings: Settings, settings: Settings
) -> None:
    require_read_replica(replica_settings)
    require_read_replica(settings)  # none set: nothing to check


def test_the_preflight_refuses_a_primary_as_the_replica(
    streaming_replica: StreamingReplica, replica_settings: Settings
) -> None:
    primary = replica_settings.model_copy(
        update={"read_replica_url": streaming_replica.primary_url}
    )
    with pytest.raises(ConfigurationError, match=r"IOTP_READ_REPLICA_URL .* is not a replica"):
        require_read_replica(primary)


def test_the_preflight_refuses_a_replica_that_does_not_answer(
    replica_settings: Settings,
) -> None:
    dead = replica_settings.model_copy(
        update={"read_replica_url": f"postgresql://127.0.0.1:{free_port()}/iotp"}
    )
    with pytest.raises(ServiceUnavailable, match="IOTP_READ_REPLICA_URL"):
        require_read_replica(dead)


def test_the_query_api_does_not_start_on_a_bad_replica(
    streaming_replica: StreamingReplica,
    replica_settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    served: list[dict[str, Any]] = []
    monkeypatch.setattr(
        "read_models.app.uvicorn.run", lambda app, **options: served.append(options)
    )
    primary = replica_settings.model_copy(
        update={"read_replica_url": streaming_replica.primary_url}
    )
    with pytest.raises(ConfigurationError, match="IOTP_READ_REPLICA_URL"):
        run_query_api(primary)
    assert served == []
    run_query_api(replica_settings)
    assert len(served) == 1
