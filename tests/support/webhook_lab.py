"""Settings of a webhook lab: receivers on 127.0.0.1 are allowed, secrets have a key."""

from __future__ import annotations

from cryptography.fernet import Fernet
from pydantic import SecretStr

from iotp.settings import Settings

SECRET_KEY = Fernet.generate_key().decode()  # one per test run


def lab_settings(settings: Settings, *, key: str = SECRET_KEY) -> Settings:
    """``settings`` with private webhook targets allowed and ``key`` for the secrets."""
    return settings.model_copy(
        update={"notify_allow_private_targets": True, "notify_secret_key": SecretStr(key)}
    )


def lab_environment() -> dict[str, str]:
    """The same, as the IOTP_ variables of a child process."""
    return {"notify_allow_private_targets": "true", "notify_secret_key": SECRET_KEY}
