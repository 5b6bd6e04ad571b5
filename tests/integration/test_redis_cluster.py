"""iotp on a real 3-master Redis Cluster, with its telemetry events sharded over the masters.

The suite makes the cluster itself (tests/support/redis_cluster.py). Two ingests share the
MQTT subscription, two aggregators share every shard's consumer group, one aggregator is
killed with SIGKILL mid-run; every reading must be stored once, carried by exactly one event
on its device's shard, and folded exactly once into the read models.
"""

from __future__ import annotations

import threading
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import orjson
import psycopg
import pytest
import redis
from redis.cluster import RedisCluster

from ingest.publisher import StreamPublisher
from iotp.event_shards import (
    event_streams,
    read_group,
    stream_trims,
    telemetry_stream_for,
    telemetry_streams,
    trims_key,
)
from iotp.events import telemetry_recorded_fields
from iotp.names import ALARM_EVENTS_STREAM
from iotp.redis_client import HiredisPacker, redis_for
from read_models.consumer import AGGREGATOR_GROUP, aggregated_streams
from read_models.health import pipeline_health
from tests.support.ingest_harness import (
    event_readings,
    publish,
    reading,
    single_messages,
    stored,
    stored_count,
    telemetry_events,
    wait_stored,
)
from tests.support.platform import Platform
from tests.support.read_model_harness import wait_converged
from tests.support.redis_cluster import LocalCluster
from tests.support.waiting import wait_for

SHARDS = 6
DEVICES = [f"cl-{n:02d}" for n in range(12)]


def _masters_of(client: RedisCluster, keys: list[str]) -> set[str]:
    return {client.get_node_from_key(key).name for key in keys}


def test_shards_spread_over_masters_and_keep_their_keys_in_one_slot(
    redis_cluster: LocalCluster,
) -> None:
    client = redis_cluster.client()
    streams = list(telemetry_streams(SHARDS))
    assert len(_masters_of(client, streams)) > 1
    for stream in streams:
        assert client.keyslot(stream) == client.keyslot(trims_key(stream))
    shard_of = {device: telemetry_stream_for(device, SHARDS) for device in DEVICES}
    assert len(set(shard_of.values())) > 1
    assert shard_of == {device: telemetry_stream_for(device, SHARDS) for device in DEVICES}


def _event_fields(device: str, n: int) -> dict[str, str]:
    ts = datetime(2026, 1, 1, tzinfo=UTC).replace(second=n % 60, minute=n // 60)
    now = datetime.now(UTC)
    return telemetry_recorded_fields(device, [(ts, {"temp": float(n)}, ())], now, now)


def test_publisher_and_group_reads_on_a_cluster(redis_cluster: LocalCluster) -> None:
    redis_cluster.flush()
    client = redis_for(redis_cluster.url, cluster=True)
    streams = event_streams(SHARDS)
    for stream in streams:
        client.xgroup_create(stream, "g", id="0", mkstream=True)
    events = [_event_fields(device, n) for n in range(20) for device in DEVICES]
    StreamPublisher(client, 1000, 100, shards=SHARDS).publish(events)

    batch = read_group(client, "g", "c", dict.fromkeys(streams, ">"), count=10_000, block_ms=10)
    seen: dict[str, list[str]] = {}
    for stream, entries in batch.items():
        for _, fields in entries:
            assert fields is not None
            device = fields[b"device_id"].decode()
            assert telemetry_stream_for(device, SHARDS) == stream
            seen.setdefault(device, []).append(fields[b"event_id"].decode())
    sent: dict[str, list[str]] = {}
    for fields in events:
        sent.setdefault(fields["device_id"], []).append(fields["event_id"])
    assert seen == sent  # every event once, each device's in publishing order
    assert stream_trims(client, SHARDS)["telemetry_cap"] == "1000"
    # Its nodes' connections pack commands as a single node's client does.
    for node in client.get_nodes():
        connection: Any = node.redis_connection.connection_pool.make_connection()
        assert isinstance(connection._command_packer, HiredisPacker)


def _cluster_platform(platform: Platform, cluster: LocalCluster) -> Platform:
    settings = platform.settings.model_copy(
        update={"redis_url": cluster.url, "redis_cluster": True, "event_shards": SHARDS}
    )
    client: Any = redis_for(cluster.url, cluster=True, decode_responses=True)
    # The same children: the platform fixture stops them however the test ends.
    return Platform(
        settings, platform.mqtt_url, platform.db, client, platform.tmp, platform.children
    )


def _environment(platform: Platform, cluster: LocalCluster) -> dict[str, str]:
    return platform.environment(
        redis_url=cluster.url,
        redis_cluster="true",
        event_shards=str(SHARDS),
        aggregator_claim_idle_ms="2000",  # the survivor claims what the killed one held soon
        aggregator_batch_size="50",
    )


@pytest.fixture
def cluster_platform(
    platform: Platform, redis_cluster: LocalCluster
) -> tuple[Platform, dict[str, str]]:
    """The platform on an emptied cluster with DEVICES registered, and its children's env."""
    redis_cluster.flush()
    on_cluster = _cluster_platform(platform, redis_cluster)
    on_cluster.register(*DEVICES)
    return on_cluster, _environment(platform, redis_cluster)


def test_two_ingests_and_two_aggregators_on_a_cluster_exactly_once(
    cluster_platform: tuple[Platform, dict[str, str]], db: psycopg.Connection[Any]
) -> None:
    on_cluster, env = cluster_platform
    for instance in ("0", "1"):
        on_cluster.serve("ingest", "--instance", instance, env=env, ready="subscribed to",
                         log=f"ingest-{instance}")  # fmt: skip
    doomed = on_cluster.serve("aggregate", "--instance", "0", env=env, ready="aggregating as",
                              log="aggregator-0")  # fmt: skip
    on_cluster.serve("aggregate", "--instance", "1", env=env, ready="aggregating as",
                     log="aggregator-1")  # fmt: skip

    per_device = 60
    first = [m for d in DEVICES for m in single_messages(d, 0, per_device // 2)]
    publish(on_cluster.mqtt_url, first)
    wait_stored(on_cluster, len(first) * 3)
    second = [m for d in DEVICES for m in single_messages(d, per_device // 2, per_device // 2)]
    publisher = threading.Thread(target=publish, args=(on_cluster.mqtt_url, second))
    publisher.start()
    wait_for(lambda: stored_count(db) > len(first) * 3, timeout=30)
    doomed.kill()  # SIGKILL mid-run: what it read and had not acknowledged is claimed
    publisher.join()
    total = len(DEVICES) * per_device * 3
    wait_stored(on_cluster, total)

    rows = stored(db)
    assert len(rows) == total and set(rows.values()) == {1}
    client: Any = on_cluster.redis
    # Ingest publishes a batch's events just after committing it: wait for the last ones.
    wait_for(lambda: sum(client.xlen(s) for s in telemetry_streams(SHARDS)) >= len(first) * 2)
    events = telemetry_events(client, SHARDS)
    assert event_readings(events) == Counter(rows)  # one event per stored reading, no more
    assert len({e.event_id for e in events}) == len(events)
    for stream in telemetry_streams(SHARDS):
        devices = {f["device_id"] for _, f in client.xrange(stream)}
        assert all(telemetry_stream_for(d, SHARDS) == stream for d in devices)
    assert len(_masters_of(client, [s for s in telemetry_streams(SHARDS) if client.xlen(s)])) > 1

    wait_converged(db, timeout=90)
    health = pipeline_health(db, client, SHARDS)
    groups = [g for g in health.groups if g.group == AGGREGATOR_GROUP]
    assert {g.stream for g in groups} == set(aggregated_streams(SHARDS))
    wait_for(lambda: all(g.pending == 0 for g in _groups(db, client)), timeout=60)

    status = on_cluster.run("status", "--json", env=env, timeout=60)
    assert status.returncode == 0, status.stderr
    streams = orjson.loads(status.stdout)["streams"]
    assert sum(streams[s] for s in telemetry_streams(SHARDS)) == len(events)
    rebuilt = on_cluster.run("rebuild", env=env, timeout=120)
    assert rebuilt.returncode == 0, rebuilt.stderr
    wait_converged(db, timeout=30)


def test_alarms_on_a_cluster_are_raised_once_and_reach_the_read_model(
    cluster_platform: tuple[Platform, dict[str, str]], db: psycopg.Connection[Any]
) -> None:
    on_cluster, env = cluster_platform
    on_cluster.serve("ingest", "--instance", "0", env=env, ready="subscribed to")
    on_cluster.serve("aggregate", "--instance", "0", env=env, ready="aggregating as")
    on_cluster.serve("relay", env=env, ready=None)
    on_cluster.serve("alarms", env=env, ready="evaluating in group")
    hot = DEVICES[3]  # its shard is one of several, on one of the masters
    breach = [(f"devices/{hot}/telemetry", orjson.dumps(reading(i, temp=99.0))) for i in range(5)]
    calm = [m for d in DEVICES if d != hot for m in single_messages(d, 0, 5)]
    publish(on_cluster.mqtt_url, calm + breach)
    client: Any = on_cluster.redis

    def raised() -> list[Any]:
        return [f for _, f in client.xrange(ALARM_EVENTS_STREAM) if f["type"] == "AlarmRaised"]

    wait_for(raised, timeout=60)
    [alarm] = raised()  # 5 readings over the range: one alarm, raised once
    assert alarm["device_id"] == hot
    row = wait_for(
        lambda: db.execute("SELECT device_id, metric, state FROM read_models.alarms").fetchall(),
        timeout=60,
    )
    assert row == [(hot, "temp", "active")]


def _groups(db: psycopg.Connection[Any], client: redis.Redis) -> list[Any]:
    health = pipeline_health(db, client, SHARDS)
    return [g for g in health.groups if g.group == AGGREGATOR_GROUP]
