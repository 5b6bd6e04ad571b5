"""The stream-consumer protocol, tested once: iotp.group_reader with a part that records events.

Real Redis (one node, and a real 3-master cluster) and real PostgreSQL; the part is the
tests' own (tests/support/stream_parts.py), so that what is tested is the protocol every
consumer shares: read order, acknowledgement after the commit, claims, deleted and
undecodable entries, lost groups, gaps and their heals, counters, stopping.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
import pytest
import redis

from iotp.event_shards import ensure_groups, telemetry_streams
from iotp.events import DeviceRegistered, to_fields
from iotp.names import DEVICE_EVENTS_STREAM, consumer_stats_key
from iotp.redis_client import redis_for
from read_models.health import pipeline_health
from tests.support.redis_cluster import LocalCluster
from tests.support.servers import SERVERS
from tests.support.stream_parts import GROUP, SCHEMA, RecordingPart, reader
from tests.support.waiting import wait_for

STREAM = "test:events:a"
OTHER = "test:events:b"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def database(database_url: str, db: psycopg.Connection[Any]) -> str:
    db.execute(SCHEMA)
    return database_url


@pytest.fixture
def client(redis_client: redis.Redis) -> redis.Redis:
    return redis.Redis.from_url(SERVERS.redis)  # bytes, as the services read


def publish(client: redis.Redis, stream: str, count: int) -> list[UUID]:
    events = [DeviceRegistered(device_id=f"d{n}", name=f"d{n}", kind="k") for n in range(count)]
    for event in events:
        client.xadd(stream, to_fields(event))  # type: ignore[arg-type]
    return [e.event_id for e in events]


def applied(db: psycopg.Connection[Any]) -> list[UUID]:
    return [row[0] for row in db.execute("SELECT event_id FROM reader_applied").fetchall()]


def pending(client: redis.Redis, stream: str) -> int:
    return int(client.xpending(stream, GROUP)["pending"])


def test_every_event_is_applied_once_then_acknowledged_with_its_counters(
    database: str, db: psycopg.Connection[Any], client: redis.Redis
) -> None:
    ids = publish(client, STREAM, 5) + publish(client, OTHER, 3)
    part = RecordingPart(database)
    consumer = reader(client, part, (STREAM, OTHER), batch_size=4)
    while consumer.step().entries:
        pass
    assert sorted(applied(db)) == sorted(ids)
    assert pending(client, STREAM) == pending(client, OTHER) == 0
    stats = {k.decode(): v.decode() for k, v in client.hgetall(consumer_stats_key(GROUP)).items()}
    assert (stats["entries"], stats["applied"]) == ("8", "8")
    last = client.xrevrange(STREAM, count=1)[0][0].decode()
    assert stats[f"acked:{STREAM}"] == last
    assert dict(part.positions())[STREAM] == last
    assert part.heals == []


def test_a_read_gathers_for_more_only_while_busy(
    database: str, db: psycopg.Connection[Any], client: redis.Redis
) -> None:
    """Fewer than gather_min events are applied at once (freshness at a moderate rate); a
    read of gather_min or more, short of a batch, waits gather_ms and takes what came."""
    part = RecordingPart(database)
    consumer = reader(client, part, (STREAM,), batch_size=100, gather_ms=600, gather_min=5)
    publish(client, STREAM, 2)
    started = time.monotonic()
    assert consumer.step().entries == 2
    assert time.monotonic() - started < 0.5
    publish(client, STREAM, 5)
    late = threading.Timer(0.2, publish, (client, STREAM, 3))
    late.start()
    started = time.monotonic()
    assert consumer.step().entries == 8  # the 3 published while it gathered, in one batch
    assert time.monotonic() - started >= 0.6
    late.join()
    assert len(applied(db)) == 10


def test_a_short_read_lingers_for_what_comes_next(
    database: str, db: psycopg.Connection[Any], client: redis.Redis
) -> None:
    """A read of fewer than gather_min events waits linger_ms, not gather_ms, and applies
    what came meanwhile with it; without a linger it is applied at once, alone."""
    part = RecordingPart(database)
    consumer = reader(
        client, part, (STREAM,), batch_size=100, gather_ms=5000, gather_min=50, linger_ms=600
    )
    publish(client, STREAM, 2)
    late = threading.Timer(0.2, publish, (client, STREAM, 3))
    late.start()
    started = time.monotonic()
    assert consumer.step().entries == 5  # the 3 published while it lingered, in one batch
    assert 0.6 <= time.monotonic() - started < 4.0  # the linger, not the gather
    late.join()
    eager = reader(client, part, (STREAM,), batch_size=100, gather_min=50, linger_ms=0)
    publish(client, STREAM, 2)
    late = threading.Timer(0.4, publish, (client, STREAM, 3))
    late.start()
    assert eager.step().entries == 2
    late.join()
    assert eager.step().entries == 3
    assert len(applied(db)) == 10


def test_a_kill_between_the_commit_and_the_xack_applies_nothing_twice(
    database: str, db: psycopg.Connection[Any], client: redis.Redis
) -> None:
    ids = publish(client, STREAM, 6)
    ensure_groups(client, GROUP, (STREAM,))
    doomed = subprocess.run(
        [sys.executable, "-m", "tests.support.stream_parts", SERVERS.redis, database, STREAM],
        cwd=ROOT,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert doomed.returncode == -9, doomed.stderr  # SIGKILL, after its commit
    assert sorted(applied(db)) == sorted(ids)  # committed...
    assert pending(client, STREAM) == 6  # ...and never acknowledged
    # Restarted under the same name, it is handed its own pending entries first.
    part = RecordingPart(database, consumer="doomed")
    done = reader(client, part, (STREAM,)).step()
    assert (done.entries, done.applied) == (6, 0)
    assert pending(client, STREAM) == 0
    assert sorted(applied(db)) == sorted(ids)


def test_a_dead_consumers_entries_are_claimed_after_the_idle_time(
    database: str, db: psycopg.Connection[Any], client: redis.Redis
) -> None:
    ids = publish(client, STREAM, 4)
    ensure_groups(client, GROUP, (STREAM,))
    client.xreadgroup(GROUP, "ghost", {STREAM: ">"})  # reads, then dies
    survivor = reader(client, RecordingPart(database, "survivor"), (STREAM,), claim_idle_ms=100)
    assert survivor.step().entries == 0  # too fresh to claim
    time.sleep(0.15)
    done = survivor.step()
    assert (done.claimed, done.applied) == (4, 4)
    assert sorted(applied(db)) == sorted(ids)
    assert pending(client, STREAM) == 0


@pytest.mark.parametrize("whose", ["own", "dead consumer's"])
def test_a_pending_entry_deleted_before_it_was_applied_is_a_gap_healed(
    whose: str, database: str, db: psycopg.Connection[Any], client: redis.Redis
) -> None:
    ids = publish(client, STREAM, 3)
    ensure_groups(client, GROUP, (STREAM,))
    holder = "c1" if whose == "own" else "ghost"
    taken: Any = client.xreadgroup(GROUP, holder, {STREAM: ">"})
    client.xdel(STREAM, taken[0][1][1][0])
    time.sleep(0.15)
    part = RecordingPart(database)
    consumer = reader(client, part, (STREAM,), claim_idle_ms=100)
    done = consumer.step()
    assert done.deleted == (1 if whose == "own" else 0)
    wait_for(lambda: consumer.step() is not None and part.heals, timeout=5)
    assert sorted(applied(db)) == sorted([ids[0], ids[2]])
    assert part.heals and pending(client, STREAM) == 0
    assert client.hget(consumer_stats_key(GROUP), "deleted") == b"1"
    assert client.hget(consumer_stats_key(GROUP), "heals") == b"1"


def test_an_undecodable_entry_is_logged_once_counted_and_acknowledged(
    database: str,
    db: psycopg.Connection[Any],
    client: redis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="iotp.group_reader")
    first = publish(client, STREAM, 1)
    client.xadd(STREAM, {"type": "DeviceRegistered", "schema_version": "1", "data": "{broken"})
    client.xadd(STREAM, {"type": "NoSuchEvent", "schema_version": "999", "data": "{}"})
    last = publish(client, STREAM, 1)
    consumer = reader(client, RecordingPart(database), (STREAM,))
    done = consumer.step()
    assert (done.entries, done.applied, done.undecodable) == (4, 2, 2)
    assert sorted(applied(db)) == sorted(first + last)
    assert pending(client, STREAM) == 0
    assert consumer.step().entries == 0
    lines = [r for r in caplog.records if "undecodable" in r.getMessage()]
    assert len(lines) == 2
    assert client.hget(consumer_stats_key(GROUP), "undecodable") == b"2"


def test_an_outage_mid_batch_redoes_it_own_pending_first(
    database: str, db: psycopg.Connection[Any], client: redis.Redis
) -> None:
    first = publish(client, STREAM, 3)
    part = RecordingPart(database)
    part.failures.append(psycopg.OperationalError("the server closed the connection"))
    consumer = reader(client, part, (STREAM,), claim_idle_ms=60_000)
    stop = threading.Event()
    runner = threading.Thread(target=consumer.run, args=(stop,))
    runner.start()
    try:
        # The failed batch is pending under this consumer: redone at once, not after a claim.
        wait_for(lambda: sorted(applied(db)) == sorted(first), timeout=10)
        later = publish(client, STREAM, 2)
        wait_for(lambda: sorted(applied(db)) == sorted(first + later), timeout=10)
    finally:
        stop.set()
        runner.join(timeout=10)
    assert not runner.is_alive()
    assert pending(client, STREAM) == 0


def test_a_group_redis_lost_is_created_again_and_the_loss_healed(
    database: str, db: psycopg.Connection[Any], client: redis.Redis
) -> None:
    publish(client, STREAM, 3)
    part = RecordingPart(database)
    consumer = reader(client, part, (STREAM,))
    stop = threading.Event()
    runner = threading.Thread(target=consumer.run, args=(stop,))
    runner.start()
    try:
        wait_for(lambda: len(applied(db)) == 3, timeout=10)
        client.flushdb()  # as a Redis restarted without its data
        after = publish(client, STREAM, 2)
        wait_for(lambda: part.heals, timeout=10)
        wait_for(lambda: set(after) <= set(applied(db)), timeout=10)
    finally:
        stop.set()
        runner.join(timeout=10)
    assert not runner.is_alive()  # NOGROUP was not fatal
    assert len(client.xinfo_groups(STREAM)) == 1
    assert pending(client, STREAM) == 0
    assert len(part.heals) == 1


def test_positions_beyond_what_the_group_was_delivered_are_a_gap(
    database: str, db: psycopg.Connection[Any], client: redis.Redis
) -> None:
    publish(client, STREAM, 2)
    part = RecordingPart(database)
    consumer = reader(client, part, (STREAM,))
    consumer.step()
    # Redis restarted from an older save: the group exists, but behind what was applied.
    client.xgroup_setid(STREAM, GROUP, "0-1")
    fresh = reader(client, part, (STREAM,))
    fresh.step()
    assert len(part.heals) == 1
    assert part.heals[0] == {STREAM: "0-1"}
    assert dict(part.positions())[STREAM] != "0-1"  # the batches after the heal moved it on


def test_no_gap_at_the_first_start_of_a_group(
    database: str, db: psycopg.Connection[Any], client: redis.Redis
) -> None:
    publish(client, STREAM, 2)
    part = RecordingPart(database)
    reader(client, part, (STREAM,)).step()
    assert part.heals == [] and len(applied(db)) == 2


def test_a_standby_reads_nothing_until_it_may(
    database: str, db: psycopg.Connection[Any], client: redis.Redis
) -> None:
    publish(client, STREAM, 2)
    part = RecordingPart(database)
    allowed = False
    part.may_read = lambda: allowed  # type: ignore[method-assign]
    consumer = reader(client, part, (STREAM,))
    assert consumer.step().entries == 0 and applied(db) == []
    allowed = True
    assert consumer.step().applied == 2


def test_every_shard_is_read_on_a_cluster(
    database: str, db: psycopg.Connection[Any], redis_cluster: LocalCluster
) -> None:
    redis_cluster.flush()
    client = redis_for(redis_cluster.url, True)
    try:
        shards = telemetry_streams(4)
        ids = [i for shard in shards for i in publish(client, shard, 3)]
        part = RecordingPart(database)
        consumer = reader(client, part, shards, batch_size=5)
        while consumer.step().entries:
            pass
        assert sorted(applied(db)) == sorted(ids)
        assert all(pending(client, shard) == 0 for shard in shards)
        # A group lost on one shard is created again there, and healed.
        client.xgroup_destroy(shards[2], GROUP)
        publish(client, shards[2], 1)
        wait_for(lambda: consumer.step() is not None and part.heals, timeout=5)
        wait_for(lambda: consumer.step() is not None and len(applied(db)) == len(ids) + 1)
        assert len(part.heals) == 1
    finally:
        client.close()
        redis_cluster.flush()


def test_pipeline_reports_every_groups_counters_and_last_applied_id_alike(
    database: str, db: psycopg.Connection[Any], client: redis.Redis
) -> None:
    publish(client, DEVICE_EVENTS_STREAM, 3)
    client.xadd(DEVICE_EVENTS_STREAM, {"type": "Nonsense", "schema_version": "1", "data": "{}"})
    consumer = reader(client, RecordingPart(database), (DEVICE_EVENTS_STREAM,))
    while consumer.step().entries:
        pass
    health = pipeline_health(db, client)
    assert health.consumers[GROUP].model_dump(include={"entries", "applied", "undecodable"}) == {
        "entries": 4,
        "applied": 3,
        "undecodable": 1,
    }
    assert health.consumers[GROUP].last_batch_at is not None
    (group,) = [g for g in health.groups if g.group == GROUP]
    last = client.xrevrange(DEVICE_EVENTS_STREAM, count=1)[0][0].decode()
    assert (group.lag, group.pending, group.last_applied_id) == (0, 0, last)
