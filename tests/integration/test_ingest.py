"""`iotp ingest` against real Mosquitto, PostgreSQL and Redis: exactly once, or dead-lettered."""

from __future__ import annotations

import threading
import time
from collections import Counter
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson
import pytest

from local_platform.broker import free_port
from tests.support.api_client import AUTH, running_api, wait_relayed
from tests.support.ingest_harness import (
    BASE,
    batched_messages,
    deadletters,
    event_readings,
    expected_keys,
    publish,
    reading,
    single_messages,
    stored,
    stored_count,
    telemetry_events,
    wait_stored,
)
from tests.support.platform import Platform
from tests.support.tcp_proxy import TcpProxy
from tests.support.waiting import wait_for


def test_single_and_batched_payloads_store_exactly_and_emit_one_event_per_message(
    platform: Platform,
) -> None:
    devices = [f"dev-{n}" for n in range(4)]
    platform.register(*devices)
    ingest = platform.ingest()
    messages = []
    for device in devices[:2]:
        messages += single_messages(device, 0, 150)
    for device in devices[2:]:
        messages += batched_messages(device, 0, 150, per=25)
    publish(platform.mqtt_url, messages)
    expected = set().union(*(expected_keys(d, 0, 150) for d in devices))
    wait_stored(platform, len(expected))
    wait_for(lambda: len(telemetry_events(platform.redis)) >= len(messages), timeout=30)
    assert ingest.stop() == 0

    rows = stored(platform.db)
    assert set(rows) == expected and max(rows.values()) == 1
    events = telemetry_events(platform.redis)
    assert len(events) == len(messages) == 2 * 150 + 2 * 6
    assert event_readings(events) == Counter(expected)
    assert len({e.event_id for e in events}) == len(events)
    assert deadletters(platform.redis) == []


def test_the_same_message_twice_stores_and_emits_once(platform: Platform) -> None:
    platform.register("twice")
    ingest = platform.ingest()
    message = single_messages("twice", 0, 1) + batched_messages("twice", 1, 10, per=10)
    publish(platform.mqtt_url, message + message)
    publish(platform.mqtt_url, message)  # and again, in a later batch
    wait_stored(platform, 33)
    wait_for(lambda: len(telemetry_events(platform.redis)) >= 2)
    ingest.stop()
    assert stored_count(platform.db) == 33
    events = telemetry_events(platform.redis)
    assert len(events) == 2
    assert event_readings(events) == Counter(expected_keys("twice", 0, 11))


def test_bad_payloads_are_dead_lettered_beside_stored_good_readings(platform: Platform) -> None:
    platform.register("good")
    ingest = platform.ingest()
    mixed = [
        reading(0),
        {"ts": "garbage", "metrics": {"temp": 1}},
        {"ts": reading(1)["ts"], "metrics": {"temp": "hot", "hum": 10}},
        {"ts": reading(2)["ts"], "metrics": {"temp": 900}},
    ]
    messages = [
        ("devices/good/telemetry", orjson.dumps(mixed)),
        ("devices/good/telemetry", b"\xff\xfe not utf-8"),
        ("devices/good/telemetry", b'{"metrics": {"temp": NaN}}'),
        ("devices/good/telemetry", orjson.dumps({"metrics": {"pressure": 1}})),
        ("devices/good/telemetry", orjson.dumps({"metrics": {"temp": 1}, "pad": "x" * 300_000})),
        ("devices/nobody/telemetry", orjson.dumps(reading(3))),
    ]
    publish(platform.mqtt_url, messages)
    wait_for(lambda: len(deadletters(platform.redis)) >= 7, timeout=30)
    wait_stored(platform, 5)
    ingest.stop()

    letters = deadletters(platform.redis)
    assert sorted(d["reason"] for d in letters) == sorted(
        [
            "invalid_timestamp",
            "invalid_value",
            "not_utf8",
            "invalid_json",
            "unknown_metric",
            "payload_too_large",
            "unknown_device",
        ]
    )
    for letter in letters:
        assert letter["topic"].startswith("devices/") and letter["received_at"]
        assert letter["detail"]
        assert len(letter["payload"]) <= 1024 * 4
    oversized = next(d for d in letters if d["reason"] == "payload_too_large")
    assert int(oversized["payload_bytes"]) > 300_000
    rows = platform.db.execute("SELECT metric, value FROM telemetry ORDER BY ts, metric").fetchall()
    assert rows == [("bat", 99.0), ("hum", 50.0), ("temp", 20.0), ("hum", 10.0), ("temp", 900.0)]
    (event,) = telemetry_events(platform.redis)
    assert [r.out_of_range for r in event.readings] == [(), (), ("temp",)]


def test_unknown_then_registered_and_decommissioned_devices(platform: Platform) -> None:
    platform.register("early")
    ingest = platform.ingest()
    publish(platform.mqtt_url, single_messages("late", 0, 1))
    wait_for(lambda: deadletters(platform.redis), timeout=20)
    assert deadletters(platform.redis)[0]["reason"] == "unknown_device"

    platform.register("late")
    publish(platform.mqtt_url, single_messages("late", 1, 1))
    wait_stored(platform, 3, timeout=20)

    with running_api(platform.settings) as client:
        assert client.post("/devices/early/decommission", headers=AUTH).status_code == 200
        wait_relayed(platform.db)

    def refused() -> bool:
        publish(platform.mqtt_url, single_messages("early", 0, 1))
        reasons = [d["reason"] for d in deadletters(platform.redis)]
        return "device_decommissioned" in reasons

    wait_for(refused, timeout=10, interval=0.3)
    ingest.stop()
    assert {d for d, _, _ in stored(platform.db)} == {"late"}


def test_out_of_order_and_late_timestamps_are_stored_as_sent(platform: Platform) -> None:
    platform.register("jumbled")
    ingest = platform.ingest()
    order = [5, 1, 9, 0, 3, 2, 8, 7, 4, 6]
    late = (BASE - timedelta(days=20)).isoformat()
    messages = [("devices/jumbled/telemetry", orjson.dumps(reading(i))) for i in order]
    messages.append(
        ("devices/jumbled/telemetry", orjson.dumps({"ts": late, "metrics": {"temp": -5}}))
    )
    publish(platform.mqtt_url, messages)
    wait_stored(platform, 31)
    ingest.stop()
    rows = platform.db.execute(
        "SELECT ts FROM telemetry WHERE metric = 'temp' ORDER BY ts"
    ).fetchall()
    assert [r[0] for r in rows] == [BASE - timedelta(days=20)] + [
        BASE + timedelta(seconds=i) for i in range(10)
    ]


def test_sigkill_mid_stream_loses_nothing_and_doubles_nothing(platform: Platform) -> None:
    devices = [f"k{n}" for n in range(5)]
    platform.register(*devices)
    ingest = platform.ingest()
    total_per_device = 600
    messages = []
    for start in range(0, total_per_device, 20):
        for device in devices:
            messages += single_messages(device, start, 10)
            messages += batched_messages(device, start + 10, 10, per=10)
    # The first half is published while ingest runs and is killed part-way through it; the
    # second half after the kill (ingest may keep up with one publisher, so without it the
    # kill could land after the last message), into the session, for the restarted ingest.
    half = len(messages) // 2
    publisher = threading.Thread(target=publish, args=(platform.mqtt_url, messages[:half]))
    publisher.start()
    wait_for(lambda: stored_count(platform.db) > 1500, timeout=30, interval=0.01)
    ingest.kill()
    publisher.join(timeout=120)
    publish(platform.mqtt_url, messages[half:])
    killed_at = stored_count(platform.db)
    ingest = platform.ingest()
    expected = set().union(*(expected_keys(d, 0, total_per_device) for d in devices))
    wait_stored(platform, len(expected), timeout=90)
    wait_for(lambda: set(event_readings(telemetry_events(platform.redis))) >= expected, timeout=30)
    ingest.stop()

    assert killed_at < len(expected), "the kill happened mid-stream"
    rows = stored(platform.db)
    assert set(rows) == expected and max(rows.values()) == 1
    events = telemetry_events(platform.redis)
    assert set(event_readings(events)) == expected
    # An event may arrive twice (republished from the ledger), but then as the same event.
    by_id: dict[Any, Any] = {}
    for event in events:
        assert by_id.setdefault(event.event_id, event) == event
    assert event_readings(by_id.values()) == Counter(expected)


def test_two_ingest_processes_share_the_work_exactly_once(platform: Platform) -> None:
    devices = [f"s{n}" for n in range(6)]
    platform.register(*devices)
    first, second = platform.ingest("a"), platform.ingest("b")
    messages = []
    for device in devices:
        messages += single_messages(device, 0, 200)
    publish(platform.mqtt_url, messages)
    expected = set().union(*(expected_keys(d, 0, 200) for d in devices))
    wait_stored(platform, len(expected))
    wait_for(lambda: len(telemetry_events(platform.redis)) >= len(messages), timeout=30)
    first.stop()
    second.stop()
    rows = stored(platform.db)
    assert set(rows) == expected and max(rows.values()) == 1
    assert event_readings(telemetry_events(platform.redis)) == Counter(expected)
    stats = {k: platform.redis.hgetall(k) for k in platform.redis.scan_iter("iotp:ingest:stats:*")}
    received = [int(v["received"]) for v in stats.values()]
    assert len(received) == 2 and all(n > 0 for n in received), stats


def test_mqtt_311_with_a_plain_subscription(platform: Platform) -> None:
    platform.register("legacy")
    ingest = platform.ingest(mqtt_protocol="3.1.1", ingest_shared_subscription="false")
    publish(platform.mqtt_url, single_messages("legacy", 0, 50))
    wait_stored(platform, 150)
    ingest.stop()
    assert "subscribed to devices/+/telemetry" in ingest.output()
    assert len(telemetry_events(platform.redis)) == 50


def test_postgresql_away_for_seconds_then_back_loses_nothing(platform: Platform) -> None:
    parts = urlsplit(platform.settings.database_url)
    if parts.port is None and not parts.hostname:
        pytest.skip("the test PostgreSQL listens on a Unix socket only: nothing to cut")
    platform.register("patient")
    with TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432) as proxy:
        netloc = parts.netloc.rsplit("@", 1)
        auth = netloc[0] + "@" if len(netloc) == 2 else ""
        proxied = urlunsplit(parts._replace(netloc=f"{auth}127.0.0.1:{proxy.port}"))
        ingest = platform.ingest(database_url=proxied)
        publish(platform.mqtt_url, single_messages("patient", 0, 20))
        wait_stored(platform, 60)

        proxy.cut()
        outage = threading.Thread(
            target=publish, args=(platform.mqtt_url, single_messages("patient", 20, 100))
        )
        outage.start()
        outage.join(timeout=60)
        wait_for(lambda: "postgresql unreachable" in ingest.output(), timeout=20)
        time.sleep(3)  # a few seconds of outage, with ingest retrying
        assert stored_count(platform.db) < 360
        proxy.restore()

        wait_stored(platform, 360, timeout=60)
        wait_for(lambda: len(telemetry_events(platform.redis)) >= 120, timeout=30)
        ingest.stop()
    rows = stored(platform.db)
    assert set(rows) == expected_keys("patient", 0, 120) and max(rows.values()) == 1
    assert event_readings(telemetry_events(platform.redis)) == Counter(
        expected_keys("patient", 0, 120)
    )
    assert "resuming" in ingest.output()


def test_redis_away_for_seconds_then_back_loses_no_event(platform: Platform) -> None:
    platform.register("steady")
    host_port = platform.settings.redis_url.split("//", 1)[1].split("/", 1)[0]
    host, port = host_port.split(":")
    with TcpProxy("127.0.0.1" if host == "localhost" else host, int(port)) as proxy:
        database = platform.settings.redis_url.rsplit("/", 1)[1]
        ingest = platform.ingest(redis_url=f"redis://127.0.0.1:{proxy.port}/{database}")
        publish(platform.mqtt_url, single_messages("steady", 0, 10))
        wait_for(lambda: len(telemetry_events(platform.redis)) == 10)
        proxy.cut()
        publish(platform.mqtt_url, single_messages("steady", 10, 40))
        wait_for(lambda: "redis unreachable" in ingest.output(), timeout=20)
        time.sleep(2)
        proxy.restore()
        wait_for(lambda: len(telemetry_events(platform.redis)) >= 50, timeout=60)
        ingest.stop()
    assert event_readings(telemetry_events(platform.redis)) == Counter(
        expected_keys("steady", 0, 50)
    )
    assert set(stored(platform.db)) == expected_keys("steady", 0, 50)


def test_committed_but_unpublished_batches_are_republished_on_start(platform: Platform) -> None:
    from iotp.events import RecordedReading, TelemetryRecorded, to_fields
    from iotp.settings import Settings as _Settings

    event = TelemetryRecorded(
        device_id="orphan",
        readings=(RecordedReading(ts=BASE, metrics={"temp": 1.0}),),
        ingested_at=BASE,
    )
    consumer = _Settings(ingest_instance="0").ingest_client_id()
    platform.db.execute(
        "INSERT INTO ingest_ledger (batch_id, consumer, entries)"
        " VALUES (gen_random_uuid(), %s, %s)",
        (consumer, orjson.dumps([to_fields(event)])),
    )
    ingest = platform.ingest("0")
    wait_for(lambda: telemetry_events(platform.redis) == [event], timeout=20)
    wait_for(lambda: platform.db.execute("SELECT count(*) FROM ingest_ledger").fetchone() == (0,))
    ingest.stop()


def test_counters_reach_prometheus_and_iotp_status(platform: Platform) -> None:
    import httpx

    platform.register("counted")
    port = free_port()
    ingest = platform.ingest(ingest_metrics_port=str(port))
    publish(
        platform.mqtt_url,
        [*single_messages("counted", 0, 5), ("devices/counted/telemetry", b"nope")],
    )
    wait_stored(platform, 15)
    metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    assert "iotp_ingest_messages_received_total 6.0" in metrics
    assert "iotp_ingest_readings_stored_total 15.0" in metrics
    assert 'iotp_ingest_deadletters_total{reason="invalid_json"} 1.0' in metrics
    assert "iotp_ingest_batch_seconds_bucket" in metrics

    def status() -> dict[str, Any]:
        result = platform.run("status", "--json", timeout=30)
        assert result.returncode == 0, result.stderr
        report: dict[str, Any] = orjson.loads(result.stdout)
        return report

    report = wait_for(
        lambda: (
            (r := status())["ingest"] and next(iter(r["ingest"].values()))["stored"] == 15 and r
        ),
        timeout=15,
    )
    (counters,) = report["ingest"].values()
    assert counters["received"] == 6 and counters["deadletters"] == 1
    assert report["streams"]["iotp:deadletter:telemetry"] == 1
    assert {"iotp:events:alarms", "iotp:events:alarm-rules", "iotp:events:webhooks"} <= set(
        report["streams"]
    )
    ingest.stop()
