"""Both HTTP APIs keep their OpenAPI promises, whatever a client sends: no 5xx, and every
answer has a documented status, content type, body and headers; every error is one shape.

Schemathesis generates valid and invalid requests from each application's own document and
sends them in-process, lifespan included (real PostgreSQL and Redis). Examples are bounded
and derandomized, so that the file stays fast and a failure replays.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import hypothesis
import psycopg
import pytest
import redis
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import strategies as st
from pydantic import SecretStr

from command_api import handlers
from command_api.app import create_app
from iotp.events import DeviceDecommissioned, DeviceRegistered, Event, TelemetryRecorded
from iotp.events import RecordedReading as Reading
from iotp.model import MetricSpec
from iotp.names import DEVICE_EVENTS_STREAM
from iotp.settings import Settings
from read_models import store
from read_models.app import create_query_app
from read_models.projection import fold
from tests.support.api_client import AUTH, THERMOSTAT, counts, running_api
from tests.support.servers import TEST_TOKEN
from tests.support.webhook_lab import SECRET_KEY

CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "response_headers_conformance",
)
# Path parameters are mostly generated ids no store knows; these are known, so that the
# answers of existing (and decommissioned) devices are exercised too.
KNOWN_DEVICES = ("boiler-1", "retired-1")


def _config() -> schemathesis.Config:
    return schemathesis.Config.from_dict(
        {
            "seed": 13,
            "generation": {"mode": "all", "max-examples": 40, "deterministic": True},
            "phases": {"stateful": {"enabled": False}},
            "checks": {"enabled": False, **{name: {"enabled": True} for name in CHECKS}},
        }
    )


def _document(app: FastAPI) -> dict[str, Any]:
    return _without_prefix_items(copy.deepcopy(app.openapi()))


def _without_prefix_items(node: Any) -> Any:
    """Tuples as arrays of any of their items: schemathesis 4.32 rewrites a response's
    ``prefixItems`` into draft 4's ``items: [...]``, which its 2020-12 validator refuses."""
    if isinstance(node, dict):
        if "prefixItems" in node:
            node["items"] = {"anyOf": node.pop("prefixItems")}
        return {key: _without_prefix_items(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_without_prefix_items(item) for item in node]
    return node


# A document does not depend on where the stores are, so it is built at collection with a
# token alone; each test sends its cases to an application wired to this run's stores.
_ANY_STORES = Settings(api_token=SecretStr(TEST_TOKEN))
command_api = schemathesis.openapi.from_dict(_document(create_app(_ANY_STORES)), config=_config())
query_api = schemathesis.openapi.from_dict(
    _document(create_query_app(_ANY_STORES)), config=_config()
)


def _known_devices_too(context: Any, path_parameters: dict[str, Any] | None) -> Any:
    if not path_parameters or "device_id" not in path_parameters:
        return st.just(path_parameters)
    known = [{**path_parameters, "device_id": device_id} for device_id in KNOWN_DEVICES]
    return st.sampled_from([path_parameters, *known])


for _schema in (command_api, query_api):
    _schema.hook("flatmap_path_parameters")(_known_devices_too)

# One application (one lifespan, one pool) serves every example of an operation.
ONE_APP_PER_OPERATION = hypothesis.settings(
    suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture]
)


@pytest.fixture
def command_app(settings: Settings) -> FastAPI:
    # With a key, as deployed: without one a webhook with a secret is a (declared) 503.
    settings = settings.model_copy(update={"notify_secret_key": SecretStr(SECRET_KEY)})
    with running_api(settings, relay=False) as client:
        for device_id in KNOWN_DEVICES:
            body = {**THERMOSTAT, "device_id": device_id}
            assert client.post("/devices", json=body, headers=AUTH).status_code == 201
        assert client.post("/devices/retired-1/decommission", headers=AUTH).status_code == 200
    return create_app(settings, run_relay_task=False)


@pytest.fixture
def query_app(settings: Settings, db: psycopg.Connection[Any]) -> FastAPI:
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    specs = (MetricSpec(name="temp", min=0, max=50), MetricSpec(name="hum"))
    events: list[Event] = [
        DeviceRegistered(device_id=device_id, name="Boiler", kind="thermostat", metrics=specs)
        for device_id in KNOWN_DEVICES
    ]
    events.append(DeviceDecommissioned(device_id="retired-1"))
    for minute in range(30):
        ts = now - timedelta(minutes=minute)
        reading = Reading(ts=ts, metrics={"temp": 20.0 + minute % 40, "hum": 40.0})
        events.append(TelemetryRecorded(device_id="boiler-1", readings=(reading,), ingested_at=ts))
    with db.transaction():
        store.apply_deltas(db, fold(events))
    return create_query_app(settings)


@command_api.parametrize()
@ONE_APP_PER_OPERATION
def test_the_command_api_keeps_its_openapi_promises(
    case: schemathesis.Case, command_app: FastAPI
) -> None:
    case.call_and_validate(app=command_app, headers=AUTH)


@query_api.parametrize()
@ONE_APP_PER_OPERATION
def test_the_query_api_keeps_its_openapi_promises(
    case: schemathesis.Case, query_app: FastAPI
) -> None:
    case.call_and_validate(app=query_app, headers=AUTH)


# Found by property-based testing: the regressions, each answered in the one error shape.


def _is_refusal(answer: Any, *loc: str | int) -> bool:
    """A 422 listing issues, the first at ``loc``."""
    detail = answer.json()["detail"]
    return (
        answer.status_code == 422
        and isinstance(detail, list)
        and all(set(issue) >= {"loc", "msg", "type"} for issue in detail)
        and tuple(detail[0]["loc"][: len(loc)]) == loc
    )


@pytest.mark.parametrize(
    "metadata",
    [
        {"big": 2**64},
        {"big": 2**63},
        {"small": -(2**63) - 1},
        {"nested": {"list": [1, 2, 10**30]}},
    ],
    ids=["2**64", "2**63", "-2**63-1", "nested 10**30"],
)
def test_an_integer_beyond_64_bits_in_metadata_is_refused_and_nothing_written(
    settings: Settings,
    db: psycopg.Connection[Any],
    redis_client: redis.Redis,
    metadata: dict[str, Any],
) -> None:
    with running_api(settings) as client:
        registered = client.post(
            "/devices", json={**THERMOSTAT, "metadata": metadata}, headers=AUTH
        )
        assert counts(db) == (0, 0, 0)
        assert client.post("/devices", json=THERMOSTAT, headers=AUTH).status_code == 201
        before = db.execute("SELECT metadata FROM devices").fetchone()
        updated = client.patch("/devices/boiler-1", json={"metadata": metadata}, headers=AUTH)
    assert _is_refusal(registered, "body", "metadata"), registered.text
    assert "64 bits" in registered.text
    assert _is_refusal(updated, "body", "metadata"), updated.text
    assert db.execute("SELECT metadata FROM devices").fetchone() == before
    assert counts(db)[1] == 1  # the registration's event only
    assert redis_client.xlen(DEVICE_EVENTS_STREAM) <= 1


def test_integers_at_the_64_bit_bounds_are_kept(
    settings: Settings, db: psycopg.Connection[Any]
) -> None:
    metadata = {"max": 2**63 - 1, "min": -(2**63)}
    with running_api(settings, relay=False) as client:
        answer = client.post("/devices", json={**THERMOSTAT, "metadata": metadata}, headers=AUTH)
    assert answer.status_code == 201, answer.text
    assert db.execute("SELECT metadata FROM devices").fetchone() == (metadata,)


def test_command_api_errors_are_one_shape(settings: Settings, db: psycopg.Connection[Any]) -> None:
    with running_api(settings, relay=False) as client:
        key = {**AUTH, "Idempotency-Key": "k-1"}
        assert client.post("/devices", json=THERMOSTAT, headers=key).status_code == 201
        reused = client.post("/devices", json={**THERMOSTAT, "name": "other"}, headers=key)
        bad_key = client.post("/devices", json=THERMOSTAT, headers={**AUTH, "Idempotency-Key": ""})
        conflict = client.post("/devices", json=THERMOSTAT, headers=AUTH)
        unknown = client.post("/devices/nobody/credentials", headers=AUTH)
        anonymous = client.post("/devices", json=THERMOSTAT)
    assert _is_refusal(reused, "header", "Idempotency-Key"), reused.text
    assert _is_refusal(bad_key, "header", "Idempotency-Key"), bad_key.text
    for answer, status in ((conflict, 409), (unknown, 404), (anonymous, 401)):
        assert answer.status_code == status
        assert answer.json() == {"detail": answer.json()["detail"]}
        assert isinstance(answer.json()["detail"], str)
    assert anonymous.headers["www-authenticate"] == "Bearer"


def test_a_streamed_body_over_the_limit_is_413(
    settings: Settings, db: psycopg.Connection[Any]
) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"name": "'
        for _ in range(settings.request_max_bytes // 1024 + 1):
            yield b"x" * 1024
        yield b'", "kind": "k"}'

    with running_api(settings, relay=False) as client:
        answer = client.post("/devices", content=chunks(), headers=AUTH)
    assert answer.status_code == 413, answer.text
    assert answer.json() == {"detail": f"request body over {settings.request_max_bytes} bytes"}
    assert counts(db) == (0, 0, 0)


def test_an_unexpected_failure_is_a_500_in_the_same_shape(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(handlers, "register_device", broken)
    with TestClient(create_app(settings, run_relay_task=False), raise_server_exceptions=False) as c:
        answer = c.post("/devices", json=THERMOSTAT, headers=AUTH)
    assert answer.status_code == 500
    assert answer.json() == {"detail": "internal server error"}


def test_query_api_refusals_name_the_parameter(settings: Settings) -> None:
    with TestClient(create_query_app(settings)) as client:
        backwards = client.get(
            "/devices/t1/series",
            headers=AUTH,
            params={"metric": "temp", "from": "2026-01-02T00:00:00Z", "to": "2026-01-01T00:00:00Z"},
        )
        too_early = client.get(
            "/devices/t1/series",
            headers=AUTH,
            params={"metric": "temp", "to": "0001-01-01T00:30:00Z"},
        )
        control = client.get("/devices", headers=AUTH, params={"name": "a\x00b"})
    assert _is_refusal(backwards, "query", "from"), backwards.text
    assert _is_refusal(too_early, "query", "to"), too_early.text
    assert _is_refusal(control, "query", "name"), control.text


@pytest.mark.parametrize("app", [create_app, create_query_app], ids=["command", "query"])
def test_every_operation_declares_its_errors_with_the_shared_models(app: Any) -> None:
    document = app(_ANY_STORES).openapi()
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                if status.startswith(("4", "5")):
                    model = "InvalidRequest" if status == "422" else "Problem"
                    if path == "/healthz" and method == "get" and status == "503":
                        model = "HealthOut" if app is create_app else "Problem"
                    schema = response["content"]["application/json"]["schema"]
                    assert schema == {"$ref": f"#/components/schemas/{model}"}, (path, status)
            if path != "/healthz":
                assert "401" in operation["responses"], (path, method)
