"""The EMQX cluster's configuration stays in step with iotp (EMQX and Docker cannot run here).

deploy/emqx/emqx.conf must parse as HOCON, check passwords with the very parameters of
iotp's stored hash (found by hashing with iotp/password_hash.py, not copied by hand), read
the views of migration 0040, and form a static three-node cluster whose seeds are the nodes
docker-compose.emqx.yml runs; that compose file must point ingest at those nodes with its
topics, protocol and share group unchanged.
"""

from __future__ import annotations

import base64
import hashlib
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from pyhocon import ConfigFactory, ConfigTree  # type: ignore[import-untyped]

from ingest.mqtt_source import SESSION_EXPIRY_SECONDS
from iotp.mqtt_url import parse_mqtt_url
from iotp.names import TELEMETRY_TOPIC_FILTER
from iotp.password_hash import hash_password
from iotp.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
EMQX_DIR = ROOT / "deploy" / "emqx"
MIGRATION = ROOT / "iotp" / "migrations" / "0040_emqx_auth.sql"


class ComposeLoader(yaml.SafeLoader):
    """YAML as Docker Compose reads it: ``!override`` and ``!reset`` tags on merged keys."""


def _tagged(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_scalar(node)


ComposeLoader.add_constructor("!override", _tagged)
ComposeLoader.add_constructor("!reset", _tagged)


def load_compose(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.load((ROOT / name).read_text(), Loader=ComposeLoader)
    return loaded


@pytest.fixture(scope="module")
def emqx() -> ConfigTree:
    return ConfigFactory.parse_file(str(EMQX_DIR / "emqx.conf"))


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose("docker-compose.emqx.yml")


def postgres_authenticator(emqx: ConfigTree) -> ConfigTree:
    found = [a for a in emqx["authentication"] if a["backend"] == "postgresql"]
    assert len(found) == 1
    authenticator: ConfigTree = found[0]
    return authenticator


def checks_iotp_hashes(algorithm: ConfigTree) -> bool:
    """Whether EMQX, with ``algorithm``, accepts a password against iotp's stored hash.

    EMQX's pbkdf2 check: PBKDF2(mac_fun, password, salt, iterations, dk_length) in lowercase
    hex against password_hash (the view turns iotp's base64 digest into that hex).
    """
    stored = hash_password("a device password", salt=b"twelve bytes")
    _, _, iterations, salt_b64, digest_b64 = stored.split("$")
    expected = base64.b64decode(digest_b64).hex()
    if algorithm["name"] != "pbkdf2" or int(iterations) != algorithm["iterations"]:
        return False
    try:
        derived = hashlib.pbkdf2_hmac(
            algorithm["mac_fun"],
            b"a device password",
            base64.b64decode(salt_b64),
            algorithm["iterations"],
            algorithm.get("dk_length", None),
        )
    except ValueError:
        return False
    return derived.hex() == expected


def test_emqx_checks_passwords_with_iotps_hash_parameters(emqx: ConfigTree) -> None:
    assert checks_iotp_hashes(postgres_authenticator(emqx)["password_hash_algorithm"])


@pytest.mark.parametrize(
    "wrong",
    [
        {"iterations": 100},
        {"mac_fun": "sha256"},
        {"dk_length": 32},
        {"name": "sha512"},
    ],
    ids=["iterations", "mac_fun", "dk_length", "not-pbkdf2"],
)
def test_a_hash_setting_that_differs_from_iotps_is_caught(
    emqx: ConfigTree, wrong: dict[str, Any]
) -> None:
    algorithm = postgres_authenticator(emqx)["password_hash_algorithm"].copy()
    algorithm.update(wrong)
    assert not checks_iotp_hashes(algorithm)


def test_authentication_and_authorization_read_the_views_of_migration_0040(
    emqx: ConfigTree,
) -> None:
    migration = MIGRATION.read_text()
    assert "CREATE VIEW emqx_auth AS" in migration and "CREATE VIEW emqx_acl AS" in migration
    query = postgres_authenticator(emqx)["query"]
    assert re.fullmatch(
        r"SELECT password_hash, salt, is_superuser FROM emqx_auth"
        r" WHERE username = \$\{username\} LIMIT 1",
        query,
    )
    sources = emqx["authorization.sources"]
    postgres = [s for s in sources if s["type"] == "postgresql"]
    assert len(postgres) == 1
    assert postgres[0]["query"] == (
        "SELECT permission, action, topic FROM emqx_acl WHERE username = ${username}"
    )
    assert emqx["authorization.no_match"] == "deny"
    # The devices' authenticator comes first; ingest's account falls through to the second.
    assert [a["backend"] for a in emqx["authentication"]] == ["postgresql", "built_in_database"]


def test_the_cluster_is_static_with_three_seeds_that_compose_runs(
    emqx: ConfigTree, compose: dict[str, Any]
) -> None:
    assert emqx["cluster.discovery_strategy"] == "static"
    seeds = list(emqx["cluster.static.seeds"])
    assert len(seeds) == 3 == len(set(seeds))
    nodes = {n: s for n, s in compose["services"].items() if s.get("image", "").startswith("emqx/")}
    assert len(nodes) == 3
    names = {s["environment"]["EMQX_NODE__NAME"] for s in nodes.values()}
    assert names == set(seeds)
    for service in nodes.values():
        host = service["environment"]["EMQX_NODE__NAME"].partition("@")[2]
        assert host in service["networks"]["default"]["aliases"]
        assert re.fullmatch(r"emqx/emqx:5\.\d+\.\d+", service["image"]), "a pinned EMQX 5"


def test_emqx_keeps_what_ingest_has_not_taken(emqx: ConfigTree) -> None:
    mqtt = emqx["mqtt"]
    assert mqtt["shared_subscription"] is True
    assert mqtt["max_mqueue_len"] >= 1_000_000, "EMQX's default (1000) drops under load"
    assert mqtt["max_inflight"] >= 1000
    # For MQTT 3.1.1 sessions: as long as the session ingest asks for over MQTT 5.
    start = datetime(2000, 1, 1, tzinfo=UTC)
    expiry = start + mqtt["session_expiry_interval"] - start
    assert expiry.total_seconds() == SESSION_EXPIRY_SECONDS


def test_ingest_reads_the_cluster_with_its_usual_topics_and_share_group(
    compose: dict[str, Any],
) -> None:
    base = load_compose("docker-compose.yml")["services"]
    services = compose["services"]
    nodes = {n for n, s in services.items() if s.get("image", "").startswith("emqx/")}
    fields = {f"IOTP_{name.upper()}" for name in Settings.model_fields}
    hosts = set()
    for name in ("ingest-a", "ingest-b"):
        override = services[name]
        assert set(override["environment"]) <= fields, name
        # Protocol, share group and subscription mode stay the defaults: MQTT 5, $share.
        assert set(override["environment"]) == {"IOTP_MQTT_URL"}
        broker = parse_mqtt_url(override["environment"]["IOTP_MQTT_URL"].replace(":?", ""))
        assert broker.host in nodes and broker.port == 1883
        assert broker.username == "iotp-ingest"
        hosts.add(broker.host)
        depends = override["depends_on"]
        assert "mosquitto" not in depends
        assert depends[broker.host]["condition"] == "service_healthy"
        assert depends["migrate"]["condition"] == "service_completed_successfully"
        assert base[name]["command"][:2] == ["ingest", "--instance"]
    assert len(hosts) == 2, "the two ingests on two nodes"
    defaults = Settings()
    assert defaults.mqtt_protocol == "5" and defaults.ingest_shared_subscription
    for name in ("mosquitto", "broker-sync"):
        assert services[name]["profiles"] == ["mosquitto"], f"{name} does not run on this path"


def test_ingests_account_and_rights_are_where_emqx_looks(
    emqx: ConfigTree, compose: dict[str, Any]
) -> None:
    entrypoint = (EMQX_DIR / "entrypoint.sh").read_text()
    bootstrap = emqx["authentication"][1]["bootstrap_file"]
    assert '> "$ACCOUNTS"' in entrypoint and f"ACCOUNTS={bootstrap}\n" in entrypoint
    assert "iotp-ingest" in entrypoint and "INGEST_MQTT_PASSWORD" in entrypoint
    acl_path = next(s["path"] for s in emqx["authorization.sources"] if s["type"] == "file")
    acl = (EMQX_DIR / "iotp-acl.conf").read_text()
    grant = f'{{allow, {{username, "iotp-ingest"}}, subscribe, ["{TELEMETRY_TOPIC_FILTER}"]}}.'
    assert grant in acl
    assert "{deny, all}." not in acl.replace("No final {deny, all}", "")
    for node in ("emqx1", "emqx2", "emqx3"):
        service = compose["services"][node]
        mounts = {v.split(":")[0]: v.split(":")[1] for v in service["volumes"]}
        assert mounts["./deploy/emqx/emqx.conf"] == "/opt/emqx/etc/emqx.conf"
        assert mounts["./deploy/emqx/iotp-acl.conf"] == acl_path
        assert mounts["./deploy/emqx/entrypoint.sh"] == "/iotp/entrypoint.sh"
        assert service["entrypoint"] == ["/bin/sh", "/iotp/entrypoint.sh"]
        assert "/opt/emqx/data" in mounts.values(), "the built-in database survives restarts"
        assert service["secrets"] == ["emqx-db-password"]


def test_emqx_reaches_the_write_store_that_compose_runs(
    emqx: ConfigTree, compose: dict[str, Any]
) -> None:
    base = load_compose("docker-compose.yml")["services"]["timescaledb"]
    secret_files = {f"file:///run/secrets/{name}" for name in compose["secrets"]}
    postgres = [postgres_authenticator(emqx)] + [
        s for s in emqx["authorization.sources"] if s["type"] == "postgresql"
    ]
    for source in postgres:
        assert source["server"] == "timescaledb:5432"
        assert source["database"] == base["environment"]["POSTGRES_DB"]
        assert source["username"] == base["environment"]["POSTGRES_USER"]
        assert source["password"] in secret_files, "a password file, not a password"
    assert compose["secrets"]["emqx-db-password"] == {"environment": "POSTGRES_PASSWORD"}
