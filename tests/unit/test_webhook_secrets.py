"""Webhook secrets at rest: sealed with the newest key, opened with any, legacy plain text."""

from __future__ import annotations

import pytest
from cryptography.fernet import Fernet
from pydantic import SecretStr

from iotp.errors import ConfigurationError
from iotp.webhook_secrets import (
    ENCRYPTED_PREFIX,
    SecretBox,
    SecretKeyMissing,
    SecretUndecryptable,
)

SECRET = "s3cret-s3cret-s3cret"


def _key() -> str:
    return Fernet.generate_key().decode()


def test_a_secret_is_sealed_and_opened() -> None:
    box = SecretBox(SecretStr(_key()))
    stored = box.seal(SECRET)
    assert stored.startswith(ENCRYPTED_PREFIX) and SECRET not in stored
    assert box.open(stored) == SECRET and box.resealed(stored) is None


def test_a_plaintext_secret_is_itself_and_is_resealed() -> None:
    assert SecretBox(None).open(SECRET) == SECRET
    assert SecretBox(None).resealed(SECRET) is None
    box = SecretBox(SecretStr(_key()))
    resealed = box.resealed(SECRET)
    assert resealed is not None and box.open(resealed) == SECRET


def test_rotation_reseals_under_the_first_key() -> None:
    old, new = _key(), _key()
    stored = SecretBox(SecretStr(old)).seal(SECRET)
    both = SecretBox(SecretStr(f" {new} , {old} "))
    assert both.open(stored) == SECRET
    resealed = both.resealed(stored)
    assert resealed is not None and SecretBox(SecretStr(new)).open(resealed) == SECRET
    with pytest.raises(SecretUndecryptable):
        SecretBox(SecretStr(new)).open(stored)


def test_without_a_key_nothing_is_sealed_or_opened() -> None:
    stored = SecretBox(SecretStr(_key())).seal(SECRET)
    with pytest.raises(SecretKeyMissing, match="IOTP_NOTIFY_SECRET_KEY"):
        SecretBox(None).seal(SECRET)
    with pytest.raises(SecretKeyMissing):
        SecretBox(SecretStr("")).open(stored)


def test_a_malformed_key_names_the_setting() -> None:
    with pytest.raises(ConfigurationError, match="IOTP_NOTIFY_SECRET_KEY"):
        SecretBox(SecretStr("not-a-key"))
