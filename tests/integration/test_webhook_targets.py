"""Webhooks may reach public addresses only, connect to the address they checked, and keep
their secrets encrypted: registration on the command API, deliveries by the notifier to a
real HTTP receiver on this machine. There is no DNS here: a name is pointed at an address by
replacing the resolver the check uses (iotp.public_address.getaddrinfo) in this process."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from cryptography import x509
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import SecretStr

from iotp import public_address
from iotp.settings import Settings
from iotp.webhook_secrets import ENCRYPTED_PREFIX, SecretBox
from notifications.signing import verify
from tests.integration.test_webhooks import Receiver, fast, notifier, publish, raised, register
from tests.support.api_client import AUTH, running_api
from tests.support.waiting import wait_for
from tests.support.webhook_lab import SECRET_KEY, lab_settings

SECRET = "a-webhook-secret-of-some-length"
HOST = "hooks.test"  # resolves only through the fake resolvers below

NOT_PUBLIC = [
    "http://127.0.0.1:9/h",
    "http://localhost/h",
    "http://2130706433/",
    "http://0x7f.1/",
    "http://127.1/",
    "http://0/",
    "http://0.0.0.0/",
    "http://169.254.169.254/latest/meta-data/",
    "http://10.0.0.1/",
    "http://172.16.0.1/",
    "http://192.168.1.10/",
    "http://100.64.0.1/",
    "http://224.0.0.1/",
    "http://240.0.0.1/",
    "http://255.255.255.255/",
    "http://[::1]/",
    "http://[::]/",
    "http://[::ffff:127.0.0.1]/",
    "http://[::ffff:169.254.169.254]/",
    "http://[fe80::1]/",
    "http://[fe80::1%25eth9]/",
    "http://[fc00::1]/",
    "http://[fd12:3456::1]/",
    "http://[ff02::1]/",
    "http://[2002:7f00:1::]/",  # 6to4 of 127.0.0.1
]

Resolver = Callable[..., list[tuple[Any, ...]]]


def answering(*addresses: str) -> Resolver:
    """A resolver answering ``HOST`` with the next of ``addresses`` on each call (the last one
    from then on), and every other name as the real resolver does."""
    real = socket.getaddrinfo
    calls: list[str] = []

    def resolve(host: str, port: Any, *args: Any, **kwargs: Any) -> list[tuple[Any, ...]]:
        if host != HOST:
            return real(host, port, *args, **kwargs)
        address = addresses[min(len(calls), len(addresses) - 1)]
        calls.append(address)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, int(port)))]

    resolve.calls = calls  # type: ignore[attr-defined]
    return resolve


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver().start()
    yield running
    running.stop()


def post_webhook(settings: Settings, body: dict[str, Any]) -> Any:
    with running_api(settings, relay=False) as client:
        return client.post("/webhooks", json=body, headers=AUTH)


def stored_secret(db: psycopg.Connection[Any], webhook_id: str) -> str:
    row = db.execute("SELECT secret FROM webhooks WHERE webhook_id = %s", (webhook_id,)).fetchone()
    assert row is not None
    secret: str = row[0]
    return secret


def delivery_states(db: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return db.execute(
        "SELECT state, attempts, last_error FROM webhook_deliveries ORDER BY created_at"
    ).fetchall()


def signed(got: Any) -> bool:
    return verify(got.body, SECRET, got.headers["x-iotp-signature"])


# --- registration -------------------------------------------------------------------------


@pytest.mark.parametrize("url", NOT_PUBLIC)
def test_a_url_to_an_address_that_is_not_public_is_refused(
    settings: Settings, db: psycopg.Connection[Any], url: str
) -> None:
    answer = post_webhook(settings, {"url": url})
    assert answer.status_code == 422, answer.text
    (issue,) = answer.json()["detail"]
    assert issue["loc"] == ["body", "url"] and issue["type"] == "value_error"
    assert "not a public address" in issue["msg"]
    assert "IOTP_NOTIFY_ALLOW_PRIVATE_TARGETS" in issue["msg"]
    assert db.execute("SELECT count(*) FROM webhooks").fetchone() == (0,)


@pytest.mark.parametrize("url", NOT_PUBLIC)
def test_the_setting_allows_them_for_a_lab(
    settings: Settings, db: psycopg.Connection[Any], url: str
) -> None:
    answer = post_webhook(lab_settings(settings), {"url": url})
    assert answer.status_code == 201, answer.text


def test_a_name_resolving_to_loopback_is_refused_and_a_public_one_accepted(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(public_address, "getaddrinfo", answering("127.0.0.1"))
    assert post_webhook(settings, {"url": f"https://{HOST}/h"}).status_code == 422
    monkeypatch.setattr(public_address, "getaddrinfo", answering("8.8.8.8"))
    assert post_webhook(settings, {"url": f"https://{HOST}/h"}).status_code == 201
    # A name that does not resolve now is accepted: every delivery checks it again.
    assert post_webhook(settings, {"url": "https://nowhere.invalid/h"}).status_code == 201
    assert post_webhook(settings, {"url": "https://[2001:4860::8888]/h"}).status_code == 201


def test_a_secret_without_a_key_is_refused_and_a_webhook_without_one_accepted(
    settings: Settings, db: psycopg.Connection[Any]
) -> None:
    unkeyed = settings.model_copy(update={"notify_secret_key": None})
    refused = post_webhook(unkeyed, {"url": "https://8.8.8.8/h", "secret": SECRET})
    assert refused.status_code == 503
    assert "IOTP_NOTIFY_SECRET_KEY" in refused.json()["detail"]
    assert post_webhook(unkeyed, {"url": "https://8.8.8.8/h"}).status_code == 201
    assert db.execute("SELECT count(*) FROM webhooks").fetchone() == (1,)


# --- delivery -----------------------------------------------------------------------------


def test_a_name_that_now_resolves_to_a_private_address_is_refused_at_delivery(
    settings: Settings,
    db: psycopg.Connection[Any],
    redis_client: redis.Redis,
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Accepted at registration (the name did not resolve then), then pointed at the receiver.
    register(settings, f"http://{HOST}:{receiver.port}/h")
    monkeypatch.setattr(public_address, "getaddrinfo", answering("127.0.0.1"))
    publish(redis_client, raised())
    with notifier(fast(settings)):
        wait_for(lambda: [row[0] for row in delivery_states(db)] == ["failed"])
    ((state, attempts, error),) = delivery_states(db)
    assert (state, attempts) == ("failed", 1), "refused once, not retried"
    assert error.startswith("refused: ") and "127.0.0.1" in error
    assert receiver.events() == []


def test_the_connection_goes_to_the_address_that_was_checked(
    settings: Settings,
    db: psycopg.Connection[Any],
    redis_client: redis.Redis,
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A resolver answering the receiver first and another listener afterwards (rebinding):
    the POST reaches the first, with the URL's own Host, and the name is resolved once."""
    lab = lab_settings(settings)
    register(lab, f"http://{HOST}:{receiver.port}/hooks?x=1", secret=SECRET)
    resolver = answering("127.0.0.1", "127.0.0.2")
    monkeypatch.setattr(public_address, "getaddrinfo", resolver)
    # Another listener on the same port of the second address: it must never be connected to.
    with socket.create_server(("127.0.0.2", receiver.port)) as rebound:
        publish(redis_client, raised())
        with notifier(fast(lab)):
            wait_for(lambda: [row[0] for row in delivery_states(db)] == ["delivered"])
        rebound.setblocking(False)
        with pytest.raises(BlockingIOError):
            rebound.accept()
    (got,) = receiver.events()
    assert got.headers["host"] == f"{HOST}:{receiver.port}"
    assert signed(got)
    assert resolver.calls == ["127.0.0.1"]  # type: ignore[attr-defined]


def self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    """A certificate for the DNS name ``name`` only (no IP address), and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


def test_https_to_the_checked_address_verifies_the_certificate_of_the_urls_name(
    settings: Settings,
    db: psycopg.Connection[Any],
    redis_client: redis.Redis,
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """The receiver's certificate names only ``hooks.test``: the TLS handshake with
    127.0.0.1 succeeds only if the server name sent and verified is the URL's."""
    cert_file, key_file = self_signed(tmp_path, HOST)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert_file, key_file)
    assert receiver.server is not None
    receiver.server.socket = tls.wrap_socket(receiver.server.socket, server_side=True)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert_file))  # httpx trusts it (trust_env)
    lab = lab_settings(settings)
    register(lab, f"https://{HOST}:{receiver.port}/h", secret=SECRET)
    monkeypatch.setattr(public_address, "getaddrinfo", answering("127.0.0.1"))
    publish(redis_client, raised())
    with notifier(fast(lab)):
        wait_for(lambda: [row[0] for row in delivery_states(db)] == ["delivered"])
    (got,) = receiver.events()
    assert got.headers["host"] == f"{HOST}:{receiver.port}" and signed(got)


# --- secrets at rest ----------------------------------------------------------------------


def test_secrets_are_encrypted_at_rest_and_signatures_verify(
    settings: Settings, db: psycopg.Connection[Any], redis_client: redis.Redis, receiver: Receiver
) -> None:
    lab = lab_settings(settings)
    webhook_id = register(lab, receiver.url, secret=SECRET)
    stored = stored_secret(db, webhook_id)
    assert stored.startswith(ENCRYPTED_PREFIX) and SECRET not in stored
    row = db.execute("SELECT * FROM webhooks WHERE webhook_id = %s", (webhook_id,)).fetchone()
    assert SECRET not in repr(row)
    publish(redis_client, raised())
    with notifier(fast(lab)):
        wait_for(lambda: [row[0] for row in delivery_states(db)] == ["delivered"])
    (got,) = receiver.events()
    assert signed(got)


def test_a_key_is_rotated_by_a_notifier_start_with_new_and_old_keys(
    settings: Settings, db: psycopg.Connection[Any], redis_client: redis.Redis, receiver: Receiver
) -> None:
    old, new = SECRET_KEY, Fernet.generate_key().decode()
    webhook_id = register(lab_settings(settings, key=old), receiver.url, secret=SECRET)
    before = stored_secret(db, webhook_id)
    # The notifier starts with "new,old": it re-encrypts under the new key, and delivers.
    publish(redis_client, raised())
    with notifier(fast(lab_settings(settings, key=f"{new},{old}"))):
        wait_for(lambda: [row[0] for row in delivery_states(db)] == ["delivered"])
    after = stored_secret(db, webhook_id)
    assert after != before and after.startswith(ENCRYPTED_PREFIX)
    assert SecretBox(SecretStr(new)).open(after) == SECRET
    # The old key can go: a notifier with the new key alone still signs.
    publish(redis_client, raised())
    with notifier(fast(lab_settings(settings, key=new))):
        wait_for(lambda: [row[0] for row in delivery_states(db)] == ["delivered"] * 2)
    assert all(signed(got) for got in receiver.events())
    assert len(receiver.events()) == 2


def test_a_plaintext_secret_stored_before_encryption_still_signs_and_is_encrypted(
    settings: Settings, db: psycopg.Connection[Any], redis_client: redis.Redis, receiver: Receiver
) -> None:
    lab = lab_settings(settings)
    webhook_id = register(lab, receiver.url)
    db.execute("UPDATE webhooks SET secret = %s WHERE webhook_id = %s", (SECRET, webhook_id))
    # Without a key the legacy secret is used as it is.
    publish(redis_client, raised())
    with notifier(fast(lab.model_copy(update={"notify_secret_key": None}))):
        wait_for(lambda: [row[0] for row in delivery_states(db)] == ["delivered"])
    assert stored_secret(db, webhook_id) == SECRET
    # With a key, the notifier's start encrypts it, and it still signs.
    publish(redis_client, raised())
    with notifier(fast(lab)):
        wait_for(lambda: [row[0] for row in delivery_states(db)] == ["delivered"] * 2)
    assert stored_secret(db, webhook_id).startswith(ENCRYPTED_PREFIX)
    assert all(signed(got) for got in receiver.events())
