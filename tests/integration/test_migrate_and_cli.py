"""`iotp migrate`, `iotp api` and `iotp relay` as a user runs them: real processes."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import redis

from iotp.events import from_fields
from iotp.names import DEVICE_EVENTS_STREAM
from iotp.processes import IotpProcess, iotp_environment
from local_platform.broker import free_port
from tests.support.api_client import AUTH, THERMOSTAT
from tests.support.processes import run_iotp
from tests.support.servers import SERVERS, TEST_TOKEN, database_url_named
from tests.support.waiting import answers, wait_for


def _env(**settings: str) -> dict[str, str]:
    """Only the settings given: none of the developer's IOTP_ variables."""
    return iotp_environment(settings, inherit_settings=False)


@pytest.fixture
def fresh_database() -> Iterator[str]:
    """The URL of a database that does not exist yet."""
    name = f"iotp_cli_{uuid.uuid4().hex[:10]}"
    yield database_url_named(name)
    with psycopg.connect(SERVERS.postgres, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _schema(url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT table_name, column_name, data_type FROM information_schema.columns"
            " WHERE table_schema = 'public' ORDER BY 1, 2"
        ).fetchall()


def test_migrate_creates_the_database_and_twice_is_a_no_op(fresh_database: str) -> None:
    env = _env(database_url=fresh_database)
    first = run_iotp("migrate", env=env)
    assert first.returncode == 0, first.stderr
    assert "created database" in first.stdout
    assert "mode: plain PostgreSQL" in first.stdout
    assert "applied 0001_devices" in first.stdout
    with psycopg.connect(fresh_database) as conn:
        ledger = conn.execute("SELECT version, applied_at FROM schema_migrations").fetchall()
    schema = _schema(fresh_database)

    second = run_iotp("migrate", env=env)
    assert second.returncode == 0, second.stderr
    assert "nothing to apply" in second.stdout
    assert "applied" not in second.stdout.replace("nothing to apply", "")
    with psycopg.connect(fresh_database) as conn:
        assert (
            conn.execute("SELECT version, applied_at FROM schema_migrations").fetchall() == ledger
        )
    assert _schema(fresh_database) == schema
    assert {t for t, _, _ in schema} >= {"devices", "outbox", "telemetry", "idempotency_keys"}


def test_telemetry_table_has_the_reading_key(db: psycopg.Connection[Any]) -> None:
    with psycopg.connect(db.info.dsn) as conn:
        conn.execute(
            "INSERT INTO telemetry (device_id, ts, metric, value)"
            " VALUES ('d', '2026-01-01T00:00:00Z', 'temp', 1.5)"
        )
        inserted = conn.execute(
            "INSERT INTO telemetry (device_id, ts, metric, value)"
            " VALUES ('d', '2026-01-01T00:00:00Z', 'temp', 9.9)"
            " ON CONFLICT (device_id, metric, ts) DO NOTHING"
        ).rowcount
        assert inserted == 0
        assert conn.execute("SELECT value FROM telemetry").fetchall() == [(1.5,)]
        conn.rollback()


def test_unreachable_database_is_one_clear_line() -> None:
    port = free_port()
    result = run_iotp(
        "migrate", env=_env(database_url=f"postgresql://u:hunter2@127.0.0.1:{port}/x")
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "IOTP_DATABASE_URL" in lines[0] and f"127.0.0.1:{port}" in lines[0]
    assert "hunter2" not in lines[0] and "Traceback" not in result.stderr


@pytest.mark.parametrize("token", [None, "changeme", "short"])
def test_api_refuses_to_start_without_a_real_token(database_url: str, token: str | None) -> None:
    settings = {"database_url": database_url}
    if token is not None:
        settings["api_token"] = token
    result = run_iotp("api", env=_env(**settings))
    assert result.returncode == 2
    assert "IOTP_API_TOKEN" in result.stderr
    assert "Traceback" not in result.stderr


def test_api_refuses_to_start_on_an_unmigrated_database(fresh_database: str) -> None:
    with psycopg.connect(SERVERS.postgres, autocommit=True) as admin:
        name = psycopg.conninfo.conninfo_to_dict(fresh_database)["dbname"]
        admin.execute(f'CREATE DATABASE "{name}"')
    result = run_iotp("api", env=_env(database_url=fresh_database, api_token=TEST_TOKEN))
    assert result.returncode == 2
    assert "iotp migrate" in result.stderr


def test_help_lists_the_commands() -> None:
    result = run_iotp("--help", env=_env())
    assert result.returncode == 0
    for command in ("migrate", "api", "relay"):
        assert command in result.stdout


def test_dev_api_and_standalone_relay_serve_for_real(
    database_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("TRUNCATE devices, outbox, idempotency_keys")
    port = free_port()
    env = _env(database_url=database_url, redis_url=SERVERS.redis)
    api = IotpProcess(
        ["api", "--dev", "--port", str(port), "--no-relay"], env, tmp_path / "api.log"
    )
    relay = IotpProcess(["relay"], env, tmp_path / "relay.log")
    try:
        api.start()
        relay.start()
        api.wait_for("\n")
        first = api.output().splitlines()[0]
        assert first.startswith("dev mode: API token for this run is "), first
        token = first.rsplit(" ", 1)[1].strip()
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: answers(f"{base}/healthz"), timeout=30)
        refused = httpx.post(f"{base}/devices", json=THERMOSTAT, headers=AUTH)
        assert refused.status_code == 401, "the test token is not this run's token"
        created = httpx.post(
            f"{base}/devices", json=THERMOSTAT, headers={"Authorization": f"Bearer {token}"}
        )
        assert created.status_code == 201, created.text
        entries = wait_for(lambda: redis_client.xrange(DEVICE_EVENTS_STREAM), timeout=15)
        assert str(from_fields(entries[0][1]).event_id) == created.json()["event_id"]
        time.sleep(0.3)
        assert len(redis_client.xrange(DEVICE_EVENTS_STREAM)) == 1
    finally:
        relay_code = relay.stop(grace=20)
        api.stop(grace=20)
    assert relay_code == 0, relay.output()


def test_alarms_raised_before_the_upgrade_take_what_their_retained_events_said(
    fresh_database: str,
) -> None:
    """Migration 0050 fills the alarms table's new columns from the outbox's alarm events."""
    from datetime import UTC, datetime, timedelta

    from psycopg.types.json import Jsonb

    from iotp.events import AlarmCleared, AlarmRaised, to_fields
    from iotp.migrate import load_migrations

    earlier = [m for m in load_migrations() if m.version < "0050" and not m.timescale_only]
    upgrade = next(m for m in load_migrations() if m.version == "0050")
    t0 = datetime(2026, 11, 1, tzinfo=UTC)
    kept, forgotten = uuid.uuid4(), uuid.uuid4()
    raised = AlarmRaised(
        device_id="d1",
        alarm_id=kept,
        rule_id="range:temp",
        metric="temp",
        condition="outside_range",
        severity="major",
        raised_at=t0,
        value=70.0,
        threshold_low=-40.0,
        threshold_high=60.0,
        occurred_at=t0 + timedelta(seconds=1),
    )
    cleared = AlarmCleared(
        device_id="d1",
        alarm_id=kept,
        cleared_at=t0 + timedelta(seconds=5),
        value=20.0,
        reason="back in range",
        occurred_at=t0 + timedelta(seconds=6),
    )
    with psycopg.connect(SERVERS.postgres, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{fresh_database.rsplit("/", 1)[1]}"')
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        for migration in earlier:
            conn.execute(migration.sql.encode())
        for alarm_id in (kept, forgotten):
            conn.execute(
                "INSERT INTO alarms (alarm_id, rule_id, device_id, metric, condition, severity,"
                " state, raised_at, value, cleared_at, clear_reason) VALUES (%s, 'range:temp',"
                " 'd1', 'temp', 'outside_range', 'major', 'cleared', %s, 70, %s, 'back in range')",
                (alarm_id, t0, t0 + timedelta(seconds=5)),
            )
        for event in (raised, cleared):  # the events of ``forgotten`` left the outbox
            fields = to_fields(event)
            conn.execute(
                "INSERT INTO outbox (event_id, stream, event_type, fields) VALUES (%s, %s, %s, %s)",
                (event.event_id, "iotp:events:alarms", fields["type"], Jsonb(fields)),
            )
        conn.execute(upgrade.sql.encode())
        rows = conn.execute(
            "SELECT alarm_id, threshold_low, threshold_high, cleared_value, updated_at"
            " FROM alarms ORDER BY alarm_id = %s",
            (kept,),
        ).fetchall()
    assert rows == [
        (forgotten, None, None, None, t0 + timedelta(seconds=5)),
        (kept, -40.0, 60.0, 20.0, t0 + timedelta(seconds=6)),
    ]
