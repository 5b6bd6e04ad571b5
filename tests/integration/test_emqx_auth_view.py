"""EMQX's view of iotp's devices (migration 0040_emqx_auth.sql), against real PostgreSQL.

EMQX cannot run here, so these tests do what it would do: run the very queries of
deploy/emqx/emqx.conf (``${username}`` bound as a parameter, as EMQX prepares it), then check
a password the way EMQX's pbkdf2 check does (emqx_passwd: PBKDF2 over the salt column's raw
bytes with the configured mac_fun, iterations and dk_length, lowercase hex, compared with
password_hash).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pyhocon import ConfigFactory, ConfigTree  # type: ignore[import-untyped]

from iotp.settings import Settings
from tests.support.api_client import AUTH, THERMOSTAT, running_api, wait_relayed

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def emqx() -> ConfigTree:
    return ConfigFactory.parse_file(str(ROOT / "deploy" / "emqx" / "emqx.conf"))


def _postgres_source(emqx: ConfigTree, key: str) -> ConfigTree:
    sources = emqx["authentication"] if key == "authentication" else emqx["authorization.sources"]
    found = [s for s in sources if (s.get("backend", None) or s.get("type", None)) == "postgresql"]
    assert len(found) == 1
    source: ConfigTree = found[0]
    return source


def _run(db: psycopg.Connection[Any], query: str, username: str) -> list[tuple[Any, ...]]:
    """EMQX's query for ``username``: its placeholder becomes a bound parameter."""
    assert query.count("${username}") == 1
    return db.execute(query.replace("${username}", "%s"), (username,)).fetchall()


def emqx_accepts(emqx: ConfigTree, db: psycopg.Connection[Any], user: str, password: str) -> bool:
    """What EMQX's PostgreSQL authenticator answers for this user and password."""
    source = _postgres_source(emqx, "authentication")
    rows = _run(db, source["query"], user)
    if not rows:
        return False
    password_hash, salt, _is_superuser = rows[0]
    algorithm = source["password_hash_algorithm"]
    assert algorithm["name"] == "pbkdf2"
    digest = hashlib.pbkdf2_hmac(
        algorithm["mac_fun"],
        password.encode(),
        bytes(salt),
        algorithm["iterations"],
        algorithm["dk_length"],
    )
    return bool(digest.hex() == password_hash)


def emqx_rules(emqx: ConfigTree, db: psycopg.Connection[Any], user: str) -> set[tuple[Any, ...]]:
    source = _postgres_source(emqx, "authorization")
    return set(_run(db, source["query"], user))


def _register(client: Any, device_id: str) -> str:
    response = client.post("/devices", json={**THERMOSTAT, "device_id": device_id}, headers=AUTH)
    assert response.status_code == 201, response.text
    password: str = response.json()["credentials"]["password"]
    return password


def test_a_registered_device_authenticates_as_emqx_checks_it(
    settings: Settings, db: psycopg.Connection[Any], emqx: ConfigTree
) -> None:
    with running_api(settings, relay=False) as client:
        password = _register(client, "boiler-1")
        other = _register(client, "boiler-2")

    row = db.execute(
        "SELECT username, password_hash, salt, iterations, is_superuser FROM emqx_auth"
        " WHERE username = 'boiler-1'"
    ).fetchone()
    assert row is not None
    username, password_hash, salt, iterations, is_superuser = row
    assert (username, is_superuser) == ("boiler-1", False)
    assert iterations == emqx["authentication"][0]["password_hash_algorithm.iterations"]
    assert len(bytes(salt)) == 12 and len(password_hash) == 128  # 64 bytes, in hex
    assert password_hash == password_hash.lower()

    assert emqx_accepts(emqx, db, "boiler-1", password)
    assert emqx_accepts(emqx, db, "boiler-2", other)
    assert not emqx_accepts(emqx, db, "boiler-1", other), "another device's password"
    assert not emqx_accepts(emqx, db, "boiler-1", password[:-1]), "a truncated password"
    assert not emqx_accepts(emqx, db, "boiler-1", ""), "an empty password"
    assert not emqx_accepts(emqx, db, "nobody", password), "an unknown user"
    assert not emqx_accepts(emqx, db, "boiler-1' OR '1'='1", password), "an injected name"


def test_a_rotated_password_replaces_the_old_one(
    settings: Settings, db: psycopg.Connection[Any], emqx: ConfigTree
) -> None:
    with running_api(settings, relay=False) as client:
        old = _register(client, "boiler-1")
        response = client.post("/devices/boiler-1/credentials", headers=AUTH)
        assert response.status_code == 200, response.text
        new = response.json()["credentials"]["password"]

    assert emqx_accepts(emqx, db, "boiler-1", new)
    assert not emqx_accepts(emqx, db, "boiler-1", old)


def test_a_device_may_publish_on_its_own_topic_only(
    settings: Settings, db: psycopg.Connection[Any], emqx: ConfigTree
) -> None:
    with running_api(settings, relay=False) as client:
        _register(client, "boiler-1")
        _register(client, "boiler-2")

    assert emqx_rules(emqx, db, "boiler-1") == {("allow", "publish", "devices/boiler-1/telemetry")}
    assert emqx_rules(emqx, db, "boiler-2") == {("allow", "publish", "devices/boiler-2/telemetry")}
    assert emqx_rules(emqx, db, "nobody") == set()
    assert emqx["authorization.no_match"] == "deny", "what no rule allows is refused"
    rows = db.execute("SELECT username, permission, action, topic FROM emqx_acl").fetchall()
    assert all(
        action == "publish" and "+" not in topic and "#" not in topic for *_, action, topic in rows
    )


def test_a_decommissioned_device_disappears_from_both_views(
    settings: Settings, db: psycopg.Connection[Any], redis_client: Any, emqx: ConfigTree
) -> None:
    with running_api(settings) as client:
        password = _register(client, "boiler-1")
        kept = _register(client, "boiler-2")
        response = client.post("/devices/boiler-1/decommission", headers=AUTH)
        assert response.status_code == 200, response.text
        wait_relayed(db)

    assert not emqx_accepts(emqx, db, "boiler-1", password)
    assert emqx_rules(emqx, db, "boiler-1") == set()
    assert emqx_accepts(emqx, db, "boiler-2", kept)
    assert db.execute("SELECT username FROM emqx_auth").fetchall() == [("boiler-2",)]
    assert db.execute("SELECT username FROM emqx_acl").fetchall() == [("boiler-2",)]
