"""Broker drops are visible (issue 13, finding 3): Mosquitto's $SYS counters reach Prometheus,
/pipeline and the dashboard, against a real broker that really drops messages."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
import pytest
import redis
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from prometheus_client import CollectorRegistry
from streamlit.testing.v1 import AppTest

from ingest.broker_stats import BrokerStats, broker_stats_from
from iotp.mqtt_url import parse_mqtt_url
from iotp.names import BROKER_STATS_KEY
from iotp.settings import Settings
from read_models.health import pipeline_health
from tests.support.broker import private_mosquitto
from tests.support.dashboard_pages import dashboard_settings, run_page
from tests.support.ingest_harness import publish
from tests.support.waiting import wait_for

# Mosquitto's default queue for an offline subscriber is 1000; a small one drops sooner.
# $SYS every second instead of every ten, so the test need not wait.
DROPPING_BROKER = "max_queued_messages 10\nsys_interval 1\n"


@pytest.fixture
def stats_of(
    settings: Settings, redis_client: redis.Redis
) -> Iterator[tuple[list[BrokerStats], CollectorRegistry]]:
    """Started BrokerStats (append them), closed after the test; their own registry."""
    started: list[BrokerStats] = []
    yield started, CollectorRegistry()
    for stats in started:
        stats.close()


def _start(
    settings: Settings,
    client: redis.Redis,
    url: str,
    stats_of: tuple[list[BrokerStats], CollectorRegistry],
) -> BrokerStats:
    started, registry = stats_of
    stats = broker_stats_from(settings.model_copy(update={"mqtt_url": url}), client, registry)
    stats.silence_seconds = 2
    stats.start()
    started.append(stats)
    return stats


def _offline_subscriber(url: str, topic: str) -> None:
    """A persistent session subscribed to ``topic`` whose client then goes away."""
    broker = parse_mqtt_url(url)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="gone", protocol=mqtt.MQTTv5)
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    properties.SessionExpiryInterval = 3600
    client.connect(broker.host, broker.port, clean_start=False, properties=properties)
    client.loop_start()
    client.subscribe(topic, qos=1)[1]
    wait_for(lambda: client.is_connected())
    info = client.publish("probe", b"", qos=1)  # round trip: the SUBSCRIBE was handled
    info.wait_for_publish(timeout=10)
    client.disconnect()
    client.loop_stop()


def _stats(client: redis.Redis) -> dict[str, Any]:
    values: Any = client.hgetall(BROKER_STATS_KEY)
    return dict(values)


def test_drops_at_the_broker_are_counted_exported_and_reported(
    settings: Settings,
    db: psycopg.Connection[Any],
    redis_client: redis.Redis,
    tmp_path: Path,
    stats_of: tuple[list[BrokerStats], CollectorRegistry],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with private_mosquitto(tmp_path / "broker", DROPPING_BROKER) as url:
        _start(settings, redis_client, url, stats_of)
        wait_for(lambda: _stats(redis_client).get("messages_dropped") == "0", timeout=15)
        assert not pipeline_health(db, redis_client).broker.dropping
        _offline_subscriber(url, "devices/+/telemetry")
        publish(url, [("devices/d/telemetry", b"{}")] * 100)
        wait_for(lambda: int(_stats(redis_client)["messages_dropped"]) >= 90, timeout=15)

    registry = stats_of[1]
    assert (registry.get_sample_value("iotp_broker_messages_dropped") or 0) >= 90
    assert registry.get_sample_value("iotp_broker_clients_connected") is not None
    broker = pipeline_health(db, redis_client).broker
    assert broker.reported and broker.dropping and (broker.messages_dropped or 0) >= 90
    assert broker.clients_disconnected == 1  # the offline subscriber's session
    assert broker.version and "mosquitto" in broker.version
    alert = pipeline_health(db, redis_client).alerts[0]
    assert alert.level == "error" and "dropping" in alert.message

    app = _pipeline_page(settings, monkeypatch)
    assert not app.exception
    assert "dropping" in app.error[0].value
    metrics = {m.label: m for m in app.metric}
    assert int(metrics["Messages dropped"].value.replace(",", "")) >= 90


def test_a_broker_that_refuses_its_counters_is_reported(
    settings: Settings,
    db: psycopg.Connection[Any],
    redis_client: redis.Redis,
    tmp_path: Path,
    stats_of: tuple[list[BrokerStats], CollectorRegistry],
) -> None:
    acl = tmp_path / "acl"
    # Anonymous may read telemetry only: Mosquitto grants the subscription to $SYS, and
    # sends nothing on it.
    acl.write_text("topic read devices/#\n")
    with private_mosquitto(tmp_path / "broker", f"acl_file {acl}\nsys_interval 1\n") as url:
        _start(settings, redis_client, url, stats_of)
        wait_for(lambda: _stats(redis_client).get("error"), timeout=15)
    broker = pipeline_health(db, redis_client).broker
    assert not broker.reported and "$SYS/broker/#" in (broker.error or "")
    assert any("$SYS/broker/#" in a.message for a in pipeline_health(db, redis_client).alerts)


def _pipeline_page(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    with dashboard_settings(settings, monkeypatch):
        return run_page("pipeline.py")
