"""Alarms end to end over the real services: MQTT readings through ingest, `iotp alarms`
killed with SIGKILL between every step, the command API and its relay, the alarm stream."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import orjson
import psycopg
import pytest
from fastapi.testclient import TestClient

from alarms.process import ALARM_GROUP
from iotp.events import AlarmAcknowledged, AlarmCleared, AlarmRaised, from_fields
from iotp.names import ALARM_EVENTS_STREAM, TELEMETRY_EVENTS_STREAM
from tests.support.api_client import AUTH, running_api, wait_relayed
from tests.support.ingest_harness import publish, reading
from tests.support.platform import Platform
from tests.support.processes import ServiceProcess
from tests.support.waiting import wait_for

_runs = itertools.count()


@pytest.fixture
def api(platform: Platform) -> Iterator[TestClient]:
    platform.register("hot", "silent")
    with running_api(platform.settings) as client:
        yield client


def start_alarms(platform: Platform) -> ServiceProcess:
    return platform.serve("alarms", ready="alarms: leading", log=f"alarms-{next(_runs)}")


def restart(platform: Platform, alarms: ServiceProcess) -> ServiceProcess:
    """SIGKILL, as a crash at any point would, then a new process."""
    alarms.kill()
    return start_alarms(platform)


def send(platform: Platform, device: str, seconds: range, temp: float) -> None:
    publish(
        platform.mqtt_url,
        [(f"devices/{device}/telemetry", orjson.dumps(reading(i, temp=temp))) for i in seconds],
    )


def state_of(db: psycopg.Connection[Any], device: str) -> list[tuple[Any, ...]]:
    return db.execute(
        "SELECT alarm_id, state, acknowledged_by FROM alarms WHERE device_id = %s"
        " ORDER BY raised_at",
        (device,),
    ).fetchall()


def settled(platform: Platform) -> bool:
    """Everything on the telemetry stream was applied and acknowledged by the alarm process."""
    groups = platform.redis.xinfo_groups(TELEMETRY_EVENTS_STREAM)
    (group,) = [g for g in groups if g["name"] == ALARM_GROUP]
    last = platform.redis.xinfo_stream(TELEMETRY_EVENTS_STREAM)["last-generated-id"]
    return bool(group["pending"] == 0 and group["last-delivered-id"] == last)


def alarm_events(platform: Platform) -> list[Any]:
    wait_relayed(platform.db)
    return [from_fields(f) for _, f in platform.redis.xrange(ALARM_EVENTS_STREAM)]


def test_breach_ack_and_clear_each_once_with_the_process_killed_between_steps(
    platform: Platform, api: TestClient
) -> None:
    platform.ingest()
    alarms = start_alarms(platform)
    send(platform, "hot", range(1, 5), temp=75.0)
    wait_for(lambda: len(state_of(platform.db, "hot")) == 1, timeout=60)
    wait_for(lambda: settled(platform), timeout=30)
    alarms = restart(platform, alarms)

    ((alarm_id, state, _),) = state_of(platform.db, "hot")
    assert state == "active"
    ack = {"acknowledged_by": "operator-7", "note": "valve checked"}
    answer = api.post(f"/alarms/{alarm_id}/acknowledge", json=ack, headers=AUTH)
    assert answer.status_code == 200, answer.text
    alarms = restart(platform, alarms)

    send(platform, "hot", range(5, 9), temp=20.0)
    wait_for(lambda: state_of(platform.db, "hot")[0][1] == "cleared", timeout=60)
    alarms = restart(platform, alarms)
    wait_for(lambda: settled(platform), timeout=30)

    assert state_of(platform.db, "hot") == [(alarm_id, "cleared", "operator-7")]
    events = [e for e in alarm_events(platform) if e.device_id == "hot"]
    assert [type(e) for e in events] == [AlarmRaised, AlarmAcknowledged, AlarmCleared]
    assert {e.alarm_id for e in events} == {alarm_id}
    assert isinstance(events[1], AlarmAcknowledged)
    assert events[1].acknowledged_by == "operator-7"
    alarms.stop()


def test_offline_fires_with_no_traffic_and_clears_on_the_next_reading(
    platform: Platform, api: TestClient
) -> None:
    rule = {"scope": "device", "device_id": "silent", "condition": "offline", "for_seconds": 2}
    assert api.post("/alarm-rules", json=rule, headers=AUTH).status_code == 201
    platform.ingest()
    alarms = start_alarms(platform)
    send(platform, "silent", range(1, 2), temp=20.0)
    wait_for(lambda: len(state_of(platform.db, "silent")) == 1, timeout=60)
    alarms = restart(platform, alarms)

    send(platform, "silent", range(2, 3), temp=20.0)
    wait_for(lambda: state_of(platform.db, "silent")[0][1] == "cleared", timeout=60)
    alarms = restart(platform, alarms)
    wait_for(lambda: settled(platform), timeout=30)

    events = [e for e in alarm_events(platform) if e.device_id == "silent"]
    kinds = [type(e) for e in events]
    # Silent again after its reading: a second offline episode may have begun; the first
    # was raised once and cleared once.
    assert kinds[:2] == [AlarmRaised, AlarmCleared]
    assert events[0].alarm_id == events[1].alarm_id
    assert isinstance(events[0], AlarmRaised) and events[0].condition == "offline"
    assert len({e.alarm_id for e in events if isinstance(e, AlarmRaised)}) == len(
        [e for e in events if isinstance(e, AlarmRaised)]
    )
    alarms.stop()
