"""Mosquitto's password hash (``$7$iterations$salt$hash``, PBKDF2-SHA512).

The one form iotp keeps of an MQTT password: the command side stores it, the broker's
password file takes it as it is, and `iotp broker-sync` hashes the service accounts with it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

# Mosquitto's password file format ``$7$iterations$salt$hash`` (PBKDF2-SHA512), so a
# deployment can hand these hashes to the broker's password file or its auth plugin.
_PREFIX = "$7$"
# mosquitto_passwd's own count. The passwords have 256 random bits, so stretching guards
# nothing; and Mosquitto re-checks every connected client's password when it reloads its
# password file (one PBKDF2 each), so a high count would freeze the broker on each change.
_ITERATIONS = 101
_SALT_BYTES = 12


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
