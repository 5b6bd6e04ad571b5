"""Grafana's provisioning (deploy/grafana) and its compose service, checked without Grafana:
the files have the keys Grafana requires, every panel uses the provisioned data source, and
every SQL query of the dashboard runs on a migrated read store as the read-only role, which
can read the read models and nothing else."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "deploy" / "grafana"
ROLE = "iotp_grafana_reader"
MIGRATION = ROOT / "read_models" / "migrations" / "0030_grafana_reader.sql"
SQL_TYPES = {"grafana-postgresql-datasource", "postgres"}


def _yaml(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(path.read_text())
    return loaded


def _datasource() -> dict[str, Any]:
    config = _yaml(GRAFANA / "provisioning" / "datasources" / "iotp.yaml")
    assert config["apiVersion"] == 1
    (source,) = config["datasources"]
    return dict(source)


def _dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((GRAFANA / "dashboards" / "iotp.json").read_text())
    return loaded


def _compose_services() -> dict[str, Any]:
    services: dict[str, Any] = _yaml(ROOT / "docker-compose.yml")["services"]
    return services


def _panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def _queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, SQL) of every query: panel targets, variables and annotations."""
    for panel in _panels(dashboard):
        for target in panel.get("targets", []):
            yield f"panel {panel['title']}", target["rawSql"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            yield (
                f"variable {variable['name']}",
                query if isinstance(query, str) else query["rawSql"],
            )
    for annotation in dashboard["annotations"]["list"]:
        yield f"annotation {annotation['name']}", annotation["target"]["rawSql"]


def _expanded(sql: str, device: str) -> str:
    """The SQL Grafana sends: its macros and this dashboard's variables replaced as it does."""
    start = (datetime.now(UTC) - timedelta(hours=6)).strftime("%Y-%m-%dT%H:%M:%SZ")
    end = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    sql = re.sub(r"\$__timeFilter\((\w+)\)", rf"\1 BETWEEN '{start}' AND '{end}'", sql)
    sql = sql.replace("${device:sqlstring}", "'" + device.replace("'", "''") + "'")
    sql = sql.replace("$liveness_seconds", "300")
    assert "$" not in sql, f"a macro or variable this test does not know: {sql}"
    return sql


def test_the_datasource_is_the_read_store_as_the_read_only_role() -> None:
    source = _datasource()
    assert source["type"] in SQL_TYPES
    assert source["uid"] and source["name"] and source["access"] == "proxy"
    assert source["user"] == ROLE and f"CREATE ROLE {ROLE} NOLOGIN" in MIGRATION.read_text()
    # The password comes from Grafana's environment, never from the file.
    assert source["secureJsonData"]["password"] == "$GRAFANA_READER_PASSWORD"
    environment = _compose_services()["timescaledb"]["environment"]
    assert source["jsonData"]["database"] == environment["POSTGRES_DB"]
    assert source["url"] == "timescaledb:5432"


def test_the_dashboard_provider_reads_the_mounted_directory() -> None:
    config = _yaml(GRAFANA / "provisioning" / "dashboards" / "iotp.yaml")
    assert config["apiVersion"] == 1
    (provider,) = config["providers"]
    assert provider["type"] == "file" and provider["name"]
    mounts = dict(m.split(":")[:2] for m in _compose_services()["grafana"]["volumes"])
    assert mounts["./deploy/grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"


def test_every_panel_uses_the_provisioned_datasource() -> None:
    dashboard = _dashboard()
    uid = _datasource()["uid"]
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    panels = [p for p in _panels(dashboard) if p["type"] != "row"]
    assert {p["title"] for p in panels} >= {
        "Fleet status",
        "$device: mean per minute",
        "$device: hourly min, mean, max",
        "Open alarms (active and acknowledged)",
    }
    assert len({p["id"] for p in _panels(dashboard)}) == len(list(_panels(dashboard)))
    sources = [p["datasource"] for p in panels]
    sources += [t["datasource"] for p in panels for t in p["targets"]]
    sources += [v["datasource"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    sources += [a["datasource"] for a in dashboard["annotations"]["list"]]
    assert sources and all(s["uid"] == uid and s["type"] in SQL_TYPES for s in sources)
    assert all(t["rawQuery"] and t["rawSql"].strip() for p in panels for t in p["targets"])
    names = {v["name"] for v in dashboard["templating"]["list"]}
    assert "device" in names


def test_the_compose_service_is_optional_and_holds_no_password() -> None:
    services = _compose_services()
    grafana, reader = services["grafana"], services["grafana-reader"]
    assert grafana["profiles"] == ["grafana"] and reader["profiles"] == ["grafana"]
    assert grafana["image"].startswith("grafana/grafana:")
    assert grafana["depends_on"]["grafana-reader"]["condition"] == "service_completed_successfully"
    assert reader["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert reader["image"] == services["timescaledb"]["image"]
    assert grafana["environment"]["GRAFANA_READER_PASSWORD"].startswith("${GRAFANA_READER_")
    for service in (grafana, reader):
        for name, value in service["environment"].items():
            if "PASSWORD" in name:
                assert str(value).startswith("${"), (name, value)
    # No service outside the profile waits for Grafana.
    for name, service in services.items():
        if "profiles" not in service:
            assert not {"grafana", "grafana-reader"} & set(service.get("depends_on", {})), name
    script = (GRAFANA / "reader-login.sh").read_text()
    assert ":?set GRAFANA_READER_PASSWORD" in script and ":?set GRAFANA_ADMIN_PASSWORD" in script
    assert (
        "\\getenv reader_password GRAFANA_READER_PASSWORD"
        in (GRAFANA / "reader-login.sql").read_text()
    )


@pytest.fixture
def as_reader(db: psycopg.Connection[Any]) -> Iterator[psycopg.Connection[Any]]:
    """The test database, seeded a little, in a transaction as the read-only role."""
    db.execute(
        "INSERT INTO read_models.devices (device_id, name, kind) VALUES ('d1', 'D', 'thermostat')"
    )
    db.execute("INSERT INTO read_models.device_activity VALUES ('d1', now(), 3)")
    db.execute(
        "INSERT INTO read_models.rollup_minute_recent"
        " VALUES ('d1', 'temp', date_trunc('minute', now()), 3, 60, 19, 21)"
    )
    db.execute(
        "INSERT INTO read_models.rollup_hour_recent"
        " VALUES ('d1', 'temp', date_trunc('hour', now()), 3, 60, 19, 21)"
    )
    db.execute(
        "INSERT INTO read_models.alarms (alarm_id, device_id, metric, severity, raised_at,"
        " updated_at) VALUES (gen_random_uuid(), 'd1', 'temp', 'critical', now(), now())"
    )
    try:
        with db.transaction(force_rollback=True):
            db.execute(f"SET LOCAL ROLE {ROLE}")
            yield db
    finally:
        db.execute("TRUNCATE read_models.alarms")


def test_every_dashboard_query_runs_as_the_read_only_role(
    as_reader: psycopg.Connection[Any],
) -> None:
    queries = list(_queries(_dashboard()))
    assert len(queries) >= 12
    for where, sql in queries:
        with as_reader.transaction():  # a savepoint: a failure names its query
            try:
                rows = as_reader.execute(_expanded(sql, "d1").encode()).fetchall()
            except psycopg.Error as exc:
                pytest.fail(f"{where}: {exc}")
        if "rollup_minute" in sql or "alarms" in sql:
            assert rows, where
    device_ids = as_reader.execute(
        _expanded(dict(_queries(_dashboard()))["variable device"], "").encode()
    ).fetchall()
    assert device_ids == [("d1",)]


def test_a_hostile_device_variable_stays_a_string(as_reader: psycopg.Connection[Any]) -> None:
    hostile = "x'; DROP TABLE read_models.devices; --"
    ran = 0
    for _, sql in _queries(_dashboard()):
        if "${device:sqlstring}" in sql:
            with as_reader.transaction():
                assert as_reader.execute(_expanded(sql, hostile).encode()).fetchall() == []
            ran += 1
    assert ran >= 4


@pytest.mark.parametrize(
    "statement",
    [
        "INSERT INTO read_models.devices (device_id) VALUES ('x')",
        "UPDATE read_models.rollup_minute_recent SET count = 0",
        "DELETE FROM read_models.alarms",
        "TRUNCATE read_models.metric_stats",
        "SELECT count(*) FROM telemetry",
        "SELECT count(*) FROM devices",
        "SELECT count(*) FROM outbox",
        "CREATE TABLE read_models.intruder (x int)",
    ],
)
def test_the_role_can_write_nothing_and_read_no_write_table(
    as_reader: psycopg.Connection[Any], statement: str
) -> None:
    with pytest.raises(psycopg.errors.InsufficientPrivilege), as_reader.transaction():
        as_reader.execute(statement.encode())


def test_the_role_reads_tables_created_later_and_the_migration_runs_again(
    db: psycopg.Connection[Any],
) -> None:
    with db.transaction(force_rollback=True):
        db.execute(MIGRATION.read_text().encode())  # the role exists: a second run is harmless
        db.execute("CREATE TABLE read_models.later_model (x int)")
        db.execute("INSERT INTO read_models.later_model VALUES (1)")
        db.execute(f"SET LOCAL ROLE {ROLE}")
        assert db.execute("SELECT x FROM read_models.later_model").fetchall() == [(1,)]
    role = db.execute(
        "SELECT rolsuper, rolcreaterole, rolcreatedb, rolbypassrls, rolconfig FROM pg_roles"
        " WHERE rolname = %s",
        (ROLE,),
    ).fetchone()
    assert role is not None and role[:4] == (False, False, False, False)
    assert "default_transaction_read_only=on" in (role[4] or [])
