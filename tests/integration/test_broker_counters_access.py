"""`iotp up`'s broker shows its drops (issue 22, item 6): ingest's service account may read
Mosquitto's $SYS counters, so /pipeline reports them instead of "cannot read $SYS/broker/#".

Same broker configuration as `iotp up` (local_mosquitto with identity on) and the files
broker-sync writes for the same settings, written as `iotp up` does before the broker starts.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from prometheus_client import CollectorRegistry

from broker_identity.accounts import BrokerState, with_services
from broker_identity.files import BrokerFiles
from broker_identity.service import service_accounts
from ingest.broker_stats import BrokerStats, broker_stats_from
from iotp.settings import Settings
from local_platform.broker import free_port, local_mosquitto
from read_models.health import pipeline_health
from tests.support.waiting import wait_for

START_SECONDS = 60  # Mosquitto publishes $SYS every 10 s by default (sys_interval)


@pytest.fixture
def started() -> Iterator[list[BrokerStats]]:
    stats: list[BrokerStats] = []
    yield stats
    for one in stats:
        one.close()


def test_up_broker_reports_its_counters_to_pipeline_within_a_minute(
    settings: Settings,
    db: psycopg.Connection[Any],
    redis_client: redis.Redis,
    tmp_path: Path,
    started: list[BrokerStats],
) -> None:
    port = free_port()
    ingest_url = f"mqtt://iotp-ingest:ingest-secret@127.0.0.1:{port}"
    ingest_settings = settings.model_copy(update={"mqtt_url": ingest_url})
    data = tmp_path / "broker"
    data.mkdir()
    files = BrokerFiles(data / "passwd", data / "acl")
    files.write(with_services(BrokerState(), service_accounts(ingest_settings, BrokerState())))
    with local_mosquitto(data, identity=True, port=port):
        stats = broker_stats_from(ingest_settings, redis_client, CollectorRegistry())
        started.append(stats)
        stats.start()

        def reported() -> bool:
            return pipeline_health(db, redis_client).broker.reported

        wait_for(reported, timeout=START_SECONDS, interval=1)
    broker = pipeline_health(db, redis_client).broker
    assert broker.error is None
    assert broker.version and "mosquitto" in broker.version
