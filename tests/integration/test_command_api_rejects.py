"""Bad requests: each answered 4xx with a message, and nothing written anywhere."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest
import redis

from iotp.names import DEVICE_EVENTS_STREAM
from iotp.settings import Settings
from tests.support.api_client import AUTH, THERMOSTAT, counts, running_api


def _with(**changes: Any) -> dict[str, Any]:
    return {**THERMOSTAT, **changes}


def _without(field: str) -> dict[str, Any]:
    return {k: v for k, v in THERMOSTAT.items() if k != field}


def cases(names: tuple[str, ...], table: list[tuple[Any, ...]]) -> pytest.MarkDecorator:
    """Parametrize by the rows of ``table``, each named by its first column."""
    return pytest.mark.parametrize(names, table, ids=[row[0] for row in table])


INVALID_REGISTRATIONS: list[tuple[str, Any, str]] = [
    ("empty id", _with(device_id=""), "device_id"),
    ("id too long", _with(device_id="a" * 65), "device_id"),
    ("id with slash", _with(device_id="a/b"), "device_id"),
    ("id with MQTT wildcard", _with(device_id="dev+#"), "device_id"),
    ("id with space", _with(device_id="dev 1"), "device_id"),
    ("SQL injection id", _with(device_id="x'; DROP TABLE devices;--"), "device_id"),
    ("non-ASCII id", _with(device_id="тест"), "device_id"),
    ("lone surrogate in name", _with(name="bad \ud800 text"), "name"),
    ("NUL in name", _with(name="bad\x00name"), "name"),
    ("control character in kind", _with(kind="thermo\x1bstat"), "kind"),
    ("blank name", _with(name="   "), "name"),
    ("name too long", _with(name="n" * 201), "name"),
    ("oversized metadata", _with(metadata={"blob": "x" * 9000}), "metadata"),
    ("NUL in metadata", _with(metadata={"k": "a\x00b"}), "metadata"),
    (
        "deep metadata",
        _with(metadata={"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {"i": {"j": 1}}}}}}}}}}),
        "metadata",
    ),
    ("metadata not an object", _with(metadata=[1, 2]), "metadata"),
    ("name of wrong type", _with(name=12), "name"),
    ("kind of wrong type", _with(kind=["thermostat"]), "kind"),
    ("latitude out of range", _with(location={"lat": 91, "lon": 0}), "lat"),
    ("location missing lon", _with(location={"lat": 10}), "lon"),
    ("min above max", _with(metrics=[{"name": "t", "min": 10, "max": 1}]), "metrics"),
    ("metric declared twice", _with(metrics=[{"name": "t"}, {"name": "t"}]), "metrics"),
    ("metric name illegal", _with(metrics=[{"name": "temp/x"}]), "name"),
    ("min not a number", _with(metrics=[{"name": "t", "min": "cold"}]), "min"),
    ("missing name", _without("name"), "name"),
    ("missing kind", _without("kind"), "kind"),
    ("unknown field", _with(owner="eve"), "owner"),
    ("body is a list", [THERMOSTAT], "body"),
]


@cases(("case", "body", "field"), INVALID_REGISTRATIONS)
def test_invalid_registration_is_422_naming_the_field(
    settings: Settings,
    db: psycopg.Connection[Any],
    redis_client: redis.Redis,
    case: str,
    body: Any,
    field: str,
) -> None:
    # json.dumps escapes non-ASCII, so a lone surrogate travels as the JSON text "\ud800".
    raw = json.dumps(body).encode()
    with running_api(settings) as client:
        answer = client.post(
            "/devices", content=raw, headers={**AUTH, "content-type": "application/json"}
        )
    assert answer.status_code == 422, (case, answer.text)
    assert field in answer.text
    assert counts(db) == (0, 0, 0)
    assert redis_client.exists(DEVICE_EVENTS_STREAM) == 0


RAW_BODIES: list[tuple[str, bytes, dict[str, str], int]] = [
    ("not JSON", b"{name: boiler", {"content-type": "application/json"}, 422),
    ("not UTF-8", b'{"name": "\xff\xfe", "kind": "k"}', {"content-type": "application/json"}, 400),
    (
        "NaN literal",
        b'{"name": "n", "kind": "k", "location": {"lat": NaN, "lon": 0}}',
        {"content-type": "application/json"},
        422,
    ),
    ("empty body", b"", {"content-type": "application/json"}, 422),
    (
        "oversized body",
        b'{"name": "' + b"x" * 70_000 + b'", "kind": "k"}',
        {"content-type": "application/json"},
        413,
    ),
]


@cases(("case", "raw", "headers", "status"), RAW_BODIES)
def test_malformed_body_is_refused(
    settings: Settings,
    db: psycopg.Connection[Any],
    redis_client: redis.Redis,
    case: str,
    raw: bytes,
    headers: dict[str, str],
    status: int,
) -> None:
    with running_api(settings) as client:
        answer = client.post("/devices", content=raw, headers={**AUTH, **headers})
    assert answer.status_code == status, (case, answer.text)
    assert "detail" in answer.json()
    assert counts(db) == (0, 0, 0)


INVALID_PATCHES: list[tuple[str, Any, str]] = [
    ("empty patch", {}, "at least one"),
    ("null name", {"name": None}, "name"),
    ("unknown field", {"status": "active"}, "status"),
    ("oversized metadata", {"metadata": {"blob": "y" * 9000}}, "metadata"),
]


@cases(("case", "patch", "text"), INVALID_PATCHES)
def test_invalid_update_is_422_and_changes_nothing(
    settings: Settings, db: psycopg.Connection[Any], case: str, patch: Any, text: str
) -> None:
    with running_api(settings) as client:
        assert client.post("/devices", json=THERMOSTAT, headers=AUTH).status_code == 201
        before = db.execute("SELECT row_to_json(d)::text FROM devices d").fetchone()
        answer = client.patch("/devices/boiler-1", json=patch, headers=AUTH)
    assert answer.status_code == 422, (case, answer.text)
    assert text in answer.text
    assert db.execute("SELECT row_to_json(d)::text FROM devices d").fetchone() == before
    assert counts(db)[1] == 1


def test_illegal_path_id_is_422(settings: Settings, db: psycopg.Connection[Any]) -> None:
    with running_api(settings) as client:
        answer = client.post("/devices/" + "z" * 80 + "/decommission", headers=AUTH)
    assert answer.status_code == 422
    assert counts(db) == (0, 0, 0)


def test_illegal_idempotency_key_is_422(settings: Settings, db: psycopg.Connection[Any]) -> None:
    with running_api(settings) as client:
        answer = client.post(
            "/devices", json=THERMOSTAT, headers={**AUTH, "Idempotency-Key": "k" * 300}
        )
    assert answer.status_code == 422
    assert counts(db) == (0, 0, 0)


AUTH_CASES: list[tuple[str, dict[str, str]]] = [
    ("no header", {}),
    ("wrong token", {"Authorization": "Bearer not-the-token-at-all"}),
    ("wrong scheme", {"Authorization": "Basic dGVzdDp0ZXN0"}),
    ("token without scheme", {"Authorization": "test-token-0123456789abcdef"}),
]


@pytest.mark.parametrize(("case", "headers"), AUTH_CASES, ids=[c[0] for c in AUTH_CASES])
def test_missing_or_wrong_token_is_401_and_writes_nothing(
    settings: Settings,
    db: psycopg.Connection[Any],
    redis_client: redis.Redis,
    case: str,
    headers: dict[str, str],
) -> None:
    with running_api(settings) as client:
        assert (
            client.post(
                "/devices", json={**THERMOSTAT, "device_id": "seed"}, headers=AUTH
            ).status_code
            == 201
        )
        before = counts(db)
        answers = [
            client.post("/devices", json=THERMOSTAT, headers=headers),
            client.post("/devices", content=b"not even json", headers=headers),
            client.patch("/devices/seed", json={"name": "x"}, headers=headers),
            client.post("/devices/seed/decommission", headers=headers),
            client.post("/devices/seed/credentials", headers=headers),
        ]
    assert [a.status_code for a in answers] == [401] * 5, case
    assert all(a.headers["www-authenticate"] == "Bearer" for a in answers)
    assert counts(db) == before
    assert db.execute("SELECT name, status FROM devices").fetchone() == (
        "Boiler room thermostat",
        "active",
    )
