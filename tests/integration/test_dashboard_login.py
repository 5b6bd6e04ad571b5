"""The dashboard's optional login under Streamlit AppTest, run through the entry point (app.py)
as `iotp dashboard` runs it, over a seeded read store: no login by default, a shared password
(IOTP_DASHBOARD_PASSWORD), and Streamlit's OIDC login when secrets have an [auth] section."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from streamlit.testing.v1 import AppTest

from iotp.events import DeviceRegistered
from iotp.model import MetricSpec
from iotp.settings import Settings, get_settings
from read_models import store
from read_models.projection import fold

APP = Path(__file__).resolve().parents[2] / "dashboard" / "app.py"
PASSWORD = "correct horse battery staple ✓"  # non-ASCII on purpose: compared as bytes
DEVICES = 3
OIDC_SECRETS = {
    "redirect_uri": "http://localhost:8501/oauth2callback",
    "cookie_secret": "a-long-random-cookie-secret-for-the-test",
    "client_id": "iotp-dashboard",
    "client_secret": "not-a-real-secret",
    "server_metadata_url": "https://idp.example/.well-known/openid-configuration",
}


@pytest.fixture
def seeded(
    settings: Settings, db: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    monkeypatch.setenv("IOTP_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("IOTP_REDIS_URL", settings.redis_url)
    monkeypatch.setenv("IOTP_DASHBOARD_REFRESH_SECONDS", "0")
    monkeypatch.delenv("IOTP_DASHBOARD_PASSWORD", raising=False)
    monkeypatch.chdir(Path(__file__).parent)  # no .streamlit/secrets.toml of the checkout
    get_settings.cache_clear()
    registered = [
        DeviceRegistered(
            device_id=f"login-{n}",
            name=f"Login {n}",
            kind="thermostat",
            metrics=(MetricSpec(name="temp", min=0, max=30),),
            occurred_at=datetime.now(UTC),
        )
        for n in range(DEVICES)
    ]
    with db.transaction():
        store.apply_deltas(db, fold(registered))
    yield
    get_settings.cache_clear()


@pytest.fixture
def password(seeded: None, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("IOTP_DASHBOARD_PASSWORD", PASSWORD)
    get_settings.cache_clear()
    return PASSWORD


def _app() -> AppTest:
    return AppTest.from_file(str(APP), default_timeout=30)


def _shows_data(app: AppTest) -> bool:
    return bool(app.metric) or bool(app.dataframe) or bool(app.get("vega_lite_chart"))


def _log_in(app: AppTest, given: str) -> AppTest:
    app.text_input(key="iotp_login_password").input(given)
    return app.button[0].click().run()


def _password_fields(app: AppTest) -> list[str]:
    return [field.label for field in app.text_input if field.label == "Password"]


def _registered(app: AppTest) -> str:
    return next(m.value for m in app.metric if m.label == "Registered")


def test_without_a_password_every_page_renders_as_before(seeded: None) -> None:
    app = _app().run()
    assert not app.exception
    assert _registered(app) == str(DEVICES)
    assert not _password_fields(app) and not [b for b in app.sidebar.button if b.label == "Log out"]
    app.switch_page("views/pipeline.py").run()
    assert not app.exception and "Dead letters" in {m.label for m in app.metric}


@pytest.mark.parametrize("page", ["views/fleet.py", "views/device.py", "views/pipeline.py"])
def test_with_a_password_a_page_shows_only_the_form(password: str, page: str) -> None:
    app = _app().run()
    app.switch_page(page).run()
    assert not app.exception
    assert [field.label for field in app.text_input] == ["Password"]
    assert app.text_input[0].proto.type == app.text_input[0].proto.PASSWORD
    assert not _shows_data(app)
    assert not app.error


def test_a_wrong_password_is_an_error_and_still_no_data(password: str) -> None:
    app = _log_in(_app().run(), "not the password")
    assert not app.exception
    assert [e.value for e in app.error] == ["Wrong password."]
    assert not _shows_data(app)
    # A prefix of the right one is just as wrong.
    app = _log_in(app, PASSWORD[:-1])
    assert app.error and not _shows_data(app)


def test_the_right_password_unlocks_every_page_until_log_out(password: str) -> None:
    app = _log_in(_app().run(), PASSWORD)
    assert not app.exception and not app.error
    assert not _password_fields(app)
    assert _registered(app) == str(DEVICES)
    app.switch_page("views/device.py").run()
    assert not app.exception and not _password_fields(app)
    app.switch_page("views/pipeline.py").run()
    assert "Dead letters" in {m.label for m in app.metric}

    app.sidebar.button(key="iotp_logout").click().run()
    assert not app.exception
    assert [field.label for field in app.text_input] == ["Password"]
    assert not _shows_data(app)


def test_a_fresh_session_asks_again(password: str) -> None:
    unlocked = _log_in(_app().run(), PASSWORD)
    assert _shows_data(unlocked)
    other = _app().run()
    assert [field.label for field in other.text_input] == ["Password"]
    assert not _shows_data(other)


def test_an_empty_password_setting_fails_closed(
    seeded: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IOTP_DASHBOARD_PASSWORD", "")
    get_settings.cache_clear()
    app = _app().run()
    assert not app.exception
    assert "IOTP_DASHBOARD_PASSWORD" in app.error[0].value
    assert not _shows_data(app) and not app.text_input


def test_oidc_without_authlib_fails_closed(password: str) -> None:
    if importlib.util.find_spec("authlib") is not None:
        pytest.skip("Authlib is installed: this checks the message shown without it")
    app = _app()
    app.secrets["auth"] = OIDC_SECRETS
    app.run()
    assert not app.exception
    assert "Authlib" in app.error[0].value
    assert not _shows_data(app) and not app.text_input  # [auth] wins over the password


def test_oidc_logged_in_user_sees_the_pages(password: str) -> None:
    app = _app()
    app.secrets["auth"] = OIDC_SECRETS
    app.user = {"is_logged_in": True, "email": "ops@example.com"}
    app.run()
    assert not app.exception and not app.error
    assert _registered(app) == str(DEVICES)
    assert "ops@example.com" in app.sidebar.caption[0].value
    assert [b.label for b in app.sidebar.button if b.key == "iotp_logout"] == ["Log out"]
