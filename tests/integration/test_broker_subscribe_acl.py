"""No device can take another's telemetry at the broker (issue 22, item 4).

Mosquitto 2.0's ACL file grants every SUBSCRIBE and checks read rights only per delivered
message: a device that joined ingest's shared subscription was dealt its share of the
telemetry, which the broker then dropped. The broker `iotp up` and the tests run loads
local_platform/iotp_subscribe_acl.c, which refuses a device's subscription outside
devices/<its id>/. Here against a real Mosquitto kept by a real `iotp broker-sync`.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from broker_identity.accounts import parse_password_file
from iotp.events import DeviceRegistered, to_fields
from iotp.names import DEVICE_EVENTS_STREAM
from iotp.password_hash import hash_password
from local_platform.broker import local_mosquitto
from tests.support.identity import INGEST_USER, Device, Identity
from tests.support.ingest_harness import reading, stored_count
from tests.support.platform import Platform
from tests.support.waiting import wait_for

READINGS = 200
METRICS = 3  # per reading (tests.support.ingest_harness.reading)
GRANTED_QOS_1 = 1
REFUSED = 0x80  # a SUBACK code at or above it is a failure (0x87: not authorised)


@pytest.fixture
def identity(platform: Platform, tmp_path: Path) -> Iterator[Identity]:
    """A broker with identity on, broker-sync keeping it, ingest reading from it, and two
    registered devices: V, whose telemetry counts, and T, which tries to take it."""
    with local_mosquitto(tmp_path / "identity-broker", identity=True) as broker:
        identity = Identity(broker)
        env = platform.environment(**identity.sync_settings())
        platform.serve("broker-sync", env=env, ready="broker-sync:")
        wait_for(lambda: INGEST_USER in broker.password_file.read_text())
        platform.ingest(mqtt_url=identity.ingest_url)
        for device_id in ("dev-v", "dev-t"):
            _register(platform, identity, device_id)

        def known() -> set[str]:
            return set(parse_password_file(broker.password_file.read_text()).devices)

        wait_for(lambda: {"dev-v", "dev-t"} <= known(), timeout=5)
        yield identity


def _register(platform: Platform, identity: Identity, device_id: str) -> None:
    """What the command API's registration makes durable: the device row and its event
    (written here directly, so that this test is about the broker alone)."""
    password = secrets.token_urlsafe(32)
    credential_hash = hash_password(password)
    platform.db.execute(
        "INSERT INTO devices (device_id, name, kind, metadata, metrics, status,"
        " credential_hash, created_at, updated_at) VALUES (%s, %s, 'sensor', '{}', '[]',"
        " 'active', %s, now(), now())",
        (device_id, device_id, credential_hash),
    )
    event = DeviceRegistered(
        device_id=device_id, name=device_id, kind="sensor", credential_hash=credential_hash
    )
    platform.redis.xadd(DEVICE_EVENTS_STREAM, to_fields(event))  # type: ignore[arg-type]
    identity.passwords[device_id] = password


def _refused(code: int | None) -> bool:
    return code is None or code >= REFUSED


def test_a_device_cannot_join_ingests_share_group_nor_read_others(
    platform: Platform, identity: Identity
) -> None:
    group = platform.settings.ingest_share_group
    thief = Device(identity.broker.port, "dev-t", identity.passwords["dev-t"])
    try:
        for topic_filter in (f"$share/{group}/devices/+/telemetry", "devices/+/telemetry", "#"):
            assert _refused(thief.subscribe(topic_filter)), topic_filter
        victim = Device(identity.broker.port, "dev-v", identity.passwords["dev-v"])
        try:
            for i in range(READINGS):
                assert victim.publish("devices/dev-v/telemetry", orjson.dumps(reading(i))) == 0
        finally:
            victim.close()
        wait_for(lambda: stored_count(platform.db) >= READINGS * METRICS, timeout=30)
        time.sleep(0.5)
        assert stored_count(platform.db) == READINGS * METRICS
        assert thief.received == []
    finally:
        thief.close()


def test_a_device_may_subscribe_inside_its_own_tree(identity: Identity) -> None:
    device = Device(identity.broker.port, "dev-t", identity.passwords["dev-t"])
    try:
        assert device.subscribe("devices/dev-t/#") == GRANTED_QOS_1
        assert _refused(device.subscribe("devices/dev-tx/#"))  # a prefix is not its tree
    finally:
        device.close()


def test_ingest_still_subscribes_after_a_reload(platform: Platform, identity: Identity) -> None:
    """The service accounts come from the password file, re-read on every SIGHUP."""
    ingest = Device(identity.broker.port, INGEST_USER, identity.ingest_password)
    try:
        assert ingest.subscribe("$SYS/broker/#") == GRANTED_QOS_1
        assert ingest.subscribe("devices/+/telemetry") == GRANTED_QOS_1
    finally:
        ingest.close()
