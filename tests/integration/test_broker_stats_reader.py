"""The $SYS reader's connection (ingest/broker_stats.py): with MQTT 5 a second connection of
ingest's asyncio session, with 3.1.1 paho; non-persistent, QoS 0, never fatal.

Against a private Mosquitto (``sys_interval 1``) real $SYS values reach Redis and the gauges
over either protocol, and the broker keeps no session for the reader. Against the fake
broker (tests/support/fake_broker.py) a refused CONNECT, a bad remaining length, a truncated
packet, a server DISCONNECT and nonsense values each end at most that connection: the reader
backs off, reconnects, and the next broker's values arrive.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mqtt5
import pytest
import redis
from prometheus_client import CollectorRegistry

from ingest.broker_stats import BrokerStats, BrokerStatsOptions
from ingest.mqtt5_session import ConnectOptions, Mqtt5Session
from iotp.mqtt_url import BrokerAddress, parse_mqtt_url
from iotp.names import BROKER_STATS_KEY, BROKER_SYS_TOPICS
from tests.support.broker import private_mosquitto
from tests.support.fake_broker import FakeBroker, FakeConnection
from tests.support.waiting import wait_for

UPTIME = "$SYS/broker/uptime"
DROPPED = "$SYS/broker/publish/messages/dropped"
GRANT_QOS_0 = mqtt5.SubAckReasonCode.GRANTED_QOS_AT_MOST_ONCE


@contextmanager
def reading(
    broker: BrokerAddress, client: redis.Redis, protocol: str = "5"
) -> Iterator[tuple[BrokerStats, CollectorRegistry]]:
    registry = CollectorRegistry()
    options = BrokerStatsOptions(f"stats-test-{uuid.uuid4().hex[:8]}", protocol, keepalive=30)
    stats = BrokerStats(broker, options, client, registry)
    stats.start()
    try:
        yield stats, registry
    finally:
        stats.close()


def stored(client: redis.Redis) -> dict[str, Any]:
    values: Any = client.hgetall(BROKER_STATS_KEY)
    return dict(values)


def thread_named(name: str) -> bool:
    return any(thread.name.startswith(name) for thread in threading.enumerate())


def session_kept(broker: BrokerAddress, client_id: str) -> bool:
    """Whether the broker holds a session for ``client_id`` (asked without keeping one)."""

    async def ask() -> bool:
        options = ConnectOptions(client_id, 30, 10, 65_536, session_expiry=0, clean_start=False)
        session = Mqtt5Session(options, lambda connack: None, lambda packets, at: None)
        async with asyncio.timeout(10):
            connack = await session.connect(broker.host, broker.port, None)
        session.disconnect()
        return bool(connack.session_present)

    return asyncio.run(ask())


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_mosquitto_sys_values_arrive_and_keep_coming(
    protocol: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    reader_thread = "iotp-broker-stats-mqtt5" if protocol == "5" else "paho-mqtt-client-"
    with private_mosquitto(tmp_path / "broker", "sys_interval 1\n") as url:
        broker = parse_mqtt_url(url)
        with reading(broker, redis_client, protocol) as (stats, registry):
            wait_for(lambda: "uptime_seconds" in stored(redis_client), timeout=15)
            first = int(stored(redis_client)["uptime_seconds"])
            # every sys_interval, not just the retained values sent at subscribing
            wait_for(lambda: int(stored(redis_client)["uptime_seconds"]) > first, timeout=10)
            assert thread_named(reader_thread)
        assert not thread_named(reader_thread)
        # clean start and no session expiry: nothing of the reader stays at the broker
        assert not session_kept(broker, stats.options.client_id)
    values = stored(redis_client)
    assert values["messages_dropped"] == "0" and int(values["clients_connected"]) >= 1
    assert "mosquitto" in values["version"] and values["error"] == ""
    assert float(values["updated_at"]) > 0
    assert (registry.get_sample_value("iotp_broker_uptime_seconds") or 0) > first


async def refuses(connection: FakeConnection) -> None:
    await connection.accept(reason_code=mqtt5.ConnAckReasonCode.NOT_AUTHORIZED)
    connection.close()


async def bad_remaining_length(connection: FakeConnection) -> None:
    await connection.handshake(grant=GRANT_QOS_0)
    connection.publish_on(UPTIME, b"5 seconds")
    connection.send(b"\x30\xff\xff\xff\xff\x01")


async def truncated(connection: FakeConnection) -> None:
    await connection.handshake(grant=GRANT_QOS_0)
    connection.send(mqtt5.PublishPacket(UPTIME, b"6 seconds").write()[:-3])
    await asyncio.sleep(0.1)
    connection.close()


async def disconnects(connection: FakeConnection) -> None:
    await connection.handshake(grant=GRANT_QOS_0)
    reason = mqtt5.DisconnectReasonCode.SERVER_BUSY
    connection.send(mqtt5.DisconnectPacket(reason_code=reason).write())


async def answers(connection: FakeConnection) -> None:
    await connection.handshake(grant=GRANT_QOS_0)
    connection.publish_on(DROPPED, b"inf")  # nonsense: logged and skipped
    connection.publish_on(UPTIME, b"9 seconds", packet_id=7)  # QoS 1 though we asked for 0
    connection.publish_on(DROPPED, b"3")


def test_a_misbehaving_broker_costs_a_connection_never_the_reader(
    redis_client: redis.Redis,
) -> None:
    gate = threading.Event()

    async def after_the_gate(connection: FakeConnection) -> None:
        await asyncio.to_thread(gate.wait, 20)
        await bad_remaining_length(connection)

    fake = FakeBroker(refuses, after_the_gate, truncated, disconnects, answers)
    with fake:
        address = fake.address("iotp-ingest", "s3cret")
        with reading(address, redis_client) as (stats, registry):
            wait_for(lambda: "refused the connection: 0x87" in stats.values.get("error", ""))
            assert "iotp-ingest cannot read $SYS/broker/#" in stats.values["error"]
            gate.set()
            wait_for(lambda: stored(redis_client).get("uptime_seconds") == "9", timeout=20)
            wait_for(lambda: stored(redis_client).get("messages_dropped") == "3")
            assert thread_named("iotp-broker-stats-mqtt5")
            assert len(fake.connections) == 5
        # The reader's goodbye is on the wire when close() returns; the fake broker reads it
        # on its own loop, which a loaded machine may run a moment later.
        wait_for(lambda: fake.connections[-1].disconnect_reason is not None, timeout=5)
    assert fake.errors == []
    assert registry.get_sample_value("iotp_broker_messages_dropped") == 3
    assert stored(redis_client)["error"] == ""
    _refused, bad, cut, told, good = fake.connections
    # each broken connection ended, and the next one came after a back-off
    for before, after in zip(fake.connections, fake.connections[1:], strict=False):
        assert before.closed_at is not None and after.opened_at - before.closed_at >= 0.09
    assert bad.disconnect_reason == 0x81  # malformed packet: the remaining length
    assert cut.disconnect_reason is None and told.disconnect_reason is None
    assert good.pubacks == [7] and good.disconnect_reason == 0  # closed with a goodbye
    for connection in fake.connections:
        connect = connection.packets[0]
        assert isinstance(connect, mqtt5.ConnectPacket)
        assert connect.clean_start and not connect.session_expiry_interval
        assert (connect.username, connect.password) == ("iotp-ingest", b"s3cret")
        assert connect.client_id == stats.options.client_id
    subscribe = next(p for p in good.packets if isinstance(p, mqtt5.SubscribePacket))
    [topic] = subscribe.topic_filters
    assert topic.pattern == BROKER_SYS_TOPICS and topic.max_qos == mqtt5.QoS.AT_MOST_ONCE


def test_closing_while_the_broker_has_not_answered_returns_at_once(
    redis_client: redis.Redis,
) -> None:
    async def mute(connection: FakeConnection) -> None:
        await connection.expect(mqtt5.ConnectPacket)  # and no CONNACK, ever

    fake = FakeBroker(mute)
    with fake:
        with reading(fake.address(), redis_client):
            wait_for(lambda: fake.connections and fake.connections[0].packets)
            closing = time.monotonic()
        assert time.monotonic() - closing < 2
        assert not thread_named("iotp-broker-stats-mqtt5")
    assert fake.errors == []
