"""HTTP telemetry (POST /telemetry/{device_id}) through a real `iotp ingest`.

Devices authenticate with their own credentials; the answer comes after the commit; what is
stored, de-duplicated, dead-lettered and folded into the read models is what MQTT gives.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import psutil
import psycopg
import pytest

from device_simulator.profiles import profile_for
from device_simulator.registration import ensure_profile
from device_simulator.wire_formats import profile_for_format
from ingest.http_process import STOP_SECONDS
from local_platform.broker import free_port
from tests.support.api_client import AUTH, running_api, wait_relayed
from tests.support.ingest_harness import deadletters, telemetry_events
from tests.support.platform import METRICS, Platform
from tests.support.processes import ServiceProcess
from tests.support.servers import TEST_TOKEN
from tests.support.waiting import wait_for

BASE = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=30)


@dataclass(frozen=True)
class Device:
    device_id: str
    password: str

    @property
    def auth(self) -> tuple[str, str]:
        return (self.device_id, self.password)


@dataclass(frozen=True)
class HttpIngest:
    url: str
    devices: dict[str, Device]

    def post(
        self, device: str, body: object, auth: tuple[str, str] | None = None
    ) -> httpx.Response:
        content = body if isinstance(body, bytes) else orjson.dumps(body)
        credentials = auth if auth is not None else self.devices[device].auth
        return httpx.post(f"{self.url}/telemetry/{device}", content=content, auth=credentials)


def register(platform: Platform, *device_ids: str) -> dict[str, Device]:
    """Devices registered through the command API, with the passwords it answered."""
    devices = {}
    with running_api(platform.settings) as client:
        for device_id in device_ids:
            body = {"device_id": device_id, "name": device_id, "kind": "sensor", "metrics": METRICS}
            answer = client.post("/devices", json=body, headers=AUTH)
            assert answer.status_code == 201, answer.text
            devices[device_id] = Device(device_id, answer.json()["credentials"]["password"])
        wait_relayed(platform.db)
    return devices


def start(platform: Platform, **settings: str) -> HttpIngest:
    devices = register(platform, "http-a", "http-b")
    port = free_port()
    platform.ingest(ingest_http_port=str(port), **settings)
    url = f"http://127.0.0.1:{port}"
    return HttpIngest(url, devices)


@pytest.fixture
def ingest(platform: Platform) -> HttpIngest:
    return start(platform)


def reading(seconds: int, temp: float) -> dict[str, Any]:
    ts = BASE + timedelta(seconds=seconds)
    return {"ts": ts.isoformat(), "metrics": {"temp": temp, "hum": 40.0 + seconds}}


def rows(platform: Platform) -> list[tuple[str, str, datetime, float]]:
    return platform.db.execute(
        "SELECT device_id, metric, ts, value FROM telemetry ORDER BY ts, metric"
    ).fetchall()


def test_a_post_is_answered_after_its_commit_and_stored_once(
    platform: Platform, ingest: HttpIngest
) -> None:
    body = [reading(0, 21.5), reading(10, 22.25)]
    first = ingest.post("http-a", body)
    assert first.status_code == 202, first.text
    assert first.json() == {"readings": 2, "rejected": []}
    # Answered after the commit: the rows are there already, with the times and values sent.
    expected = [
        ("http-a", "hum", BASE, 40.0),
        ("http-a", "temp", BASE, 21.5),
        ("http-a", "hum", BASE + timedelta(seconds=10), 50.0),
        ("http-a", "temp", BASE + timedelta(seconds=10), 22.25),
    ]
    assert rows(platform) == expected

    again = ingest.post("http-a", body)  # the device did not hear the answer: sent twice
    assert again.status_code == 202
    assert rows(platform) == expected
    events = telemetry_events(platform.redis)
    assert [(e.device_id, len(e.readings)) for e in events] == [("http-a", 2)]

    platform.aggregator(aggregator_block_ms="100")

    def folded() -> Any:
        return platform.db.execute(
            "SELECT count, sum, last_value FROM read_models.metric_stats"
            " WHERE device_id = 'http-a' AND metric = 'temp'"
        ).fetchone()

    assert wait_for(folded, timeout=30) == (2, 43.75, 22.25)


def test_credentials_are_the_devices_own(platform: Platform, ingest: HttpIngest) -> None:
    body = reading(0, 20.0)
    a, b = ingest.devices["http-a"], ingest.devices["http-b"]
    assert ingest.post("http-a", body, auth=("http-a", b.password)).status_code == 401
    assert ingest.post("ghost", body, auth=("ghost", a.password)).status_code == 401
    missing = httpx.post(f"{ingest.url}/telemetry/http-a", content=orjson.dumps(body))
    assert missing.status_code == 401
    assert missing.headers["WWW-Authenticate"].startswith("Basic")
    forbidden = ingest.post("http-b", body, auth=a.auth)  # a's credentials for b's path
    assert forbidden.status_code == 403
    assert rows(platform) == []
    assert ingest.post("http-b", body).status_code == 202


def test_repeated_refusals_are_slowed_down(platform: Platform) -> None:
    ingest = start(platform, auth_failure_limit="3")
    wrong = ("http-a", "not-the-password")
    statuses = [ingest.post("http-a", reading(0, 1.0), auth=wrong).status_code for _ in range(4)]
    assert statuses == [401, 401, 401, 429]
    throttled = ingest.post("http-a", reading(0, 1.0))  # the right password, same address
    assert throttled.status_code == 429 and int(throttled.headers["Retry-After"]) >= 1


def test_a_body_over_the_size_limit_is_refused_unread(platform: Platform) -> None:
    ingest = start(platform, ingest_max_payload_bytes="1024")
    big = [reading(i, 20.0) for i in range(40)]
    assert len(orjson.dumps(big)) > 1024
    assert ingest.post("http-a", big).status_code == 413
    assert ingest.post("http-a", big[:3]).status_code == 202
    assert len(rows(platform)) == 6


def test_a_post_is_refused_while_ingest_is_behind(platform: Platform) -> None:
    ingest = start(platform, ingest_http_max_pending="1")
    answers: list[httpx.Response] = []

    def post(n: int) -> None:
        answers.append(ingest.post("http-a", reading(n, 20.0)))

    with _telemetry_locked(platform):
        posts = [threading.Thread(target=post, args=(n,)) for n in range(5)]
        for thread in posts:
            thread.start()
        # One request waits for its commit (the table is locked); the rest find ingest behind.
        wait_for(lambda: len(answers) == 4, timeout=15)
        assert {a.status_code for a in answers} == {429}
        assert all(a.headers["Retry-After"] == "1" for a in answers)
    for thread in posts:
        thread.join(timeout=30)
    assert len(answers) == 5 and answers[-1].status_code == 202
    assert len(rows(platform)) == 2


def test_a_payload_that_cannot_be_stored_is_dead_lettered_and_refused(
    platform: Platform, ingest: HttpIngest
) -> None:
    broken = ingest.post("http-a", b'{"ts": "2024-')
    assert broken.status_code == 422
    (issue,) = broken.json()["detail"]
    assert issue["type"] == "invalid_json" and issue["loc"] == ["body"]

    partly = ingest.post("http-a", [reading(0, 20.0), {"metrics": {"temp": "warm"}}])
    assert partly.status_code == 202
    assert partly.json()["readings"] == 1
    assert [r["type"] for r in partly.json()["rejected"]] == ["invalid_value"]
    assert len(rows(platform)) == 2

    letters = deadletters(platform.redis)
    assert [(d["reason"], d["device_id"], d["index"]) for d in letters] == [
        ("invalid_json", "http-a", ""),
        ("invalid_value", "http-a", "1"),
    ]
    assert letters[0]["topic"] == "POST /telemetry/http-a"
    assert letters[0]["payload"] == '{"ts": "2024-'


@contextmanager
def _telemetry_locked(platform: Platform) -> Iterator[None]:
    """Hold a lock on the telemetry table: ingest's commits wait until the block ends."""
    with psycopg.connect(platform.settings.database_url) as conn:
        conn.execute("LOCK TABLE telemetry IN EXCLUSIVE MODE")
        try:
            yield
        finally:
            conn.rollback()


SUMMARY_KEYS = {
    "devices",
    "messages_sent",
    "messages_acked",
    "readings_sent",
    "publish_errors",
    "failures",
    "seconds",
    "messages_per_s",
    "readings_per_s",
    "faults",
}


TREES = {"senml+json": "devices/+/senml", "json-map": "tele/+/SENSOR", "plain": "+/sensor/+/state"}


@pytest.mark.parametrize("transport", ["http", "mqtt"])
@pytest.mark.parametrize("payload_format", ["iotp", "senml+json", "json-map", "plain"])
def test_simulated_devices_send_in_each_format(
    platform: Platform, payload_format: str, transport: str
) -> None:
    port = free_port()
    env = platform.environment(
        api_token=TEST_TOKEN, api_port=str(free_port()), ingest_http_port=str(port)
    )
    platform.serve("api", env=env)
    # The profiles exist before ingest starts, as in a deployment: ingest reads them at start.
    with running_api(platform.settings) as api:
        api.headers.update(AUTH)
        for kind in ("thermostat", "tracker"):
            sim = profile_for(kind, 0, seed=1)
            profile = profile_for_format(payload_format, kind, sim.metrics)
            if profile is not None:
                ensure_profile(api, profile)
        wait_relayed(platform.db)
    ingest = platform.ingest(ingest_http_port=str(port))
    # Tasmota's times have whole seconds: a device of it sends at most one reading a second.
    rate, count = ("0.5", "6") if payload_format == "json-map" else ("10", "30")
    args = ["--devices", "3", "--rate", rate, "--seed", "2", "--transport", transport]
    args += ["--format", payload_format]
    if transport == "mqtt" and payload_format in TREES:
        # Ingest subscribes to a profile's tree once a device of it is registered: what the
        # broker was sent before that had no subscriber.
        assert wait_for(lambda: _simulate(platform, env, *args, "--count", "3"), timeout=30)
        ingest.wait_for(f"subscribing to {TREES[payload_format]}", timeout=10)
    # A plain value is stored at its receive time: one row per message (metric).
    query = (
        "SELECT count(*) FROM telemetry"
        if payload_format == "plain"
        else "SELECT count(DISTINCT (device_id, ts)) FROM telemetry"
    )
    before = _count(platform, query)
    summary = wait_for(lambda: _simulate(platform, env, *args, "--count", count), timeout=30)
    assert set(summary) == SUMMARY_KEYS
    assert summary["failures"] == 0 and summary["messages_acked"] == summary["messages_sent"]
    assert deadletters(platform.redis) == []
    expected = before + summary["messages_sent" if payload_format == "plain" else "readings_sent"]
    if transport == "http":  # answered after the commit: stored already
        assert _count(platform, query) == expected
    else:
        wait_for(lambda: _count(platform, query) >= expected, timeout=15)
        assert _count(platform, query) == expected


def _simulate(platform: Platform, env: dict[str, str], *args: str) -> dict[str, Any] | None:
    result = platform.run("simulate", *args, "--json", env=env, timeout=120)
    if result.returncode == 2 and "command API" in result.stderr:
        return None  # the API is still starting
    assert result.returncode == 0, result.stderr[-3000:]
    summary: dict[str, Any] = orjson.loads(result.stdout)
    return summary


def _count(platform: Platform, query: str) -> int:
    row = platform.db.execute(query).fetchone()
    return int(row[0]) if row else 0


# HTTP telemetry runs in a process of its own, which `iotp ingest` starts (ingest/http_process.py).


def _http_child(ingest: ServiceProcess) -> psutil.Process:
    (child,) = psutil.Process(ingest.pid).children()
    assert "ingest.http_process" in " ".join(child.cmdline())
    return child


def test_http_messages_count_in_the_ingests_own_counters(platform: Platform) -> None:
    metrics_port = free_port()
    served = start(platform, ingest_metrics_port=str(metrics_port))
    process = platform.children[-1]
    assert served.post("http-a", [reading(0, 20.0), reading(1, 21.0)]).status_code == 202
    assert served.post("http-a", {"metrics": {"temp": "warm"}}).status_code == 422
    key = "iotp:ingest:stats:iotp-ingest-vm-0"

    def reported() -> dict[str, str] | None:
        stats: Any = platform.redis.hgetall(key)
        return stats if stats.get("received") == "2" else None

    stats = wait_for(reported, timeout=10)
    assert (stats["stored"], stats["deadletters"]) == ("4", "1")
    # one process as far as `iotp status` and Prometheus can tell
    assert list(platform.redis.scan_iter("iotp:ingest:stats:*")) == [key]
    metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
    assert "iotp_ingest_messages_received_total 2.0" in metrics
    assert process.stop() == 0
    assert not _http_child_alive(process)


def _http_child_alive(ingest: ServiceProcess) -> bool:
    # process_iter's attrs: a process that is a zombie or gone by now reads as no command line
    # (another test's child may be one), where cmdline() would raise.
    return any(
        "ingest.http_process" in " ".join(p.info["cmdline"] or ())
        for p in psutil.process_iter(["cmdline"])
    )


def test_the_mqtt_ingest_process_never_loads_the_web_stack() -> None:
    code = (
        "import sys, ingest.service;"
        " print(sorted({'fastapi', 'uvicorn', 'starlette'} & set(sys.modules)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]"


def test_ingest_stops_and_fails_when_its_http_process_dies(platform: Platform) -> None:
    start(platform)
    process = platform.children[-1]
    _http_child(process).kill()
    assert process.wait(timeout=30) != 0
    assert "the HTTP telemetry process ended" in process.output()


def test_the_http_process_stops_when_its_ingest_is_gone(platform: Platform) -> None:
    served = start(platform)
    process = platform.children[-1]
    child = _http_child(process)
    os.kill(process.pid, signal.SIGKILL)  # the ingest alone, not its process group
    child.wait(timeout=STOP_SECONDS)
    # the port is free again for the next ingest
    platform.ingest(ingest_http_port=served.url.rsplit(":", 1)[1])
    assert served.post("http-a", reading(0, 20.0)).status_code == 202
