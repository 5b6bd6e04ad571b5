"""Ingest through a real clustered broker: three NATS 2.9 servers (JetStream cluster, MQTT).

EMQX, the production clustered broker (deploy/emqx), cannot run here. NATS can, so this is
the clustered-broker path tested for real: devices publish QoS 1 to one node, ingest reads
on another, the telemetry table and the event stream get every reading exactly once; and
ingest's persistent session, which NATS keeps in JetStream, survives ingest's restart on a
third node, so what was published meanwhile is not lost.

What it does not cover: NATS 2.9 speaks MQTT 3.1.1 only, so ingest runs with
IOTP_MQTT_PROTOCOL=3.1.1 and IOTP_INGEST_SHARED_SUBSCRIPTION=false, one instance, no
``$share`` group (docs/clustered-broker.md). Each server runs with its own config on free
loopback ports; the machine's own NATS (4222) is not touched.
"""

from __future__ import annotations

import shutil
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
import pytest
import redis

from iotp.settings import Settings
from local_platform.broker import free_port, serving
from tests.support.ingest_harness import (
    deadletters,
    event_readings,
    expected_keys,
    publish,
    single_messages,
    stored,
    telemetry_events,
    wait_stored,
)
from tests.support.platform import Platform
from tests.support.waiting import wait_for

NODES = 3
ALTERNATIVE = {"mqtt_protocol": "3.1.1", "ingest_shared_subscription": "false"}


def node_config(name: str, ports: dict[str, int], routes: list[int], store: Path) -> str:
    """One NATS server of the cluster: JetStream (MQTT sessions live there) and MQTT."""
    route_urls = ", ".join(f'"nats-route://127.0.0.1:{port}"' for port in routes)
    return f"""
server_name: {name}
listen: 127.0.0.1:{ports["client"]}
http: 127.0.0.1:{ports["http"]}
jetstream {{ store_dir: "{store}", max_memory_store: 64MB, max_file_store: 256MB }}
cluster {{ name: iotp, listen: 127.0.0.1:{ports["cluster"]}, routes: [{route_urls}] }}
mqtt {{ listen: 127.0.0.1:{ports["mqtt"]} }}
"""


def healthy(http_port: int) -> bool:
    """Whether the server's JetStream is current (its cluster has a metadata leader)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/healthz", timeout=2) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


@contextmanager
def nats_cluster(tmp: Path) -> Iterator[list[str]]:
    """Run a three-server NATS cluster for the block; yields each server's ``mqtt://`` URL."""
    binary = shutil.which("nats-server")
    if binary is None:
        raise RuntimeError("nats-server is not installed (Debian: apt-get install nats-server)")
    ports = [{k: free_port() for k in ("client", "cluster", "mqtt", "http")} for _ in range(NODES)]
    routes = [p["cluster"] for p in ports]
    tmp.mkdir(parents=True, exist_ok=True)
    with ExitStack() as running:
        for index, node in enumerate(ports):
            name = f"n{index}"
            config = tmp / f"{name}.conf"
            config.write_text(node_config(name, node, routes, tmp / f"{name}-store"))
            command = [binary, "-c", str(config)]
            log = tmp / f"{name}.log"
            running.enter_context(serving(command, node["mqtt"], log, f"nats-server {name}", 20))
        wait_for(lambda: all(healthy(node["http"]) for node in ports), timeout=60, interval=0.2)
        yield [f"mqtt://127.0.0.1:{node['mqtt']}" for node in ports]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[list[str]]:
    with nats_cluster(tmp_path / "nats") as urls:
        yield urls


@pytest.fixture
def platform_on(
    settings: Settings, db: psycopg.Connection[Any], redis_client: redis.Redis, tmp_path: Path
) -> Iterator[list[Platform]]:
    """Platforms sharing the test stores, each on a broker URL the test chooses."""
    made: list[Platform] = []
    yield made
    for platform in made:
        platform.stop_children()


def test_ingest_stores_once_what_devices_publish_to_other_nodes(
    cluster: list[str],
    platform_on: list[Platform],
    settings: Settings,
    db: psycopg.Connection[Any],
    redis_client: redis.Redis,
    tmp_path: Path,
) -> None:
    first, second, third = cluster
    platform = Platform(settings, second, db, redis_client, tmp_path)
    platform_on.append(platform)
    platform.register("nats-a", "nats-b")
    ingest = platform.ingest("0", **ALTERNATIVE)

    publish(first, single_messages("nats-a", 0, 40), protocol=mqtt.MQTTv311)
    publish(third, single_messages("nats-b", 0, 40), protocol=mqtt.MQTTv311)
    publish(third, single_messages("nats-unregistered", 0, 1), protocol=mqtt.MQTTv311)
    wait_stored(platform, 2 * 40 * 3)

    # Stopped, the only instance keeps its session: NATS holds what arrives meanwhile.
    ingest.stop()
    publish(first, single_messages("nats-a", 40, 30), protocol=mqtt.MQTTv311)
    publish(third, single_messages("nats-b", 40, 30), protocol=mqtt.MQTTv311)
    # The same instance (client id) comes back through another node of the cluster.
    elsewhere = Platform(settings, third, db, redis_client, tmp_path / "elsewhere")
    platform_on.append(elsewhere)
    restarted = elsewhere.ingest("0", **ALTERNATIVE)
    assert "(session present: True)" in restarted.output()
    wait_stored(platform, 2 * 70 * 3)

    expected = expected_keys("nats-a", 0, 70) | expected_keys("nats-b", 0, 70)
    assert stored(db) == Counter(expected), "every reading stored exactly once"
    wait_for(lambda: event_readings(telemetry_events(redis_client)) >= Counter(expected))
    assert set(event_readings(telemetry_events(redis_client))) == expected
    # Ingest's validation is the same on this path: the unregistered device is refused.
    wait_for(lambda: deadletters(redis_client))
    assert [(d["device_id"], d["reason"]) for d in deadletters(redis_client)] == [
        ("nats-unregistered", "unknown_device")
    ]
