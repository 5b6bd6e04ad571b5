"""Alarm rules and acknowledgements against the real write store: the rows a change writes,
their times to the microsecond, the outbox rows of the same transaction (each event with its
stream), and the rules lock."""

from __future__ import annotations

import json
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from fastapi.testclient import TestClient

from command_api.alarms import RULES_LOCK_KEY
from iotp.names import ALARM_EVENTS_STREAM, ALARM_RULE_EVENTS_STREAM, DEVICE_EVENTS_STREAM
from iotp.settings import Settings
from tests.support.api_client import AUTH, running_api

T0 = datetime(2026, 1, 1, tzinfo=UTC)
BOILER = {
    "device_id": "b1",
    "name": "b1",
    "kind": "boiler",
    "metrics": [{"name": "temp", "unit": "C", "min": -40, "max": 60}],
}
RULE = {"scope": "device", "device_id": "b1", "metric": "temp", "condition": "above"}


def _client_with_boiler(client: TestClient) -> TestClient:
    assert client.post("/devices", json=BOILER, headers=AUTH).status_code == 201
    return client


def _alarm(db: psycopg.Connection[Any], rule_id: str, updated_at: datetime = T0) -> uuid.UUID:
    """An open alarm of ``rule_id`` on b1 and its evaluation row, as the alarm process
    writes them."""
    alarm_id = uuid.uuid4()
    db.execute(
        "INSERT INTO alarms (alarm_id, rule_id, device_id, metric, condition, severity, state,"
        " raised_at, value, updated_at) VALUES (%s, %s, 'b1', 'temp', 'above', 'major',"
        " 'active', %s, 99, %s)",
        (alarm_id, rule_id, T0, updated_at),
    )
    db.execute(
        "INSERT INTO alarm_evaluation (rule_id, device_id, open_alarm_id) VALUES (%s, 'b1', %s)"
        " ON CONFLICT DO NOTHING",
        (rule_id, alarm_id),
    )
    return alarm_id


def _events(db: psycopg.Connection[Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(stream, type, event) of every outbox row but the device events, in commit order."""
    rows = db.execute(
        "SELECT stream, event_type, fields FROM outbox WHERE stream <> %s ORDER BY id",
        (DEVICE_EVENTS_STREAM,),
    ).fetchall()
    return [(stream, kind, json.loads(fields["data"])) for stream, kind, fields in rows]


def _row(db: psycopg.Connection[Any], alarm_id: uuid.UUID) -> tuple[Any, ...]:
    row = db.execute(
        "SELECT state, cleared_at, updated_at, clear_reason, cleared_value FROM alarms"
        " WHERE alarm_id = %s",
        (alarm_id,),
    ).fetchone()
    assert row is not None
    return tuple(row)


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def test_a_rule_change_clears_alarms_at_the_instant_of_its_event(
    settings: Settings, db: psycopg.Connection[Any]
) -> None:
    with running_api(settings, relay=False) as client:
        _client_with_boiler(client)
        default = _alarm(db, "range:temp")
        created = client.post("/alarm-rules", json={**RULE, "threshold_high": 50}, headers=AUTH)
        assert created.status_code == 201 and created.json()["cleared_alarms"] == 1
        rule_id = created.json()["rule_id"]
        own = _alarm(db, rule_id)
        updated = client.put(
            f"/alarm-rules/{rule_id}", json={**RULE, "threshold_high": 55}, headers=AUTH
        )
        assert updated.status_code == 200 and updated.json()["cleared_alarms"] == 1
        again = _alarm(db, rule_id)
        deleted = client.delete(f"/alarm-rules/{rule_id}", headers=AUTH)
        assert deleted.status_code == 200 and deleted.json()["cleared_alarms"] == 1

    events = _events(db)
    assert [(stream, kind) for stream, kind, _ in events] == [
        (ALARM_RULE_EVENTS_STREAM, "AlarmRuleCreated"),
        (ALARM_EVENTS_STREAM, "AlarmCleared"),
        (ALARM_RULE_EVENTS_STREAM, "AlarmRuleUpdated"),
        (ALARM_EVENTS_STREAM, "AlarmCleared"),
        (ALARM_RULE_EVENTS_STREAM, "AlarmRuleDeleted"),
        (ALARM_EVENTS_STREAM, "AlarmCleared"),
    ]
    reasons = ["replaced by a configured rule", "rule updated", "rule deleted"]
    for (_, _, rule_event), (_, _, cleared), alarm_id, reason in zip(
        events[::2], events[1::2], [default, own, again], reasons, strict=True
    ):
        at = _at(rule_event["occurred_at"])
        assert cleared["alarm_id"] == str(alarm_id) and cleared["reason"] == reason
        assert _at(cleared["occurred_at"]) == _at(cleared["cleared_at"]) == at
        assert cleared["value"] is None
        assert _row(db, alarm_id) == ("cleared", at, at, reason, None)
    assert db.execute("SELECT count(*) FROM alarm_evaluation").fetchone() == (0,)
    assert created.json()["updated_at"] == created.json()["created_at"]


def test_an_acknowledgement_moves_updated_at_to_its_event_and_never_back(
    settings: Settings, db: psycopg.Connection[Any]
) -> None:
    ahead = datetime.now(UTC) + timedelta(hours=1)  # an earlier event from a clock ahead
    with running_api(settings, relay=False) as client:
        _client_with_boiler(client)
        behind_alarm, ahead_alarm = _alarm(db, "range:temp"), _alarm(db, "r2", ahead)
        for alarm_id in (behind_alarm, ahead_alarm):
            answer = client.post(
                f"/alarms/{alarm_id}/acknowledge", json={"acknowledged_by": "alice"}, headers=AUTH
            )
            assert answer.status_code == 200 and answer.json()["event_id"] is not None
    (_, _, first), (_, _, second) = _events(db)
    assert [e["type"] for e in (first, second)] == ["AlarmAcknowledged"] * 2
    assert _at(first["occurred_at"]) == _at(first["acknowledged_at"])
    updated = db.execute(
        "SELECT updated_at, acknowledged_at FROM alarms WHERE alarm_id = %s", (behind_alarm,)
    ).fetchone()
    assert updated == (_at(first["occurred_at"]), _at(first["acknowledged_at"]))
    assert _row(db, ahead_alarm)[2] == ahead


def test_rule_changes_wait_for_the_alarm_process_and_acknowledgements_do_not(
    settings: Settings, db: psycopg.Connection[Any]
) -> None:
    with running_api(settings, relay=False) as client:
        _client_with_boiler(client)
        alarm_id = _alarm(db, "range:temp")
        answers: list[int] = []
        with psycopg.connect(settings.database_url) as process, process.transaction():
            # As a batch of the alarm process holds it.
            process.execute("SELECT pg_advisory_xact_lock_shared(%s)", (RULES_LOCK_KEY,))
            ack = client.post(
                f"/alarms/{alarm_id}/acknowledge", json={"acknowledged_by": "a"}, headers=AUTH
            )
            assert ack.status_code == 200
            waiting = threading.Thread(
                target=lambda: answers.append(
                    client.post("/alarm-rules", json=RULE, headers=AUTH).status_code
                )
            )
            waiting.start()
            time.sleep(0.5)
            assert answers == [], "a rule change must wait for the rules lock"
        waiting.join(timeout=10)
    assert answers == [201]
