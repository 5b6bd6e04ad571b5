"""`iotp simulate` against the real platform: what it says it sent is what was stored."""

from __future__ import annotations

import subprocess
import sys

import orjson

from local_platform.broker import free_port
from tests.conftest import TEST_TOKEN, wait_for
from tests.integration.ingest_harness import Platform, deadletters, ingest_env


def test_simulated_fleet_with_faults_is_stored_and_dead_lettered(platform: Platform) -> None:
    port = free_port()
    env = ingest_env(platform.settings, platform.mqtt_url, api_token=TEST_TOKEN, api_port=str(port))
    api = subprocess.Popen(
        [sys.executable, "-m", "cli", "api"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    platform.children.append(type("Child", (), {"process": api})())
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
    assert again is not None
    assert again["failures"] == 0 and again["devices"] == 6
    devices = platform.db.execute("SELECT count(*) FROM devices").fetchone()
    assert devices == (6,)
    ingest.stop()


def _try(platform: Platform, env: dict[str, str], *args: str) -> dict[str, int] | None:
    result = subprocess.run(
        [sys.executable, "-m", "cli", "simulate", *args, "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if result.returncode == 2 and "command API" in result.stderr:
        return None  # the API is still starting
    assert result.returncode == 0, result.stderr[-3000:]
    summary: dict[str, int] = orjson.loads(result.stdout)
    return summary
