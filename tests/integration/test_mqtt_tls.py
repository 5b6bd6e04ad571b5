"""MQTT over TLS (mqtts://) with a CA of the test's own: ingest and the simulator connect and
verify the broker; a client that does not trust the CA fails the handshake and stores nothing.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import psycopg
import pytest
import redis
import trustme

from device_simulator.profiles import profile_for
from device_simulator.registration import SimulatedDevice
from device_simulator.runner import SimulationConfig, publish_fleet, run_simulation
from iotp.mqtt_url import parse_mqtt_url, tls_context
from iotp.settings import Settings
from local_platform.broker import BrokerTls, free_port, local_mosquitto
from tests.support.ingest_harness import (
    expected_keys,
    single_messages,
    stored,
    stored_count,
    wait_stored,
)
from tests.support.platform import Platform
from tests.support.servers import TEST_TOKEN
from tests.support.waiting import answers, wait_for


@dataclass(frozen=True)
class TlsPlatform:
    platform: Platform  # its mqtt_url is the broker's mqtts:// listener
    ca_file: Path
    plain_url: str  # the same broker without TLS


@pytest.fixture
def tls_platform(
    settings: Settings, db: psycopg.Connection[Any], redis_client: redis.Redis, tmp_path: Path
) -> Iterator[TlsPlatform]:
    """A private broker with a TLS listener whose certificate a fresh CA signed."""
    certs = tmp_path / "certs"
    certs.mkdir()
    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    ca.cert_pem.write_to_path(str(certs / "ca.crt"))
    for n, pem in enumerate(server.cert_chain_pems):
        pem.write_to_path(str(certs / "server.crt"), append=n > 0)
    server.private_key_pem.write_to_path(str(certs / "server.key"))
    tls = BrokerTls(free_port(), certs / "ca.crt", certs / "server.crt", certs / "server.key")
    db.execute("TRUNCATE ingest_ledger")
    with local_mosquitto(tmp_path / "broker", tls=tls) as broker:
        platform = Platform(settings, f"mqtts://localhost:{tls.port}", db, redis_client, tmp_path)
        try:
            yield TlsPlatform(platform, tls.ca_file, broker.url)
        finally:
            platform.stop_children()


def trusting(ca_file: Path | None) -> ssl.SSLContext:
    """A verifying client context: trusting ``ca_file``, or only the system's CAs."""
    return ssl.create_default_context(cafile=None if ca_file is None else str(ca_file))


async def publish(
    url: str, context: ssl.SSLContext | None, messages: list[tuple[str, bytes]], timeout: float = 10
) -> None:
    broker = parse_mqtt_url(url)
    async with aiomqtt.Client(
        broker.host,
        broker.port,
        tls_context=context,
        protocol=aiomqtt.ProtocolVersion.V5,
        timeout=timeout,
    ) as client:
        for topic, payload in messages:
            await client.publish(topic, payload, qos=1)


def test_ingest_stores_readings_published_over_tls(tls_platform: TlsPlatform) -> None:
    platform = tls_platform.platform
    platform.register("tls-dev")
    ingest = platform.ingest(mqtt_ca_file=str(tls_platform.ca_file))
    messages = single_messages("tls-dev", 0, 5)
    asyncio.run(publish(platform.mqtt_url, trusting(tls_platform.ca_file), messages))
    wait_stored(platform, 15)
    assert ingest.stop() == 0
    assert stored(platform.db) == Counter(expected_keys("tls-dev", 0, 5))


def test_the_simulator_publishes_over_tls(tls_platform: TlsPlatform) -> None:
    platform = tls_platform.platform
    port = free_port()
    platform.serve("api", env=platform.environment(api_token=TEST_TOKEN, api_port=str(port)))
    platform.ingest(mqtt_ca_file=str(tls_platform.ca_file))
    wait_for(lambda: answers(f"http://127.0.0.1:{port}/healthz"), timeout=30)
    # What `iotp simulate` builds from IOTP_MQTT_URL and IOTP_MQTT_CA_FILE.
    settings = Settings(mqtt_url=platform.mqtt_url, mqtt_ca_file=str(tls_platform.ca_file))
    config = SimulationConfig(
        api_url=f"http://127.0.0.1:{port}",
        api_token=TEST_TOKEN,
        mqtt_url=platform.mqtt_url,
        devices=4,
        rate=20,
        duration=None,
        count=80,
        prefix="tls",
        tls=tls_context(parse_mqtt_url(settings.mqtt_url), settings),
    )
    summary = run_simulation(config, threading.Event())
    assert summary.failures == 0 and summary.messages_acked == summary.messages_sent
    assert summary.readings_sent >= 80

    def distinct_readings() -> int:
        row = platform.db.execute(
            "SELECT count(DISTINCT (device_id, ts)) FROM telemetry"
        ).fetchone()
        return int(row[0]) if row else 0

    wait_for(lambda: distinct_readings() >= summary.readings_sent, timeout=30)
    assert distinct_readings() == summary.readings_sent


def test_a_client_that_does_not_trust_the_ca_is_refused(tls_platform: TlsPlatform) -> None:
    platform = tls_platform.platform
    platform.register("tls-dev")
    platform.ingest(mqtt_ca_file=str(tls_platform.ca_file))
    messages = single_messages("tls-dev", 0, 1)
    other_ca = platform.tmp / "other-ca.crt"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    for context in (trusting(None), trusting(other_ca)):
        with pytest.raises(aiomqtt.MqttError, match="CERTIFICATE_VERIFY_FAILED"):
            asyncio.run(publish(platform.mqtt_url, context, messages))
    # The simulator verifies the broker the same way: no connection, nothing sent.
    config = SimulationConfig(
        api_url="unused", api_token="unused", mqtt_url=platform.mqtt_url, devices=1
    )
    device = SimulatedDevice("tls-dev", "tls-dev", "pw", "devices/tls-dev/telemetry")
    with pytest.raises(aiomqtt.MqttError, match="CERTIFICATE_VERIFY_FAILED"):
        asyncio.run(
            publish_fleet(config, [device], [profile_for("mixed", 0, 1)], threading.Event())
        )
    # Plain MQTT on the TLS port is no way around it either: no CONNACK ever comes.
    plain_on_tls = f"mqtt://127.0.0.1:{parse_mqtt_url(platform.mqtt_url).port}"
    with pytest.raises(aiomqtt.MqttError):
        asyncio.run(publish(plain_on_tls, None, messages, timeout=2))
    # A marker sent afterwards (on the plain listener) is stored, and it alone.
    asyncio.run(publish(tls_platform.plain_url, None, single_messages("tls-dev", 1, 1)))
    wait_stored(platform, 3)
    assert stored_count(platform.db) == 3
    assert {ts for _, _, ts in stored(platform.db)} == {
        ts for _, _, ts in expected_keys("tls-dev", 1, 1)
    }
