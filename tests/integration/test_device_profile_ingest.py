"""Device profiles and gateways end to end (issue 25): each payload format published through a
real Mosquitto with the device's own credentials, under the ACL `iotp broker-sync` derives
from the profiles; stored once with the times and values sent, folded into the read models;
a gateway for two devices and not a third; a device outside its tree refused while its
status topic is accepted; a profile made while ingest runs picked up with no restart; and
each format's malformed payloads dead-lettered with their reason.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest
from fastapi.testclient import TestClient

from local_platform.broker import local_mosquitto
from read_models import queries
from tests.support.api_client import AUTH, running_api
from tests.support.identity import INGEST_USER, Device, Identity
from tests.support.ingest_harness import deadletters
from tests.support.platform import Platform
from tests.support.waiting import wait_for

NOT_AUTHORISED = 0x87
SENML = {
    "name": "senml",
    "payload_format": "senml+json",
    "topics": {"telemetry": ["senml/{device}"]},
    "metrics": [{"source": "urn:dev:{device}:temp:c", "metric": "temp", "unit": "Cel"}],
    "senml_base_name": "urn:dev:{device}:",
}
TASMOTA = {
    "name": "tasmota",
    "payload_format": "json-map",
    "topics": {
        "telemetry": ["tele/{device}/SENSOR"],
        "availability": "tele/{device}/LWT",
        "status": ["tele/{device}/STATE", "stat/{device}/#"],
        "commands": ["cmnd/{device}/#"],
        "online_payload": "Online",
        "offline_payload": "Offline",
    },
    "metrics": [
        {"source": "$.AM2301.Temperature", "metric": "temp"},
        {"source": "$.AM2301.Humidity", "metric": "hum"},
    ],
    "timestamp": {"path": "$.Time", "unit": "iso8601", "time_zone": "Europe/Berlin"},
}
ESPHOME = {
    "name": "esphome",
    "payload_format": "plain",
    "topics": {"telemetry": ["{device}/sensor/{metric}/state"], "availability": "{device}/status"},
}
ZIGBEE = {
    "name": "z2m",
    "payload_format": "json-map",
    "gateway": True,
    "topics": {"telemetry": ["zigbee2mqtt/{device}"], "status": ["zigbee2mqtt/bridge/#"]},
    "metrics": [{"source": "$.temperature", "metric": "temp"}],
}


@dataclass
class Fleet:
    platform: Platform
    identity: Identity
    api: TestClient

    def profile(self, body: dict[str, Any]) -> None:
        answer = self.api.post("/device-profiles", json=body, headers=AUTH)
        assert answer.status_code == 201, answer.text

    def device(self, device_id: str, profile: str) -> Device:
        body = {"device_id": device_id, "name": device_id, "kind": "sensor", "profile": profile}
        answer = self.api.post("/devices", json=body, headers=AUTH)
        assert answer.status_code == 201, answer.text
        password = answer.json()["credentials"]["password"]
        self.identity.passwords[device_id] = password
        self.wait_account(device_id)
        return self.connect(device_id)

    def gateway(self, gateway_id: str, name: str, devices: dict[str, str]) -> None:
        """A Zigbee2MQTT gateway speaking for ``devices`` (friendly name: device id)."""
        body = {"gateway_id": gateway_id, "name": name, "profile": "z2m", "devices": devices}
        answer = self.api.post("/gateways", json=body, headers=AUTH)
        assert answer.status_code == 201, answer.text
        self.identity.passwords[gateway_id] = answer.json()["credentials"]["password"]

    def connect(self, username: str) -> Device:
        device = Device(self.identity.broker.port, username, self.identity.passwords[username])
        assert device.accepted
        return device

    def wait_account(self, username: str, topic: str | None = None) -> None:
        """Until broker-sync granted the account (and ``topic``), and ingest subscribed."""
        acl = self.identity.broker.acl_file
        wait_for(lambda: f"user {username}\n" in acl.read_text(), timeout=10)
        if topic is not None:
            wait_for(lambda: topic in acl.read_text(), timeout=10)
        time.sleep(1.5)  # ingest's subscription keeper looks each second

    def stored(self, device_id: str) -> list[tuple[str, datetime, float]]:
        rows = self.platform.db.execute(
            "SELECT metric, ts, value FROM telemetry WHERE device_id = %s ORDER BY metric, ts",
            (device_id,),
        ).fetchall()
        return [(m, ts, v) for m, ts, v in rows]


@pytest.fixture
def fleet(platform: Platform, tmp_path: Path) -> Iterator[Fleet]:
    platform.db.execute("TRUNCATE device_profiles, gateways")
    with local_mosquitto(tmp_path / "identity-broker", identity=True) as broker:
        identity = Identity(broker)
        env = platform.environment(**identity.sync_settings())
        platform.serve("broker-sync", env=env, ready="broker-sync:")
        wait_for(lambda: INGEST_USER in broker.password_file.read_text())
        platform.ingest(mqtt_url=identity.ingest_url)
        with running_api(platform.settings) as api:
            yield Fleet(platform, identity, api)


def test_each_format_is_stored_once_with_its_times_and_values_and_folded(fleet: Fleet) -> None:
    for profile in (SENML, TASMOTA, ESPHOME):
        fleet.profile(profile)
    senml = fleet.device("senml-1", "senml")
    tasmota = fleet.device("tasmota-1", "tasmota")
    esphome = fleet.device("esphome-1", "esphome")
    iotp = fleet.device("iotp-1", "iotp")
    now = datetime.now(UTC).replace(microsecond=0)
    base = int((now - timedelta(minutes=3)).timestamp())
    pack = [
        {"bn": "urn:dev:senml-1:", "bt": base, "n": "temp:c", "u": "Cel", "v": 21.5},
        {"n": "temp:c", "u": "Cel", "v": 22.0, "t": 60},
    ]
    local = (now - timedelta(minutes=2)).astimezone(ZoneInfo("Europe/Berlin"))
    sensor = {
        "Time": local.replace(tzinfo=None).isoformat(),
        "AM2301": {"Temperature": 24.6, "Humidity": 58.2},
        "TempUnit": "C",
    }
    iotp_ts = now - timedelta(minutes=1)
    for _ in range(2):  # a redelivery or a retry is stored once
        assert senml.publish("senml/senml-1", orjson.dumps(pack)) == 0
        assert tasmota.publish("tele/tasmota-1/SENSOR", orjson.dumps(sensor)) == 0
        assert (
            iotp.publish(
                "devices/iotp-1/telemetry",
                orjson.dumps({"ts": iotp_ts.isoformat(), "metrics": {"temp": 19.0}}),
            )
            == 0
        )
    before = datetime.now(UTC)
    assert esphome.publish("esphome-1/sensor/temp/state", b"23.5\n") == 0
    after = datetime.now(UTC)

    wait_for(lambda: len(fleet.stored("esphome-1")) == 1, timeout=20)
    wait_for(lambda: len(fleet.stored("senml-1")) == 2, timeout=20)
    wait_for(lambda: len(fleet.stored("tasmota-1")) == 2, timeout=20)
    wait_for(lambda: len(fleet.stored("iotp-1")) == 1, timeout=20)
    start = datetime.fromtimestamp(base, UTC)
    assert fleet.stored("senml-1") == [
        ("temp", start, 21.5),
        ("temp", start + timedelta(seconds=60), 22.0),
    ]
    at = now - timedelta(minutes=2)
    assert fleet.stored("tasmota-1") == [("hum", at, 58.2), ("temp", at, 24.6)]
    assert fleet.stored("iotp-1") == [("temp", iotp_ts, 19.0)]
    [(metric, ts, value)] = fleet.stored("esphome-1")
    assert (metric, value) == ("temp", 23.5)
    assert before - timedelta(seconds=1) <= ts <= after + timedelta(seconds=5)  # receive time
    assert deadletters(fleet.platform.redis) == []

    fleet.platform.aggregator()
    db = fleet.platform.db

    def folded() -> dict[str, int]:
        rows = db.execute(
            "SELECT device_id, sum(count) FROM read_models.metric_stats GROUP BY device_id"
        ).fetchall()
        return {d: int(c) for d, c in rows}

    wait_for(
        lambda: folded() == {"senml-1": 2, "tasmota-1": 2, "esphome-1": 1, "iotp-1": 1}, timeout=20
    )
    # As the Fleet page lists them: online, with the last value each sent.
    rule = queries.LivenessRule.from_settings(fleet.platform.settings)
    listed = {d.device_id: d for d in queries.list_devices(db, rule, limit=100).items}
    assert {k: (d.liveness, d.last_values) for k, d in listed.items()} == {
        "senml-1": ("online", {"temp": 22.0}),
        "tasmota-1": ("online", {"hum": 58.2, "temp": 24.6}),
        "esphome-1": ("online", {"temp": 23.5}),
        "iotp-1": ("online", {"temp": 19.0}),
    }


def test_a_gateway_speaks_for_its_two_devices_and_not_a_third(fleet: Fleet) -> None:
    fleet.profile(ZIGBEE)
    for device_id in ("lamp-1", "lamp-2", "lamp-3"):
        fleet.device(device_id, "iotp").close()
    fleet.gateway("bridge-1", "bridge", {"kitchen/floor light": "lamp-1", "hall": "lamp-2"})
    # A second gateway holds lamp-3; the first may not publish for it.
    fleet.gateway("bridge-2", "other", {"porch": "lamp-3"})
    fleet.wait_account("bridge-1", "zigbee2mqtt/kitchen/floor light")
    fleet.wait_account("bridge-2", "zigbee2mqtt/porch")
    bridge = fleet.connect("bridge-1")
    assert bridge.publish("zigbee2mqtt/kitchen/floor light", b'{"temperature": 21.0}') == 0
    assert bridge.publish("zigbee2mqtt/hall", b'{"temperature": 22.0}') == 0
    assert bridge.publish("zigbee2mqtt/bridge/state", b'{"state": "online"}') == 0
    assert bridge.publish("zigbee2mqtt/porch", b'{"temperature": 99.0}') == NOT_AUTHORISED
    wait_for(
        lambda: len(fleet.stored("lamp-1")) == 1 and len(fleet.stored("lamp-2")) == 1, timeout=20
    )
    time.sleep(1.0)
    assert fleet.stored("lamp-3") == []
    assert [v for _, _, v in fleet.stored("lamp-1")] == [21.0]
    assert deadletters(fleet.platform.redis) == []
    refused = fleet.api.put(
        "/gateways/bridge-1/devices", json={"devices": {"x": "not-registered"}}, headers=AUTH
    )
    assert refused.status_code == 422, refused.text


def test_outside_its_tree_refused_while_its_status_is_accepted(fleet: Fleet) -> None:
    fleet.profile(TASMOTA)
    device = fleet.device("tasmota-2", "tasmota")
    assert device.publish("tele/tasmota-2/LWT", b"Online") == 0
    assert device.publish("stat/tasmota-2/RESULT", b'{"POWER":"OFF"}') == 0
    assert device.publish("tele/tasmota-2/STATE", b'{"Uptime":"0T00:00:19"}') == 0
    time.sleep(0.5)
    assert not device.disconnected.is_set()  # its status and last will never cost it that
    # Mosquitto 2.0.11 closes the connection after a refused publish: one each.
    for topic in ("tele/other-device/SENSOR", "devices/tasmota-2/telemetry", "cmnd/x/POWER"):
        outsider = fleet.connect("tasmota-2")
        assert outsider.publish(topic, b"{}") == NOT_AUTHORISED, topic
        outsider.close()
    time.sleep(1.5)
    assert deadletters(fleet.platform.redis) == []  # status is neither stored nor refused
    assert fleet.stored("tasmota-2") == []


def test_a_device_subscribes_within_its_tree_and_nowhere_else(fleet: Fleet) -> None:
    """The SUBSCRIBE check reads the ACL file's read grants: a Tasmota device may subscribe
    to its commands and its own topics (firmware does), never to another device's or to
    ingest's shared subscription; a gateway to its devices' topics only."""
    fleet.profile(TASMOTA)
    device = fleet.device("tasmota-3", "tasmota")
    fleet.device("tasmota-4", "tasmota").close()
    for topic_filter in ("cmnd/tasmota-3/#", "cmnd/tasmota-3/POWER", "tele/tasmota-3/LWT"):
        assert device.subscribe(topic_filter) == 1, topic_filter
    for topic_filter in (
        "cmnd/tasmota-4/#",
        "cmnd/+/POWER",
        "tele/#",
        "#",
        "$share/iotp-ingest/tele/+/SENSOR",
    ):
        assert device.subscribe(topic_filter) == NOT_AUTHORISED, topic_filter
    device.close()
    fleet.profile(ZIGBEE)
    for device_id in ("z-kitchen", "z-hall"):
        fleet.device(device_id, "iotp").close()
    fleet.gateway("bridge-2", "bridge", {"Kitchen": "z-kitchen"})
    fleet.wait_account("bridge-2", "zigbee2mqtt/Kitchen")
    bridge = fleet.connect("bridge-2")
    assert bridge.subscribe("zigbee2mqtt/Kitchen") == 1
    assert bridge.subscribe("zigbee2mqtt/Hall") == NOT_AUTHORISED
    assert bridge.subscribe("zigbee2mqtt/#") == NOT_AUTHORISED
    bridge.close()


def test_a_profile_made_while_ingest_runs_is_picked_up(fleet: Fleet) -> None:
    fleet.device("warm-up", "iotp").close()
    fleet.profile({**ESPHOME, "name": "late", "topics": {"telemetry": ["late/{device}/{metric}"]}})
    device = fleet.device("late-1", "late")
    assert device.publish("late/late-1/temp", b"7.25") == 0
    wait_for(lambda: [v for _, _, v in fleet.stored("late-1")] == [7.25], timeout=20)


MALFORMED = [
    ("senml", "senml/bad-senml", b'{"not": "a pack"}', "invalid_shape"),
    (
        "senml",
        "senml/bad-senml",
        b'[{"bn": "urn:dev:other:", "n": "temp:c", "v": 1}]',
        "base_name_mismatch",
    ),
    (
        "senml",
        "senml/bad-senml",
        b'[{"bn": "urn:dev:bad-senml:", "n": "s", "vs": "on"}]',
        "unsupported_value",
    ),
    ("tasmota", "tele/bad-tasmota/SENSOR", b"{not json", "invalid_json"),
    (
        "tasmota",
        "tele/bad-tasmota/SENSOR",
        b'{"Time": "yesterday", "AM2301": {}}',
        "invalid_timestamp",
    ),
    ("esphome", "bad-esphome/sensor/temp/state", b"nan", "invalid_value"),
    ("iotp", "devices/bad-iotp/telemetry", b'{"metrics": {}}', "invalid_shape"),
]


def test_malformed_payloads_of_each_format_are_dead_lettered_with_their_reason(
    fleet: Fleet,
) -> None:
    for profile in (SENML, TASMOTA, ESPHOME):
        fleet.profile(profile)
    devices = {
        name: fleet.device(f"bad-{name}", name) for name in ("senml", "tasmota", "esphome", "iotp")
    }
    for name, topic, payload, _ in MALFORMED:
        assert devices[name].publish(topic, payload) == 0
    wait_for(lambda: len(deadletters(fleet.platform.redis)) >= len(MALFORMED), timeout=20)
    found = [(d["device_id"], d["topic"], d["reason"]) for d in deadletters(fleet.platform.redis)]
    assert found == [(f"bad-{name}", topic, reason) for name, topic, _, reason in MALFORMED]
    assert fleet.platform.db.execute("SELECT count(*) FROM telemetry").fetchone() == (0,)
