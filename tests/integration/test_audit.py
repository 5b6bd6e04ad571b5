"""The audit trail against real PostgreSQL and Redis: commands through the command API with
API keys, relayed, recorded by the audit consumer, and read on GET /audit and the dashboard.

Who issued each command, what it did to what, and a refusal as "denied"; the filters and
pages; only admins and operators may read it; a redelivered or republished entry records
nothing twice; what Redis lost is recovered from the outbox (and what the outbox no longer
holds is named in the log); old rows are deleted in batches; `iotp audit` runs as a process.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

import psycopg
import pytest
import redis
from fastapi.testclient import TestClient

from command_api.app import create_app
from iotp.events import Actor
from iotp.group_reader import GroupReader
from iotp.model import Role
from iotp.names import DEVICE_EVENTS_STREAM
from iotp.processes import iotp_environment
from iotp.settings import Settings
from read_models import audit_store
from read_models.app import create_query_app
from read_models.audit import Audited, AuditRow
from read_models.audit_consumer import (
    AUDIT_GROUP,
    AUDITED_STREAMS,
    audit_options,
    audit_reader,
)
from tests.support.api_client import AUTH, THERMOSTAT, wait_relayed
from tests.support.dashboard_pages import dashboard_settings, run_page
from tests.support.processes import ServiceProcess
from tests.support.waiting import wait_for

RULE = {"scope": "device", "device_id": "dev-a", "metric": "temperature", "condition": "above"}


@pytest.fixture
def audited(settings: Settings, db: psycopg.Connection[Any]) -> Settings:
    db.execute("TRUNCATE read_models.audit_log, api_keys")
    return settings


@contextmanager
def both_apis(settings: Settings) -> Iterator[tuple[TestClient, TestClient]]:
    """The command API with its relay, and the query API."""
    with (
        TestClient(create_app(settings, run_relay_task=True)) as command,
        TestClient(create_query_app(settings)) as query,
    ):
        yield command, query


@contextmanager
def audit_consumer(settings: Settings, retention_days: int = 400) -> Iterator[GroupReader[Audited]]:
    """The audit consumer of `iotp audit`, in this process, quick to read and claim."""
    client = redis.Redis.from_url(settings.redis_url)
    reader = audit_reader(
        client,
        lambda: psycopg.connect(settings.database_url),
        lambda: psycopg.connect(settings.database_url, autocommit=True),
        audit_options("test-audit", block_ms=50, claim_idle_ms=200),
        retention_days,
    )
    try:
        yield reader
    finally:
        reader.part.close()
        client.close()


def catch_up(reader: GroupReader[Audited], db: psycopg.Connection[Any]) -> int:
    """Relay the outbox, then read until the streams hold nothing new; rows recorded."""
    wait_relayed(db)
    recorded = 0
    while (done := reader.step()).entries:
        recorded += done.applied
    return recorded


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def make_key(command: TestClient, role: str, name: str) -> dict[str, Any]:
    made = command.post("/api-keys", json={"name": name, "role": role}, headers=AUTH)
    assert made.status_code == 201, made.text
    body: dict[str, Any] = made.json()
    return body


def audit(query: TestClient, key: str, **params: Any) -> dict[str, Any]:
    answer = query.get("/audit", params=params, headers=bearer(key))
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def rows(db: psycopg.Connection[Any]) -> int:
    found = db.execute("SELECT count(*) FROM read_models.audit_log").fetchone()
    assert found is not None
    return int(found[0])


def issue_commands(command: TestClient, key: str) -> None:
    """Seven commands as ``key``: three registrations, an update, a decommission, a rule
    created and deleted."""
    for device_id in ("dev-a", "dev-b", "dev-c"):
        body = {**THERMOSTAT, "device_id": device_id}
        assert command.post("/devices", json=body, headers=bearer(key)).status_code == 201
    patched = command.patch("/devices/dev-a", json={"name": "A prime"}, headers=bearer(key))
    assert patched.status_code == 200, patched.text
    retired = command.post("/devices/dev-b/decommission", json={}, headers=bearer(key))
    assert retired.status_code == 200, retired.text
    rule = command.post("/alarm-rules", json=RULE, headers=bearer(key))
    assert rule.status_code == 201, rule.text
    deleted = command.delete(f"/alarm-rules/{rule.json()['rule_id']}", headers=bearer(key))
    assert deleted.status_code == 200, deleted.text


def test_each_command_is_on_record_with_its_actor_action_target_and_outcome(
    audited: Settings, db: psycopg.Connection[Any]
) -> None:
    with both_apis(audited) as (command, query), audit_consumer(audited) as reader:
        operator = make_key(command, "operator", "ops desk")
        admin = make_key(command, "admin", "auditor")
        issue_commands(command, operator["key"])
        assert catch_up(reader, db) == 9
        page = audit(query, admin["key"])
        pipeline = query.get("/pipeline", headers=bearer(admin["key"])).json()
    assert page["total"] == 9 and (page["limit"], page["offset"]) == (50, 0)
    items = page["items"]
    assert set(items[0]) == {"event_id", "at", "actor", "action", "target", "outcome", "detail"}
    assert [i["at"] for i in items] == sorted((i["at"] for i in items), reverse=True)
    assert [(i["action"], i["target"]) for i in reversed(items)][:7] == [
        ("api-key.create", f"api-key:{operator['key_id']}"),
        ("api-key.create", f"api-key:{admin['key_id']}"),
        ("device.register", "device:dev-a"),
        ("device.register", "device:dev-b"),
        ("device.register", "device:dev-c"),
        ("device.update", "device:dev-a"),
        ("device.decommission", "device:dev-b"),
    ]
    assert [i["action"] for i in items[:2]] == ["alarm-rule.delete", "alarm-rule.create"]
    assert {i["outcome"] for i in items} == {"succeeded"}
    by_operator = [i for i in items if i["actor"]["kind"] == "api-key"]
    assert len(by_operator) == 7
    assert {(i["actor"]["id"], i["actor"]["name"]) for i in by_operator} == {
        (operator["key_id"], "ops desk")
    }
    bootstrap = [i["actor"] for i in items if i["action"] == "api-key.create"]
    assert (
        bootstrap
        == [{"kind": "bootstrap-token", "id": None, "name": "IOTP_API_TOKEN", "via": None}] * 2
    )
    update = next(i for i in items if i["action"] == "device.update")
    assert update["detail"] == {"changed": ["name"]}
    created = next(i for i in items if i["action"] == "api-key.create")
    assert "key" not in created["detail"] and created["detail"]["role"] in ("operator", "admin")
    # The group is on /pipeline like every other: its counters and its place on the streams.
    assert pipeline["consumers"][AUDIT_GROUP]["applied"] == 9
    assert {g["stream"] for g in pipeline["groups"] if g["group"] == AUDIT_GROUP} >= {
        DEVICE_EVENTS_STREAM
    }


def test_the_filters_and_pages_of_get_audit(audited: Settings, db: psycopg.Connection[Any]) -> None:
    with both_apis(audited) as (command, query), audit_consumer(audited) as reader:
        operator = make_key(command, "operator", "ops desk")
        admin = make_key(command, "admin", "auditor")
        issue_commands(command, operator["key"])
        catch_up(reader, db)
        key = admin["key"]
        everything = audit(query, key)["items"]
        by_name = audit(query, key, actor="ops desk")
        by_id = audit(query, key, actor=operator["key_id"])
        by_token = audit(query, key, actor="IOTP_API_TOKEN")
        nobody = audit(query, key, actor="nobody")
        registered = audit(query, key, action="device.register")
        on_dev_a = audit(query, key, target="device:dev-a")
        both = audit(query, key, action="device.update", target="device:dev-a", actor="ops desk")
        middle = everything[4]["at"]
        since = audit(query, key, **{"from": middle})
        until = audit(query, key, to=middle)
        pages = [audit(query, key, limit=4, offset=offset) for offset in (0, 4, 8, 12)]
        refused = [
            query.get("/audit", params=params, headers=bearer(key)).status_code
            for params in (
                {"from": middle, "to": middle},
                {"from": "2026-01-01T00:00:00"},  # no offset: which time would it be?
                {"limit": 0},
                {"outcome": "maybe"},
                {"actor": ""},
            )
        ]
    assert by_name["total"] == by_id["total"] == 7
    assert by_name["items"] == by_id["items"]
    assert by_token["total"] == 2 and nobody == {"items": [], "total": 0, "limit": 50, "offset": 0}
    assert registered["total"] == 3
    assert {i["target"] for i in registered["items"]} == {
        "device:dev-a",
        "device:dev-b",
        "device:dev-c",
    }
    assert [i["action"] for i in on_dev_a["items"]] == ["device.update", "device.register"]
    assert [i["action"] for i in both["items"]] == ["device.update"]
    assert since["items"] == everything[:5] and since["total"] == 5
    assert until["items"] == everything[5:] and until["total"] == 4
    assert [p["total"] for p in pages] == [9, 9, 9, 9]
    assert [len(p["items"]) for p in pages] == [4, 4, 1, 0]
    assert [i for p in pages for i in p["items"]] == everything
    assert refused == [422, 422, 422, 422, 422]


def test_only_admins_and_operators_may_read_the_audit_trail(audited: Settings) -> None:
    with both_apis(audited) as (command, query):
        keys = {role.value: make_key(command, role.value, f"{role} key")["key"] for role in Role}
        statuses = {
            role: query.get("/audit", headers=bearer(key)).status_code for role, key in keys.items()
        }
        token = query.get("/audit", headers=AUTH).status_code  # the query API's viewer token
        anonymous = query.get("/audit").status_code
        refusal = query.get("/audit", headers=bearer(keys["provisioner"])).json()
    assert statuses == {"admin": 200, "operator": 200, "provisioner": 403, "viewer": 403}
    assert (token, anonymous) == (403, 401)
    assert refusal == {"detail": "role provisioner lacks permission audit:read"}


def test_a_refused_command_is_on_record_as_denied(
    audited: Settings, db: psycopg.Connection[Any]
) -> None:
    with both_apis(audited) as (command, query), audit_consumer(audited) as reader:
        viewer = make_key(command, "viewer", "wall screen")
        provisioner = make_key(command, "provisioner", "factory line")
        admin = make_key(command, "admin", "auditor")
        body = {**THERMOSTAT, "device_id": "dev-x"}
        assert command.post("/devices", json=body, headers=bearer(viewer["key"])).status_code == 403
        patched = command.patch(
            "/devices/dev-x", json={"name": "x"}, headers=bearer(provisioner["key"])
        )
        assert patched.status_code == 403
        catch_up(reader, db)
        denied = audit(query, admin["key"], outcome="denied")
        by_action = audit(query, admin["key"], action="POST /devices")
        succeeded = audit(query, admin["key"], outcome="succeeded")
    assert denied["total"] == 2
    patch, post = denied["items"]
    assert (post["action"], post["target"], post["outcome"]) == ("POST /devices", None, "denied")
    assert (post["actor"]["id"], post["actor"]["name"]) == (viewer["key_id"], "wall screen")
    assert post["detail"] == {
        "path": "/devices",
        "permission": "devices:register",
        "reason": "role viewer lacks permission devices:register",
    }
    assert (patch["action"], patch["target"]) == ("PATCH /devices/{id}", "device:dev-x")
    assert patch["actor"]["id"] == provisioner["key_id"]
    assert by_action["items"] == [post]
    assert succeeded["total"] == 3  # the three keys made


def test_a_redelivered_or_republished_entry_is_recorded_once(
    audited: Settings, db: psycopg.Connection[Any], redis_client: redis.Redis
) -> None:
    with both_apis(audited) as (command, _), audit_consumer(audited) as reader:
        issue_commands(command, make_key(command, "operator", "ops desk")["key"])
        assert catch_up(reader, db) == 8
        # Every entry handed again (a crash between the commit and the XACK), and one
        # published twice under a new id (a relay that died before marking it sent).
        for stream in AUDITED_STREAMS:
            redis_client.xgroup_setid(stream, AUDIT_GROUP, "0")
        first: Any = redis_client.xrange(DEVICE_EVENTS_STREAM, count=1)
        redis_client.xadd(DEVICE_EVENTS_STREAM, first[0][1])
        again = 0
        while (done := reader.step()).entries:
            again += done.entries
            assert done.applied == 0
    assert again >= 9
    assert rows(db) == 8


def test_what_redis_lost_is_recovered_from_the_outbox_and_the_rest_is_named(
    audited: Settings,
    db: psycopg.Connection[Any],
    redis_client: redis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with both_apis(audited) as (command, query), audit_consumer(audited) as reader:
        operator = make_key(command, "operator", "ops desk")["key"]
        admin = make_key(command, "admin", "auditor")["key"]
        kept = {**THERMOSTAT, "device_id": "kept-1"}
        assert command.post("/devices", json=kept, headers=bearer(operator)).status_code == 201
        assert catch_up(reader, db) == 3
        for device_id in ("lost-1", "lost-2", "lost-3"):
            body = {**THERMOSTAT, "device_id": device_id}
            assert command.post("/devices", json=body, headers=bearer(operator)).status_code == 201
        wait_relayed(db)
        # Redis loses the device stream before the audit read it, and the outbox has
        # already forgotten the oldest of the three (and everything before it).
        redis_client.delete(DEVICE_EVENTS_STREAM)
        db.execute(
            "DELETE FROM outbox WHERE id <= (SELECT id FROM outbox"
            " WHERE fields->>'device_id' = 'lost-1')"
        )
        with caplog.at_level(logging.INFO, logger="read_models.audit_heal"):
            for _ in range(3):  # NOGROUP; the group made again, a gap found and healed; idle
                reader.step()
        targets = [i["target"] for i in audit(query, admin, action="device.register")["items"]]
    assert targets == ["device:lost-3", "device:lost-2", "device:kept-1"]
    unrecovered = [
        r.getMessage()
        for r in caplog.records
        if r.name == "read_models.audit_heal" and r.levelno == logging.ERROR
    ]
    assert len(unrecovered) == 1
    assert DEVICE_EVENTS_STREAM in unrecovered[0] and "missing from the audit log" in unrecovered[0]
    tracked = db.execute(
        "SELECT last_id_ms, last_id_seq FROM read_models.tracking"
        " WHERE group_name = %s AND stream = %s",
        (AUDIT_GROUP, DEVICE_EVENTS_STREAM),
    ).fetchone()
    assert tracked == (0, 0), "the heal records what the new group was delivered"


def _row(at: datetime) -> AuditRow:
    return AuditRow(
        event_id=uuid4(),
        at=at,
        actor=Actor(kind="api-key", id="k1", name="old key"),
        action="device.register",
        target="device:d1",
        outcome="succeeded",
    )


def test_rows_past_the_retention_are_deleted_a_batch_at_a_time(
    audited: Settings, db: psycopg.Connection[Any]
) -> None:
    now = datetime.now(UTC)
    old = [_row(now - timedelta(days=31, minutes=n)) for n in range(2_500)]
    kept = [_row(now - timedelta(days=29)), _row(now)]
    with psycopg.connect(audited.database_url, autocommit=True) as conn:
        audit_store.insert_rows(conn, [*old, *kept])
    left = []
    with audit_consumer(audited, retention_days=30) as reader:
        for _ in range(4):
            reader.step()
            left.append(rows(db))
    assert left == [1_502, 502, 2, 2]
    remaining = {r[0] for r in db.execute("SELECT event_id FROM read_models.audit_log")}
    assert remaining == {r.event_id for r in kept}


def test_the_dashboards_audit_page_shows_the_trail_to_admins_only(
    audited: Settings,
    db: psycopg.Connection[Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = datetime.now(UTC)
    with psycopg.connect(audited.database_url, autocommit=True) as conn:
        audit_store.insert_rows(
            conn,
            [
                _row(now - timedelta(minutes=2)),
                AuditRow(
                    event_id=uuid4(),
                    at=now,
                    actor=Actor(kind="dashboard-user", id="ann", name="Ann", via="dashboard key"),
                    action="alarm.acknowledge",
                    target="alarm:a1",
                    outcome="succeeded",
                    detail={"note": "on it"},
                ),
            ],
        )
    with dashboard_settings(audited, monkeypatch):
        page = run_page("audit.py")
        assert not page.exception
        table = page.dataframe[0].value
        assert list(table["actor"]) == ["Ann", "old key"]
        assert list(table["action"]) == ["alarm.acknowledge", "device.register"]
        assert table["via"][0] == "dashboard key" and table["detail"][0] == "note=on it"
        page.text_input(key="audit_actor").input("ann").run()
        assert list(page.dataframe[0].value["actor"]) == ["Ann"]
        page.text_input(key="audit_actor").input("").run()
        page.text_input(key="audit_target").input("device:d1").run()
        assert list(page.dataframe[0].value["actor"]) == ["old key"]

        from dashboard import login

        monkeypatch.setattr(login, "current_person", lambda: login.Person("Val", Role.VIEWER))
        refused = run_page("audit.py")
    assert not refused.exception
    assert not refused.dataframe
    assert "for admins and operators" in refused.error[0].value


def test_iotp_audit_records_the_commands_as_a_process(
    audited: Settings, db: psycopg.Connection[Any], tmp_path: Path
) -> None:
    env = iotp_environment(
        {
            "database_url": audited.database_url,
            "redis_url": audited.redis_url,
            "audit_instance": "t1",
        },
        inherit_settings=False,
    )
    process = ServiceProcess(["audit"], env, tmp_path / "audit.log", ready="auditing as").start()
    try:
        with both_apis(audited) as (command, _):
            key = make_key(command, "provisioner", "factory line")["key"]
            body = {**THERMOSTAT, "device_id": "proc-1"}
            assert command.post("/devices", json=body, headers=bearer(key)).status_code == 201
            wait_relayed(db)
        wait_for(lambda: rows(db) == 2, timeout=20)
        assert process.stop() == 0
    finally:
        if process.running():
            process.kill()
    assert "audit-" in process.output() and "-t1" in process.output()
    actors = db.execute(
        "SELECT action, actor_name FROM read_models.audit_log ORDER BY at"
    ).fetchall()
    assert actors == [("api-key.create", "IOTP_API_TOKEN"), ("device.register", "factory line")]
