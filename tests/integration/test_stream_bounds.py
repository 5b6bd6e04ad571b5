"""The relayed event streams are bounded by consumption (issue 24), on real Redis.

The relay's housekeeping trims each stream it fills to what every consumer group has
consumed, keeps a stream no group reads up to IOTP_EVENT_STREAM_MAXLEN, and never takes an
entry a group has pending or not yet been delivered. The readers that are no group (the
ingest registry follower) or that start later (a group created after a trim) notice what a
trim took and recover it from PostgreSQL; the others (rebuild's hand-over, lag) read only
what is kept.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import psycopg
import pytest
import redis

from command_api.relay import RELAYED_STREAMS, run_relay, trim_streams
from ingest.payloads import DeviceInfo
from ingest.registry import (
    DeviceRegistry,
    RegistryFollower,
    device_info,
    last_device_event_id,
)
from iotp.db import open_pool
from iotp.event_shards import ensure_groups, trims_key
from iotp.events import DeviceRegistered, DeviceUpdated, to_fields
from iotp.model import MetricSpec
from iotp.names import (
    ACCESS_EVENTS_STREAM,
    ALARM_EVENTS_STREAM,
    ALARM_RULE_EVENTS_STREAM,
    DEVICE_EVENTS_STREAM,
    PROFILE_EVENTS_STREAM,
    WEBHOOK_EVENTS_STREAM,
)
from iotp.redis_client import open_redis, redis_for, split_id
from iotp.settings import Settings
from iotp.stream_trim import StreamTrim, trimmed_before
from read_models.consumer import AGGREGATOR_GROUP
from read_models.rebuild import _last_id, _oldest_redeliverable
from tests.support.redis_cluster import LocalCluster
from tests.support.servers import SERVERS
from tests.support.stream_parts import SCHEMA, RecordingPart, reader

CAP = 1000
FAST, SLOW = "test-fast", "test-slow"


@pytest.fixture
def client(redis_client: redis.Redis) -> redis.Redis:
    return redis.Redis.from_url(SERVERS.redis)  # bytes, as the services read


def trim(cap: int = CAP) -> dict[str, StreamTrim]:
    """The relay's housekeeping trim, as the relay runs it."""

    async def run() -> list[StreamTrim]:
        client = await open_redis(SERVERS.redis)
        try:
            return await trim_streams(client, cap)
        finally:
            await client.aclose()

    return {t.stream: t for t in asyncio.run(run())}


def publish(client: redis.Redis, count: int, stream: str = DEVICE_EVENTS_STREAM) -> list[str]:
    """``count`` device events on ``stream``; their entry ids."""
    return [
        client.xadd(stream, to_fields(registered(f"d{n}"))).decode()  # type: ignore[arg-type, union-attr]
        for n in range(count)
    ]


def registered(device_id: str, metric: str = "temp") -> DeviceRegistered:
    return DeviceRegistered(
        device_id=device_id,
        name=device_id,
        kind="thermostat",
        metrics=(MetricSpec(name=metric, unit="C", min=0, max=50),),
    )


def updated(device_id: str, metric: str) -> DeviceUpdated:
    return DeviceUpdated(
        device_id=device_id,
        name=device_id,
        kind="thermostat",
        metrics=(MetricSpec(name=metric, unit="%", min=0, max=100),),
        changed=("metrics",),
    )


def consume(client: redis.Redis, group: str, count: int, ack: int | None = None) -> list[str]:
    """``group`` is delivered ``count`` entries and acknowledges the first ``ack`` (all)."""
    ensure_groups(client, group, [DEVICE_EVENTS_STREAM])
    reply: Any = client.xreadgroup(group, "c1", {DEVICE_EVENTS_STREAM: ">"}, count=count)
    ids = [i.decode() for i, _ in reply[0][1]] if reply else []
    acked = ids if ack is None else ids[:ack]
    if acked:
        client.xack(DEVICE_EVENTS_STREAM, group, *acked)
    return ids


def ids_in(client: redis.Redis, stream: str = DEVICE_EVENTS_STREAM) -> list[str]:
    entries: Any = client.xrange(stream)
    return [i.decode() for i, _ in entries]


def test_entries_every_group_consumed_are_trimmed_the_newest_kept(client: redis.Redis) -> None:
    ids = publish(client, 10)
    consume(client, FAST, 10)
    consume(client, SLOW, 10)

    done = trim()

    device = done[DEVICE_EVENTS_STREAM]
    assert (device.trimmed, device.cut, device.length) == (9, 0, 1)
    assert device.held_by in {FAST, SLOW}  # both need the entry after the newest
    # The newest stays, so the stream's last id is still there for XREVRANGE readers.
    assert ids_in(client) == ids[-1:]
    assert last_device_event_id(client) == ids[-1]
    assert trimmed_before(client, DEVICE_EVENTS_STREAM) == ids[-1]
    record = client.hgetall(trims_key(DEVICE_EVENTS_STREAM))
    assert record[b"trimmed"] == b"9" and record[b"event_cap"] == str(CAP).encode()
    # Every relayed stream is looked after, those still empty too.
    assert (
        set(done)
        == set(RELAYED_STREAMS)
        == {
            DEVICE_EVENTS_STREAM,
            ALARM_EVENTS_STREAM,
            ALARM_RULE_EVENTS_STREAM,
            WEBHOOK_EVENTS_STREAM,
            ACCESS_EVENTS_STREAM,
            PROFILE_EVENTS_STREAM,
        }
    )


def test_nothing_a_group_has_pending_or_not_delivered_is_trimmed(client: redis.Redis) -> None:
    ids = publish(client, 10)
    consume(client, FAST, 10)
    consume(client, SLOW, 6, ack=3)  # 3 acknowledged, 3 pending, 4 never delivered

    assert trim()[DEVICE_EVENTS_STREAM].held_by == SLOW
    assert ids_in(client) == ids[3:]  # from SLOW's oldest pending entry

    client.xack(DEVICE_EVENTS_STREAM, SLOW, *ids[3:6])
    trim()
    assert ids_in(client) == ids[6:]  # from SLOW's first undelivered entry

    ensure_groups(client, "test-new", [DEVICE_EVENTS_STREAM])  # delivered nothing yet
    publish(client, 2)
    consume(client, FAST, 2)
    consume(client, SLOW, 2)
    assert trim()[DEVICE_EVENTS_STREAM].trimmed == 0
    assert ids_in(client)[:4] == ids[6:]


def test_the_running_relay_trims_in_its_housekeeping(
    settings: Settings, client: redis.Redis
) -> None:
    ids = publish(client, 5)
    consume(client, FAST, 5)

    async def relay_until_trimmed() -> list[str]:
        pool = await open_pool(settings.database_url, max_size=2)
        bus = await open_redis(settings.redis_url)
        stop = asyncio.Event()
        relay = asyncio.create_task(run_relay(pool, bus, settings, stop))
        try:
            for _ in range(100):  # housekeeping is due at the relay's first round
                if len(ids_in(client)) == 1:
                    break
                await asyncio.sleep(0.05)
            return ids_in(client)
        finally:
            stop.set()
            await relay
            await bus.aclose()
            await pool.close()

    assert asyncio.run(relay_until_trimmed()) == ids[-1:]


def test_a_stream_no_group_reads_is_kept_up_to_its_cap_then_cut(client: redis.Redis) -> None:
    ids = publish(client, CAP, ACCESS_EVENTS_STREAM)
    assert trim()[ACCESS_EVENTS_STREAM] == StreamTrim(ACCESS_EVENTS_STREAM, 0, 0, CAP, "")
    assert trimmed_before(client, ACCESS_EVENTS_STREAM) is None

    ids += publish(client, 5, ACCESS_EVENTS_STREAM)
    assert trim()[ACCESS_EVENTS_STREAM] == StreamTrim(ACCESS_EVENTS_STREAM, 0, 5, CAP, "")
    assert ids_in(client, ACCESS_EVENTS_STREAM) == ids[5:]
    record = client.hgetall(trims_key(ACCESS_EVENTS_STREAM))
    assert (record[b"cut"], record[b"cuts_without_group"]) == (b"5", b"1")
    assert trimmed_before(client, ACCESS_EVENTS_STREAM) == ids[5]


def test_a_lagging_group_holds_its_entries_past_the_cap(
    client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    publish(client, CAP + 10)
    consume(client, FAST, CAP + 10)
    ensure_groups(client, SLOW, [DEVICE_EVENTS_STREAM])  # a part that stopped reading

    done = trim()[DEVICE_EVENTS_STREAM]

    assert (done.trimmed, done.cut, done.length, done.held_by) == (0, 0, CAP + 10, SLOW)
    assert f"consumer group {SLOW} has not consumed them" in caplog.text


def test_a_group_created_after_a_trim_heals_what_it_never_saw(
    database_url: str, db: psycopg.Connection[Any], client: redis.Redis
) -> None:
    db.execute(SCHEMA)
    publish(client, 5)
    consume(client, FAST, 5)
    trim()
    part = RecordingPart(database_url)
    consumer = reader(client, part, (DEVICE_EVENTS_STREAM,))
    while consumer.step().entries:
        pass
    # Created at the stream's beginning, it read the newest entry only: the rest is healed.
    assert part.heals == [{DEVICE_EVENTS_STREAM: "0-0"}]


def test_a_group_created_on_an_untrimmed_stream_is_no_gap(
    database_url: str, db: psycopg.Connection[Any], client: redis.Redis
) -> None:
    db.execute(SCHEMA)
    publish(client, 5)
    part = RecordingPart(database_url)
    consumer = reader(client, part, (DEVICE_EVENTS_STREAM,))
    while consumer.step().entries:
        pass
    assert part.heals == []


class DevicesTable:
    """The devices table as the registry follower reloads it (kept beside the events)."""

    def __init__(self) -> None:
        self.devices: dict[str, DeviceInfo] = {}
        self.fetches = 0
        self.closed = False

    def fetch_all(self) -> list[DeviceInfo]:
        self.fetches += 1
        return list(self.devices.values())

    def close(self) -> None:
        self.closed = True


def change(
    client: redis.Redis, table: DevicesTable, event: DeviceRegistered | DeviceUpdated
) -> str:
    """A command's effect: the row (committed first), then its event on the stream."""
    table.devices[event.device_id] = device_info(event.device_id, "active", event.metrics)
    return client.xadd(DEVICE_EVENTS_STREAM, to_fields(event)).decode()  # type: ignore[arg-type, union-attr]


@pytest.fixture
def table() -> DevicesTable:
    return DevicesTable()


@pytest.fixture
def follower(client: redis.Redis, table: DevicesTable) -> RegistryFollower:
    """An ingest process's registry, started as ingest starts it (position, then the table)."""
    change(client, table, registered("d0"))
    position = last_device_event_id(client)
    registry = DeviceRegistry(lambda _: None, unknown_ttl=60.0)
    registry.load(table.fetch_all())
    return RegistryFollower(registry, client, position, threading.Event(), table)


def test_the_registry_follower_reloads_when_a_trim_took_what_it_had_not_read(
    client: redis.Redis, table: DevicesTable, follower: RegistryFollower
) -> None:
    behind = follower.position
    # While the follower is behind, devices change and every group consumes the events.
    change(client, table, registered("d1"))
    change(
        client,
        table,
        updated("d0", "humidity"),
    )
    newest = change(client, table, registered("d2"))
    consume(client, FAST, 10)
    trim()
    # What a plain XREAD from its position now gives: only the newest; the rest is gone.
    read: Any = client.xread({DEVICE_EVENTS_STREAM: behind})
    assert [i.decode() for i, _ in read[0][1]] == [newest]

    follower.step()

    assert follower.reloads == 1 and table.fetches == 2
    assert follower.position == newest
    registry = follower.registry
    assert registry.lookup("d1") is not None and registry.lookup("d2") is not None
    assert set(registry.lookup("d0").metrics) == {"humidity"}  # type: ignore[union-attr]

    # Caught up: the trim is behind it now, and new events are applied as usual.
    latest = change(client, table, registered("d3"))
    follower.step()
    assert (follower.reloads, follower.position) == (1, latest)
    assert follower.registry.lookup("d3") is not None


def test_a_follower_that_kept_up_is_not_disturbed_by_trims(
    client: redis.Redis, table: DevicesTable, follower: RegistryFollower
) -> None:
    for n in range(1, 4):
        latest = change(client, table, registered(f"d{n}"))
        follower.step()
        consume(client, FAST, 10)
        trim()
    assert (follower.reloads, table.fetches, follower.position) == (0, 1, latest)
    assert all(follower.registry.lookup(f"d{n}") is not None for n in range(4))


def test_the_follower_closes_its_connection_when_it_stops(
    follower: RegistryFollower, table: DevicesTable
) -> None:
    follower.stop.set()
    follower.run()
    assert table.closed


def test_the_other_readers_find_what_they_read_after_a_trim(client: redis.Redis) -> None:
    """Rebuild's hand-over reads the aggregators' redeliverable entries and each stream's
    last id; /pipeline reads every group's lag. A trim leaves all of them whole."""
    ids = publish(client, 10)
    consume(client, FAST, 10)
    ensure_groups(client, AGGREGATOR_GROUP, [DEVICE_EVENTS_STREAM])
    reply: Any = client.xreadgroup(AGGREGATOR_GROUP, "a", {DEVICE_EVENTS_STREAM: ">"}, count=7)
    client.xack(DEVICE_EVENTS_STREAM, AGGREGATOR_GROUP, *[i for i, _ in reply[0][1][:4]])

    trim()

    start = _oldest_redeliverable(client, DEVICE_EVENTS_STREAM)
    assert start == ids[4]
    assert ids_in(client) == ids[4:]  # pending ones and undelivered ones all there
    assert _last_id(client, DEVICE_EVENTS_STREAM) == ids[-1]
    lags = {g["name"].decode(): g["lag"] for g in client.xinfo_groups(DEVICE_EVENTS_STREAM)}
    assert lags == {FAST: 0, AGGREGATOR_GROUP: 3}

    client.xack(DEVICE_EVENTS_STREAM, AGGREGATOR_GROUP, *[i for i, _ in reply[0][1][4:]])
    consume(client, AGGREGATOR_GROUP, 10)
    trim()
    assert _last_id(client, DEVICE_EVENTS_STREAM) == ids[-1]
    assert split_id(_oldest_redeliverable(client, DEVICE_EVENTS_STREAM)) > split_id(ids[-1])


def test_the_trim_runs_on_a_redis_cluster(redis_cluster: LocalCluster) -> None:
    redis_cluster.flush()
    client = redis_for(redis_cluster.url, True)

    async def trim_on_cluster() -> dict[str, StreamTrim]:
        cluster = await open_redis(redis_cluster.url, cluster=True)
        try:
            return {t.stream: t for t in await trim_streams(cluster, CAP)}
        finally:
            await cluster.aclose()

    try:
        ids = publish(client, 5)
        consume(client, FAST, 5)
        assert asyncio.run(trim_on_cluster())[DEVICE_EVENTS_STREAM].trimmed == 4
        assert ids_in(client) == ids[-1:]
        assert trimmed_before(client, DEVICE_EVENTS_STREAM) == ids[-1]
    finally:
        client.close()
        redis_cluster.flush()
