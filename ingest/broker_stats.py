"""The broker's own counters (Mosquitto's ``$SYS/broker/#``): Prometheus gauges and /pipeline.

A broker drops QoS 1 messages it cannot queue for a subscriber (``max_queued_messages``,
``max_queued_bytes``) and says so only in ``$SYS/broker/publish/messages/dropped``. This
reads those topics on a connection of its own (same account and TLS as ingest, a clean
session that keeps nothing at the broker), exports them as gauges and writes them, with the
time the drop count last grew, to the Redis hash BROKER_STATS_KEY once a second. Counts
only: nothing here touches telemetry, and a failure is logged, never fatal to ingest.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
import redis
from prometheus_client import CollectorRegistry, Gauge

from ingest.mqtt_client import paho_client
from iotp.mqtt_url import BrokerAddress, parse_mqtt_url, tls_context
from iotp.names import BROKER_STATS_KEY, BROKER_SYS_TOPICS
from iotp.settings import Settings

logger = logging.getLogger(__name__)

WRITE_SECONDS = 1.0
# Mosquitto sends the retained $SYS values on subscribing; none in this long means the
# broker will not give them to this account (an ACL grants the subscription but not reads).
SILENCE_SECONDS = 30.0
# Mosquitto publishes $SYS every sys_interval (10 s by default): a hash older than this
# many seconds went stale (no ingest reads the broker), and Redis forgets it.
STATS_TTL_SECONDS = 300

# Each $SYS topic kept, the field it becomes, and what it counts.
SYS_FIELDS = {
    "$SYS/broker/publish/messages/dropped": (
        "messages_dropped",
        "PUBLISH messages the broker dropped (a subscriber's queue was full) since it started",
    ),
    "$SYS/broker/store/messages/count": (
        "stored_messages",
        "Messages the broker holds (queued for sessions, retained, in flight)",
    ),
    "$SYS/broker/store/messages/bytes": ("stored_bytes", "Payload bytes of the stored messages"),
    "$SYS/broker/clients/connected": ("clients_connected", "Clients connected"),
    "$SYS/broker/clients/disconnected": (
        "clients_disconnected",
        "Persistent sessions whose client is not connected",
    ),
    "$SYS/broker/messages/received": ("messages_received", "Messages received since start"),
    "$SYS/broker/messages/sent": ("messages_sent", "Messages sent since start"),
    "$SYS/broker/subscriptions/count": ("subscriptions", "Subscriptions"),
    "$SYS/broker/uptime": ("uptime_seconds", "Seconds since the broker started"),
}
VERSION_TOPIC = "$SYS/broker/version"


@dataclass(frozen=True)
class BrokerStatsOptions:
    client_id: str
    protocol: str  # "5" or "3.1.1"
    keepalive: int
    tls: ssl.SSLContext | None = None


def broker_stats_from(
    settings: Settings, client: redis.Redis, registry: CollectorRegistry | None = None
) -> BrokerStats:
    """Broker counters read with ingest's broker account (IOTP_MQTT_URL) and TLS settings."""
    broker = parse_mqtt_url(settings.mqtt_url)
    options = BrokerStatsOptions(
        client_id=f"{settings.ingest_client_id()}-stats",
        protocol=settings.mqtt_protocol,
        keepalive=settings.mqtt_keepalive_seconds,
        tls=tls_context(broker, settings),
    )
    return BrokerStats(broker, options, client, registry)


class BrokerStats:
    def __init__(
        self,
        broker: BrokerAddress,
        options: BrokerStatsOptions,
        client: redis.Redis,
        registry: CollectorRegistry | None = None,
        silence_seconds: float = SILENCE_SECONDS,
    ) -> None:
        self.broker = broker
        self.options = options
        self.redis = client
        self.silence_seconds = silence_seconds
        self.values: dict[str, str] = {}
        self._subscribed_at: float | None = None  # and no $SYS message since
        self._gauges = {
            topic: Gauge(f"iotp_broker_{field}", help_text, registry=registry)
            for topic, (field, help_text) in SYS_FIELDS.items()
        }
        self._lock = threading.Lock()
        self._changed = False
        self._stop = threading.Event()
        self._writer = threading.Thread(
            target=self._write_loop, name="iotp-broker-stats", daemon=True
        )
        self._mqtt = self._make_client()

    def _make_client(self) -> mqtt.Client:
        v5 = self.options.protocol == "5"
        client = paho_client(
            self.broker, self.options.client_id, v5=v5, persistent=False, tls=self.options.tls
        )
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        return client

    def start(self) -> None:
        """Connect in the background (paho reconnects) and write the counters once a second."""
        self._mqtt.connect_async(
            self.broker.host, self.broker.port, keepalive=self.options.keepalive
        )
        self._mqtt.loop_start()
        self._writer.start()

    def close(self) -> None:
        self._stop.set()
        self._mqtt.disconnect()
        self._mqtt.loop_stop()
        if self._writer.is_alive():
            self._writer.join(timeout=5)

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if reason.is_failure:
            self._note_error(f"the broker refused the connection: {reason}")
            return
        client.subscribe(BROKER_SYS_TOPICS, qos=0)

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, properties: Any
    ) -> None:
        failed = [r for r in reasons if r.is_failure]
        if failed:
            self._note_error(f"the broker refused the subscription ({failed[0]})")
        else:
            self._subscribed_at = time.monotonic()

    def _note_error(self, why: str) -> None:
        user = self.broker.username or "anonymous"
        error = f"{user} cannot read {BROKER_SYS_TOPICS}: {why}; broker drops are not visible"
        logger.warning("broker counters from %s unavailable: %s", self.broker, error)
        with self._lock:
            self.values["error"] = error
            self._changed = True

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self._subscribed_at = None
        payload = message.payload.decode("utf-8", "replace")
        if message.topic == VERSION_TOPIC:
            self._set("version", payload)
            return
        known = SYS_FIELDS.get(message.topic)
        if known is None:
            return
        try:
            value = int(float(payload.split()[0]))  # "123" or, for the uptime, "123 seconds"
        except (ValueError, IndexError):
            logger.warning("unexpected value %r of %s", payload, message.topic)
            return
        self._gauges[message.topic].set(value)
        field = known[0]
        if field == "messages_dropped":
            self._dropped(value)
        self._set(field, str(value))

    def _dropped(self, value: int) -> None:
        before = self.values.get("messages_dropped")
        if before is not None and value > int(before):
            logger.warning(
                "the broker dropped %s more messages (%s since it started): a subscriber's"
                " queue was full (max_queued_messages / max_queued_bytes)",
                value - int(before),
                value,
            )
            self._set("dropped_grew_at", f"{time.time():.3f}")

    def _set(self, field: str, value: str) -> None:
        with self._lock:
            if self.values.get(field) != value or self.values.get("error"):
                self.values[field] = value
                self.values["error"] = ""  # the broker answers: no error to show any more
                self._changed = True

    def _write_loop(self) -> None:
        while not self._stop.wait(WRITE_SECONDS):
            since = self._subscribed_at
            if since is not None and time.monotonic() - since > self.silence_seconds:
                self._subscribed_at = None
                self._note_error(
                    f"no $SYS message within {self.silence_seconds:.0f}s of subscribing"
                    " (an ACL without read on it, or sys_interval 0)"
                )
            with self._lock:
                if not self._changed:
                    continue
                snapshot = {**self.values, "updated_at": f"{time.time():.3f}"}
                self._changed = False
            try:
                pipe: Any = self.redis.pipeline(transaction=False)
                pipe.hset(BROKER_STATS_KEY, mapping=snapshot)
                pipe.expire(BROKER_STATS_KEY, STATS_TTL_SECONDS)
                pipe.execute()
            except redis.RedisError as exc:
                logger.warning("broker counters not written to Redis: %s", exc)
                with self._lock:
                    self._changed = True
