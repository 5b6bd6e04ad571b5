"""The query API's wiring: the page-size setting, the pre-start check, the token, Redis down."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from iotp.errors import ConfigurationError, ServiceUnavailable
from iotp.settings import Settings
from local_platform.broker import free_port
from read_models import app as query_app
from read_models.app import create_query_app, run_query_api
from read_models.queries import LivenessRule
from tests.support.servers import TEST_TOKEN

AUTH = {"Authorization": f"Bearer {TEST_TOKEN}"}


@pytest.mark.parametrize("max_page", [5, 500])
def test_the_page_size_setting_bounds_limit_and_is_in_openapi(
    settings: Settings, max_page: int
) -> None:
    configured = settings.model_copy(update={"query_max_page_size": max_page})
    with TestClient(create_query_app(configured)) as client:
        parameters = client.get("/openapi.json").json()["paths"]["/devices"]["get"]["parameters"]
        limit = next(p for p in parameters if p["name"] == "limit")
        assert limit["schema"]["maximum"] == max_page and limit["schema"]["minimum"] == 1
        assert [p["name"] for p in parameters][-2:] == ["limit", "offset"]
        assert client.get("/devices", headers=AUTH, params={"limit": max_page}).status_code == 200
        over = client.get("/devices", headers=AUTH, params={"limit": max_page + 1})
    assert over.status_code == 422
    assert over.json()["detail"] == [
        {
            "type": "less_than_equal",
            "loc": ["query", "limit"],
            "msg": f"Input should be less than or equal to {max_page}",
            "input": str(max_page + 1),
            "ctx": {"le": max_page},
        }
    ]


def test_the_query_api_refuses_to_start_without_a_token(settings: Settings) -> None:
    with pytest.raises(ConfigurationError, match="IOTP_QUERY_TOKEN"):
        create_query_app(settings.model_copy(update={"api_token": None, "query_token": None}))
    with pytest.raises(ConfigurationError, match="IOTP_QUERY_TOKEN"):
        create_query_app(settings.model_copy(update={"query_token": SecretStr("short")}))


def test_pipeline_answers_503_while_redis_is_down(settings: Settings) -> None:
    down = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    with TestClient(create_query_app(down)) as client:
        answer = client.get("/pipeline", headers=AUTH)
    assert answer.status_code == 503
    assert answer.json() == {"detail": "Redis unavailable, retry later"}


def test_run_query_api_checks_the_read_store_then_serves(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    served: list[dict[str, Any]] = []
    monkeypatch.setattr(query_app.uvicorn, "run", lambda app, **options: served.append(options))
    dead = settings.model_copy(
        update={"read_database_url": f"postgresql://127.0.0.1:{free_port()}/x"}
    )
    with pytest.raises(ServiceUnavailable, match="IOTP_READ_DATABASE_URL"):
        run_query_api(dead)
    assert served == []
    run_query_api(settings.model_copy(update={"log_level": "WARNING"}))
    run_query_api(settings, "0.0.0.0", 9123)  # never bound: uvicorn is faked
    assert served == [
        {"host": settings.query_host, "port": settings.query_port, "log_level": "warning"},
        {"host": "0.0.0.0", "port": 9123, "log_level": settings.log_level.lower()},
    ]


def test_the_liveness_rule_comes_from_the_settings(settings: Settings) -> None:
    configured = settings.model_copy(
        update={"liveness_timeout_seconds": 42, "liveness_timeouts": {"tracker": 7}}
    )
    assert LivenessRule.from_settings(configured) == LivenessRule(
        default_seconds=42, per_kind={"tracker": 7}
    )
