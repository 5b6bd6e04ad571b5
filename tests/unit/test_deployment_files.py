"""docker-compose.yml and the Dockerfile stay in step with the code (Docker cannot run here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer.main
import yaml

from cli.app import app
from iotp.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def _compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


def _iotp_services() -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in _compose()["services"].items() if "build" in svc}


def test_every_iotp_service_runs_a_real_iotp_command() -> None:
    commands = set(typer.main.get_command(app).commands)  # type: ignore[attr-defined]
    services = _iotp_services()
    assert {"migrate", "api", "query-api", "ingest-a", "ingest-b", "aggregate", "dashboard"} <= set(
        services
    )
    for name, service in services.items():
        assert service["command"][0] in commands, name


def test_compose_environment_names_are_settings() -> None:
    fields = {f"IOTP_{name.upper()}" for name in Settings.model_fields}
    for name, service in _iotp_services().items():
        for variable in service.get("environment", {}):
            assert variable in fields, (name, variable)
    example = (ROOT / ".env.example").read_text().splitlines()
    for line in example:
        if line.startswith("IOTP_"):
            assert line.split("=", 1)[0] in fields, line


def test_compose_uses_timescaledb_and_the_shipped_broker_config() -> None:
    services = _compose()["services"]
    assert services["timescaledb"]["image"].startswith("timescale/timescaledb:")
    mounts = " ".join(services["mosquitto"]["volumes"])
    assert "./local_platform/mosquitto.conf:" in mounts
    assert (ROOT / "local_platform" / "mosquitto.conf").is_file()
    api_port = Settings().api_port
    assert f"{api_port}:{api_port}" in services["api"]["ports"]


def test_dockerfile_installs_the_package_with_its_entry_point() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "pip install --no-cache-dir ." in dockerfile
    assert 'ENTRYPOINT ["iotp"]' in dockerfile


def test_compose_ports_match_the_settings_defaults() -> None:
    services = _compose()["services"]
    defaults = Settings()
    for name, port in (
        ("api", defaults.api_port),
        ("query-api", defaults.query_port),
        ("dashboard", defaults.dashboard_port),
    ):
        assert any(p.endswith(f"{port}:{port}") for p in services[name]["ports"]), name
        assert str(port) in services[name]["command"], name
        assert str(port) in " ".join(services[name]["healthcheck"]["test"]), name
    assert str(defaults.ingest_metrics_port) in " ".join(
        services["ingest-a"]["healthcheck"]["test"]
    )


def test_every_service_waits_for_what_it_needs() -> None:
    services = _iotp_services()
    for name, service in services.items():
        if name == "migrate":
            assert service["depends_on"]["timescaledb"]["condition"] == "service_healthy"
        else:
            assert service["depends_on"]["migrate"]["condition"] == (
                "service_completed_successfully"
            ), name
    instances = {s["command"][2] for n, s in services.items() if n.startswith("ingest-")}
    assert len(instances) == 2, "each ingest process needs its own instance name"


def test_compose_broker_enforces_identity_kept_by_broker_sync() -> None:
    services = _compose()["services"]
    config = (ROOT / "local_platform" / "mosquitto.conf").read_text()
    assert "allow_anonymous false" in config and "allow_anonymous true" not in config
    assert "password_file /mosquitto/auth/passwd" in config
    assert "acl_file /mosquitto/auth/acl" in config
    assert "listener 8883" in config and "cafile /mosquitto/certs/ca.crt" in config
    sync = services["broker-sync"]
    assert sync["command"] == ["broker-sync"]
    assert sync["environment"]["IOTP_BROKER_PASSWORD_FILE"] == "/mosquitto/auth/passwd"
    assert sync["environment"]["IOTP_BROKER_ACL_FILE"] == "/mosquitto/auth/acl"
    assert "mosquitto-auth:/mosquitto/auth" in sync["volumes"]
    broker = services["mosquitto"]
    assert "mosquitto-auth:/mosquitto/auth:ro" in broker["volumes"]
    assert broker["depends_on"]["broker-sync"]["condition"] == "service_started"
    entrypoint = (ROOT / "deploy" / "mosquitto-entrypoint.sh").read_text()
    assert "kill -HUP" in entrypoint
    # No default service password: compose refuses to start without one.
    for service in (services["ingest-a"], sync):
        assert ":?" in service["environment"]["IOTP_MQTT_URL"]
    example = (ROOT / ".env.example").read_text()
    assert "INGEST_MQTT_PASSWORD=\n" in example
