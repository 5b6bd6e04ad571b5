"""Every route of both APIs x every role, the routes listed from the apps themselves: a role
the permissions table allows is let through (whatever the route then answers), any other
role is refused with 403, and no key at all with 401. A new route is in the matrix the
moment it exists."""

from __future__ import annotations

import re
import uuid
from typing import Any

import psycopg
import pytest
from fastapi import FastAPI
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient

from command_api.app import create_app
from iotp.permissions import PUBLIC_PATHS, ROLES_OF, Role, route_permissions
from iotp.settings import Settings
from read_models.app import create_query_app
from tests.support.api_client import AUTH

_PARAMETER = re.compile(r"\{[^}]+\}")


def _routes(app: FastAPI) -> list[tuple[str, str, frozenset[Role]]]:
    """(method, a concrete path, the roles allowed) of every non-public route of ``app``."""
    found = []
    for route in iter_route_contexts(app.routes):
        path = route.path or ""
        if path in PUBLIC_PATHS or not getattr(route, "methods", None):
            continue
        allowed = frozenset(Role)
        for permission in route_permissions(route):
            allowed &= ROLES_OF[permission]
        # Any id will do: the access check comes before the route looks anything up.
        concrete = _PARAMETER.sub(lambda _: uuid.uuid4().hex, path)
        for method in sorted(route.methods - {"HEAD"}):
            found.append((method, concrete, allowed))
    return found


def _keys(command: TestClient) -> dict[Role, dict[str, str]]:
    keys = {}
    for role in Role:
        made = command.post(
            "/api-keys", json={"name": f"matrix {role}", "role": role}, headers=AUTH
        )
        assert made.status_code == 201, made.text
        keys[role] = {"Authorization": f"Bearer {made.json()['key']}"}
    return keys


@pytest.fixture
def matrix_settings(settings: Settings, db: psycopg.Connection[Any]) -> Settings:
    db.execute("TRUNCATE api_keys")
    return settings.model_copy(update={"auth_failure_limit": 10_000})


def test_each_role_gets_what_the_permissions_table_says_on_every_route(
    matrix_settings: Settings,
) -> None:
    command_app = create_app(matrix_settings, run_relay_task=False)
    query_app = create_query_app(matrix_settings)
    outcomes: list[tuple[str, str, str, int, bool]] = []
    with TestClient(command_app) as command, TestClient(query_app) as query:
        keys = _keys(command)
        for client, app in ((command, command_app), (query, query_app)):
            routes = _routes(app)
            assert len(routes) > 8
            for method, path, allowed in routes:
                anonymous = client.request(method, path, json={})
                assert anonymous.status_code == 401, (method, path)
                for role, key in keys.items():
                    answer = client.request(method, path, json={}, headers=key)
                    outcomes.append((method, path, role, answer.status_code, role in allowed))
    wrong = [
        outcome
        for outcome in outcomes
        if (outcome[3] == 403) == outcome[4] or outcome[3] in (401, 429) or outcome[3] >= 500
    ]
    assert wrong == []
    # The matrix is not trivial: every role is let through somewhere, every role but admin
    # refused somewhere, and admin everywhere.
    for role in Role:
        expected = {True} if role == Role.ADMIN else {True, False}
        assert {o[4] for o in outcomes if o[2] == role} == expected, role
