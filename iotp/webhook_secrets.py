"""Webhook secrets at rest: Fernet-encrypted with ``IOTP_NOTIFY_SECRET_KEY``.

The setting holds one or more Fernet keys, comma-separated, newest first: the first one
encrypts, every one decrypts (``MultiFernet``), so a key is rotated by putting the new one
first and keeping the old one after it until the notifier has re-encrypted every secret
(it does at start, :func:`resealed`). A stored value starting with ``fernet:`` is
encrypted; any other is a secret stored in plain text before encryption existed, still
used as it is and encrypted by the notifier's next start when a key is set.
"""

from __future__ import annotations

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from pydantic import SecretStr

from iotp.errors import ConfigurationError

KEY_SETTING = "IOTP_NOTIFY_SECRET_KEY"
ENCRYPTED_PREFIX = "fernet:"


class SecretKeyMissing(RuntimeError):
    """A secret must be encrypted or decrypted, and no key is set."""

    def __init__(self) -> None:
        super().__init__(f"{KEY_SETTING} is not set")


class SecretUndecryptable(ValueError):
    """A stored secret was encrypted with none of the keys set."""

    def __init__(self) -> None:
        super().__init__(
            f"the webhook's secret was encrypted with a key that is not in {KEY_SETTING}"
        )


def is_encrypted(stored: str) -> bool:
    return stored.startswith(ENCRYPTED_PREFIX)


class SecretBox:
    """Encrypts webhook secrets with the first key and decrypts them with any key."""

    def __init__(self, keys: SecretStr | None) -> None:
        texts = [] if keys is None else [k.strip() for k in keys.get_secret_value().split(",")]
        texts = [text for text in texts if text]
        try:
            self._fernets = [Fernet(text.encode()) for text in texts]
        except ValueError:
            raise ConfigurationError(
                f"{KEY_SETTING} must be Fernet keys (32 url-safe base64-encoded bytes),"
                " comma-separated, newest first; generate one with: python -c"
                ' "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"'
            ) from None
        self._all = MultiFernet(self._fernets) if self._fernets else None

    @property
    def has_key(self) -> bool:
        return self._all is not None

    def seal(self, secret: str) -> str:
        """``secret`` as stored: encrypted with the newest key."""
        if not self._fernets:
            raise SecretKeyMissing()
        return ENCRYPTED_PREFIX + self._fernets[0].encrypt(secret.encode()).decode()

    def open(self, stored: str) -> str:
        """The secret a stored value holds (a legacy plaintext one is itself)."""
        if not is_encrypted(stored):
            return stored
        if self._all is None:
            raise SecretKeyMissing()
        try:
            return self._all.decrypt(stored.removeprefix(ENCRYPTED_PREFIX).encode()).decode()
        except InvalidToken:
            raise SecretUndecryptable() from None

    def resealed(self, stored: str) -> str | None:
        """``stored`` encrypted with the newest key; None when it already is (or no key is set)."""
        if not self._fernets:
            return None
        if is_encrypted(stored):
            token = stored.removeprefix(ENCRYPTED_PREFIX).encode()
            try:
                self._fernets[0].decrypt(token)
                return None
            except InvalidToken:
                pass
        return self.seal(self.open(stored))
