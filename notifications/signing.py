"""The headers of a webhook delivery and its signature: HMAC-SHA256 of the exact body.

A receiver recomputes ``sha256=<hex HMAC-SHA256(secret, body)>`` over the bytes it received
and compares it in constant time with ``X-Iotp-Signature``; :func:`verify` does that.
"""

from __future__ import annotations

import hashlib
import hmac

from iotp import __version__

SIGNATURE_HEADER = "X-Iotp-Signature"
EVENT_HEADER = "X-Iotp-Event"
TIMESTAMP_HEADER = "X-Iotp-Timestamp"
IDEMPOTENCY_HEADER = "Idempotency-Key"
SIGNATURE_PREFIX = "sha256="


def signature(body: bytes, secret: str) -> str:
    """The ``X-Iotp-Signature`` value of ``body`` under ``secret``."""
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return f"{SIGNATURE_PREFIX}{digest}"


def verify(body: bytes, secret: str, header: str | None) -> bool:
    """Whether ``header`` is the signature of ``body`` under ``secret`` (constant time)."""
    if header is None:
        return False
    return hmac.compare_digest(signature(body, secret).encode(), header.encode())


def delivery_headers(
    delivery_id: str, event_type: str, body: bytes, secret: str | None, timestamp: int
) -> dict[str, str]:
    """Every header of one delivery attempt; the signature only when a secret is set."""
    headers = {
        "Content-Type": "application/json",
        "User-Agent": f"iotp-notifier/{__version__}",
        IDEMPOTENCY_HEADER: delivery_id,
        EVENT_HEADER: event_type,
        TIMESTAMP_HEADER: str(timestamp),
    }
    if secret is not None:
        headers[SIGNATURE_HEADER] = signature(body, secret)
    return headers
