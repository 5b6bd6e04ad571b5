"""MQTT credentials for devices: random passwords, stored only as Mosquitto-compatible hashes."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

# Mosquitto's password file format ``$7$iterations$salt$hash`` (PBKDF2-SHA512), so a
# deployment can hand these hashes to the broker's password file or its auth plugin.
_PREFIX = "$7$"
_ITERATIONS = 1000  # the passwords are 256 random bits; stretching guards nothing more
_SALT_BYTES = 12


def new_seed() -> bytes:
    """A fresh random seed a device password is derived from."""
    return secrets.token_bytes(32)


def password_from_seed(seed: bytes, pepper: bytes) -> str:
    """The device password for ``seed``: reproducible by whoever holds the API token only."""
    digest = hmac.new(pepper, b"iotp-device-password\x00" + seed, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    salt = salt if salt is not None else secrets.token_bytes(_SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, _ITERATIONS)
    return (
        f"{_PREFIX}{_ITERATIONS}${base64.b64encode(salt).decode()}"
        f"${base64.b64encode(digest).decode()}"
    )


def verify_password(password: str, stored: str) -> bool:
    try:
        _, _, iterations, salt_b64, digest_b64 = stored.split("$")
        salt, expected = base64.b64decode(salt_b64), base64.b64decode(digest_b64)
        digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, int(iterations))
    except ValueError:
        return False
    return hmac.compare_digest(digest, expected)
