"""Errors the edges turn into one clear line, an HTTP status or a dead-letter reason."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


class ConfigurationError(Exception):
    """A setting is missing or unusable; the message names the variable."""


class ServiceUnavailable(Exception):
    """A backing service did not answer at the address a setting names."""

    def __init__(self, service: str, setting: str, address: str, reason: str) -> None:
        self.service, self.setting, self.address, self.reason = service, setting, address, reason
        super().__init__(f"cannot reach {service} at {address} (from {setting}): {reason.strip()}")


def first_line(exc: BaseException) -> str:
    """The first line of an error's message (or its type), for one-line reports."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def redact_url(url: str) -> str:
    """``url`` without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    userinfo = netloc[0].split(":", 1)[0] + ":***"
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{netloc[1]}"))
