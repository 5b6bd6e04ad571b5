"""The alarm process and the alarm routes over the real PostgreSQL and Redis.

The process is stepped in the test's own thread (no timing); telemetry events are added to
the stream as ingest writes them; the command API's relay (in the test client) moves the
outbox to the streams.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
import redis
from fastapi.testclient import TestClient

from alarms.process import ALARM_CONSUMER, ALARM_GROUP, AlarmEvaluator
from alarms.service import alarm_process_for
from iotp.event_shards import ensure_groups, telemetry_stream_for, telemetry_streams
from iotp.events import (
    AlarmAcknowledged,
    AlarmCleared,
    AlarmRaised,
    configuration_event_from_fields,
    from_fields,
    telemetry_recorded_fields,
)
from iotp.group_reader import GroupReader
from iotp.names import ALARM_EVENTS_STREAM, ALARM_RULE_EVENTS_STREAM, TELEMETRY_EVENTS_STREAM
from iotp.settings import Settings
from tests.support.api_client import AUTH, running_api, wait_relayed

T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
TEMP = [{"name": "temp", "unit": "C", "min": -40, "max": 60}, {"name": "hum"}]


@pytest.fixture
def api(settings: Settings) -> Iterator[TestClient]:
    with running_api(settings) as client:
        yield client


AlarmReader = GroupReader[Any]


def evaluator(reader: AlarmReader) -> AlarmEvaluator:
    assert isinstance(reader.part, AlarmEvaluator)
    return reader.part


@pytest.fixture
def process(settings: Settings) -> Iterator[AlarmReader]:
    found = alarm_process_for(settings)
    yield found
    found.part.close()
    found.client.close()


def register(api: TestClient, device_id: str, kind: str = "boiler") -> None:
    body = {"device_id": device_id, "name": device_id, "kind": kind, "metrics": TEMP}
    assert api.post("/devices", json=body, headers=AUTH).status_code == 201


def send(
    client: redis.Redis, device_id: str, second: int, temp: float, heard: datetime | None = None
) -> None:
    """One TelemetryRecorded of one reading at T0 + ``second``, as ingest adds it."""
    received = heard or datetime.now(UTC)
    fields = telemetry_recorded_fields(
        device_id, [(T0 + timedelta(seconds=second), {"temp": temp}, ())], received, received
    )
    client.xadd(TELEMETRY_EVENTS_STREAM, fields)  # type: ignore[arg-type]


def settle(process: AlarmReader) -> None:
    """Step until a round applies nothing new."""
    stop = threading.Event()
    while process.step(stop).entries:
        pass


def alarm_events(db: psycopg.Connection[Any], client: redis.Redis) -> list[Any]:
    wait_relayed(db)
    return [from_fields(fields) for _, fields in client.xrange(ALARM_EVENTS_STREAM)]


def alarm_rows(db: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return db.execute(
        "SELECT alarm_id, rule_id, device_id, state, acknowledged_by, note, clear_reason"
        " FROM alarms ORDER BY raised_at"
    ).fetchall()


def test_a_sustained_breach_raises_once_is_acknowledged_and_clears_each_event_once(
    api: TestClient,
    process: AlarmReader,
    settings: Settings,
    db: psycopg.Connection[Any],
    redis_client: redis.Redis,
) -> None:
    register(api, "boiler-1")
    for second in (1, 2):
        send(redis_client, "boiler-1", second, 70.0)
    settle(process)
    assert alarm_rows(db) == []
    send(redis_client, "boiler-1", 3, 71.0)
    send(redis_client, "boiler-1", 4, 72.0)
    settle(process)
    ((alarm_id, rule_id, device, state, *_),) = alarm_rows(db)
    assert (rule_id, device, state) == ("range:temp", "boiler-1", "active")

    # As if every entry had been committed and never acknowledged: a new process is given
    # the whole stream again, and the recorded positions make it a no-op.
    redis_client.xgroup_setid(TELEMETRY_EVENTS_STREAM, ALARM_GROUP, "0")
    restarted = alarm_process_for(settings)
    try:
        process.part.close()
        settle(restarted)
    finally:
        restarted.part.close()
    assert len(alarm_rows(db)) == 1

    ack = {"acknowledged_by": "alice", "note": "on my way"}
    answer = api.post(f"/alarms/{alarm_id}/acknowledge", json=ack, headers=AUTH)
    assert answer.status_code == 200 and answer.json()["event_id"] is not None
    again = api.post(f"/alarms/{alarm_id}/acknowledge", json=ack, headers=AUTH)
    assert again.status_code == 200 and again.json()["event_id"] is None
    assert again.json()["acknowledged_by"] == "alice"

    for second in (5, 6):
        send(redis_client, "boiler-1", second, 20.0)
    send(redis_client, "boiler-1", 1, 20.0)  # late: older than what was applied
    settle(process)
    assert alarm_rows(db)[0][3] == "acknowledged"
    send(redis_client, "boiler-1", 7, 20.0)
    settle(process)
    assert alarm_rows(db)[0][3:] == ("cleared", "alice", "on my way", "back in range")
    late = api.post(f"/alarms/{alarm_id}/acknowledge", json=ack, headers=AUTH)
    assert late.status_code == 409

    events = alarm_events(db, redis_client)
    assert [type(e) for e in events] == [AlarmRaised, AlarmAcknowledged, AlarmCleared]
    assert {e.alarm_id for e in events} == {alarm_id}
    raised, acked, cleared = events
    assert isinstance(raised, AlarmRaised) and raised.value == 71.0
    assert raised.threshold_low == -40 and raised.threshold_high == 60
    assert isinstance(acked, AlarmAcknowledged) and acked.acknowledged_by == "alice"
    assert isinstance(cleared, AlarmCleared) and cleared.cleared_at == T0 + timedelta(seconds=7)


def test_an_offline_alarm_fires_without_traffic_and_clears_on_the_next_reading(
    api: TestClient,
    process: AlarmReader,
    db: psycopg.Connection[Any],
    redis_client: redis.Redis,
) -> None:
    register(api, "quiet")
    rule = {"scope": "device", "device_id": "quiet", "condition": "offline", "for_seconds": 30}
    created = api.post("/alarm-rules", json=rule, headers=AUTH)
    assert created.status_code == 201, created.text
    send(redis_client, "quiet", 1, 20.0, heard=datetime.now(UTC) - timedelta(minutes=5))
    settle(process)
    evaluator(process).tick()
    evaluator(process).tick()
    ((_, rule_id, _, state, *_),) = alarm_rows(db)
    assert (rule_id, state) == (created.json()["rule_id"], "active")

    send(redis_client, "quiet", 2, 20.0)
    settle(process)
    evaluator(process).tick()
    assert [row[3:] for row in alarm_rows(db)] == [("cleared", None, None, "reading received")]
    events = alarm_events(db, redis_client)
    assert [type(e) for e in events] == [AlarmRaised, AlarmCleared]
    assert isinstance(events[0], AlarmRaised) and events[0].condition == "offline"


def test_a_configured_rule_replaces_the_default_and_deleting_it_clears_its_alarms(
    api: TestClient,
    process: AlarmReader,
    db: psycopg.Connection[Any],
    redis_client: redis.Redis,
) -> None:
    register(api, "b1")
    for second in (1, 2, 3):
        send(redis_client, "b1", second, 99.0)
    settle(process)
    assert [row[1] for row in alarm_rows(db)] == ["range:temp"]
    rule = {
        "scope": "kind",
        "kind": "boiler",
        "metric": "temp",
        "condition": "above",
        "threshold_high": 100,
        "for_readings": 1,
        "severity": "critical",
    }
    created = api.post("/alarm-rules", json=rule, headers=AUTH)
    assert created.status_code == 201 and created.json()["cleared_alarms"] == 1
    rule_id = created.json()["rule_id"]
    assert api.get(f"/alarm-rules/{rule_id}", headers=AUTH).json()["threshold_high"] == 100
    assert len(api.get("/alarm-rules", headers=AUTH).json()["rules"]) == 1
    send(redis_client, "b1", 4, 101.0)
    settle(process)
    assert [row[1] for row in alarm_rows(db)] == ["range:temp", rule_id]
    updated = api.put(f"/alarm-rules/{rule_id}", json={**rule, "threshold_high": 200}, headers=AUTH)
    assert updated.status_code == 200 and updated.json()["cleared_alarms"] == 1
    deleted = api.delete(f"/alarm-rules/{rule_id}", headers=AUTH)
    assert deleted.status_code == 200 and deleted.json()["cleared_alarms"] == 0
    assert api.get(f"/alarm-rules/{rule_id}", headers=AUTH).status_code == 404
    assert {row[3] for row in alarm_rows(db)} == {"cleared"}

    wait_relayed(db)
    rule_events = [
        configuration_event_from_fields(fields)
        for _, fields in redis_client.xrange(ALARM_RULE_EVENTS_STREAM)
    ]
    assert [e.type for e in rule_events] == [
        "AlarmRuleCreated",
        "AlarmRuleUpdated",
        "AlarmRuleDeleted",
    ]
    kinds = [type(e).__name__ for e in alarm_events(db, redis_client)]
    assert kinds == ["AlarmRaised", "AlarmCleared", "AlarmRaised", "AlarmCleared"]


HOSTILE_RULES: list[tuple[dict[str, Any], int]] = [
    ({"scope": "device", "device_id": "ghost", "metric": "temp", "condition": "above"}, 404),
    ({"scope": "kind", "kind": "ghosts", "condition": "offline"}, 404),
    ({"scope": "device", "device_id": "d", "metric": "nope", "condition": "above"}, 422),
    ({"scope": "device", "device_id": "d", "metric": "hum", "condition": "above"}, 422),
    (
        {
            "scope": "device",
            "device_id": "d",
            "metric": "temp",
            "condition": "above",
            "threshold_high": 1e308,
        },
        422,
    ),
    (
        {
            "scope": "device",
            "device_id": "d",
            "metric": "temp",
            "condition": "outside_range",
            "threshold_low": 10,
            "threshold_high": -10,
        },
        422,
    ),
    (
        {
            "scope": "device",
            "device_id": "d",
            "metric": "temp",
            "condition": "outside_range",
            "threshold_low": 70,
        },
        422,
    ),
    (
        {
            "scope": "device",
            "device_id": "d",
            "metric": "temp",
            "condition": "above",
            "for_readings": -1,
        },
        422,
    ),
    (
        {
            "scope": "device",
            "device_id": "d",
            "metric": "temp",
            "condition": "above",
            "severity": "apocalyptic",
        },
        422,
    ),
    ({"scope": "device", "device_id": "d\u202e", "metric": "temp", "condition": "above"}, 422),
    (
        {
            "scope": "kind",
            "kind": "boiler",
            "metric": "temp",
            "condition": "above",
            "note": "x" * 200_000,
        },
        413,
    ),
]


@pytest.mark.parametrize(("rule", "status"), HOSTILE_RULES)
def test_hostile_rules_are_refused_and_nothing_is_written(
    api: TestClient, db: psycopg.Connection[Any], rule: dict[str, Any], status: int
) -> None:
    register(api, "d")
    answer = api.post("/alarm-rules", json=rule, headers=AUTH)
    assert answer.status_code == status, answer.text
    assert "detail" in answer.json()
    assert db.execute("SELECT count(*) FROM alarm_rules").fetchone() == (0,)
    assert db.execute(
        "SELECT count(*) FROM outbox WHERE stream <> 'iotp:events:devices'"
    ).fetchone() == (0,)


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/alarms/00000000-0000-0000-0000-000000000001/acknowledge", {"acknowledged_by": "a"}, 404),
        ("/alarms/not-a-uuid/acknowledge", {"acknowledged_by": "a"}, 422),
        # acknowledged_by defaults to the key's name (issue 22): an unknown alarm, then.
        ("/alarms/00000000-0000-0000-0000-000000000001/acknowledge", {}, 404),
        ("/alarms/00000000-0000-0000-0000-000000000001/acknowledge", {"acknowledged_by": ""}, 422),
        (
            "/alarms/00000000-0000-0000-0000-000000000001/acknowledge",
            {"acknowledged_by": "a", "note": "n" * 5000},
            422,
        ),
        (
            "/alarms/00000000-0000-0000-0000-000000000001/acknowledge",
            {"acknowledged_by": "a\x00"},
            422,
        ),
        ("/alarm-rules/00000000-0000-0000-0000-000000000001", None, 404),
    ],
)
def test_hostile_acknowledgements_are_refused(
    api: TestClient, db: psycopg.Connection[Any], path: str, body: Any, status: int
) -> None:
    if body is None:
        answer = api.delete(path, headers=AUTH)
    else:
        answer = api.post(path, json=body, headers=AUTH)
    assert answer.status_code == status, answer.text
    assert db.execute("SELECT count(*) FROM outbox").fetchone() == (0,)


def test_the_routes_want_the_token(api: TestClient) -> None:
    assert api.get("/alarm-rules").status_code == 401
    assert api.post("/alarms/x/acknowledge", json={}).status_code == 401


def test_one_alarm_process_leads_at_a_time(settings: Settings, process: AlarmReader) -> None:
    assert process.part.may_read()
    other = alarm_process_for(settings)
    try:
        assert not other.part.may_read()
        process.part.close()
        assert other.part.may_read()
    finally:
        other.part.close()
        other.client.close()


def test_every_telemetry_shard_is_read(
    api: TestClient, settings: Settings, db: psycopg.Connection[Any], redis_client: redis.Redis
) -> None:
    sharded = settings.model_copy(update={"event_shards": 3})
    process = alarm_process_for(sharded)
    try:
        assert process.options.streams == telemetry_streams(3)
        devices = [f"s{n}" for n in range(6)]
        for device in devices:
            register(api, device)
        for device in devices:
            for second in (1, 2, 3):
                received = datetime.now(UTC)
                fields = telemetry_recorded_fields(
                    device,
                    [(T0 + timedelta(seconds=second), {"temp": 99.0}, ())],
                    received,
                    received,
                )
                redis_client.xadd(telemetry_stream_for(device, 3), fields)  # type: ignore[arg-type]
        settle(process)
    finally:
        process.part.close()
        process.client.close()
    assert sorted(row[2] for row in alarm_rows(db)) == devices
    assert len({telemetry_stream_for(d, 3) for d in devices}) > 1


@pytest.mark.usefixtures("fresh_boot")
def test_a_new_leader_applies_what_its_predecessor_read_first_even_just_after_boot(
    api: TestClient,
    settings: Settings,
    process: AlarmReader,
    db: psycopg.Connection[Any],
    redis_client: redis.Redis,
) -> None:
    register(api, "boiler-1")
    assert process.part.may_read()
    ensure_groups(redis_client, ALARM_GROUP, (TELEMETRY_EVENTS_STREAM,))
    for second in (1, 2, 3, 4):
        send(redis_client, "boiler-1", second, 75.0)
    # The leader reads the breach and dies before applying it; then readings back in range.
    taken: Any = redis_client.xreadgroup(
        ALARM_GROUP, ALARM_CONSUMER, {TELEMETRY_EVENTS_STREAM: ">"}, count=10
    )
    assert len(taken[0][1]) == 4
    process.part.close()
    for second in (5, 6, 7):
        send(redis_client, "boiler-1", second, 20.0)
    successor = alarm_process_for(settings)
    try:
        settle(successor)
    finally:
        successor.part.close()
        successor.client.close()
    events = alarm_events(db, redis_client)
    assert [type(e) for e in events] == [AlarmRaised, AlarmCleared]
    assert redis_client.xpending(TELEMETRY_EVENTS_STREAM, ALARM_GROUP)["pending"] == 0
