"""MQTT credentials for devices: random passwords, stored only as Mosquitto-compatible hashes."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from iotp.password_hash import hash_password, verify_password

__all__ = ["hash_password", "new_seed", "password_from_seed", "verify_password"]


def new_seed() -> bytes:
    """A fresh random seed a device password is derived from."""
    return secrets.token_bytes(32)


def password_from_seed(seed: bytes, pepper: bytes) -> str:
    """The device password for ``seed``: reproducible by whoever holds the API token only."""
    digest = hmac.new(pepper, b"iotp-device-password\x00" + seed, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
