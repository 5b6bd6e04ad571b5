"""API keys with roles on both HTTP APIs, against real PostgreSQL: made through the API and
the CLI, allowed and refused by role, refused once revoked or expired, never shown again."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from fastapi import FastAPI
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient
from pydantic import SecretStr

from command_api.app import create_app
from iotp.permissions import PUBLIC_PATHS, Role, route_permissions
from iotp.processes import iotp_environment
from iotp.settings import Settings
from read_models.app import create_query_app
from tests.support.api_client import AUTH, THERMOSTAT
from tests.support.processes import run_iotp

ROLES = [role.value for role in Role]


@pytest.fixture
def keyed(settings: Settings, db: psycopg.Connection[Any]) -> Settings:
    db.execute("TRUNCATE api_keys")
    return settings


@contextmanager
def both_apis(settings: Settings) -> Iterator[tuple[TestClient, TestClient]]:
    with (
        TestClient(create_app(settings, run_relay_task=False)) as command,
        TestClient(create_query_app(settings)) as query,
    ):
        yield command, query


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _make_key(command: TestClient, role: str, **fields: Any) -> dict[str, Any]:
    response = command.post(
        "/api-keys", json={"name": f"{role} key", "role": role, **fields}, headers=AUTH
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def _register(command: TestClient, key: str, device_id: str) -> int:
    body = {**THERMOSTAT, "device_id": device_id}
    return command.post("/devices", json=body, headers=_bearer(key)).status_code


def test_each_role_is_allowed_and_refused_on_both_apis(keyed: Settings) -> None:
    with both_apis(keyed) as (command, query):
        keys = {role: _make_key(command, role) for role in ROLES}
        for role, made in keys.items():
            assert made["role"] == role and made["key"].startswith("iotp_")
            assert set(made) == {
                "key_id",
                "name",
                "role",
                "created_at",
                "expires_at",
                "revoked_at",
                "key",
            }
        statuses = {
            role: (
                _register(command, made["key"], f"dev-{role}"),
                command.get("/alarm-rules", headers=_bearer(made["key"])).status_code,
                command.get("/webhooks", headers=_bearer(made["key"])).status_code,
                command.get("/api-keys", headers=_bearer(made["key"])).status_code,
                query.get("/fleet", headers=_bearer(made["key"])).status_code,
                query.get("/alarms", headers=_bearer(made["key"])).status_code,
            )
            for role, made in keys.items()
        }
        provisioner = keys["provisioner"]["key"]
        rotated = command.post("/devices/dev-admin/credentials", headers=_bearer(provisioner))
        patched = command.patch(
            "/devices/dev-admin", json={"name": "x"}, headers=_bearer(provisioner)
        )
    assert statuses == {
        "admin": (201, 200, 200, 200, 200, 200),
        "operator": (201, 200, 200, 403, 200, 200),
        "provisioner": (201, 403, 403, 403, 403, 403),
        "viewer": (403, 200, 403, 403, 200, 200),
    }
    assert rotated.status_code == 200, rotated.text
    assert patched.status_code == 403
    assert patched.json() == {"detail": "role provisioner lacks permission devices:manage"}


def test_a_refused_role_is_refused_before_its_body_is_read(keyed: Settings) -> None:
    with both_apis(keyed) as (command, _):
        viewer = _make_key(command, "viewer")["key"]
        response = command.post(
            "/devices",
            content=b"{not json",
            headers={**_bearer(viewer), "content-type": "application/json"},
        )
    assert response.status_code == 403


def test_unknown_revoked_and_expired_keys_are_401_on_both_apis(keyed: Settings) -> None:
    with both_apis(keyed) as (command, query):
        revoked = _make_key(command, "admin")
        soon = datetime.now(UTC) + timedelta(seconds=1.5)
        expiring = _make_key(command, "admin", expires_at=soon.isoformat())
        assert query.get("/fleet", headers=_bearer(expiring["key"])).status_code == 200
        assert command.delete(f"/api-keys/{revoked['key_id']}", headers=AUTH).status_code == 200
        time.sleep(max(0.0, (soon - datetime.now(UTC)).total_seconds()) + 1.1)
        for key in ("iotp_" + "A" * 43, "not-a-key", revoked["key"], expiring["key"]):
            for client, path in ((command, "/alarm-rules"), (query, "/fleet")):
                answer = client.get(path, headers=_bearer(key))
                assert answer.status_code == 401, (key, path)
                assert answer.headers["www-authenticate"] == "Bearer"
        listed = {k["key_id"]: k for k in command.get("/api-keys", headers=AUTH).json()["keys"]}
    assert listed[revoked["key_id"]]["revoked_at"] is not None
    assert listed[expiring["key_id"]]["revoked_at"] is None


def test_revocation_holds_on_both_apis_within_two_seconds(keyed: Settings) -> None:
    with both_apis(keyed) as (command, query):
        made = _make_key(command, "operator")
        key = _bearer(made["key"])
        assert command.get("/alarm-rules", headers=key).status_code == 200  # now cached
        assert query.get("/fleet", headers=key).status_code == 200
        revoked_at = time.monotonic()
        assert command.delete(f"/api-keys/{made['key_id']}", headers=AUTH).status_code == 200
        refused: dict[str, float] = {}
        while len(refused) < 2 and time.monotonic() - revoked_at < 5:
            for name, client, path in (
                ("command", command, "/alarm-rules"),
                ("query", query, "/fleet"),
            ):
                if name not in refused and client.get(path, headers=key).status_code == 401:
                    refused[name] = time.monotonic() - revoked_at
            time.sleep(0.05)
    assert set(refused) == {"command", "query"}
    assert max(refused.values()) < 2.0, refused


def test_the_key_is_never_answered_again_and_only_its_hash_is_stored(
    keyed: Settings, db: psycopg.Connection[Any]
) -> None:
    with both_apis(keyed) as (command, _):
        made = _make_key(command, "viewer")
        listed = command.get("/api-keys", headers=AUTH)
        one = command.get(f"/api-keys/{made['key_id']}", headers=AUTH)
        missing = command.get("/api-keys/00000000-0000-0000-0000-000000000000", headers=AUTH)
    assert made["key"] not in listed.text and made["key"] not in one.text
    assert "key" not in one.json() and one.json()["role"] == "viewer"
    assert missing.status_code == 404
    row = db.execute(
        "SELECT key_hash FROM api_keys WHERE key_id = %s", (made["key_id"],)
    ).fetchone()
    assert row is not None
    stored = bytes(row[0])
    assert made["key"].encode() not in stored
    assert stored == hashlib.sha256(made["key"].encode()).digest()


def test_the_cli_makes_lists_and_revokes_keys_without_the_api(keyed: Settings) -> None:
    env = iotp_environment({"database_url": keyed.database_url}, inherit_settings=False)
    created = run_iotp(
        "keys", "create", "--name", "factory line 3", "--role", "provisioner", env=env
    )
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    key_id = created.stderr.split("key_id: ")[1].split()[0]
    listed = run_iotp("keys", "list", env=env)
    assert key_id in listed.stdout and "provisioner" in listed.stdout and key not in listed.stdout
    with both_apis(keyed) as (command, query):
        assert _register(command, key, "cli-made") == 201
        assert query.get("/fleet", headers=_bearer(key)).status_code == 403
        revoked = run_iotp("keys", "revoke", key_id, env=env)
        assert revoked.returncode == 0, revoked.stderr
        time.sleep(1.1)
        assert _register(command, key, "cli-made-2") == 401
    assert "revoked" in run_iotp("keys", "list", env=env).stdout
    bad = run_iotp("keys", "create", "--name", "x", "--role", "root", env=env)
    assert bad.returncode != 0


def _walk(app: FastAPI) -> list[tuple[str, list[Any]]]:
    return [
        (route.path or "", route_permissions(route)) for route in iter_route_contexts(app.routes)
    ]


def test_every_route_of_both_apis_declares_a_permission_or_is_public(settings: Settings) -> None:
    for app in (create_app(settings), create_query_app(settings)):
        routes = _walk(app)
        assert len(routes) > 8
        undeclared = [path for path, needed in routes if not needed and path not in PUBLIC_PATHS]
        assert undeclared == []
        assert [path for path, needed in routes if needed and path in PUBLIC_PATHS] == []
        for path, operations in app.openapi()["paths"].items():
            if path not in PUBLIC_PATHS:
                for operation in operations.values():
                    assert {"401", "403"} <= set(operation["responses"]), path


def test_a_route_without_a_permission_is_refused_to_everyone(keyed: Settings) -> None:
    app = create_app(keyed, run_relay_task=False)

    @app.get("/undeclared")
    def undeclared() -> dict[str, str]:
        return {"leak": "yes"}

    with TestClient(app) as client:
        assert client.get("/undeclared").status_code == 401
        assert client.get("/undeclared", headers=AUTH).status_code == 403
        assert client.get("/healthz").status_code in (200, 503)
        assert client.get("/openapi.json").status_code == 200


def test_bootstrap_tokens_are_an_admin_and_a_viewer(keyed: Settings) -> None:
    query_token = "query-token-0123456789abcdef"
    separate = keyed.model_copy(update={"query_token": SecretStr(query_token)})
    with both_apis(separate) as (command, query):
        assert command.get("/api-keys", headers=AUTH).status_code == 200
        assert query.get("/fleet", headers=_bearer(query_token)).status_code == 200
        assert command.get("/alarm-rules", headers=_bearer(query_token)).status_code == 401


def test_the_pepper_setting_keeps_device_passwords_once_the_admin_token_changes(
    keyed: Settings,
) -> None:
    replay = {"Idempotency-Key": "factory-42"}
    with TestClient(create_app(keyed, run_relay_task=False)) as before:
        first = before.post("/devices", json=THERMOSTAT, headers={**AUTH, **replay})
    assert first.status_code == 201, first.text
    new_token = "new-admin-token-0123456789abcdef"
    rotated = keyed.model_copy(
        update={"api_token": SecretStr(new_token), "device_password_pepper": keyed.api_token}
    )
    with TestClient(create_app(rotated, run_relay_task=False)) as after:
        again = after.post("/devices", json=THERMOSTAT, headers={**_bearer(new_token), **replay})
        assert after.get("/alarm-rules", headers=AUTH).status_code == 401  # old token retired
    assert again.status_code == 201, again.text
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["credentials"] == first.json()["credentials"]
