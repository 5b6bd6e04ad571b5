"""500 simulated devices on 500 MQTT connections of their own, in one `iotp simulate` process,
against a real broker, command API and ingest: every reading it reports sent is stored."""

from __future__ import annotations

import re
import time

import orjson

from local_platform.broker import free_port
from tests.support.platform import Platform
from tests.support.servers import TEST_TOKEN
from tests.support.waiting import answers, wait_for

DEVICES = 500
# "New client connected from 127.0.0.1:40112 as iotp-sim-scale-00042 (p5, c1, k30, u'...')."
CONNECTED = re.compile(r"New client connected from (\S+) as iotp-sim-(scale-\d+) ")
DISCONNECTED = re.compile(r"Client iotp-sim-scale-\d+ (?:disconnected|closed its connection)")


def test_five_hundred_devices_each_on_its_own_connection(platform: Platform) -> None:
    port = free_port()
    env = platform.environment(api_token=TEST_TOKEN, api_port=str(port))
    platform.serve("api", env=env)
    ingest = platform.ingest()
    wait_for(lambda: answers(f"http://127.0.0.1:{port}/healthz"), timeout=30)
    began = time.monotonic()
    result = platform.run(
        "simulate",
        *("--devices", str(DEVICES), "--rate", "1", "--duration", "5", "--prefix", "scale"),
        "--json",
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = orjson.loads(result.stdout)
    assert summary["devices"] == DEVICES and summary["failures"] == 0
    assert summary["messages_acked"] == summary["messages_sent"] >= DEVICES * 5

    def distinct_readings() -> int:
        row = platform.db.execute(
            "SELECT count(DISTINCT (device_id, ts)) FROM telemetry"
        ).fetchone()
        return int(row[0]) if row else 0

    wait_for(lambda: distinct_readings() >= summary["readings_sent"], timeout=60)
    assert distinct_readings() == summary["readings_sent"]
    ingest.stop()

    log = (platform.tmp / "broker" / "mosquitto.log").read_text()
    connections = CONNECTED.findall(log)
    assert len(connections) == DEVICES  # one each, none reconnected
    assert len({device for _, device in connections}) == DEVICES
    assert len({source for source, _ in connections}) == DEVICES  # 500 distinct sockets
    # All were open at once: the first device left only after the last one came.
    first_gone = DISCONNECTED.search(log)
    assert first_gone is not None and first_gone.start() > log.rindex("as iotp-sim-scale-")
    assert time.monotonic() - began < 60
