"""Mqtt5Source (asyncio + the mqtt5 codec) against a hostile fake broker and a real Mosquitto.

Against the fake broker (tests/support/fake_broker.py), each hostile case must leave the
source running: it disconnects (with the reason code the case calls for), records why in
``last_error``, backs off, reconnects, and hands the message the broker delivers again to
the pipeline; a PUBACK reaches a connection only for what the pipeline acknowledged from
that very connection. Against Mosquitto on localhost:1883 (or a private one for TLS):
persistent sessions, acknowledgement after take(), Receive Maximum, the hand-back, keepalive.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import mqtt5
import pytest
import trustme

from ingest.handover import hand_back
from ingest.mqtt5_source import MAX_PACKET_BYTES, Mqtt5Source
from ingest.mqtt_source import SESSION_EXPIRY_SECONDS, InboundMessage, MqttSource, SourceOptions
from iotp.mqtt_url import BrokerAddress
from local_platform.broker import BrokerTls, free_port, local_mosquitto
from tests.support.fake_broker import FakeBroker, FakeConnection
from tests.support.ingest_harness import publish
from tests.support.waiting import wait_for

LOCAL_MOSQUITTO = BrokerAddress("127.0.0.1", 1883, False, None, None)


def source_options(**changes: Any) -> SourceOptions:
    options = SourceOptions(
        client_id=f"m5-test-{uuid.uuid4().hex[:10]}",
        protocol="5",
        shared=True,
        share_group="m5-test",
        receive_maximum=10,
        max_buffered_bytes=1024 * 1024,
        keepalive=30,
    )
    return replace(options, **changes)


@contextmanager
def running(source: Mqtt5Source) -> Iterator[Mqtt5Source]:
    source.start()
    try:
        yield source
    finally:
        source.close()


class Pipeline:
    """Takes and acknowledges like ingest's pipeline, and remembers what it acknowledged."""

    def __init__(self, source: Mqtt5Source) -> None:
        self.source = source
        self.taken: list[InboundMessage] = []
        self.acked: list[InboundMessage] = []

    def take(self, timeout: float = 0.3) -> list[InboundMessage]:
        stop = threading.Event()
        timer = threading.Timer(timeout, stop.set)
        timer.start()
        try:
            batch = self.source.take(100, 1024 * 1024, 0.01, stop)
        finally:
            timer.cancel()
        self.taken += batch
        return batch

    def run_until(self, done: Callable[[], object], timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                pytest.fail(f"not done within {timeout}s: {done}")
            batch = self.take(0.05)
            self.source.ack(batch)
            self.acked += batch

    def acked_ids(self, epoch: int) -> set[int]:
        return {m.mid for m in self.acked if m.epoch == epoch}


# --- a hostile or broken broker ----------------------------------------------------------


async def redelivers(connection: FakeConnection) -> None:
    """A good connection: the session is there, and message 1 comes again until PUBACKed."""
    await connection.handshake(session_present=True)
    connection.publish(1, b"m1", duplicate=True)
    await connection.expect(mqtt5.PubAckPacket)


def gated(gate: threading.Event, script: Callable[[FakeConnection], Any]) -> Any:
    """``script``, once ``gate`` is set (the test looks at the source in the meantime)."""

    async def run(connection: FakeConnection) -> None:
        await asyncio.to_thread(gate.wait, 20)
        await script(connection)

    return run


def hostile_case(first: Callable[[FakeConnection], Any], error: str) -> tuple[FakeBroker, Pipeline]:
    """Run ``first`` as the first connection and check what every hostile case must do."""
    gate = threading.Event()
    broker = FakeBroker(first, gated(gate, redelivers))
    with broker, running(Mqtt5Source(broker.address(), source_options())) as source:
        pipeline = Pipeline(source)
        # the source notices, says why, and backs off (the broker holds its second answer)
        pipeline.run_until(lambda: source.last_error and error in source.last_error)
        gate.set()
        # ... then reconnects: message 1, delivered again, reaches the pipeline and is acked
        pipeline.run_until(lambda: len(broker.connections) == 2 and broker.connections[1].pubacks)
        assert source.connected.is_set() and source.last_error is None
        assert [m.payload for m in pipeline.taken if m.epoch == 2] == [b"m1"]
    assert broker.errors == []
    one, two = broker.connections
    assert one.closed_at is not None and two.opened_at - one.closed_at >= 0.09  # backed off
    # a PUBACK only for what the pipeline acknowledged, on the connection that delivered it
    assert set(one.pubacks) <= pipeline.acked_ids(epoch=1)
    assert two.pubacks == [1] and 1 in pipeline.acked_ids(epoch=2)
    return broker, pipeline


def then(raw: bytes) -> Callable[[FakeConnection], Any]:
    """A first connection that delivers message 1, then sends ``raw``."""

    async def script(connection: FakeConnection) -> None:
        await connection.handshake()
        connection.publish(1, b"m1")
        connection.send(raw)

    return script


@pytest.mark.parametrize(
    ("raw", "reason", "error"),
    [
        pytest.param(
            b"\x30\xff\xff\xff\xff\x01", 0x81, "remaining length over 4 bytes", id="5-byte-length"
        ),
        pytest.param(
            mqtt5.PublishPacket("t", b"x", qos=mqtt5.QoS.AT_LEAST_ONCE, packet_id=0).write(),
            0x82,
            "QoS 1 PUBLISH with packet id 0",
            id="qos1-packet-id-0",
        ),
        pytest.param(
            b"\x32\xff\xff\xff\x7f\x00\x01t", 0x95, "a 268435460-byte packet", id="268-MB-header"
        ),
        pytest.param(b"\x00\x00", 0x82, "first byte 0x00", id="packet-type-0"),
        pytest.param(b"\xf1\x00", 0x82, "first byte 0xF1", id="auth-bad-flags"),
        pytest.param(b"\x40\x02\x00\x01", 0x82, "first byte 0x40", id="unasked-puback"),
        pytest.param(b"\x32\x03\x00\x05a", 0x81, "undecodable packet", id="undecodable"),
    ],
)
def test_a_bad_packet_ends_the_connection_with_its_reason(
    raw: bytes, reason: int, error: str
) -> None:
    broker, _ = hostile_case(then(raw), error)
    # A DISCONNECT with the reason, right away: the 268 MB one was refused from its header,
    # with nothing more than its first bytes ever received, let alone allocated.
    assert broker.connections[0].disconnect_reason == reason


def test_a_truncated_packet_then_a_closed_connection() -> None:
    async def truncated(connection: FakeConnection) -> None:
        await connection.handshake()
        connection.publish(1, b"m1")
        connection.send(
            mqtt5.PublishPacket("t", b"xyz", qos=mqtt5.QoS.AT_LEAST_ONCE, packet_id=2).write()[:-2]
        )
        await asyncio.sleep(0.1)
        connection.close()

    broker, pipeline = hostile_case(truncated, "the broker closed the connection")
    assert broker.connections[0].disconnect_reason is None
    assert b"xyz" not in [m.payload for m in pipeline.taken]


@pytest.mark.parametrize(
    ("code", "error"),
    [(0x8B, "0x8B server shutting down"), (0x8E, "0x8E session taken over")],
)
def test_a_server_disconnect_is_logged_with_its_reason(
    code: int, error: str, caplog: pytest.LogCaptureFixture
) -> None:
    reason = mqtt5.DisconnectReasonCode(code)
    caplog.set_level(logging.WARNING, logger="ingest.mqtt5_session")
    hostile_case(then(mqtt5.DisconnectPacket(reason_code=reason).write()), error)
    assert any(error in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize(
    ("code", "error"),
    [(0x86, "0x86 bad user name or password"), (0x87, "0x87 not authorized")],
)
def test_a_refused_connect_is_reported_and_retried(code: int, error: str) -> None:
    async def refuses(connection: FakeConnection) -> None:
        await connection.accept(reason_code=mqtt5.ConnAckReasonCode(code))
        connection.close()

    gate = threading.Event()
    broker = FakeBroker(refuses, gated(gate, redelivers))
    options = source_options(receive_maximum=77, keepalive=12)
    with broker, running(Mqtt5Source(broker.address("ingest", "s3cret"), options)) as source:
        wait_for(lambda: source.last_error and error in source.last_error)
        assert not source.connected.is_set()
        gate.set()
        pipeline = Pipeline(source)
        pipeline.run_until(lambda: len(broker.connections) == 2 and broker.connections[1].pubacks)
        assert source.last_error is None
        # a refused connection is no epoch: the first accepted one is epoch 1
        assert [m.payload for m in pipeline.acked if m.epoch == 1] == [b"m1"]
    first, second = broker.connections
    assert first.closed_at is not None and second.opened_at - first.closed_at >= 0.09
    connect = first.packets[0]
    assert isinstance(connect, mqtt5.ConnectPacket)
    assert (connect.username, connect.password) == ("ingest", b"s3cret")
    assert connect.client_id == options.client_id and not connect.clean_start
    assert connect.session_expiry_interval == SESSION_EXPIRY_SECONDS
    assert (connect.receive_max, connect.keep_alive) == (77, 12)
    # a message larger than the read-ahead is still taken (to be dead-lettered if too large)
    assert connect.max_packet_size == MAX_PACKET_BYTES > options.max_buffered_bytes


def test_a_silent_broker_is_taken_for_dead_after_its_own_keepalive() -> None:
    async def silent(connection: FakeConnection) -> None:
        await connection.handshake(server_keep_alive=1)  # ours is 30: the broker's wins
        await connection.expect(mqtt5.PingReqPacket)  # and never answered

    broker = FakeBroker(silent, redelivers)
    with broker, running(Mqtt5Source(broker.address(), source_options())) as source:
        Pipeline(source).run_until(
            lambda: len(broker.connections) == 2 and broker.connections[1].pubacks
        )
    first = broker.connections[0]
    assert first.closed_at is not None
    assert 1.4 <= first.closed_at - first.opened_at <= 3.0  # 1.5 x the broker's keepalive


def test_reading_stops_while_more_than_the_receive_maximum_wait_for_our_acks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A broker that sends past our Receive Maximum (Mosquitto 2.0 does, once PUBACKs flow)
    is not read from until the pipeline has acknowledged enough: what ingest holds stays
    bounded by the Receive Maximum, however large the backlog, and nothing is lost."""

    async def overshoots(connection: FakeConnection) -> None:
        await connection.handshake()
        for packet_id in range(1, 31):  # one at a time: each its own read on our side
            connection.publish(packet_id, b"m%d" % packet_id)
            await connection._writer.drain()
            await asyncio.sleep(0.02)
        await connection.until_closed()

    broker = FakeBroker(overshoots)
    with (
        broker,
        running(Mqtt5Source(broker.address(), source_options(receive_maximum=5))) as source,
    ):
        wait_for(lambda: source.delivered >= 5)
        time.sleep(1.0)  # the broker has sent all 30 by now
        assert 6 <= source.delivered <= 8  # the Receive Maximum, and the read that passed it
        pipeline = Pipeline(source)
        pipeline.run_until(lambda: len(pipeline.acked) >= 30)
        wait_for(lambda: len(broker.connections[0].pubacks) == 30)
    assert sorted(pipeline.acked_ids(1)) == list(range(1, 31))
    assert broker.connections[0].pubacks == list(range(1, 31))
    assert len(broker.connections) == 1  # paused, not disconnected


def test_pubacks_go_out_only_when_the_pipeline_acks_them_in_one_write() -> None:
    async def three(connection: FakeConnection) -> None:
        await connection.handshake()
        for packet_id in (5, 6, 7):
            connection.publish(packet_id, b"m%d" % packet_id)

    broker = FakeBroker(three)
    with broker, running(Mqtt5Source(broker.address(), source_options())) as source:
        wait_for(lambda: source.pending() == 3)
        pipeline = Pipeline(source)
        batch = pipeline.take()
        time.sleep(0.3)
        assert broker.connections[0].pubacks == []  # taken, not yet stored: no PUBACK
        source.ack(batch)
        wait_for(lambda: broker.connections[0].pubacks == [5, 6, 7])


def test_a_batch_gathers_for_more_only_while_messages_wait() -> None:
    """Below ``gather_from`` waiting messages a batch is what is here, taken at once (no
    delay at a moderate rate); from it on, the batch waits up to the delay for more."""
    more = threading.Event()

    async def trickle_then_busy(connection: FakeConnection) -> None:
        await connection.handshake()
        connection.publish(1, b"m1")
        await asyncio.to_thread(more.wait, 20)
        for packet_id in range(2, 6):
            connection.publish(packet_id, b"m%d" % packet_id)
        await asyncio.sleep(0.3)
        connection.publish(6, b"m6")

    broker = FakeBroker(trickle_then_busy)
    with broker, running(Mqtt5Source(broker.address(), source_options())) as source:
        stop = threading.Event()
        wait_for(lambda: source.pending() == 1)
        started = time.monotonic()
        first = source.take(100, 1 << 20, 5.0, stop, gather_from=3)
        assert [m.payload for m in first] == [b"m1"]
        assert time.monotonic() - started < 1.0  # not the 5 s delay
        more.set()
        wait_for(lambda: source.pending() == 4)
        started = time.monotonic()
        busy = source.take(100, 1 << 20, 1.0, stop, gather_from=3)
        waited = time.monotonic() - started
    assert [m.payload for m in busy] == [b"m2", b"m3", b"m4", b"m5", b"m6"]
    assert 0.9 <= waited < 3.0  # it waited out the delay for the sixth and any more


def test_a_quiet_batch_lingers_for_what_arrives_next() -> None:
    """Below ``gather_from`` waiting messages, a batch still waits up to ``linger`` for
    more; it ends as soon as it is full."""

    async def two_apart(connection: FakeConnection) -> None:
        await connection.handshake()
        connection.publish(1, b"m1")
        await asyncio.sleep(0.3)
        connection.publish(2, b"m2")
        connection.publish(3, b"m3")

    broker = FakeBroker(two_apart)
    with broker, running(Mqtt5Source(broker.address(), source_options())) as source:
        stop = threading.Event()
        wait_for(lambda: source.pending() == 1)
        started = time.monotonic()
        batch = source.take(2, 1 << 20, 30.0, stop, gather_from=3, linger=10.0)
        waited = time.monotonic() - started
        rest = source.take(100, 1 << 20, 30.0, stop, gather_from=3)
    assert [m.payload for m in batch] == [b"m1", b"m2"]  # m2 came 0.3 s later
    assert 0.2 <= waited < 5.0  # full at two: neither the linger nor the delay waited out
    assert [m.payload for m in rest] == [b"m3"]


def test_an_ack_of_an_earlier_connection_never_reaches_the_next_one() -> None:
    gate = threading.Event()

    async def then_gone(connection: FakeConnection) -> None:
        await connection.handshake()
        connection.publish(1, b"m1")
        await asyncio.to_thread(gate.wait, 20)
        connection.send(mqtt5.DisconnectPacket().write())

    async def reuses_the_id(connection: FakeConnection) -> None:
        await connection.handshake(session_present=True)
        connection.publish(1, b"another message")  # packet id 1 means something else now

    broker = FakeBroker(then_gone, reuses_the_id)
    with broker, running(Mqtt5Source(broker.address(), source_options())) as source:
        pipeline = Pipeline(source)
        (old,) = pipeline.take()
        gate.set()
        wait_for(lambda: source.pending() == 1)  # from the second connection
        source.ack([old])  # stored late: the broker redelivers it (here it did not bother)
        time.sleep(0.3)
        assert broker.connections[1].pubacks == []
        (new,) = pipeline.take()
        assert (new.payload, new.mid) == (b"another message", 1)
        source.ack([new])
        wait_for(lambda: broker.connections[1].pubacks == [1])
    assert broker.connections[0].pubacks == []


def test_reading_pauses_past_max_buffered_bytes_and_resumes_when_taken() -> None:
    async def floods(connection: FakeConnection) -> None:
        await connection.handshake()
        for packet_id in range(1, 41):  # 40 x 50 kB: twice the bound
            connection.publish(packet_id, bytes(50_000))

    broker = FakeBroker(floods)
    options = source_options(receive_maximum=100)
    with broker, running(Mqtt5Source(broker.address(), options)) as source:
        wait_for(lambda: source.pending() >= 20)
        time.sleep(0.5)
        assert 20 <= source.pending() < 30  # reading paused just past 1 MiB
        pipeline = Pipeline(source)
        pipeline.run_until(lambda: len(pipeline.acked) == 40)
        wait_for(lambda: len(broker.connections[0].pubacks) == 40)
    assert len(broker.connections) == 1  # paused, never taken for dead or disconnected


# --- a real Mosquitto ------------------------------------------------------------------


def unique_source(uid: str, **changes: Any) -> Mqtt5Source:
    """A source for localhost:1883 that takes only this test's topic, m5t/<uid>/+."""
    options = source_options(client_id=f"m5-test-{uid}", share_group=f"g-{uid}", **changes)
    source = Mqtt5Source(LOCAL_MOSQUITTO, options)
    source.topic = f"$share/g-{uid}/m5t/{uid}/+"
    return source


def messages(uid: str, start: int, count: int) -> list[tuple[str, bytes]]:
    return [(f"m5t/{uid}/d", b"%d" % n) for n in range(start, start + count)]


def ended(source: Mqtt5Source) -> bool:
    """Take and ack what is left, hand the share back and end the session (the cleanup)."""
    Pipeline(source).run_until(lambda: not source.pending(), timeout=5)
    if not hand_back(source, time.monotonic() + 5, lambda: False):
        return False
    return source.close(end_session=True)


@pytest.fixture
def uid() -> str:
    return uuid.uuid4().hex[:10]


def test_a_persistent_session_resumes_with_what_was_published_meanwhile(uid: str) -> None:
    first = unique_source(uid)
    first.start()
    assert first.connected.wait(5), first.last_error
    assert first.session_present is False
    assert first.close() is False  # the session stays
    publish("mqtt://127.0.0.1:1883", messages(uid, 0, 20))
    second = unique_source(uid)
    second.start()
    assert second.connected.wait(5), second.last_error
    assert second.session_present is True
    pipeline = Pipeline(second)
    pipeline.run_until(lambda: len(pipeline.acked) >= 20)
    assert sorted(int(m.payload) for m in pipeline.acked) == list(range(20))
    assert ended(second)


@pytest.mark.parametrize("kind", [Mqtt5Source, MqttSource], ids=["mqtt5", "paho"])
def test_a_resumed_backlog_larger_than_the_buffer_is_ready_and_drained(
    uid: str, kind: type[Mqtt5Source] | type[MqttSource]
) -> None:
    """The SUBACK comes after the session's backlog: with more queued than max_buffered_bytes
    reading pauses before it, so readiness cannot wait for it (ingest would give up, its
    pipeline never started). Ready at the CONNACK of a resumed session instead."""

    def resumed() -> Any:
        options = source_options(
            client_id=f"m5-test-{uid}",
            share_group=f"g-{uid}",
            max_buffered_bytes=64 * 1024,
            receive_maximum=1000,
        )
        source = kind(LOCAL_MOSQUITTO, options)
        source.topic = f"$share/g-{uid}/m5t/{uid}/+"
        return source

    first = resumed()
    first.start()
    assert first.connected.wait(5), first.last_error
    assert first.close() is False
    payload = bytes(4096)
    publish("mqtt://127.0.0.1:1883", [(f"m5t/{uid}/d", payload)] * 200)  # 800 kB queued
    second = resumed()
    second.start()
    assert second.connected.wait(5), second.last_error
    assert second.session_present is True
    pipeline = Pipeline(second)
    pipeline.run_until(lambda: len(pipeline.acked) >= 200)
    assert len(pipeline.acked) == 200
    assert ended(second)


def test_what_is_not_acknowledged_comes_back_and_nothing_else(uid: str) -> None:
    first = unique_source(uid)
    first.start()
    assert first.connected.wait(5)
    publish("mqtt://127.0.0.1:1883", messages(uid, 0, 6))
    pipeline = Pipeline(first)
    wait_for(lambda: first.pending() == 6)
    batch = pipeline.take()
    assert len(batch) == 6
    first.ack(batch[:3])  # "stored" the first three only
    assert first.close(end_session=True) is False  # three unacknowledged: the session stays

    second = unique_source(uid)
    second.start()
    assert second.connected.wait(5)
    again = Pipeline(second)
    again.run_until(lambda: len(again.acked) >= 3)
    time.sleep(0.3)
    again.run_until(lambda: not second.pending())
    assert sorted(m.payload for m in again.acked) == [m.payload for m in batch[3:]]
    assert ended(second)

    third = unique_source(uid)
    with running(third):
        assert third.connected.wait(5)
        assert third.session_present is False  # the hand-back ended it
        time.sleep(0.3)
        assert third.delivered == 0
        assert ended(third)


def test_the_receive_maximum_bounds_what_the_broker_sends_before_acks(uid: str) -> None:
    source = unique_source(uid, receive_maximum=5)
    source.start()
    assert source.connected.wait(5)
    publish("mqtt://127.0.0.1:1883", messages(uid, 0, 12))
    wait_for(lambda: source.delivered >= 5)
    time.sleep(0.5)
    assert source.delivered == 5  # in flight, unacknowledged: no more
    pipeline = Pipeline(source)
    pipeline.run_until(lambda: len(pipeline.acked) >= 12)
    assert sorted(int(m.payload) for m in pipeline.acked) == list(range(12))
    assert ended(source)


def test_a_hand_back_stores_what_the_session_held_then_ends_it(uid: str) -> None:
    source = unique_source(uid, receive_maximum=20)
    source.start()
    assert source.connected.wait(5)
    publish("mqtt://127.0.0.1:1883", messages(uid, 0, 200))
    pipeline = Pipeline(source)
    stop = threading.Event()

    def pipeline_thread() -> None:
        while not stop.is_set():
            batch = pipeline.take(0.05)
            source.ack(batch)
            pipeline.acked += batch

    taker = threading.Thread(target=pipeline_thread)
    taker.start()
    try:
        assert hand_back(source, time.monotonic() + 20, lambda: False)
    finally:
        stop.set()
        taker.join()
    assert sorted(int(m.payload) for m in pipeline.acked) == list(range(200))
    assert source.close(end_session=True) is True
    publish("mqtt://127.0.0.1:1883", messages(uid, 200, 3))  # nobody's any more
    after = unique_source(uid)
    with running(after):
        assert after.connected.wait(5)
        assert after.session_present is False
        time.sleep(0.3)
        assert after.delivered == 0
        assert ended(after)


def test_keepalive_pings_keep_an_idle_connection(
    uid: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ingest.mqtt5_source")
    source = unique_source(uid, keepalive=1)
    source.start()
    assert source.connected.wait(5)
    time.sleep(4)  # Mosquitto drops a client silent for 1.5 s
    session = source._session
    assert session is not None and session.pingresps >= 2
    connects = [r for r in caplog.records if r.getMessage().startswith("connected to")]
    assert len(connects) == 1
    publish("mqtt://127.0.0.1:1883", messages(uid, 0, 1))
    pipeline = Pipeline(source)
    pipeline.run_until(lambda: pipeline.acked)
    assert ended(source)


def test_more_filters_can_be_subscribed_while_running(uid: str) -> None:
    source = unique_source(uid)
    source.start()
    assert source.connected.wait(5)
    assert source.add_subscription(f"m5t-extra/{uid}/+", timeout=5)
    publish("mqtt://127.0.0.1:1883", [(f"m5t-extra/{uid}/d", b"extra"), *messages(uid, 0, 1)])
    pipeline = Pipeline(source)
    pipeline.run_until(lambda: len(pipeline.acked) >= 2)
    assert sorted(m.topic for m in pipeline.acked) == [f"m5t-extra/{uid}/d", f"m5t/{uid}/d"]
    assert ended(source)


# --- TLS ---------------------------------------------------------------------------------


def test_tls_verifies_the_broker_with_the_configured_ca(tmp_path: Path) -> None:
    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    ca.cert_pem.write_to_path(str(tmp_path / "ca.crt"))
    for n, pem in enumerate(server.cert_chain_pems):
        pem.write_to_path(str(tmp_path / "server.crt"), append=n > 0)
    server.private_key_pem.write_to_path(str(tmp_path / "server.key"))
    tls = BrokerTls(
        free_port(), tmp_path / "ca.crt", tmp_path / "server.crt", tmp_path / "server.key"
    )
    address = BrokerAddress("localhost", tls.port, True, None, None)
    with local_mosquitto(tmp_path / "broker", tls=tls) as broker:
        trusting = ssl.create_default_context(cafile=str(tls.ca_file))
        source = Mqtt5Source(address, source_options(tls=trusting))
        with running(source):
            assert source.connected.wait(10), source.last_error
            publish(broker.url, [("devices/tls/telemetry", b"over tls")])
            pipeline = Pipeline(source)
            pipeline.run_until(lambda: pipeline.acked)
            assert pipeline.acked[0].payload == b"over tls"

        untrusting = ssl.create_default_context(cafile=None)
        stranger = Mqtt5Source(address, source_options(tls=untrusting))
        with running(stranger):
            wait_for(
                lambda: stranger.last_error and "CERTIFICATE_VERIFY_FAILED" in stranger.last_error
            )
            assert not stranger.connected.is_set()
