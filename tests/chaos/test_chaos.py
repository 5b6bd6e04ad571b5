"""Chaos: faults injected while a publisher sends steadily; nothing lost, nothing counted twice.

Each scenario runs two ingests on the shared subscription and one aggregator against a real
Mosquitto (restartable), PostgreSQL and Redis (each behind a TCP proxy the test can cut),
injects one fault mid-stream, then checks that telemetry holds exactly the acknowledged
readings and that every read model equals a recompute from the write store. The table of
scenarios is printed at the end of the run (and written to test-artifacts/chaos.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import redis

from iotp.settings import Settings
from local_platform.broker import free_port
from tests.support.chaos import (
    METRICS,
    RestartableBroker,
    SteadyPublisher,
    proxied,
    reckon,
)
from tests.support.ingest_harness import stored_count
from tests.support.platform import Platform
from tests.support.processes import ServiceProcess
from tests.support.read_model_harness import (
    wait_converged,
)
from tests.support.servers import TEST_TOKEN
from tests.support.tcp_proxy import TcpProxy
from tests.support.waiting import answers, wait_for

DEVICES = [f"chaos-{n}" for n in range(10)]
DECLARED = [{"name": "temp", "min": -10, "max": 30}, {"name": "hum", "min": 0, "max": 100}]
# Quick to claim a dead consumer's entries; the smallest stream cap, so that a stopped
# aggregator falls past it within a scenario.
SETTINGS = {
    "aggregator_claim_idle_ms": "500",
    "aggregator_block_ms": "100",
    "telemetry_stream_maxlen": "1000",
}
pytestmark = pytest.mark.timeout(300)


@dataclass
class Rig:
    platform: Platform
    broker: RestartableBroker
    postgres: TcpProxy
    redis: TcpProxy
    ingests: list[ServiceProcess]
    aggregator: ServiceProcess

    @property
    def db(self) -> psycopg.Connection[Any]:
        return self.platform.db


@pytest.fixture
def rig(
    settings: Settings, db: psycopg.Connection[Any], redis_client: redis.Redis, tmp_path: Path
) -> Iterator[Rig]:
    pg = psycopg.conninfo.conninfo_to_dict(settings.database_url)
    redis_host = redis_client.connection_pool.connection_kwargs
    broker = RestartableBroker(tmp_path / "broker")
    broker.start()
    with (
        TcpProxy(str(pg.get("host") or "127.0.0.1"), int(pg.get("port") or 5432)) as postgres,
        TcpProxy(str(redis_host["host"]), int(redis_host["port"])) as redis_proxy,
    ):
        through = settings.model_copy(
            update={
                "database_url": proxied(settings.database_url, postgres),
                "redis_url": proxied(settings.redis_url, redis_proxy),
            }
        )
        platform = Platform(through, broker.url, db, redis_client, tmp_path)
        try:
            platform.register(*DEVICES, metrics=DECLARED)
            ingests = [platform.ingest(name, **SETTINGS) for name in ("a", "b")]
            aggregator = platform.aggregator("0", **SETTINGS)
            yield Rig(platform, broker, postgres, redis_proxy, ingests, aggregator)
        finally:
            platform.stop_children()
            broker.stop()


def run_scenario(rig: Rig, name: str, fault: Callable[[Rig, SteadyPublisher], None]) -> None:
    publisher = SteadyPublisher(rig.broker.port, DEVICES).start()
    time.sleep(2)
    fault(rig, publisher)
    time.sleep(2)
    published = publisher.finish()
    wait_for(lambda: stored_count(rig.db) >= published * len(METRICS), timeout=90, interval=0.2)
    wait_converged(rig.db, timeout=60, interval=0.5)
    result = reckon(name, rig.db, published)
    assert (result.lost, result.duplicated) == (0, 0), result
    assert result.stored == result.modelled == published, result


def _restart(process: ServiceProcess) -> None:
    process.kill()
    time.sleep(1)
    process.start()


def kill_ingest(rig: Rig, _: SteadyPublisher) -> None:
    _restart(rig.ingests[0])


def kill_aggregator(rig: Rig, _: SteadyPublisher) -> None:
    _restart(rig.aggregator)


def kill_api(rig: Rig, _: SteadyPublisher) -> None:
    """Kill -9 the command API (with its relay) right after it registered devices."""
    port = free_port()
    env = rig.platform.environment(api_token=TEST_TOKEN, relay_poll_seconds="0.2")
    api = rig.platform.serve("api", "--port", str(port), env=env, log="api")
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: answers(f"{url}/healthz"), timeout=30)
    headers = {"Authorization": f"Bearer {TEST_TOKEN}"}
    for n in range(3):
        body = {"device_id": f"late-{n}", "name": f"late {n}", "kind": "sensor"}
        assert httpx.post(f"{url}/devices", json=body, headers=headers).status_code == 201
    api.kill()
    api.start()
    wait_for(lambda: answers(f"{url}/healthz"), timeout=30)
    wait_for(
        lambda: (
            rig.db.execute("SELECT count(*) FROM outbox WHERE sent_at IS NULL").fetchone() == (0,)
        ),
        timeout=30,
    )


def restart_postgres(rig: Rig, _: SteadyPublisher) -> None:
    rig.postgres.cut()
    time.sleep(3)
    rig.postgres.restore()


def restart_redis(rig: Rig, _: SteadyPublisher) -> None:
    rig.redis.cut()
    time.sleep(3)
    rig.redis.restore()


def restart_broker(rig: Rig, _: SteadyPublisher) -> None:
    rig.broker.stop()
    time.sleep(2)
    rig.broker.start()


def aggregator_past_the_cap(rig: Rig, publisher: SteadyPublisher) -> None:
    """The aggregator stopped while more events arrive than the stream's cap (1,000)."""
    rig.aggregator.stop()
    added = len(publisher.sent)
    wait_for(lambda: len(publisher.sent) - added > 1500, timeout=30)
    rig.aggregator.start()


def scale_ingest_down_and_up(rig: Rig, publisher: SteadyPublisher) -> None:
    """2 -> 1 -> 2: with one ingest left, everything published is stored without waiting
    for the other to come back (nothing parked in its session)."""
    rig.ingests[1].stop()
    time.sleep(2)
    marker = len(publisher.acked)
    wait_for(lambda: stored_count(rig.db) >= marker * len(METRICS), timeout=20, interval=0.2)
    rig.ingests[1].start()


SCENARIOS: dict[str, Callable[[Rig, SteadyPublisher], None]] = {
    "kill -9 ingest": kill_ingest,
    "kill -9 aggregator": kill_aggregator,
    "kill -9 command API + relay": kill_api,
    "PostgreSQL restart": restart_postgres,
    "Redis restart": restart_redis,
    "broker restart": restart_broker,
    "aggregator stopped past the stream cap": aggregator_past_the_cap,
    "ingest scaled 2 -> 1 -> 2": scale_ingest_down_and_up,
}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_scenario_loses_nothing_and_counts_nothing_twice(rig: Rig, name: str) -> None:
    run_scenario(rig, name, SCENARIOS[name])
