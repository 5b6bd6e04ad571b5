"""Dashboard accounts (issue 22) against real PostgreSQL and Redis: argon2id hashes in the
write store, `iotp users`, the admin routes and their events, and the dashboard's account
login, roles and ended sessions under Streamlit AppTest (through app.py, as `iotp dashboard`
runs it)."""

from __future__ import annotations

import asyncio
import json
import statistics
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import psycopg
import pytest
import streamlit as st
from argon2 import PasswordHasher
from streamlit.testing.v1 import AppTest

from command_api import dashboard_account_handlers
from command_api.unit_of_work import PostgresUnitOfWork
from iotp import dashboard_accounts
from iotp.commands import ChangeDashboardAccount, CreateDashboardAccount
from iotp.db import open_pool
from iotp.events import Actor, AlarmRaised, DeviceRegistered, Event
from iotp.model import MetricSpec, Role
from iotp.names import ACCESS_EVENTS_STREAM
from iotp.processes import iotp_environment
from iotp.settings import Settings, get_settings
from local_platform.broker import free_port
from read_models import store
from read_models.projection import fold
from tests.support.api_client import AUTH, running_api
from tests.support.dashboard_pages import dashboard_settings
from tests.support.processes import ServiceProcess, run_iotp
from tests.support.servers import TEST_TOKEN
from tests.support.waiting import answers, wait_for

APP = Path(__file__).resolve().parents[2] / "dashboard" / "app.py"
PASSWORD = "correct horse battery staple"
ADMIN = Actor(kind="command-line", name="test@here")
ALARM_ID = uuid.UUID(int=7)
CHECK_SECONDS = 0.5  # IOTP_DASHBOARD_ACCOUNT_CHECK_SECONDS in the dashboard tests
OIDC_SECRETS = {
    "redirect_uri": "http://localhost:8501/oauth2callback",
    "cookie_secret": "a-long-random-cookie-secret-for-the-test",
    "client_id": "iotp-dashboard",
    "client_secret": "not-a-real-secret",
    "server_metadata_url": "https://idp.example/.well-known/openid-configuration",
}


def _on_write_store(settings: Settings, work: Any) -> Any:
    async def run() -> Any:
        pool = await open_pool(settings.database_url, max_size=1)
        try:
            return await work(PostgresUnitOfWork(pool, actor=ADMIN))
        finally:
            await pool.close()

    return asyncio.run(run())


def _make(settings: Settings, username: str, role: Role, password: str = PASSWORD) -> Any:
    cmd = CreateDashboardAccount.model_validate(
        {"username": username, "role": role, "password": password}
    )
    return _on_write_store(
        settings, lambda uow: dashboard_account_handlers.create_dashboard_account(cmd, uow)
    )


def _change(settings: Settings, username: str, **fields: Any) -> Any:
    cmd = ChangeDashboardAccount.model_validate({"username": username, **fields})
    return _on_write_store(
        settings, lambda uow: dashboard_account_handlers.change_dashboard_account(cmd, uow)
    )


def _access_events(db: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    rows = db.execute(
        "SELECT fields FROM outbox WHERE stream = %s ORDER BY id", (ACCESS_EVENTS_STREAM,)
    ).fetchall()
    return [json.loads(fields["data"]) for (fields,) in rows]


def _outbox_text(db: psycopg.Connection[Any]) -> str:
    return " ".join(str(fields) for (fields,) in db.execute("SELECT fields FROM outbox"))


# The write store and its hashes.


def test_a_password_is_kept_only_as_an_argon2id_hash(
    settings: Settings, db: psycopg.Connection[Any]
) -> None:
    _make(settings, "ada", Role.OPERATOR)
    (stored,) = db.execute("SELECT password_hash FROM dashboard_accounts").fetchone() or ("",)
    assert stored.startswith("$argon2id$") and PASSWORD not in stored
    assert PasswordHasher().verify(stored, PASSWORD)
    found = dashboard_accounts.verify_login(db, "ada", PASSWORD)
    assert found is not None and (found.username, found.role) == ("ada", Role.OPERATOR)
    assert dashboard_accounts.verify_login(db, "ada", PASSWORD + "!") is None
    assert dashboard_accounts.verify_login(db, "bob", PASSWORD) is None
    assert dashboard_accounts.verify_login(db, "ada\x00", PASSWORD) is None
    _change(settings, "ada", disabled=True)
    assert dashboard_accounts.verify_login(db, "ada", PASSWORD) is None
    assert PASSWORD not in _outbox_text(db) and "$argon2" not in _outbox_text(db)


def test_a_hash_of_older_parameters_is_redone_at_login(
    settings: Settings, db: psycopg.Connection[Any]
) -> None:
    _make(settings, "ada", Role.VIEWER)
    weak = PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1).hash(PASSWORD)
    db.execute("UPDATE dashboard_accounts SET password_hash = %s", (weak,))
    assert dashboard_accounts.verify_login(db, "ada", PASSWORD) is not None
    (redone,) = db.execute("SELECT password_hash FROM dashboard_accounts").fetchone() or ("",)
    assert redone != weak and not PasswordHasher().check_needs_rehash(redone)


def test_an_unknown_user_name_takes_as_long_as_a_wrong_password(
    settings: Settings, db: psycopg.Connection[Any]
) -> None:
    _make(settings, "ada", Role.VIEWER)

    def timed(username: str) -> float:
        runs = []
        for _ in range(3):
            started = time.perf_counter()
            assert dashboard_accounts.verify_login(db, username, "not the password") is None
            runs.append(time.perf_counter() - started)
        return statistics.median(runs)

    wrong_password, unknown_user = timed("ada"), timed("nobody")
    # Without the stand-in verification an unknown name answers in a database round trip,
    # a few percent of an argon2id verification.
    assert unknown_user > 0.3 * wrong_password, (unknown_user, wrong_password)


def test_the_principal_of_an_account_is_its_role_and_name_while_enabled(
    settings: Settings, db: psycopg.Connection[Any]
) -> None:
    _make(settings, "ada", Role.OPERATOR)

    async def principals(*names: str) -> list[Any]:
        async with await psycopg.AsyncConnection.connect(settings.database_url) as conn:
            return [await dashboard_accounts.account_principal(conn, name) for name in names]

    ada, nobody, malformed = asyncio.run(principals("ada", "nobody", "Ada\x00"))
    assert ada is not None and ada.role == Role.OPERATOR
    assert ada.actor == Actor(kind="dashboard-user", id="ada", name="ada")
    assert nobody is None and malformed is None
    _change(settings, "ada", disabled=True)
    assert asyncio.run(principals("ada")) == [None]


# `iotp users`


def test_the_cli_makes_lists_changes_and_disables_accounts(
    settings: Settings, db: psycopg.Connection[Any]
) -> None:
    env = iotp_environment({"database_url": settings.database_url}, inherit_settings=False)

    def users(*args: str, stdin: str | None = None) -> Any:
        return run_iotp("users", *args, env=env, stdin=stdin)

    made = users(
        "create", "--username", "ada", "--role", "operator", "--password-stdin", stdin=PASSWORD
    )
    assert made.returncode == 0, made.stderr
    assert PASSWORD not in made.stdout + made.stderr
    listed = users("list")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.split()[:3] == ["ada", "operator", "enabled"]
    assert "$argon2" not in listed.stdout

    taken = users(
        "create", "--username", "ada", "--role", "viewer", "--password-stdin", stdin="x" * 12
    )
    short = users(
        "create", "--username", "bob", "--role", "viewer", "--password-stdin", stdin="tiny"
    )
    upper = users("create", "--username", "Bob", "--role", "viewer", "--password-stdin", stdin="")
    unknown = users("disable", "nobody")
    assert (taken.returncode, short.returncode, upper.returncode, unknown.returncode) == (
        2,
        2,
        2,
        2,
    )
    assert "exists already" in taken.stderr and "tiny" not in short.stderr
    assert "password" in short.stderr and "username" in upper.stderr
    assert "no dashboard account 'nobody'" in unknown.stderr

    assert users("disable", "ada").returncode == 0
    assert users("list").stdout.split()[:3] == ["ada", "operator", "disabled"]
    assert dashboard_accounts.verify_login(db, "ada", PASSWORD) is None
    assert users("enable", "ada").returncode == 0
    assert users("set-role", "ada", "viewer").returncode == 0
    new_password = "another long password"
    reset = users("set-password", "ada", "--password-stdin", stdin=new_password + "\n")
    assert reset.returncode == 0, reset.stderr
    found = dashboard_accounts.verify_login(db, "ada", new_password)
    assert found is not None and found.role == Role.VIEWER
    assert users("disable", "ada").returncode == 0

    events = _access_events(db)
    assert [(e["type"], e.get("changed"), e.get("disabled")) for e in events] == [
        ("DashboardAccountCreated", None, None),
        ("DashboardAccountChanged", ["disabled"], True),
        ("DashboardAccountChanged", ["disabled"], False),
        ("DashboardAccountChanged", ["role"], False),
        ("DashboardAccountChanged", ["password"], False),
        ("DashboardAccountChanged", ["disabled"], True),
    ]
    assert {e["actor"]["kind"] for e in events} == {"command-line"}
    assert PASSWORD not in _outbox_text(db) and new_password not in _outbox_text(db)


# The admin routes.


def test_the_admin_routes_make_list_read_and_change_accounts(
    settings: Settings, db: psycopg.Connection[Any]
) -> None:
    body = {"username": "ada", "role": "operator", "password": PASSWORD}
    with running_api(settings, relay=False) as client:
        made = client.post("/dashboard-accounts", json=body, headers=AUTH)
        again = client.post("/dashboard-accounts", json={**body, "role": "viewer"}, headers=AUTH)
        short = client.post(
            "/dashboard-accounts", json={**body, "username": "bob", "password": "x"}, headers=AUTH
        )
        listed = client.get("/dashboard-accounts", headers=AUTH)
        one = client.get("/dashboard-accounts/ada", headers=AUTH)
        missing = client.get("/dashboard-accounts/nobody", headers=AUTH)
        disabled = client.patch("/dashboard-accounts/ada", json={"disabled": True}, headers=AUTH)
        nothing = client.patch("/dashboard-accounts/ada", json={}, headers=AUTH)
        unknown = client.patch("/dashboard-accounts/bob", json={"role": "admin"}, headers=AUTH)
        key = client.post("/api-keys", json={"name": "ops", "role": "operator"}, headers=AUTH)
        operator = {"Authorization": f"Bearer {key.json()['key']}"}
        refused = [
            client.get("/dashboard-accounts", headers=operator).status_code,
            client.post(
                "/dashboard-accounts", json={**body, "username": "eve"}, headers=operator
            ).status_code,
            client.patch(
                "/dashboard-accounts/ada", json={"role": "admin"}, headers=operator
            ).status_code,
        ]
    assert made.status_code == 201, made.text
    assert made.headers["location"] == "/dashboard-accounts/ada"
    assert set(made.json()) == {
        "username",
        "role",
        "disabled",
        "created_at",
        "updated_at",
        "disabled_at",
    }
    assert (made.json()["role"], made.json()["disabled"]) == ("operator", False)
    for answer in (made, listed, one, disabled):
        assert PASSWORD not in answer.text and "argon2" not in answer.text
    assert again.status_code == 409 and "exists already" in again.json()["detail"]
    assert short.status_code == 422 and short.json()["detail"][0]["loc"] == ["body", "password"]
    assert [a["username"] for a in listed.json()["accounts"]] == ["ada"]
    assert one.json()["username"] == "ada"
    assert missing.status_code == 404 and unknown.status_code == 404
    assert disabled.status_code == 200 and disabled.json()["disabled"] is True
    assert disabled.json()["disabled_at"] is not None
    assert nothing.status_code == 422
    assert refused == [403, 403, 403]
    assert db.execute("SELECT count(*) FROM dashboard_accounts").fetchone() == (1,)

    bootstrap = {"kind": "bootstrap-token", "id": None, "name": "IOTP_API_TOKEN", "via": None}
    events = [e for e in _access_events(db) if e["type"].startswith("DashboardAccount")]
    assert [(e["type"], e["username"], e["actor"]) for e in events] == [
        ("DashboardAccountCreated", "ada", bootstrap),
        ("DashboardAccountChanged", "ada", bootstrap),
    ]
    assert (events[1]["changed"], events[1]["disabled"]) == (["disabled"], True)
    assert PASSWORD not in _outbox_text(db) and "$argon2" not in _outbox_text(db)


# The dashboard.


@pytest.fixture
def dashboard(
    settings: Settings,
    db: psycopg.Connection[Any],
    monkeypatch: pytest.MonkeyPatch,
    now: datetime,
) -> Iterator[psycopg.Connection[Any]]:
    """The dashboard over the test's stores, with one active alarm (read models only), its
    account answers kept CHECK_SECONDS."""
    st.cache_resource.clear()  # answers another test's dashboard kept
    monkeypatch.chdir(Path(__file__).parent)  # no .streamlit/secrets.toml of the checkout
    monkeypatch.delenv("IOTP_DASHBOARD_PASSWORD", raising=False)
    monkeypatch.delenv("IOTP_DASHBOARD_API_KEY", raising=False)
    monkeypatch.setenv("IOTP_DASHBOARD_ACCOUNT_CHECK_SECONDS", str(CHECK_SECONDS))
    events: list[Event] = [
        DeviceRegistered(
            device_id="b1",
            name="Boiler",
            kind="boiler",
            metrics=(MetricSpec(name="temp", min=0, max=60),),
            occurred_at=now - timedelta(hours=1),
        ),
        AlarmRaised(
            device_id="b1",
            alarm_id=ALARM_ID,
            rule_id="range:temp",
            metric="temp",
            condition="above",
            severity="major",
            raised_at=now - timedelta(minutes=5),
            value=99.0,
            threshold_high=60.0,
        ),
    ]
    with db.transaction():
        store.apply_deltas(db, fold(events))
    with dashboard_settings(settings, monkeypatch):
        yield db


def _app() -> AppTest:
    return AppTest.from_file(str(APP), default_timeout=30)


def _log_in(app: AppTest, username: str, password: str) -> AppTest:
    app.text_input(key="iotp_login_username").input(username)
    app.text_input(key="iotp_login_password").input(password)
    return app.button[0].click().run()


def _shows_data(app: AppTest) -> bool:
    return bool(app.metric) or bool(app.dataframe)


def _login_fields(app: AppTest) -> list[str]:
    return [field.label for field in app.text_input]


def _alarms_page(app: AppTest) -> AppTest:
    app.switch_page("views/alarms.py").run()
    assert not app.exception
    return app


def _acknowledge_button(app: AppTest) -> Any:
    return next(button for button in app.button if button.label == "Acknowledge")


def _can_acknowledge(app: AppTest) -> bool:
    return any(button.label == "Acknowledge" for button in app.button)


def test_an_account_logs_in_and_a_wrong_password_is_refused(
    dashboard: psycopg.Connection[Any], settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IOTP_DASHBOARD_PASSWORD", "the old shared password")
    get_settings.cache_clear()
    _make(settings, "ada", Role.OPERATOR)
    app = _app().run()
    assert not app.exception
    assert _login_fields(app) == ["User name", "Password"]  # accounts win over the password
    assert not _shows_data(app)
    for username, password in (("ada", "the old shared password"), ("bob", PASSWORD)):
        app = _log_in(app, username, password)
        assert [e.value for e in app.error] == ["Wrong user name or password."]
        assert not _shows_data(app)

    app = _log_in(app, " Ada ", PASSWORD)  # user names are lower case; people type "Ada"
    assert not app.exception and not app.error
    assert _shows_data(app) and "User name" not in _login_fields(app)
    assert "Signed in as ada (operator)" in [c.value for c in app.sidebar.caption]
    assert _can_acknowledge(_alarms_page(app))

    app.sidebar.button(key="iotp_logout").click().run()
    assert _login_fields(app) == ["User name", "Password"] and not _shows_data(app)
    assert _login_fields(_app().run()) == ["User name", "Password"]  # a new session asks


def test_repeated_wrong_passwords_are_slowed_per_account_and_address(
    dashboard: psycopg.Connection[Any], settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IOTP_AUTH_FAILURE_LIMIT", "2")
    get_settings.cache_clear()
    _make(settings, "ada", Role.OPERATOR)
    app = _app().run()
    for _ in range(2):
        app = _log_in(app, "ada", "not the password at all")
        assert [e.value for e in app.error] == ["Wrong user name or password."]
    app = _log_in(app, "ada", PASSWORD)  # the right password, after too many wrong ones
    assert len(app.error) == 1 and app.error[0].value.startswith("Too many refused logins")
    assert not _shows_data(app)


def test_a_disabled_last_account_keeps_the_login(
    dashboard: psycopg.Connection[Any], settings: Settings
) -> None:
    _make(settings, "ada", Role.ADMIN)
    _change(settings, "ada", disabled=True)
    app = _app().run()
    assert _login_fields(app) == ["User name", "Password"] and not _shows_data(app)
    app = _log_in(app, "ada", PASSWORD)
    assert app.error and not _shows_data(app)


def test_a_viewer_sees_no_acknowledge_form(
    dashboard: psycopg.Connection[Any], settings: Settings
) -> None:
    _make(settings, "vic", Role.VIEWER)
    _make(settings, "pat", Role.PROVISIONER)
    for username, role in (("vic", "viewer"), ("pat", "provisioner")):
        app = _alarms_page(_log_in(_app().run(), username, PASSWORD))
        assert app.subheader[0].value == "Active (1)"
        assert not _can_acknowledge(app)
        assert "ack_note" not in [field.key for field in app.text_input]
        assert f"Your role ({role}) cannot acknowledge alarms." in [c.value for c in app.caption]


def test_the_audit_page_is_listed_only_for_those_who_may_read_it(
    dashboard: psycopg.Connection[Any], settings: Settings
) -> None:
    _make(settings, "vic", Role.VIEWER)
    _make(settings, "olga", Role.OPERATOR)
    operator = _log_in(_app().run(), "olga", PASSWORD)
    operator.switch_page("views/audit.py").run()
    assert not operator.exception
    assert [t.value for t in operator.title] == ["Audit"]
    viewer = _log_in(_app().run(), "vic", PASSWORD)
    with pytest.raises(ValueError, match="Could not find a navigation page") as refused:
        viewer.switch_page("views/audit.py")  # not among the viewer's pages
    known = str(refused.value).split("Known pages:")[1]
    assert "alarms.py" in known and "audit.py" not in known


def test_a_disabled_account_is_logged_out_and_a_new_role_applies_at_the_next_check(
    dashboard: psycopg.Connection[Any], settings: Settings
) -> None:
    _make(settings, "ada", Role.OPERATOR)
    app = _alarms_page(_log_in(_app().run(), "ada", PASSWORD))
    assert _can_acknowledge(app)

    _change(settings, "ada", role=Role.VIEWER)
    time.sleep(CHECK_SECONDS + 0.1)
    app.run()
    assert not app.exception and not _can_acknowledge(app)
    assert "Your role (viewer) cannot acknowledge alarms." in [c.value for c in app.caption]

    _change(settings, "ada", disabled=True)
    time.sleep(CHECK_SECONDS + 0.1)
    app.run()
    assert not app.exception and not _shows_data(app)
    assert _login_fields(app) == ["User name", "Password"]
    assert [w.value for w in app.warning] == [
        "The account ada is disabled: this session has ended."
    ]
    app = _log_in(app, "ada", PASSWORD)
    assert app.error and not _shows_data(app)

    _change(settings, "ada", disabled=False)
    app = _log_in(app, "ada", PASSWORD)
    assert _shows_data(app) and not app.warning


def test_an_oidc_person_has_their_accounts_role_or_else_views(
    dashboard: psycopg.Connection[Any], settings: Settings
) -> None:
    _make(settings, "ada@example.com", Role.OPERATOR)

    def oidc(email: str) -> AppTest:
        app = _app()
        app.secrets["auth"] = OIDC_SECRETS
        app.user = {"is_logged_in": True, "email": email}
        return app.run()

    ada = _alarms_page(oidc("Ada@Example.com"))
    assert "Signed in as ada@example.com (operator)" in [c.value for c in ada.sidebar.caption]
    assert _can_acknowledge(ada)
    guest = _alarms_page(oidc("guest@example.com"))
    assert "Signed in as guest@example.com (viewer)" in [c.value for c in guest.sidebar.caption]
    assert not _can_acknowledge(guest) and _shows_data(guest)

    _change(settings, "ada@example.com", disabled=True)
    time.sleep(CHECK_SECONDS + 0.1)
    ada.run()
    assert not _shows_data(ada)
    assert "The dashboard account ada@example.com is disabled." in [e.value for e in ada.error]


class _Recorder(BaseHTTPRequestHandler):
    """A stand-in command API that records each request and accepts it."""

    received: ClassVar[list[tuple[str, dict[str, str], dict[str, Any]]]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.received.append((self.path, dict(self.headers.items()), body))
        answer = json.dumps({"alarm_id": str(ALARM_ID), "state": "acknowledged"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    _Recorder.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("IOTP_API_PORT", str(server.server_address[1]))
    try:
        yield _Recorder.received
    finally:
        server.shutdown()
        server.server_close()


def test_an_acknowledgement_is_sent_for_the_person_with_the_dashboards_key(
    dashboard: psycopg.Connection[Any],
    settings: Settings,
    recorder: list[Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("IOTP_API_TOKEN", TEST_TOKEN)
    monkeypatch.setenv("IOTP_DASHBOARD_API_KEY", "iotp_the-dashboards-own-key")
    get_settings.cache_clear()
    _make(settings, "ada", Role.OPERATOR)
    app = _alarms_page(_log_in(_app().run(), "ada", PASSWORD))
    assert [field.key for field in app.text_input] == ["alarm_device", "ack_note"]  # no name
    assert "Acknowledged as ada" in [c.value for c in app.caption]
    app.text_input(key="ack_note").input("on my way")
    _acknowledge_button(app).click().run()
    assert not app.exception and not app.error
    assert f"Alarm {ALARM_ID} acknowledged by ada." in app.success[0].value
    ((path, headers, body),) = recorder
    assert path == f"/alarms/{ALARM_ID}/acknowledge"
    assert headers["Authorization"] == "Bearer iotp_the-dashboards-own-key"
    assert headers["X-Iotp-Dashboard-User"] == "ada"
    assert body == {"acknowledged_by": "ada", "note": "on my way"}


def test_without_people_the_dashboard_acknowledges_as_itself_with_the_api_token(
    dashboard: psycopg.Connection[Any], recorder: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IOTP_API_TOKEN", TEST_TOKEN)
    get_settings.cache_clear()
    app = _alarms_page(_app().run())  # no login configured: the shared person, an admin
    _acknowledge_button(app).click().run()
    assert not app.exception and not app.error
    ((_, headers, body),) = recorder
    assert headers["Authorization"] == f"Bearer {TEST_TOKEN}"
    assert "X-Iotp-Dashboard-User" not in headers
    assert body["acknowledged_by"] == "dashboard"


def test_an_operators_acknowledgement_is_recorded_under_their_name(
    dashboard: psycopg.Connection[Any],
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    dashboard.execute(
        "INSERT INTO alarms (alarm_id, rule_id, device_id, metric, condition, severity, state,"
        " raised_at, value, updated_at) VALUES (%s, 'range:temp', 'b1', 'temp', 'above',"
        " 'major', 'active', now(), 99, now())",
        (ALARM_ID,),
    )
    _make(settings, "ada", Role.OPERATOR)
    port = free_port()
    env = iotp_environment(
        {
            "database_url": settings.database_url,
            "redis_url": settings.redis_url,
            "api_token": TEST_TOKEN,
        },
        inherit_settings=False,
    )
    api = ServiceProcess(("api", "--port", str(port), "--no-relay"), env, tmp_path / "api.log")
    api.start()
    try:
        wait_for(lambda: answers(f"http://127.0.0.1:{port}/healthz"), timeout=30)
        monkeypatch.setenv("IOTP_API_PORT", str(port))
        monkeypatch.setenv("IOTP_API_TOKEN", TEST_TOKEN)
        get_settings.cache_clear()
        app = _alarms_page(_log_in(_app().run(), "ada", PASSWORD))
        _acknowledge_button(app).click().run()
        assert not app.exception and not app.error, [e.value for e in app.error]
        assert "acknowledged by ada" in app.success[0].value
    finally:
        api.stop()
    row = dashboard.execute(
        "SELECT state, acknowledged_by FROM alarms WHERE alarm_id = %s", (ALARM_ID,)
    ).fetchone()
    assert row == ("acknowledged", "ada")
    (fields,) = dashboard.execute(
        "SELECT fields FROM outbox WHERE event_type = 'AlarmAcknowledged'"
    ).fetchone() or (None,)
    event = json.loads(fields["data"])
    assert event["acknowledged_by"] == "ada"
    # The command API acted for the account the header named, through the dashboard's key.
    assert event["actor"] == {
        "kind": "dashboard-user",
        "id": "ada",
        "name": "ada",
        "via": "IOTP_API_TOKEN",
    }
    assert datetime.fromisoformat(event["acknowledged_at"]) <= datetime.now(UTC)
