"""Device identity enforced by a real Mosquitto, kept in step by a real `iotp broker-sync`.

Every test runs its own broker with identity on (anonymous refused, the password and ACL
files written by broker-sync from the device events), ingest on ingest's service account,
and the command API registering, rotating and decommissioning devices.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from broker_identity.accounts import BrokerState, parse_password_file
from broker_identity.files import BrokerFiles
from broker_identity.sync import READER, SYNC_CONSUMER, SYNC_GROUP, BrokerAccounts, broker_sync
from iotp.event_shards import ensure_groups, read_group
from iotp.events import (
    DeviceCredentialsRotated,
    DeviceDecommissioned,
    DeviceRegistered,
    from_fields,
    to_fields,
)
from iotp.group_reader import Counts, decode_batch
from iotp.names import DEVICE_EVENTS_STREAM
from iotp.password_hash import hash_password
from local_platform.broker import local_mosquitto
from tests.support.api_client import AUTH, running_api, wait_relayed
from tests.support.identity import INGEST_USER, Device, Identity, connack_code, raw_connect
from tests.support.ingest_harness import reading, stored_count
from tests.support.platform import Platform
from tests.support.processes import ServiceProcess
from tests.support.waiting import wait_for

NOT_AUTHORISED = 0x87
LIVE_SECONDS = 5.0  # the bound: a change is in force at the broker within 5 s


@dataclass
class Rig:
    platform: Platform
    identity: Identity
    api: TestClient
    sync: ServiceProcess

    @property
    def port(self) -> int:
        return self.identity.broker.port

    def start_sync(self) -> ServiceProcess:
        env = self.platform.environment(**self.identity.sync_settings())
        self.sync = self.platform.serve("broker-sync", env=env, ready="broker-sync:")
        return self.sync

    def known(self) -> set[str]:
        """The test's device accounts (dev-*) in the broker's password file now."""
        text = self.identity.broker.password_file.read_text()
        return {name for name in parse_password_file(text).devices if name.startswith("dev-")}


@pytest.fixture
def rig(platform: Platform, tmp_path: Path) -> Iterator[Rig]:
    with local_mosquitto(tmp_path / "identity-broker", identity=True) as broker:
        identity = Identity(broker)
        with running_api(platform.settings) as api:
            rig = Rig(platform, identity, api, sync=None)  # type: ignore[arg-type]
            rig.start_sync()
            wait_for(lambda: INGEST_USER in broker.password_file.read_text())
            platform.ingest(mqtt_url=identity.ingest_url)
            yield rig


def _payload(i: int = 0) -> bytes:
    return orjson.dumps(reading(i))


def _registered(rig: Rig, *device_ids: str) -> None:
    for device_id in device_ids:
        rig.identity.register(rig.api, device_id)
    wait_relayed(rig.platform.db)
    wait_for(lambda: set(device_ids) <= rig.known(), timeout=LIVE_SECONDS)


def _connects_within(
    rig: Rig, username: str, password: str, accepted: bool, seconds: float = LIVE_SECONDS
) -> float:
    """How long until a new connection with these credentials is accepted (or refused)."""
    start = time.monotonic()

    def settled() -> bool:
        return (connack_code(rig.port, username, password) == 0) is accepted

    wait_for(settled, timeout=seconds, interval=0.1)
    return time.monotonic() - start


def test_anonymous_and_wrong_passwords_are_refused(rig: Rig) -> None:
    _registered(rig, "dev-a")
    assert connack_code(rig.port, None, None) != 0
    assert connack_code(rig.port, "dev-a", "not-the-password") != 0
    assert connack_code(rig.port, "nobody", "x") != 0
    assert connack_code(rig.port, "dev-a", rig.identity.passwords["dev-a"]) == 0


def test_a_device_publishes_only_on_its_own_topic(rig: Rig) -> None:
    _registered(rig, "dev-a", "dev-b")
    password = rig.identity.passwords["dev-a"]
    a = Device(rig.port, "dev-a", password)
    try:
        assert a.publish("devices/dev-b/telemetry", _payload(1)) == NOT_AUTHORISED
    finally:
        a.close()  # Mosquitto 2.0 also closes the connection after refusing the publish
    a = Device(rig.port, "dev-a", password)
    try:
        assert a.publish("devices/dev-a/telemetry", _payload(2)) == 0
    finally:
        a.close()
    wait_for(lambda: stored_count(rig.platform.db) == 3)  # three metrics of dev-a's reading
    owners = rig.platform.db.execute("SELECT DISTINCT device_id FROM telemetry").fetchall()
    assert owners == [("dev-a",)]


def test_mqtt_311_drops_a_foreign_topic_silently_and_stores_nothing(rig: Rig) -> None:
    _registered(rig, "dev-a", "dev-b")
    password = rig.identity.passwords["dev-a"]
    a = Device(rig.port, "dev-a", password, v5=False)
    try:
        assert a.publish("devices/dev-b/telemetry", _payload(1)) == 0  # no reason codes in 3.1.1
    finally:
        a.close()
    a = Device(rig.port, "dev-a", password, v5=False)
    try:
        a.publish("devices/dev-a/telemetry", _payload(2))  # after it: by then it was dropped
    finally:
        a.close()
    wait_for(lambda: stored_count(rig.platform.db) == 3)
    time.sleep(0.5)
    owners = rig.platform.db.execute("SELECT DISTINCT device_id FROM telemetry").fetchall()
    assert owners == [("dev-a",)]


def test_ingest_service_account_cannot_publish_telemetry(rig: Rig) -> None:
    _registered(rig, "dev-a")
    ingest = Device(rig.port, INGEST_USER, rig.identity.ingest_password)
    try:
        assert ingest.accepted
        assert ingest.publish("devices/dev-a/telemetry", _payload()) == NOT_AUTHORISED
    finally:
        ingest.close()
    time.sleep(0.5)
    assert stored_count(rig.platform.db) == 0


def test_rotation_refuses_the_old_password_and_accepts_the_new_within_5s(rig: Rig) -> None:
    _registered(rig, "dev-a")
    old = rig.identity.passwords["dev-a"]
    answer = rig.api.post("/devices/dev-a/credentials", headers=AUTH)
    assert answer.status_code == 200
    new = answer.json()["credentials"]["password"]
    _connects_within(rig, "dev-a", old, accepted=False)
    _connects_within(rig, "dev-a", new, accepted=True)


def test_decommission_refuses_the_device_and_closes_its_session_within_5s(rig: Rig) -> None:
    _registered(rig, "dev-a", "dev-b")
    a = Device(rig.port, "dev-a", rig.identity.passwords["dev-a"])
    b = Device(rig.port, "dev-b", rig.identity.passwords["dev-b"])
    try:
        assert a.accepted and b.accepted
        answer = rig.api.post("/devices/dev-a/decommission", json={}, headers=AUTH)
        assert answer.status_code == 200, answer.text
        assert a.disconnected.wait(LIVE_SECONDS), "the open session was not closed"
        _connects_within(rig, "dev-a", rig.identity.passwords["dev-a"], accepted=False)
        assert not b.disconnected.is_set()
        assert b.publish("devices/dev-b/telemetry", _payload()) == 0
    finally:
        a.close()
        b.close()


def test_sync_killed_and_restarted_applies_everything_once(rig: Rig) -> None:
    _registered(rig, *(f"dev-{i}" for i in range(5)))
    rig.sync.kill()
    for i in range(5, 10):
        rig.identity.register(rig.api, f"dev-{i}")
    for i in (0, 6):
        assert rig.api.post(f"/devices/dev-{i}/decommission", json={}, headers=AUTH).is_success
    rotated = rig.api.post("/devices/dev-7/credentials", headers=AUTH).json()["credentials"]
    wait_relayed(rig.platform.db)
    first_log = rig.sync.output()
    rig.start_sync()
    expected = {f"dev-{i}" for i in range(10)} - {"dev-0", "dev-6"}
    wait_for(lambda: rig.known() == expected, timeout=LIVE_SECONDS)
    assert connack_code(rig.port, "dev-7", rotated["password"]) == 0
    assert connack_code(rig.port, "dev-0", rig.identity.passwords["dev-0"]) != 0
    # Each registration was applied once across both runs: the restart re-read nothing
    # that the files already recorded.
    second_log = rig.sync.output()
    for i in range(10):
        applied = (first_log + second_log).count(f"DeviceRegistered dev-{i}\n")
        assert applied == 1, (i, first_log, second_log)


@pytest.mark.parametrize(
    ("client_id", "username"),
    [
        (b"c1", b""),
        (b"c2", b"u" * 10_000),
        (b"c3", b"dev-a\x00evil"),
        (b"c4", b"\xff\xfe\xfd"),
        (b"\xff\x00", b"dev-a"),
    ],
    ids=["empty", "10kB", "nul", "non-utf8", "hostile-client-id"],
)
def test_hostile_connects_are_refused_without_harm_to_others(
    rig: Rig, client_id: bytes, username: bytes
) -> None:
    _registered(rig, "dev-a")
    password = rig.identity.passwords["dev-a"].encode()
    a = Device(rig.port, "dev-a", rig.identity.passwords["dev-a"])
    try:
        answer: Any = raw_connect(rig.port, client_id, username, password)
        assert answer == b"" or (answer[:1] == b"\x20" and answer[3] != 0), answer
        assert a.accepted
        assert a.publish("devices/dev-a/telemetry", _payload()) == 0
    finally:
        a.close()
    wait_for(lambda: stored_count(rig.platform.db) == 3)


def _no_write_store() -> Any:
    raise AssertionError("no heal is expected here")


def test_entries_read_and_written_but_not_acknowledged_are_not_applied_twice(
    redis_client: Any, tmp_path: Path
) -> None:
    hashes = {f"dev-{i}": hash_password(f"pw-{i}") for i in range(3)}
    for device_id, credential_hash in hashes.items():
        event = DeviceRegistered(
            device_id=device_id, name=device_id, kind="sensor", credential_hash=credential_hash
        )
        redis_client.xadd(DEVICE_EVENTS_STREAM, to_fields(event))
    hashes["dev-0"] = hash_password("rotated")  # applied again, the older hash would return
    rotation = DeviceCredentialsRotated(
        device_id="dev-0", username="dev-0", credential_hash=hashes["dev-0"]
    )
    redis_client.xadd(DEVICE_EVENTS_STREAM, to_fields(rotation))
    files = BrokerFiles(tmp_path / "passwd", tmp_path / "acl")
    crashing = BrokerAccounts(files, BrokerState(), lambda _: None, _no_write_store)
    crashing.start()
    ensure_groups(redis_client, SYNC_GROUP, READER.streams)  # as the reader does at start
    # It reads the entries and writes the files, then dies before acknowledging them.
    taken = read_group(redis_client, SYNC_GROUP, SYNC_CONSUMER, {DEVICE_EVENTS_STREAM: ">"}, 100)
    assert crashing.apply(decode_batch(taken, from_fields, Counts(), "test")) == 4
    written = files.password_file.read_text()
    recorded = parse_password_file(written).devices
    assert {name: account.password_hash for name, account in recorded.items()} == hashes

    looked_up: list[str] = []
    restarted = BrokerAccounts(files, files.load(), lambda d: looked_up.append(d), _no_write_store)
    reader = broker_sync(redis_client, restarted)
    result = reader.drain_own_pending()
    assert (result.entries, result.applied) == (4, 0)
    assert files.password_file.read_text() == written
    assert redis_client.xpending(DEVICE_EVENTS_STREAM, SYNC_GROUP)["pending"] == 0

    redis_client.xadd(DEVICE_EVENTS_STREAM, to_fields(DeviceDecommissioned(device_id="dev-1")))
    assert reader.step().applied == 1
    assert set(parse_password_file(files.password_file.read_text()).devices) == {
        "dev-0",
        "dev-2",
    }
    assert looked_up == []
