"""Parsing of ``IOTP_MQTT_URL`` (``mqtt://[user:password@]host[:port]``, or ``mqtts://``)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from iotp.errors import ConfigurationError


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool
    username: str | None
    password: str | None

    def __str__(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


def parse_mqtt_url(url: str) -> BrokerAddress:
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
        raise ConfigurationError(f"IOTP_MQTT_URL must start with mqtt:// or mqtts://, got {url!r}")
    tls = parts.scheme in ("mqtts", "ssl")
    if not parts.hostname:
        raise ConfigurationError(f"IOTP_MQTT_URL has no host: {url!r}")
    return BrokerAddress(
        host=parts.hostname,
        port=parts.port or (8883 if tls else 1883),
        tls=tls,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
    )
