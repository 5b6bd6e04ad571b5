"""Scaling `iotp ingest` up and down against real Mosquitto: nothing parked, nothing lost.

With a persistent session per instance in a shared subscription, the broker keeps dealing
messages to a stopped instance's session. These tests stop, restart, replace and crash
instances while readings arrive, and check that every reading is stored exactly once
without waiting for an instance that does not come back.
"""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter
from typing import Any

import orjson
import paho.mqtt.client as mqtt
import redis
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ingest.presence import Presence, SessionRecord
from iotp.mqtt_url import parse_mqtt_url
from iotp.names import INGEST_HEARTBEATS_KEY, INGEST_SESSIONS_KEY
from iotp.redis_client import ingest_sessions
from tests.support.ingest_harness import (
    event_readings,
    expected_keys,
    publish,
    single_messages,
    stored,
    stored_count,
    telemetry_events,
    wait_stored,
)
from tests.support.platform import Platform
from tests.support.processes import ServiceProcess
from tests.support.waiting import wait_for

PROMPTLY = 30.0  # seconds: far less than "until the stopped instance returns" (never)


def live(process: ServiceProcess) -> ServiceProcess:
    """``process`` once its heartbeat says it is live in its share group."""
    process.wait_for("live in share group", timeout=30)
    return process


def client_id(instance: str) -> str:
    return f"iotp-ingest-{socket.gethostname()}-{instance}"


def session_present(mqtt_url: str, instance: str) -> bool:
    """Whether the broker still holds the session of ``instance`` (and ends it if so)."""
    broker = parse_mqtt_url(mqtt_url)
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=client_id(instance), protocol=mqtt.MQTTv5
    )
    answer: list[bool] = []
    client.on_connect = lambda c, u, flags, reason, p: answer.append(flags.session_present)
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    properties.SessionExpiryInterval = 0
    client.connect(broker.host, broker.port, clean_start=False, properties=properties)
    client.loop_start()
    try:
        wait_for(lambda: answer, timeout=10)
    finally:
        client.disconnect()
        client.loop_stop()
    return answer[0]


def status(platform: Platform) -> dict[str, Any]:
    result = platform.run("status", "--json", timeout=30)
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = orjson.loads(result.stdout)
    return report


def disconnected_sessions(platform: Platform) -> list[str]:
    return [s["client_id"] for s in status(platform)["disconnected_ingest_sessions"]]


def assert_exactly_once(platform: Platform, expected: set[Any]) -> None:
    rows = stored(platform.db)
    assert set(rows) == expected and max(rows.values()) == 1
    wait_for(lambda: set(event_readings(telemetry_events(platform.redis))) >= expected, timeout=30)
    # An event may be published twice (republished from the ledger), but then as itself.
    by_id: dict[Any, Any] = {}
    for event in telemetry_events(platform.redis):
        assert by_id.setdefault(event.event_id, event) == event
    assert event_readings(by_id.values()) == Counter(expected)


class ContinuousPublisher(threading.Thread):
    """Publishes readings of ``devices`` in small rounds until stopped; counts the rounds."""

    def __init__(self, mqtt_url: str, devices: list[str], per_round: int = 25) -> None:
        super().__init__(daemon=True)
        self.mqtt_url, self.devices, self.per_round = mqtt_url, devices, per_round
        self.rounds = 0
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            start = self.rounds * self.per_round
            messages = [m for d in self.devices for m in single_messages(d, start, self.per_round)]
            publish(self.mqtt_url, messages)
            self.rounds += 1
            time.sleep(0.05)

    def finish(self) -> set[Any]:
        """Stop after the current round; the readings published in all."""
        self.halt.set()
        self.join(timeout=60)
        total = self.rounds * self.per_round
        return set().union(*(expected_keys(d, 0, total) for d in self.devices))


def test_stopping_one_of_two_hands_its_share_to_the_other(platform: Platform) -> None:
    devices = [f"down{n}" for n in range(4)]
    platform.register(*devices)
    first, second = live(platform.ingest("a")), live(platform.ingest("b"))
    publish(platform.mqtt_url, [m for d in devices for m in single_messages(d, 0, 100)])
    wait_stored(platform, 4 * 100 * 3)

    assert first.stop() == 0
    assert "handed its share back" in first.output()
    publish(platform.mqtt_url, [m for d in devices for m in single_messages(d, 100, 500)])

    expected = set().union(*(expected_keys(d, 0, 600) for d in devices))
    wait_stored(platform, len(expected), timeout=PROMPTLY)
    assert_exactly_once(platform, expected)
    assert not session_present(platform.mqtt_url, "a")
    assert second.stop() == 0


def test_a_hand_back_under_load_empties_the_session_before_ending_it(
    platform: Platform,
) -> None:
    devices = [f"busy{n}" for n in range(8)]
    platform.register(*devices)
    # Small batches make the first instance slow, so that its session holds a backlog.
    first = live(platform.ingest("a", ingest_batch_max_messages="10"))
    second = live(platform.ingest("b"))
    messages = [m for d in devices for m in single_messages(d, 0, 1000)]
    publisher = threading.Thread(target=publish, args=(platform.mqtt_url, messages))
    publisher.start()
    wait_for(lambda: stored_count(platform.db) > 3000, timeout=30, interval=0.01)
    assert first.stop() == 0
    publisher.join(timeout=120)

    expected = set().union(*(expected_keys(d, 0, 1000) for d in devices))
    wait_stored(platform, len(expected), timeout=PROMPTLY)
    assert_exactly_once(platform, expected)
    assert "emptied the session" in first.output()
    assert "handed its share back" in first.output()
    assert not session_present(platform.mqtt_url, "a")
    assert second.stop() == 0


def test_a_hand_back_cut_short_keeps_the_session_for_retire(platform: Platform) -> None:
    devices = [f"cut{n}" for n in range(8)]
    platform.register(*devices)
    first = live(
        platform.ingest("a", ingest_batch_max_messages="1", ingest_handover_seconds="0.001")
    )
    second = live(platform.ingest("b"))
    messages = [m for d in devices for m in single_messages(d, 0, 750)]
    publisher = threading.Thread(target=publish, args=(platform.mqtt_url, messages))
    publisher.start()
    wait_for(lambda: stored_count(platform.db) > 3000, timeout=30, interval=0.01)
    assert first.stop() == 0
    assert "keeping it" in first.output() and "handed its share back" not in first.output()
    publisher.join(timeout=120)
    assert disconnected_sessions(platform) == [client_id("a")]

    retired = platform.run("ingest", "--retire", "a", timeout=120)
    assert retired.returncode == 0, retired.stdout + retired.stderr
    assert "stored the" in retired.stdout
    expected = set().union(*(expected_keys(d, 0, 750) for d in devices))
    wait_stored(platform, len(expected), timeout=PROMPTLY)
    assert_exactly_once(platform, expected)
    assert disconnected_sessions(platform) == []
    assert second.stop() == 0


def test_a_lone_instance_keeps_its_session_across_a_restart(platform: Platform) -> None:
    platform.register("solo")
    ingest = live(platform.ingest("solo"))
    publish(platform.mqtt_url, single_messages("solo", 0, 200))
    wait_stored(platform, 600)

    assert ingest.stop() == 0
    assert "last live instance" in ingest.output()
    publish(platform.mqtt_url, single_messages("solo", 200, 1000))
    time.sleep(1)
    assert stored_count(platform.db) == 600, "nobody ingests while it is down"
    (session,) = status(platform)["disconnected_ingest_sessions"]
    assert session["client_id"] == client_id("solo") and session["instance"] == "solo"
    assert session["connected"] is False and session["stopped_at"]

    ingest = live(platform.ingest("solo"))
    wait_stored(platform, 1200 * 3, timeout=PROMPTLY)
    assert_exactly_once(platform, expected_keys("solo", 0, 1200))
    assert disconnected_sessions(platform) == []
    assert ingest.stop() == 0


def test_rolling_replacement_while_publishing_parks_nothing(platform: Platform) -> None:
    devices = [f"roll{n}" for n in range(4)]
    platform.register(*devices)
    first, second = live(platform.ingest("a")), live(platform.ingest("b"))
    publisher = ContinuousPublisher(platform.mqtt_url, devices)
    publisher.start()
    wait_for(lambda: stored_count(platform.db) > 600, timeout=30)

    # Each instance is replaced by one with a new id: anything parked in the session of a
    # replaced instance would never be delivered.
    assert first.stop() == 0
    third = live(platform.ingest("c"))
    time.sleep(0.5)
    assert second.stop() == 0
    fourth = live(platform.ingest("d"))
    time.sleep(0.5)
    assert third.stop() == 0
    expected = publisher.finish()

    wait_stored(platform, len(expected), timeout=PROMPTLY)
    assert_exactly_once(platform, expected)
    for instance in ("a", "b", "c"):
        log = platform.tmp / f"ingest-{instance}.log"
        assert "handed its share back" in log.read_text()
        assert not session_present(platform.mqtt_url, instance)
    assert fourth.stop() == 0
    assert "last live instance" in fourth.output()


def test_two_instances_stopped_together_keep_one_session(platform: Platform) -> None:
    devices = [f"pair{n}" for n in range(2)]
    platform.register(*devices)
    first, second = live(platform.ingest("a")), live(platform.ingest("b"))
    platform.stop_children()  # SIGTERM to both at once
    assert (first.returncode, second.returncode) == (0, 0)
    outputs = first.output() + second.output()
    assert outputs.count("last live instance") == 1
    assert outputs.count("handed its share back") == 1

    publish(platform.mqtt_url, [m for d in devices for m in single_messages(d, 0, 300)])
    keeper = "a" if "last live instance" in first.output() else "b"
    assert disconnected_sessions(platform) == [client_id(keeper)]
    returned = live(platform.ingest(keeper))
    expected = set().union(*(expected_keys(d, 0, 300) for d in devices))
    wait_stored(platform, len(expected), timeout=PROMPTLY)
    assert_exactly_once(platform, expected)
    assert returned.stop() == 0


def test_retire_stores_what_a_crashed_instance_parked_and_ends_its_session(
    platform: Platform,
) -> None:
    devices = [f"gone{n}" for n in range(4)]
    platform.register(*devices)
    crashed, survivor = live(platform.ingest("a")), live(platform.ingest("b"))
    publish(platform.mqtt_url, [m for d in devices for m in single_messages(d, 0, 100)])
    wait_stored(platform, 4 * 100 * 3)
    crashed.kill()
    publish(platform.mqtt_url, [m for d in devices for m in single_messages(d, 100, 500)])
    expected = set().union(*(expected_keys(d, 0, 600) for d in devices))
    time.sleep(2)
    assert stored_count(platform.db) < len(expected), "the crashed instance's share is parked"

    wait_for(lambda: disconnected_sessions(platform) == [client_id("a")], timeout=30)
    refused = platform.run("ingest", "--retire", "b", timeout=60)
    assert refused.returncode == 2 and "is connected" in refused.stderr, refused.stderr

    retired = platform.run("ingest", "--retire", "a", timeout=120)
    assert retired.returncode == 0, retired.stdout + retired.stderr
    assert f"retired {client_id('a')}" in retired.stdout

    wait_stored(platform, len(expected), timeout=PROMPTLY)
    assert_exactly_once(platform, expected)
    assert disconnected_sessions(platform) == []
    assert not session_present(platform.mqtt_url, "a")
    assert survivor.stop() == 0


def test_mqtt_311_instances_keep_their_sessions(platform: Platform) -> None:
    platform.register("old")
    legacy = {"mqtt_protocol": "3.1.1", "ingest_shared_subscription": "false"}
    first = live(platform.ingest("a", **legacy))
    second = live(platform.ingest("b", **legacy))
    assert first.stop() == 0 and "handed its share back" not in first.output()
    publish(platform.mqtt_url, single_messages("old", 0, 50))
    wait_stored(platform, 150)
    assert second.stop() == 0
    assert sorted(disconnected_sessions(platform)) == [client_id("a"), client_id("b")]


def roll_member(client: redis.Redis, name: str, group: str = "g", beating: bool = True) -> Presence:
    record = SessionRecord(f"iotp-ingest-h-{name}", name, "h", group, "5", 3600)
    presence = Presence(client, record, live_seconds=5)
    presence.join(lambda: beating, threading.Event())
    return presence


def test_of_instances_leaving_together_exactly_one_keeps_its_session(
    redis_client: redis.Redis,
) -> None:
    roll = [roll_member(redis_client, str(n)) for n in range(8)]
    outsider = roll_member(redis_client, "x", group="another group")
    start = threading.Barrier(len(roll))
    decisions: list[bool] = []

    def leave(presence: Presence) -> None:
        start.wait()
        decisions.append(presence.leave())

    threads = [threading.Thread(target=leave, args=(p,)) for p in roll]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(decisions) == [False] + [True] * 7  # an outsider's group does not count
    assert outsider.leave() is False


def test_an_instance_whose_heartbeat_stopped_is_not_live(redis_client: redis.Redis) -> None:
    stopping = roll_member(redis_client, "a")
    crashed = roll_member(redis_client, "b", beating=False)
    gone = roll_member(redis_client, "c", beating=False)
    now, _ = redis_client.time()
    redis_client.zadd(INGEST_HEARTBEATS_KEY, {crashed.record.client_id: now - 60})
    redis_client.zadd(INGEST_HEARTBEATS_KEY, {gone.record.client_id: now - 7200})
    assert stopping.leave() is False
    stopping.settle(ended=False)

    sessions = {s["instance"]: s for s in ingest_sessions(redis_client, 5)}
    assert not sessions["a"]["connected"] and sessions["a"]["stopped_at"]
    assert not sessions["b"]["connected"] and sessions["b"]["stopped_at"] is None
    assert sessions["b"]["seen_seconds_ago"] >= 60
    assert "c" not in sessions  # last seen longer ago than its session expiry: dropped
    roll_member(redis_client, "d")  # and forgotten when an instance joins
    assert set(redis_client.hkeys(INGEST_SESSIONS_KEY)) == {
        f"iotp-ingest-h-{name}" for name in "abd"
    }
