"""Redis forgets everything while the platform runs; the platform does not.

A Redis of the test's own, without persistence (as the README runs it), is killed with
SIGKILL and started again, empty, on the same port, while `iotp relay`, `ingest`,
`aggregate`, `alarms`, `notify` and `broker-sync` run as real child processes. Before the
loss two devices report and one breaches its declared range (an alarm is raised, delivered
and shown); during the outage a device is registered, another decommissioned and the first
comes back in range; after it the second breaches and a device registers. Ingest is held
(SIGSTOP) while Redis comes back until the read models count the outage's readings, so that
its late event always meets consumers that healed already. Then: no process exited, every
consumer group is back on its streams, every read model (alarms included) equals a
recompute from the write store, the broker's files hold exactly the active devices with
their hashes, and the webhook has a delivery for every alarm event.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
import redis
from fastapi.testclient import TestClient

from broker_identity.accounts import parse_password_file
from iotp.names import telemetry_topic
from iotp.settings import Settings
from local_platform.broker import free_port
from tests.support.api_client import AUTH, running_api
from tests.support.broker import private_mosquitto
from tests.support.ingest_harness import publish, reading, stored_count
from tests.support.platform import METRICS, Platform
from tests.support.private_redis import AmnesicRedis, amnesic_redis
from tests.support.processes import READY_SECONDS, ServiceProcess
from tests.support.read_model_harness import (
    alarm_rows_read,
    alarm_rows_written,
    assert_models_equal,
    from_write_store,
    read_models,
    wait_alarms_converged,
    wait_converged,
)
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(180)

BREACH, IN_RANGE = 99.0, 20.0  # METRICS declares temp from -40 to 60
INGEST_USER, INGEST_PASSWORD = "iotp-ingest", "amnesia-ingest-password"
OUTAGE_SECONDS = 3.0
HEAL_SECONDS = 10.0
SETTLE_SECONDS = 60.0
LINGER_SECONDS = 12.0  # past the longest back-off of iotp.retry (10 s)
LOG_LINES = 6

# Quick to read, claim, tick and retry, so that the whole story fits in a minute.
FAST = {
    "relay_poll_seconds": "0.2",
    "aggregator_block_ms": "100",
    "aggregator_claim_idle_ms": "500",
    "alarm_tick_seconds": "0.5",
    "notify_block_ms": "100",
    "notify_claim_idle_ms": "500",
    "notify_poll_seconds": "0.2",
    "notify_timeout_seconds": "2",
    "ingest_unknown_device_cache_seconds": "0",
}
# What the story adds up to: 11 readings of "amn-a", 9 of "amn-b", 3 of "amn-c" (three
# metrics each); "amn-a" raised before the loss and cleared by the readings of the outage,
# "amn-b" raised after it.
READINGS = 11 + 9 + 3
ALARMS = {"amn-a": ["cleared"], "amn-b": ["active"]}
# What each child logs once it serves (None: nothing to wait for).
READY: dict[str, str | None] = {
    "relay": None,
    "ingest": "subscribed to",
    "aggregate": "aggregating as",
    "alarms": "alarms: leading",
    "notify": "notifying as",
    "broker-sync": "broker-sync:",
}
# The consumer groups and the streams each must be on (spelled out: they are the contract
# operators and dashboards see, whatever module defines them).
GROUPS = {
    "iotp-aggregators": ("iotp:events:devices", "iotp:events:telemetry", "iotp:events:alarms"),
    "iotp-alarms": ("iotp:events:telemetry",),
    "iotp-notifier": ("iotp:events:alarms",),
    "iotp-broker-identity": ("iotp:events:devices",),
}


@dataclass
class Rig:
    platform: Platform
    redis: AmnesicRedis
    api: TestClient
    children: dict[str, ServiceProcess]
    password_file: Path
    acl_file: Path
    webhook_id: str

    @property
    def db(self) -> psycopg.Connection[Any]:
        return self.platform.db

    def exited(self) -> dict[str, int | None]:
        """The children that are no longer running, and their exit codes."""
        return {
            name: child.returncode for name, child in self.children.items() if not child.running()
        }

    def obituary(self) -> str:
        """Which children exited, with the last lines each logged (the error among them)."""
        return "\n".join(
            f"iotp {name} exited with {code}; its log ends:\n"
            + "\n".join(self.children[name].output().splitlines()[-LOG_LINES:])
            for name, code in self.exited().items()
        )

    def register(self, *device_ids: str) -> None:
        for device_id in device_ids:
            body = {"device_id": device_id, "name": device_id, "kind": "sensor", "metrics": METRICS}
            answer = self.api.post("/devices", json=body, headers=AUTH)
            assert answer.status_code == 201, answer.text

    def decommission(self, device_id: str) -> None:
        answer = self.api.post(f"/devices/{device_id}/decommission", json={}, headers=AUTH)
        assert answer.status_code == 200, answer.text

    def send(self, device_id: str, seconds: range, temp: float) -> None:
        """One reading per message at BASE + each of ``seconds``; back once the broker took them."""
        messages = [
            (telemetry_topic(device_id), orjson.dumps(reading(i, temp=temp))) for i in seconds
        ]
        publish(self.platform.mqtt_url, messages)

    def send_together(self, device_id: str, seconds: range, temp: float) -> None:
        """The readings at BASE + each of ``seconds`` in one message (one batch of ingest)."""
        payload = orjson.dumps([reading(i, temp=temp) for i in seconds])
        publish(self.platform.mqtt_url, [(telemetry_topic(device_id), payload)])


def start_children(
    platform: Platform, password_file: Path, acl_file: Path
) -> dict[str, ServiceProcess]:
    """Every service on the platform's (private) Redis, each once it says it serves."""
    identity = {
        "mqtt_url": f"mqtt://{INGEST_USER}:{INGEST_PASSWORD}@127.0.0.1:1",  # not dialled
        "broker_password_file": str(password_file),
        "broker_acl_file": str(acl_file),
    }
    children = {}
    for command in READY:
        env = platform.environment(**FAST, **(identity if command == "broker-sync" else {}))
        children[command] = platform.serve(command, env=env, log=command)
    for command, ready in READY.items():
        if ready is not None:
            children[command].wait_for(ready, timeout=READY_SECONDS)
    return children


@pytest.fixture
def rig(settings: Settings, db: psycopg.Connection[Any], tmp_path: Path) -> Iterator[Rig]:
    with (
        amnesic_redis(tmp_path / "redis") as server,
        private_mosquitto(tmp_path / "broker") as mqtt_url,
    ):
        # The webhook below points at a closed local port: a lab's settings allow that.
        ours = settings.model_copy(
            update={"redis_url": server.url, "notify_allow_private_targets": True}
        )
        client = server.client()
        platform = Platform(ours, mqtt_url, db, client, tmp_path)
        try:
            # The relay under test is the `iotp relay` child, not one in this process.
            with running_api(ours, relay=False) as api:
                hook = {"url": f"http://127.0.0.1:{free_port()}/nobody-listens"}
                answer = api.post("/webhooks", json=hook, headers=AUTH)
                assert answer.status_code == 201, answer.text
                password_file, acl_file = tmp_path / "passwd", tmp_path / "acl"
                children = start_children(platform, password_file, acl_file)
                yield Rig(
                    platform,
                    server,
                    api,
                    children,
                    password_file,
                    acl_file,
                    answer.json()["webhook_id"],
                )
        finally:
            platform.stop_children()  # before Redis and the broker go
            client.close()


# --- what is checked --------------------------------------------------------------------


def missing_groups(server: AmnesicRedis) -> list[tuple[str, str]]:
    """(group, stream) of every consumer group that is not on its stream."""
    client = server.client()
    try:
        found: dict[str, set[str]] = {}
        for stream in {s for streams in GROUPS.values() for s in streams}:
            try:
                groups: Any = client.xinfo_groups(stream)
            except redis.ResponseError:  # no such stream
                groups = []
            found[stream] = {g["name"] for g in groups}
        return [(g, s) for g, streams in GROUPS.items() for s in streams if g not in found[s]]
    finally:
        client.close()


def accounts_expected(db: psycopg.Connection[Any]) -> dict[str, str]:
    """Every active device and its credential hash: the device accounts the broker needs."""
    rows = db.execute("SELECT device_id, credential_hash FROM devices WHERE status = 'active'")
    return dict(rows.fetchall())


def accounts_on_file(rig: Rig) -> tuple[dict[str, str], dict[str, tuple[str, ...]]]:
    """The device accounts of the password file (name -> hash), and of the ACL file
    (name -> the topics it may write), service accounts left out."""
    if not rig.password_file.exists() or not rig.acl_file.exists():
        return {}, {}
    state = parse_password_file(rig.password_file.read_text())
    hashes = {name: account.password_hash for name, account in state.devices.items()}
    writes: dict[str, list[str]] = {}
    user = None
    for line in rig.acl_file.read_text().splitlines():
        if line.startswith("user "):
            user = line.removeprefix("user ").strip()
            writes[user] = []
        elif line.startswith("topic write ") and user is not None:
            writes[user].append(line.removeprefix("topic write ").strip())
    acl = {name: tuple(topics) for name, topics in writes.items() if name not in state.services}
    return hashes, acl


def accounts_differ(rig: Rig) -> str | None:
    """What the broker's files get wrong about the devices (None: nothing)."""
    expected = accounts_expected(rig.db)
    hashes, acl = accounts_on_file(rig)
    topics = {device_id: (telemetry_topic(device_id),) for device_id in expected}
    if hashes == expected and acl == topics:
        return None
    wrong_hash = sorted(d for d in set(hashes) & set(expected) if hashes[d] != expected[d])
    return (
        f"password file: missing {sorted(set(expected) - set(hashes))},"
        f" not active {sorted(set(hashes) - set(expected))}, wrong hash {wrong_hash};"
        f" ACL file: {acl}"
    )


def undelivered(rig: Rig) -> set[str]:
    """Alarm events of the outbox with no delivery row for the webhook."""
    events = rig.db.execute(
        "SELECT event_id::text FROM outbox WHERE stream = 'iotp:events:alarms'"
    ).fetchall()
    delivered = rig.db.execute(
        "SELECT event_id::text FROM webhook_deliveries WHERE webhook_id = %s", (rig.webhook_id,)
    ).fetchall()
    return {e for (e,) in events} - {d for (d,) in delivered}


def models_differ(db: psycopg.Connection[Any]) -> bool:
    """Whether a telemetry or device read model differs from a recompute."""
    try:
        assert_models_equal(read_models(db), from_write_store(db))
    except AssertionError:
        return True
    return False


def alarms_differ(db: psycopg.Connection[Any]) -> bool:
    return alarm_rows_read(db) != alarm_rows_written(db)


def unsent(db: psycopg.Connection[Any]) -> int:
    row = db.execute("SELECT count(*) FROM outbox WHERE sent_at IS NULL").fetchone()
    return int(row[0]) if row else 0


def alarm_states(db: psycopg.Connection[Any]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for device_id, state in db.execute(
        "SELECT device_id, state FROM alarms ORDER BY raised_at"
    ).fetchall():
        found.setdefault(device_id, []).append(state)
    return found


def outage_readings_counted(rig: Rig) -> bool:
    """Whether the read models count all of "amn-a"'s readings, those of the outage too."""
    row = rig.db.execute(
        "SELECT count FROM read_models.metric_stats WHERE device_id = 'amn-a' AND metric = 'temp'"
    ).fetchone()
    return row == (11,)


def all_caught_up(rig: Rig) -> bool:
    """Every reading stored, both alarms in the write store, and every consumer up to date."""
    return (
        stored_count(rig.db) == READINGS * 3
        and alarm_states(rig.db) == ALARMS
        and unsent(rig.db) == 0
        and not missing_groups(rig.redis)
        and not models_differ(rig.db)
        and not alarms_differ(rig.db)
        and accounts_differ(rig) is None
        and not undelivered(rig)
    )


def settle(rig: Rig, done: Callable[[Rig], bool], timeout: float = SETTLE_SECONDS) -> None:
    """Wait until ``done(rig)``, or until a child exited and the others had the time to meet
    the same fate (the longest back-off), so that the assertions after name every process
    that exits; or until ``timeout``, the assertions saying what is missing."""
    first_exit: list[float] = []

    def over() -> bool:
        if not rig.exited():
            return done(rig)
        if not first_exit:
            first_exit.append(time.monotonic())
        return time.monotonic() - first_exit[0] > LINGER_SECONDS

    with contextlib.suppress(pytest.fail.Exception):
        wait_for(over, timeout=timeout, interval=0.3)


# --- the test -----------------------------------------------------------------------------


def before_the_loss(rig: Rig) -> None:
    """Two devices report; "amn-a" breaches (raised at its third reading out of range)."""
    rig.register("amn-a", "amn-b", "amn-d")
    rig.send("amn-a", range(0, 3), IN_RANGE)
    rig.send("amn-a", range(3, 7), BREACH)
    rig.send("amn-b", range(0, 5), IN_RANGE)

    def reached_every_consumer(rig: Rig) -> bool:
        # The alarm columns are compared after the loss; here only that the alarm arrived.
        raised = {r[0] for r in rig.db.execute("SELECT alarm_id FROM alarms").fetchall()}
        return (
            stored_count(rig.db) == 12 * 3
            and len(raised) == 1
            and set(alarm_rows_read(rig.db)) == raised
            and not missing_groups(rig.redis)
            and accounts_differ(rig) is None
            and not undelivered(rig)
            and not models_differ(rig.db)
        )

    settle(rig, reached_every_consumer)
    assert not rig.exited(), f"before Redis was lost:\n{rig.obituary()}"
    assert alarm_states(rig.db) == {"amn-a": ["active"]}
    assert reached_every_consumer(rig), "the platform had not caught up before the loss"


def test_redis_restarted_empty_loses_nothing_and_stops_nothing(rig: Rig) -> None:
    before_the_loss(rig)

    rig.redis.kill()
    # While Redis is away: a registration and a decommission wait in the outbox, "amn-a"
    # comes back in range (stored, its event waiting in ingest for Redis).
    rig.register("amn-c")
    rig.decommission("amn-d")
    # One message: ingest stores one batch while Redis is away, then waits to publish its
    # event before it stores the next (events go out in order; the broker keeps the rest).
    rig.send_together("amn-a", range(7, 11), IN_RANGE)
    wait_for(lambda: stored_count(rig.db) == 16 * 3, timeout=10)
    time.sleep(OUTAGE_SECONDS)  # an outage every process runs into
    # Ingest publishes the outage's event a moment after Redis is back, whichever way the
    # race with the consumers' recovery goes; here it goes the hard way, every time: ingest
    # is paused until the read models count the outage's readings without that event (as a
    # heal from the write store does), or for a while when they never do.
    ingest = rig.children["ingest"]
    ingest.signal(signal.SIGSTOP)
    try:
        rig.redis.start()  # empty: no streams, no groups, no keys
        settle(rig, outage_readings_counted, timeout=HEAL_SECONDS)
    finally:
        ingest.signal(signal.SIGCONT)

    rig.register("amn-e")
    rig.send("amn-b", range(5, 9), BREACH)
    rig.send("amn-c", range(0, 3), IN_RANGE)

    settle(rig, all_caught_up)
    assert not rig.exited(), f"after Redis came back empty:\n{rig.obituary()}"
    assert missing_groups(rig.redis) == [], "consumer groups not created again"
    wait_converged(rig.db, timeout=5)  # telemetry and device models; fails with the diff
    wait_alarms_converged(rig.db, timeout=5)
    assert accounts_differ(rig) is None, accounts_differ(rig)
    assert undelivered(rig) == set(), "alarm events with no delivery for the webhook"
    # The story happened as told: two alarms, three alarm events.
    assert stored_count(rig.db) == READINGS * 3
    assert alarm_states(rig.db) == ALARMS
    assert rig.db.execute(
        "SELECT count(*) FROM outbox WHERE stream = 'iotp:events:alarms'"
    ).fetchone() == (3,)
