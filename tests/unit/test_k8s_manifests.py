"""The Kubernetes manifests (deploy/k8s) stay valid and in step with the code.

No cluster runs here: every manifest is validated against Kubernetes' own OpenAPI schemas,
shipped offline by the kubernetes-validate package (strict: an unknown field is an error),
for the oldest version they need (1.28: the pod-index label) and the newest it knows. Then
what a schema cannot know: each probe asks a route its app serves, each container runs a
registered `iotp` command with options it accepts, and the settings named are real ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import typer.main
import yaml
from fastapi import FastAPI
from pydantic import SecretStr
from starlette.routing import Route

from cli.app import app
from command_api.app import create_app
from iotp.names import TELEMETRY_EVENTS_STREAM
from iotp.settings import Settings
from read_models.app import create_query_app
from read_models.consumer import AGGREGATOR_GROUP

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
VERSIONS = ("1.28", kubernetes_validate.latest_version())
SETTINGS = {f"IOTP_{name.upper()}" for name in Settings.model_fields}
WORKLOADS = ("Deployment", "StatefulSet", "Job")


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def manifests() -> list[tuple[str, dict[str, Any]]]:
    """(file name, document) of every manifest, the example Secret included."""
    return [
        (path.name, doc)
        for path in sorted(K8S.glob("*.yaml"))
        if path.name != "kustomization.yaml"
        for doc in documents(path)
    ]


def of_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for _, doc in manifests() if doc["kind"] == kind}


def workloads() -> dict[str, dict[str, Any]]:
    return {name: doc for kind in WORKLOADS for name, doc in of_kind(kind).items()}


def containers() -> list[tuple[str, dict[str, Any]]]:
    return [
        (name, container)
        for name, doc in workloads().items()
        for container in doc["spec"]["template"]["spec"]["containers"]
    ]


def iotp_containers() -> list[tuple[str, dict[str, Any]]]:
    return [(n, c) for n, c in containers() if c["image"].partition(":")[0] == "iotp"]


def command_problem(args: list[str]) -> str | None:
    """Why ``iotp ARGS`` would not start, or None: the command and its options must parse."""
    group = typer.main.get_command(app)
    command = group.commands.get(args[0]) if args else None  # type: ignore[attr-defined]
    if command is None:
        return f"no command {args[:1]}"
    try:
        command.make_context(args[0], list(args[1:]))
    except typer.TyperException as exc:  # typer's own click: its usage errors
        return str(exc) or type(exc).__name__
    return None


def option(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


# Kubernetes' own kinds; the rest (KEDA's ScaledObject) have their own test.
BUILT_IN = [(f, d) for f, d in manifests() if d["apiVersion"].partition("/")[0] != "keda.sh"]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(("name", "doc"), BUILT_IN, ids=[f"{f}:{d['kind']}" for f, d in BUILT_IN])
def test_every_manifest_is_valid_kubernetes(name: str, doc: dict[str, Any], version: str) -> None:
    kubernetes_validate.validate(doc, version, strict=True)


def test_the_validator_refuses_an_unknown_field() -> None:
    doc = of_kind("StatefulSet")["ingest"]
    broken = yaml.safe_load(yaml.safe_dump(doc))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["pth"] = "/"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSIONS[0], strict=True)


def test_kustomization_applies_every_manifest_but_the_example_secret() -> None:
    kustomization = documents(K8S / "kustomization.yaml")[0]
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", "secret.example.yaml"}
    assert set(kustomization["resources"]) == files
    assert len(kustomization["resources"]) == len(files)
    assert kustomization["namespace"] == "iotp"
    assert all(d["metadata"].get("namespace") in ("iotp", None) for _, d in manifests())


def test_every_iotp_service_of_docker_compose_runs_here_too() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    services = {s["command"][0] for s in compose.values() if "build" in s}
    assert services <= {c["args"][0] for _, c in iotp_containers()}


def test_every_container_runs_a_registered_iotp_command_with_valid_options() -> None:
    found = iotp_containers()
    commands = {c["args"][0] for _, c in found}
    assert {"migrate", "api", "relay", "query-api", "ingest", "aggregate", "dashboard"} <= commands
    assert "broker-sync" in commands
    for name, container in found:
        assert "command" not in container, f"{name}: the image's entrypoint is iotp"
        assert command_problem(container["args"]) is None, (name, container["args"])


@pytest.mark.parametrize(
    "args",
    [[], ["serve"], ["api", "--bogus"], ["api", "--port", "eighty"], ["ingest", "--instance"]],
    ids=["empty", "unknown-command", "unknown-option", "bad-value", "missing-value"],
)
def test_a_command_that_would_not_start_is_caught(args: list[str]) -> None:
    assert command_problem(args) is not None


def test_iotp_containers_use_the_compose_image_and_real_settings() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    image = compose["x-iotp"]["image"]
    config = of_kind("ConfigMap")["iotp-settings"]
    secret = of_kind("Secret")["iotp-secrets"]
    assert set(config["data"]) <= SETTINGS
    assert set(secret["stringData"]) <= SETTINGS
    for name, container in iotp_containers():
        assert container["image"] == image, name
        assert {e["name"] for e in container.get("env", [])} <= SETTINGS, name
        sources = {next(iter(s.values()))["name"] for s in container["envFrom"]}
        assert sources == {"iotp-settings", "iotp-secrets"}, name


def _probes(container: dict[str, Any]) -> list[dict[str, Any]]:
    return [container[k] for k in ("readinessProbe", "livenessProbe") if k in container]


def _http_paths(container: dict[str, Any]) -> set[tuple[str, int]]:
    """(path, port number) of the container's HTTP probes, named ports resolved."""
    ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    found = set()
    for probe in _probes(container):
        if "httpGet" in probe:
            port = probe["httpGet"]["port"]
            found.add((probe["httpGet"]["path"], ports.get(port, port)))
    return found


def served_paths(fastapi_app: FastAPI) -> set[str]:
    """Every path the app answers: its own routes and those of the routers it includes."""
    own = {route.path for route in fastapi_app.routes if isinstance(route, Route)}
    return own | set(fastapi_app.openapi()["paths"])


def test_every_probe_asks_a_route_its_app_serves() -> None:
    settings = Settings(api_token=SecretStr("a-test-token-of-sufficient-length"))
    routes = {
        "api": served_paths(create_app(settings)),
        "query-api": served_paths(create_query_app(settings)),
        # prometheus_client's server, on IOTP_INGEST_METRICS_PORT.
        "ingest": {"/metrics"},
        # Streamlit's own health route.
        "dashboard": {"/_stcore/health"},
    }
    ports = {"ingest": settings.ingest_metrics_port}
    probed = set()
    for name, container in iotp_containers():
        args = container["args"]
        for path, port in _http_paths(container):
            assert path in routes[args[0]], (name, path)
            expected = int(option(args, "--port")) if "--port" in args else ports[args[0]]
            assert port == expected, (name, path, port)
            probed.add(args[0])
    assert probed == set(routes), "each service with an HTTP endpoint is probed on it"


def test_the_dashboards_probe_is_streamlits_health_route() -> None:
    from streamlit.web.server.starlette.starlette_routes import ROUTE_HEALTH

    dashboard = next(c for _, c in iotp_containers() if c["args"][0] == "dashboard")
    assert {path for path, _ in _http_paths(dashboard)} == {f"/{ROUTE_HEALTH}"}


def test_ingest_is_a_statefulset_whose_ordinal_is_its_instance() -> None:
    ingest = of_kind("StatefulSet")["ingest"]
    pod = ingest["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"] == ["ingest"]
    (instance,) = [e for e in container["env"] if e["name"] == "IOTP_INGEST_INSTANCE"]
    label = instance["valueFrom"]["fieldRef"]["fieldPath"]
    assert label == "metadata.labels['apps.kubernetes.io/pod-index']"
    # SIGTERM starts the handover; Kubernetes must not SIGKILL before it can finish.
    grace = pod["terminationGracePeriodSeconds"]
    assert grace >= 2 * Settings().ingest_handover_seconds
    service = of_kind("Service")[ingest["spec"]["serviceName"]]
    assert service["spec"]["clusterIP"] == "None", "a headless service names the pods"
    assert not any(d["kind"] == "Deployment" and "ingest" in n for n, d in workloads().items())


def test_migrations_run_as_a_job() -> None:
    (job,) = of_kind("Job").values()
    pod = job["spec"]["template"]["spec"]
    assert [c["args"] for c in pod["containers"]] == [["migrate"]]
    assert pod["restartPolicy"] in ("OnFailure", "Never")


def test_aggregators_scale_on_their_groups_lag() -> None:
    (scaled,) = of_kind("ScaledObject").values()
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    target = of_kind("Deployment")[scaled["spec"]["scaleTargetRef"]["name"]]
    assert [c["args"][0] for c in target["spec"]["template"]["spec"]["containers"]] == ["aggregate"]
    assert "replicas" not in target["spec"], "the autoscaler owns the replica count"
    assert 1 <= scaled["spec"]["minReplicaCount"] < scaled["spec"]["maxReplicaCount"]
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "redis-streams"
    meta = trigger["metadata"]
    assert meta["stream"] == TELEMETRY_EVENTS_STREAM
    assert meta["consumerGroup"] == AGGREGATOR_GROUP
    assert int(meta["lagCount"]) > 0
    redis_url = urlsplit(of_kind("ConfigMap")["iotp-settings"]["data"]["IOTP_REDIS_URL"])
    assert meta["address"] == f"{redis_url.hostname}:{redis_url.port}"
    assert meta["databaseIndex"] == redis_url.path.strip("/")


def test_the_mosquitto_path_runs_broker_sync_beside_the_shipped_broker_config() -> None:
    config = of_kind("ConfigMap")["mosquitto-config"]["data"]
    assert config["mosquitto.conf"] == (ROOT / "local_platform" / "mosquitto.conf").read_text()
    assert config["entrypoint.sh"] == (ROOT / "deploy" / "mosquitto-entrypoint.sh").read_text()
    broker = of_kind("StatefulSet")["mosquitto"]["spec"]["template"]["spec"]
    by_name = {c["name"]: c for c in broker["containers"]}
    sync = by_name["broker-sync"]
    assert sync["args"] == ["broker-sync"]
    env = {e["name"]: e["value"] for e in sync["env"]}
    lines = config["mosquitto.conf"].splitlines()
    assert f"password_file {env['IOTP_BROKER_PASSWORD_FILE']}" in lines
    assert f"acl_file {env['IOTP_BROKER_ACL_FILE']}" in lines
    mounts = {m["mountPath"]: m for m in by_name["mosquitto"]["volumeMounts"]}
    shared = mounts["/mosquitto/auth"]
    assert any(
        m["name"] == shared["name"] and m.get("subPath") == shared.get("subPath")
        for m in sync["volumeMounts"]
    ), "broker-sync writes the files the broker reads"
