"""`iotp simulate` against the real platform: what it says it sent is what was stored."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import aiomqtt
import orjson
import pytest

from device_simulator.connections import Link
from device_simulator.profiles import profile_for
from device_simulator.registration import SimulatedDevice
from device_simulator.runner import SimulationConfig, Summary, publish_fleet
from iotp.mqtt_url import parse_mqtt_url
from local_platform.broker import free_port
from tests.support.broker import private_mosquitto
from tests.support.ingest_harness import deadletters
from tests.support.platform import Platform
from tests.support.servers import TEST_TOKEN
from tests.support.waiting import wait_for


def test_simulated_fleet_with_faults_is_stored_and_dead_lettered(platform: Platform) -> None:
    env = platform.environment(api_token=TEST_TOKEN, api_port=str(free_port()))
    platform.serve("api", env=env)
    ingest = platform.ingest()
    wait_for(lambda: platform.db.execute("SELECT 1").fetchone(), timeout=5)
    args = (
        "--devices",
        "6",
        "--rate",
        "20",
        "--count",
        "600",
        "--batch",
        "3",
        "--seed",
        "5",
        "--faults",
        "malformed=0.05,unknown_device=0.05,duplicate=0.1,late=0.05,"
        "out_of_order=0.05,out_of_range=0.05",
    )
    first = wait_for(lambda: _try(platform, env, *args), timeout=30)
    assert first["failures"] == 0 and first["messages_acked"] == first["messages_sent"]
    assert first["readings_sent"] >= 600
    lost = first["faults"]["malformed"] + first["faults"]["unknown_device"]  # type: ignore[index]
    assert lost > 0 and first["faults"]["duplicate"] > 0  # type: ignore[index]

    def distinct_readings() -> int:
        row = platform.db.execute(
            "SELECT count(DISTINCT (device_id, ts)) FROM telemetry"
        ).fetchone()
        return int(row[0]) if row else 0

    wait_for(lambda: distinct_readings() >= first["readings_sent"], timeout=60)
    wait_for(lambda: len(deadletters(platform.redis)) >= lost, timeout=30)
    assert distinct_readings() == first["readings_sent"]
    reasons = {d["reason"] for d in deadletters(platform.redis)}
    assert reasons <= {"invalid_json", "unknown_device"}

    again = _try(
        platform, env, "--devices", "6", "--rate", "20", "--count", "60", "--seed", "5"
    )  # the same devices: their passwords are rotated
    assert again is not None
    assert again["failures"] == 0 and again["devices"] == 6
    devices = platform.db.execute("SELECT count(*) FROM devices").fetchone()
    assert devices == (6,)
    ingest.stop()


def _try(platform: Platform, env: dict[str, str], *args: str) -> dict[str, int] | None:
    result = platform.run("simulate", *args, "--json", env=env, timeout=120)
    if result.returncode == 2 and "command API" in result.stderr:
        return None  # the API is still starting
    assert result.returncode == 0, result.stderr[-3000:]
    summary: dict[str, int] = orjson.loads(result.stdout)
    return summary


def _fleet(url: str, protocol: str = "5", devices: int = 10, count: int = 200) -> Summary:
    """``devices`` devices publishing ``count`` readings straight to the broker at ``url``."""
    config = SimulationConfig(
        api_url="unused",
        api_token="unused",
        mqtt_url=url,
        devices=devices,
        rate=20,
        duration=None,
        count=count,
        protocol=protocol,
    )
    fleet = [
        SimulatedDevice(f"acl-{n}", f"acl-{n}", "pw", f"devices/acl-{n}/telemetry")
        for n in range(devices)
    ]
    profiles = [profile_for("mixed", n, 1) for n in range(devices)]
    return asyncio.run(publish_fleet(config, fleet, profiles, threading.Event()))


def test_a_puback_with_a_failure_reason_code_counts_as_a_failure(tmp_path: Path) -> None:
    acl = tmp_path / "acl"
    acl.write_text("pattern read #\n")  # nobody may publish
    with private_mosquitto(tmp_path / "broker", extra=f"acl_file {acl}\n") as url:
        v5 = _fleet(url, "5")
        v311 = _fleet(url, "3.1.1")
    # MQTT v5: every PUBACK says 0x87 not authorised.
    assert v5.messages_sent >= 200 and v5.messages_acked == 0
    assert v5.failures == v5.publish_errors == v5.messages_sent
    # Mosquitto 2.0 also closes the connection after each refusal (with max_queued_messages
    # 0), so nearly every publish reopened it, often on a reused socket number: none waited
    # for the PUBACK timeout (aiomqtt once left a stale writer on such a number).
    assert v5.seconds < 10
    # MQTT 3.1.1 has no reason codes: the broker acknowledges what it drops.
    assert v311.messages_acked == v311.messages_sent and v311.failures == 0


def test_a_refused_connect_names_the_device(tmp_path: Path) -> None:
    passwords = tmp_path / "passwd"
    passwords.write_text("")  # no user may log in
    with private_mosquitto(tmp_path / "broker", extra=f"password_file {passwords}\n") as url:
        nobody = SimulatedDevice("nobody", "nobody", "pw", "devices/nobody/telemetry")

        async def connect() -> None:
            link = Link(nobody, parse_mqtt_url(url), None, "5", 1, asyncio.Semaphore(1))
            await link.open(grace=0.5)

        with pytest.raises(aiomqtt.MqttError, match="refused iotp-sim-nobody"):
            asyncio.run(connect())
