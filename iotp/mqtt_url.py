"""Parsing of ``IOTP_MQTT_URL`` (``mqtt://[user:password@]host[:port]``, or ``mqtts://``)."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from iotp.errors import ConfigurationError
from iotp.settings import Settings


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


def tls_context(broker: BrokerAddress, settings: Settings) -> ssl.SSLContext | None:
    """The TLS context for an ``mqtts://`` broker (None for plain MQTT).

    The broker's certificate is always verified, against IOTP_MQTT_CA_FILE when set, else
    the system's CAs; IOTP_MQTT_CERT_FILE and IOTP_MQTT_KEY_FILE add a client certificate.
    """
    if not broker.tls:
        return None
    try:
        context = ssl.create_default_context(cafile=settings.mqtt_ca_file)
        if settings.mqtt_cert_file:
            context.load_cert_chain(settings.mqtt_cert_file, settings.mqtt_key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(
            f"cannot load the MQTT TLS files (IOTP_MQTT_CA_FILE, IOTP_MQTT_CERT_FILE,"
            f" IOTP_MQTT_KEY_FILE): {exc}"
        ) from exc
    return context
