"""A broker that enforces device identity, kept by a real `iotp broker-sync`, for tests.

MQTT clients here report what the broker answered (CONNACK and PUBACK reason codes, and
whether the connection was closed) instead of asserting, so tests state the expectation.
"""

from __future__ import annotations

import secrets
import socket
import struct
import threading
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from local_platform.broker import LocalBroker
from tests.support.api_client import AUTH
from tests.support.waiting import wait_for

INGEST_USER = "iotp-ingest"


@dataclass
class Identity:
    """A broker with identity on, the sync keeping it, and the credentials handed out."""

    broker: LocalBroker
    ingest_password: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    passwords: dict[str, str] = field(default_factory=dict)

    @property
    def ingest_url(self) -> str:
        return f"mqtt://{INGEST_USER}:{self.ingest_password}@127.0.0.1:{self.broker.port}"

    def sync_settings(self) -> dict[str, str]:
        return {
            "mqtt_url": self.ingest_url,
            "broker_password_file": str(self.broker.password_file),
            "broker_acl_file": str(self.broker.acl_file),
            "broker_pid_file": str(self.broker.pid_file),
        }

    def register(self, client: Any, device_id: str) -> str:
        body = {"device_id": device_id, "name": device_id, "kind": "sensor", "metrics": []}
        answer = client.post("/devices", json=body, headers=AUTH)
        assert answer.status_code == 201, answer.text
        password: str = answer.json()["credentials"]["password"]
        self.passwords[device_id] = password
        return password


class Device:
    """One MQTT connection with a user name and password (v5 unless told otherwise)."""

    def __init__(
        self, port: int, username: str | None, password: str | None, *, v5: bool = True
    ) -> None:
        self.codes: list[int] = []
        self.received: list[str] = []  # topics of the messages delivered to it
        self.disconnected = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            reconnect_on_failure=False,
        )
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.on_connect = lambda _c, _u, _f, reason, _p: self.codes.append(reason.value)
        self.client.on_disconnect = lambda *_: self.disconnected.set()
        self.client.on_message = lambda _c, _u, message: self.received.append(message.topic)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        wait_for(lambda: self.codes or self.disconnected.is_set(), timeout=10)

    @property
    def accepted(self) -> bool:
        return self.codes == [0] and not self.disconnected.is_set()

    def publish(self, topic: str, payload: bytes) -> int:
        """Publish at QoS 1 and wait for the PUBACK; its reason code (0: accepted).

        MQTT 3.1.1 has no reason codes: a refused publish is acknowledged as if accepted.
        """
        codes: list[int] = []
        self.client.on_publish = lambda _c, _u, _mid, reason, _p: codes.append(reason.value)
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(timeout=10)
        wait_for(lambda: codes, timeout=10)
        return codes[0]

    def subscribe(self, topic_filter: str) -> int | None:
        """Subscribe at QoS 1; the SUBACK's code (1: granted QoS 1, >= 0x80: refused), or
        None when the broker closed the connection instead of answering."""
        codes: list[int] = []
        self.client.on_subscribe = lambda _c, _u, _mid, reasons, _p: codes.extend(
            reason.value for reason in reasons
        )
        self.client.subscribe(topic_filter, qos=1)
        wait_for(lambda: codes or self.disconnected.is_set(), timeout=10)
        return codes[0] if codes else None

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def connack_code(port: int, username: str | None, password: str | None) -> int | None:
    """The CONNACK reason a v5 client gets; None when the broker closed the connection."""
    device = Device(port, username, password)
    try:
        return device.codes[0] if device.codes else None
    finally:
        device.close()


def raw_connect(port: int, client_id: bytes, username: bytes, password: bytes) -> bytes:
    """Send an MQTT 3.1.1 CONNECT with raw bytes (no encoding check); what came back.

    b"" means the broker closed the connection without a CONNACK.
    """

    def field_bytes(value: bytes) -> bytes:
        return struct.pack("!H", len(value) & 0xFFFF) + value

    flags = 0x80 | 0x40 | 0x02  # user name, password, clean session
    body = field_bytes(b"MQTT") + bytes([4, flags]) + struct.pack("!H", 30)
    body += field_bytes(client_id) + field_bytes(username) + field_bytes(password)
    length, encoded = len(body), bytearray()
    while True:
        byte, length = length % 128, length // 128
        encoded.append(byte | (0x80 if length else 0))
        if not length:
            break
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(bytes([0x10]) + bytes(encoded) + body)
        try:
            return sock.recv(16)
        except (ConnectionResetError, TimeoutError):
            return b""
