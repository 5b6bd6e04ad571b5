"""Webhook deliveries' pure parts: the signature and headers, the back-off, the URL rules."""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from iotp.commands import RegisterWebhook, url_origin
from notifications.backoff import RetryPolicy, after_attempt
from notifications.signing import delivery_headers, signature, verify

SECRET = "s3cret-s3cret-s3cret"
BODY = b'{"type":"AlarmRaised","severity":"critical"}'


def test_signature_is_hex_hmac_sha256_of_the_body() -> None:
    expected = hmac.new(SECRET.encode(), BODY, hashlib.sha256).hexdigest()
    assert signature(BODY, SECRET) == f"sha256={expected}"
    # A fixed vector, so that a receiver in another language can check its own code.
    assert signature(b"hello", "key") == (
        "sha256=9307b3b915efb5171ff14d8cb55fbcc798c6c0ef1456d66ded1a6aa723a58b7b"
    )


@pytest.mark.parametrize(
    ("body", "secret", "header", "valid"),
    [
        (BODY, SECRET, signature(BODY, SECRET), True),
        (BODY + b" ", SECRET, signature(BODY, SECRET), False),
        (BODY, SECRET + "x", signature(BODY, SECRET), False),
        (BODY, SECRET, signature(BODY, SECRET).removeprefix("sha256="), False),
        (BODY, SECRET, "sha256=" + "0" * 64, False),
        (BODY, SECRET, None, False),
        (BODY, SECRET, "", False),
    ],
    ids=["right", "body changed", "other secret", "no prefix", "zeros", "missing", "empty"],
)
def test_verify(body: bytes, secret: str, header: str | None, valid: bool) -> None:
    assert verify(body, secret, header) is valid


def test_headers_carry_the_key_the_event_and_the_time_and_sign_only_with_a_secret() -> None:
    signed = delivery_headers("d-1", "AlarmRaised", BODY, SECRET, 1_700_000_000)
    assert signed["Idempotency-Key"] == "d-1"
    assert signed["X-Iotp-Event"] == "AlarmRaised"
    assert signed["X-Iotp-Timestamp"] == "1700000000"
    assert signed["Content-Type"] == "application/json"
    assert verify(BODY, SECRET, signed["X-Iotp-Signature"])
    unsigned = delivery_headers("d-1", "AlarmRaised", BODY, None, 1_700_000_000)
    assert "X-Iotp-Signature" not in unsigned


POLICY = RetryPolicy(first_delay=5, max_delay=300, give_up_after=timedelta(hours=24))


@pytest.mark.parametrize(
    ("attempts", "low", "high"),
    [
        (0, 2.5, 5),
        (1, 2.5, 5),
        (2, 5, 10),
        (3, 10, 20),
        (7, 150, 300),
        (8, 150, 300),
        (500, 150, 300),
    ],
)
def test_backoff_doubles_up_to_the_cap_with_equal_jitter(
    attempts: int, low: float, high: float
) -> None:
    assert POLICY.delay(attempts, lambda: 0.0) == low
    assert POLICY.delay(attempts, lambda: 1.0) == high
    assert low <= POLICY.delay(attempts) <= high


START = datetime(2026, 1, 1, tzinfo=UTC)


def test_a_2xx_delivers() -> None:
    decision = after_attempt(
        POLICY, succeeded=True, attempts=3, created_at=START, now=START + timedelta(hours=30)
    )
    assert (decision.state, decision.next_attempt_at) == ("delivered", None)


def test_a_failure_is_retried_later_within_the_window() -> None:
    now = START + timedelta(hours=23, minutes=59)
    decision = after_attempt(
        POLICY, succeeded=False, attempts=4, created_at=START, now=now, uniform=lambda: 0.5
    )
    assert decision.state == "pending"
    assert decision.next_attempt_at == now + timedelta(seconds=30)


def test_a_failure_after_the_window_gives_up() -> None:
    decision = after_attempt(
        POLICY, succeeded=False, attempts=300, created_at=START, now=START + timedelta(hours=24)
    )
    assert (decision.state, decision.next_attempt_at) == ("failed", None)


def test_a_receiver_down_for_an_hour_is_retried_at_least_every_cap() -> None:
    """Every wait is at most the cap, so an hour's outage is followed by a try within 5 min."""
    assert max(POLICY.delay(n) for n in range(1, 200)) <= 300


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/hook",
        "javascript:alert(1)",
        "file:///etc/passwd",
        "http://",
        "https:///path",
        "http://user:pw@example.com/",
        "http://example.com:0/",
        "http://example.com:70000/",
        "http://exa mple.com/",
        "http://example.com/\x00",
        "http://ex_ample.com/",
        "http://example.com/#frag",
        "https://exämple.com/",
        "https://example.com/" + "a" * 2100,
        "example.com/hook",
    ],
)
def test_hostile_urls_are_refused(url: str) -> None:
    with pytest.raises(ValidationError):
        RegisterWebhook(url=url)


def test_origin_leaves_the_path_and_query_out() -> None:
    assert (
        url_origin("HTTPS://Hooks.Example.com:8443/T0k3n?x=1") == "https://hooks.example.com:8443"
    )
