"""Who issued each command, refused commands on record, and guessed keys slowed down: the
command and query APIs against real PostgreSQL and Redis."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import psycopg
import pytest
import redis
from fastapi.testclient import TestClient

from iotp.names import AUTH_FAILURES_KEY
from iotp.processes import iotp_environment
from iotp.settings import Settings
from read_models.app import create_query_app
from tests.integration.test_command_api_alarms import BOILER, RULE, _alarm
from tests.support.api_client import AUTH, running_api
from tests.support.processes import run_iotp

HOOK = {"url": "https://93.184.215.14/hook", "name": "ops"}


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _key(client: TestClient, role: str, name: str) -> dict[str, Any]:
    made = client.post("/api-keys", json={"name": name, "role": role}, headers=AUTH)
    assert made.status_code == 201, made.text
    body: dict[str, Any] = made.json()
    return body


def _outbox(db: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    """Every event the command side wrote, in commit order."""
    rows = db.execute("SELECT fields FROM outbox ORDER BY id").fetchall()
    return [json.loads(fields["data"]) for (fields,) in rows]


def test_every_command_records_the_key_that_issued_it(
    settings: Settings, db: psycopg.Connection[Any]
) -> None:
    with running_api(settings, relay=False) as client:
        operator = _key(client, "operator", "night shift")
        who = _bearer(operator["key"])
        assert client.post("/devices", json=BOILER, headers=who).status_code == 201
        assert client.patch("/devices/b1", json={"name": "b"}, headers=who).status_code == 200
        assert client.post("/devices/b1/credentials", headers=who).status_code == 200
        rule = client.post("/alarm-rules", json=RULE, headers=who)
        assert rule.status_code == 201, rule.text
        rule_id = rule.json()["rule_id"]
        alarm_id = _alarm(db, rule_id)
        acked = client.post(f"/alarms/{alarm_id}/acknowledge", json={}, headers=who)
        assert acked.status_code == 200, acked.text
        changed = client.put(
            f"/alarm-rules/{rule_id}", json={**RULE, "threshold_high": 50.0}, headers=who
        )
        assert changed.status_code == 200, changed.text
        assert client.delete(f"/alarm-rules/{rule_id}", headers=who).status_code == 200
        hook = client.post("/webhooks", json=HOOK, headers=who)
        assert hook.status_code == 201, hook.text
        deleted = client.delete(f"/webhooks/{hook.json()['webhook_id']}", headers=who)
        assert deleted.status_code == 200
        assert client.post("/devices/b1/decommission", headers=who).status_code == 200
        issued_before = len(_outbox(db))
        viewer = _key(client, "viewer", "wall screen")  # by the bootstrap token
        assert client.delete(f"/api-keys/{viewer['key_id']}", headers=AUTH).status_code == 200
    events = _outbox(db)
    by_operator = events[1:issued_before]  # the first: the operator key's own creation
    assert acked.json()["acknowledged_by"] == "night shift"  # by default, the key's name
    assert {e["type"] for e in by_operator} >= {
        "DeviceRegistered",
        "DeviceUpdated",
        "DeviceCredentialsRotated",
        "AlarmRuleCreated",
        "AlarmAcknowledged",
        "AlarmRuleUpdated",
        "AlarmCleared",  # the rule's update cleared the alarm: the operator's doing too
        "AlarmRuleDeleted",
        "WebhookRegistered",
        "WebhookDeleted",
        "DeviceDecommissioned",
    }
    operator_actor = {
        "kind": "api-key",
        "id": operator["key_id"],
        "name": "night shift",
        "via": None,
    }
    assert [e["actor"] for e in by_operator] == [operator_actor] * len(by_operator)
    bootstrap = {"kind": "bootstrap-token", "id": None, "name": "IOTP_API_TOKEN", "via": None}
    assert [(e["type"], e["actor"]) for e in events[:1] + events[issued_before:]] == [
        ("ApiKeyCreated", bootstrap),
        ("ApiKeyCreated", bootstrap),
        ("ApiKeyRevoked", bootstrap),
    ]
    assert events[-1]["key_id"] == viewer["key_id"] and "key" not in events[-1]


def test_a_key_made_at_the_command_line_names_the_operator_there(
    settings: Settings, db: psycopg.Connection[Any]
) -> None:
    env = iotp_environment({"database_url": settings.database_url}, inherit_settings=False)
    made = run_iotp("keys", "create", "--name", "factory", "--role", "provisioner", env=env)
    assert made.returncode == 0, made.stderr
    key_id = made.stderr.split("key_id: ")[1].split()[0]
    revoked = run_iotp("keys", "revoke", key_id, env=env)
    assert revoked.returncode == 0, revoked.stderr
    again = run_iotp("keys", "revoke", key_id, env=env)  # harmless, and not recorded twice
    assert again.returncode == 0, again.stderr
    events = _outbox(db)
    assert [(e["type"], e["key_id"]) for e in events] == [
        ("ApiKeyCreated", key_id),
        ("ApiKeyRevoked", key_id),
    ]
    assert {e["actor"]["kind"] for e in events} == {"command-line"}
    assert all("@" in e["actor"]["name"] for e in events)


def test_a_refused_command_is_on_record_and_a_refused_read_is_not(
    settings: Settings, db: psycopg.Connection[Any]
) -> None:
    with running_api(settings, relay=False) as client:
        viewer = _key(client, "viewer", "wall screen")
        refused = client.post("/devices", json=BOILER, headers=_bearer(viewer["key"]))
        read = client.get("/api-keys", headers=_bearer(viewer["key"]))
        created = client.post("/devices", json=BOILER, headers=AUTH)
    assert (refused.status_code, read.status_code, created.status_code) == (403, 403, 201)
    denied = [e for e in _outbox(db) if e["type"] == "AccessDenied"]
    assert len(denied) == 1
    assert denied[0]["actor"]["id"] == viewer["key_id"]
    assert (denied[0]["method"], denied[0]["path"]) == ("POST", "/devices")
    assert denied[0]["permission"] == "devices:register"
    assert denied[0]["reason"] == "role viewer lacks permission devices:register"
    row = db.execute("SELECT stream FROM outbox WHERE event_type = 'AccessDenied'").fetchone()
    assert row == ("iotp:events:access",)


@pytest.fixture
def strict(settings: Settings, redis_client: redis.Redis) -> Settings:
    redis_client.delete(AUTH_FAILURES_KEY)
    return settings.model_copy(update={"auth_failure_limit": 3})


def test_guessed_keys_are_slowed_per_address_and_counted_on_pipeline(strict: Settings) -> None:
    guesses = [_bearer("iotp_" + uuid.uuid4().hex), _bearer("nonsense"), {"Authorization": "x"}]
    query_app = create_query_app(strict)
    with running_api(strict, relay=False) as command, TestClient(query_app) as query:
        # The same app from another address (its lifespan is the first client's).
        elsewhere = TestClient(query_app, client=("203.0.113.9", 50000))
        refused = [command.get("/alarm-rules", headers=guess).status_code for guess in guesses]
        throttled = command.get("/alarm-rules", headers=AUTH)  # the right key, too late
        unauthenticated = command.get("/alarm-rules")  # no credential: not a guess
        for guess in guesses:
            assert query.get("/fleet", headers=guess).status_code == 401
        assert query.get("/fleet", headers=guesses[0]).status_code == 429
        # Another address is not slowed by this one's guesses.
        assert elsewhere.get("/fleet", headers=AUTH).status_code == 200
        report = elsewhere.get("/pipeline", headers=AUTH).json()
    assert refused == [401, 401, 401]
    assert throttled.status_code == 429
    assert 1 <= int(throttled.headers["retry-after"]) <= 60
    assert unauthenticated.status_code == 429
    auth = report["auth"]
    assert auth["by_api"] == {
        "command": {"failures": 3, "throttled": 2},
        "query": {"failures": 3, "throttled": 1},
    }
    assert (auth["failures"], auth["throttled"]) == (6, 3)
    assert auth["last_failure_at"] is not None


def test_every_route_that_may_answer_401_documents_429(settings: Settings) -> None:
    with running_api(settings, relay=False) as command:
        documents = [command.get("/openapi.json").json()]
    documents.append(create_query_app(settings).openapi())
    for document in documents:
        for path, operations in document["paths"].items():
            for method, operation in operations.items():
                answers = operation["responses"]
                if "401" in answers:
                    assert "429" in answers, (method, path)
                    assert "Retry-After" in answers["429"]["headers"]


def test_a_refused_password_or_secret_is_never_sent_back(settings: Settings) -> None:
    account = {"username": "ada", "role": "viewer", "password": "short-pw"}
    hook = {**HOOK, "secret": "has space in it!"}
    with running_api(settings, relay=False) as client:
        refused = [
            client.post("/dashboard-accounts", json=account, headers=AUTH),
            client.post("/webhooks", json=hook, headers=AUTH),
        ]
    for answer in refused:
        assert answer.status_code == 422, answer.text
        assert "short-pw" not in answer.text and "has space" not in answer.text
        assert all("input" not in issue for issue in answer.json()["detail"])


def _account(client: TestClient, username: str, role: str) -> None:
    made = client.post(
        "/dashboard-accounts",
        json={"username": username, "role": role, "password": "a long enough password"},
        headers=AUTH,
    )
    assert made.status_code == 201, made.text


def test_the_dashboards_key_acts_with_the_persons_role_and_name_never_its_own(
    settings: Settings, db: psycopg.Connection[Any]
) -> None:
    with running_api(settings, relay=False) as client:
        _account(client, "ada", "operator")
        _account(client, "vic", "viewer")
        operator = _key(client, "operator", "not the dashboard")
        as_ada = {**AUTH, "X-Iotp-Dashboard-User": "ada"}
        statuses = {
            # Only a key allowed to act for people may name one.
            "operator key": client.post(
                "/devices",
                json=BOILER,
                headers={**_bearer(operator["key"]), "X-Iotp-Dashboard-User": "ada"},
            ).status_code,
            "unknown": client.post(
                "/devices", json=BOILER, headers={**AUTH, "X-Iotp-Dashboard-User": "nobody"}
            ).status_code,
            # The admin token acting for a viewer has the viewer's rights.
            "viewer": client.post(
                "/devices", json=BOILER, headers={**AUTH, "X-Iotp-Dashboard-User": "vic"}
            ).status_code,
            "operator": client.post("/devices", json=BOILER, headers=as_ada).status_code,
            "operator, keys": client.get("/api-keys", headers=as_ada).status_code,
        }
        rule = client.post("/alarm-rules", json=RULE, headers=as_ada).json()
        alarm_id = _alarm(db, rule["rule_id"])
        claimed = client.post(
            f"/alarms/{alarm_id}/acknowledge", json={"acknowledged_by": "bob"}, headers=as_ada
        )
        acked = client.post(f"/alarms/{alarm_id}/acknowledge", json={}, headers=as_ada)
        disabled = client.patch("/dashboard-accounts/ada", json={"disabled": True}, headers=AUTH)
        assert disabled.status_code == 200, disabled.text
        deadline = time.monotonic() + 2.0
        while client.get("/alarm-rules", headers=as_ada).status_code != 401:
            assert time.monotonic() < deadline, "a disabled account still acts after 2 s"
            time.sleep(0.1)
    assert statuses == {
        "operator key": 403,
        "unknown": 401,
        "viewer": 403,
        "operator": 201,
        "operator, keys": 403,
    }
    assert claimed.status_code == 422, claimed.text
    assert acked.status_code == 200 and acked.json()["acknowledged_by"] == "ada"
    ada = {"kind": "dashboard-user", "id": "ada", "name": "ada", "via": "IOTP_API_TOKEN"}
    events = {e["type"]: e for e in _outbox(db)}
    assert events["DeviceRegistered"]["actor"] == ada
    assert events["AlarmAcknowledged"]["actor"] == ada
    assert events["AlarmAcknowledged"]["acknowledged_by"] == "ada"
    denied = [e for e in _outbox(db) if e["type"] == "AccessDenied"]
    assert [(e["actor"]["name"], e["actor"]["kind"]) for e in denied] == [
        ("not the dashboard", "api-key"),
        ("vic", "dashboard-user"),
    ]
