"""Read models built by real aggregators from real ingest: they converge on the write store."""

from __future__ import annotations

import random
import threading
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from tests.support.api_client import AUTH, running_api, wait_relayed
from tests.support.ingest_harness import BASE, publish
from tests.support.platform import Platform
from tests.support.processes import ServiceProcess
from tests.support.read_model_harness import (
    Models,
    assert_models_equal,
    from_write_store,
    read_models,
    wait_converged,
)
from tests.support.waiting import wait_for

DEVICES = [f"rm-{n}" for n in range(5)]
DECLARED = [{"name": "temp", "min": -10, "max": 40}, {"name": "hum", "min": 0, "max": 100}]
# Aggregators that claim a dead one's entries, and notice new ones, within a test's patience.
QUICK_AGGREGATORS = {"aggregator_claim_idle_ms": "500", "aggregator_block_ms": "100"}


def workload(seed: int, devices: list[str], count: int) -> list[tuple[str, bytes]]:
    """Readings with duplicates, out-of-order and late timestamps, breaches and bad input."""
    rng = random.Random(seed)
    messages: list[tuple[str, bytes]] = []
    for _ in range(count):
        device = rng.choice(devices)
        topic = f"devices/{device}/telemetry"

        def one() -> dict[str, Any]:
            late = rng.random() < 0.1
            ts = BASE - timedelta(days=2) if late else BASE
            ts += timedelta(seconds=rng.randrange(0, 3 * 3600))
            # Quarters add up exactly in binary floating point, so sums compare exactly.
            metrics = {"temp": rng.randint(-80, 240) / 4}
            if rng.random() < 0.7:
                metrics["hum"] = rng.randint(0, 440) / 4
            return {"ts": ts.isoformat(), "metrics": metrics}

        payload = [one() for _ in range(rng.randint(2, 6))] if rng.random() < 0.3 else one()
        messages.append((topic, orjson.dumps(payload)))
        if rng.random() < 0.1:
            messages.append((topic, orjson.dumps(payload)))  # a duplicate
        if rng.random() < 0.03:
            messages.append((topic, b"{broken"))
    rng.shuffle(messages)
    return messages


def aggregator(platform: Platform, instance: str = "0") -> ServiceProcess:
    return platform.aggregator(instance, **QUICK_AGGREGATORS)


def settled(platform: Platform) -> None:
    """Wait until ingest has stored everything it was sent (no new rows for a while)."""
    counts: list[int] = []

    def quiet() -> bool:
        row = platform.db.execute("SELECT count(*) FROM telemetry").fetchone()
        counts.append(row[0] if row else 0)
        return len(counts) >= 4 and len(set(counts[-4:])) == 1

    wait_for(quiet, timeout=90, interval=0.5)


def converged(platform: Platform) -> Models:
    settled(platform)
    return wait_converged(platform.db, timeout=60, interval=0.2)


def iotp_rebuild(platform: Platform) -> str:
    result = platform.run("rebuild", env=platform.environment(**QUICK_AGGREGATORS), timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_randomised_workload_converges_exactly_and_rebuild_agrees(platform: Platform) -> None:
    platform.register(*DEVICES[:4], metrics=DECLARED)
    platform.register(DEVICES[4], metrics=[])
    ingest = platform.ingest()
    agg = aggregator(platform)
    publish(platform.mqtt_url, workload(1, DEVICES, 300))
    with running_api(platform.settings) as client:
        assert client.post(f"/devices/{DEVICES[0]}/decommission", headers=AUTH).status_code == 200
        assert (
            client.patch(
                f"/devices/{DEVICES[1]}", json={"name": "renamed"}, headers=AUTH
            ).status_code
            == 200
        )
        wait_relayed(platform.db)
    publish(platform.mqtt_url, workload(2, DEVICES, 300))
    expected = converged(platform)
    assert expected["metric_stats"], "the workload stored readings"
    assert any(v[10] for v in expected["metric_stats"].values()), "and range breaches"
    status = platform.db.execute(
        "SELECT status FROM read_models.devices WHERE device_id = %s", (DEVICES[0],)
    ).fetchone()
    assert status == ("decommissioned",)

    live = read_models(platform.db)
    iotp_rebuild(platform)
    assert_models_equal(read_models(platform.db), live)
    iotp_rebuild(platform)
    assert_models_equal(read_models(platform.db), live)
    agg.stop()
    ingest.stop()


def test_redelivered_and_resent_events_change_nothing(platform: Platform) -> None:
    from read_models.service import aggregator_for

    platform.register(*DEVICES[:3], metrics=DECLARED)
    ingest = platform.ingest()
    agg = aggregator(platform)
    publish(platform.mqtt_url, workload(3, DEVICES[:3], 100))
    converged(platform)
    before = read_models(platform.db)
    agg.stop()
    ingest.stop()

    import redis

    client = redis.Redis.from_url(platform.settings.redis_url)
    in_process = aggregator_for(platform.settings, client)
    entries: Any = client.xrange("iotp:events:telemetry")
    devices: Any = client.xrange("iotp:events:devices")
    # The same entries delivered again, as after a crash before XACK...
    in_process.deliver(
        {
            "iotp:events:telemetry": [(i.decode(), f) for i, f in entries],
            "iotp:events:devices": [(i.decode(), f) for i, f in devices],
        }
    )
    # ...and the same events re-sent under new stream ids, as a republished ledger does.
    for _, fields in entries[:20]:
        client.xadd("iotp:events:telemetry", fields)
    outcome = in_process.step()
    in_process.part.close()
    assert outcome.entries >= 20 and outcome.applied == 0
    assert_models_equal(read_models(platform.db), before)


def test_killed_and_side_by_side_aggregators_converge(platform: Platform) -> None:
    platform.register(*DEVICES, metrics=DECLARED)
    ingest = platform.ingest()
    first, second = aggregator(platform, "a"), aggregator(platform, "b")
    stop = threading.Event()
    publisher = threading.Thread(
        target=publish, args=(platform.mqtt_url, workload(4, DEVICES, 1500)), kwargs={"stop": stop}
    )
    publisher.start()
    wait_for(
        lambda: (
            platform.db.execute("SELECT count(*) FROM read_models.applied_events").fetchone()[0]
            > 100
        ),  # type: ignore[index]
        timeout=60,
        interval=0.01,
    )
    first.kill()
    publisher.join(timeout=120)
    converged(platform)  # the survivor claims what the dead one left pending
    first.start()  # and a restarted one drains its own pending entries harmlessly
    publish(platform.mqtt_url, workload(5, DEVICES, 200))
    converged(platform)
    for process in (first, second):
        assert process.stop() == 0
    ingest.stop()


def test_rebuild_on_a_live_system_hands_over_exactly(platform: Platform) -> None:
    platform.register(*DEVICES, metrics=DECLARED)
    ingest = platform.ingest()
    agg = aggregator(platform)
    publish(platform.mqtt_url, workload(6, DEVICES, 400))
    stop = threading.Event()

    def keep_publishing() -> None:
        seed = 100
        while not stop.is_set():
            publish(platform.mqtt_url, workload(seed, DEVICES, 50))
            seed += 1

    publisher = threading.Thread(target=keep_publishing)
    publisher.start()
    try:
        reports = [iotp_rebuild(platform) for _ in range(3)]
    finally:
        stop.set()
        publisher.join(timeout=120)
    handed_over = [int(r.split("handed over ")[1].split()[0]) for r in reports]
    assert any(n > 0 for n in handed_over), reports
    converged(platform)
    agg.stop()
    ingest.stop()


def test_events_published_after_a_rebuild_whose_readings_it_counted_change_nothing(
    platform: Platform,
) -> None:
    """Ingest stored readings while Redis was away: their events wait in its ledger and are
    published after a rebuild (or a heal) counted the readings from the write store."""
    from iotp.events import telemetry_recorded_fields
    from read_models.rebuild import rebuild
    from read_models.service import aggregator_for

    platform.register(DEVICES[0], metrics=DECLARED)
    received = datetime.now(UTC)
    readings = [(BASE + timedelta(seconds=n), {"temp": n / 4, "hum": 50.0}) for n in range(3)]
    fields = telemetry_recorded_fields(
        DEVICES[0], [(ts, metrics, ()) for ts, metrics in readings], received, received
    )
    with platform.db.transaction():  # as ingest commits a batch: the rows and its ledger
        for ts, metrics in readings:
            for metric, value in metrics.items():
                platform.db.execute(
                    "INSERT INTO telemetry (device_id, ts, metric, value, received_at)"
                    " VALUES (%s, %s, %s, %s, %s)",
                    (DEVICES[0], ts, metric, value, received),
                )
        platform.db.execute(
            "INSERT INTO ingest_ledger (batch_id, consumer, entries) VALUES (%s, 'ingest-0', %s)",
            (uuid.uuid4(), orjson.dumps([fields])),
        )
    reader = aggregator_for(platform.settings, platform.redis)
    try:
        while reader.step().entries:  # the device's registration
            pass
        rebuild(platform.settings)
        assert_models_equal(read_models(platform.db), from_write_store(platform.db))
        platform.redis.xadd("iotp:events:telemetry", fields)  # type: ignore[arg-type]
        assert reader.step().applied == 0
    finally:
        reader.part.close()
    assert_models_equal(read_models(platform.db), from_write_store(platform.db))
