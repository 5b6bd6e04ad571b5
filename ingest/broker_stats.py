"""The broker's own counters (Mosquitto's ``$SYS/broker/#``): Prometheus gauges and /pipeline.

A broker drops QoS 1 messages it cannot queue for a subscriber (``max_queued_messages``,
``max_queued_bytes``) and says so only in ``$SYS/broker/publish/messages/dropped``. This
reads those topics on a connection of its own (same account and TLS as ingest, a clean
session that keeps nothing at the broker, QoS 0), exports them as gauges and writes them,
with the time the drop count last grew, to the Redis hash BROKER_STATS_KEY once a second.
Counts only: nothing here touches telemetry, and a failure is logged, never fatal to ingest.

With MQTT 5 the connection is a second one of ingest's asyncio session (ingest/mqtt5_session.py:
its framing checks, keepalive and iotp.retry back-off), on a loop in a thread of its own; with
3.1.1 (NATS, older brokers), which that session does not speak, it is a paho client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import mqtt5
import paho.mqtt.client as mqtt
import redis
from prometheus_client import CollectorRegistry, Gauge

from ingest.mqtt5_session import (
    ConnectOptions,
    ConnectRefused,
    Mqtt5Session,
    keep_connected,
    pubacks,
    reason_name,
    run_loop,
)
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
CLOSE_SECONDS = 10.0
# $SYS values are a few bytes: a packet larger than this is the broker misbehaving (MQTT 5
# forbids it to send one over what we announce), and ends that connection.
SYS_MAX_PACKET_BYTES = 65_536

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


class SysReader(Protocol):
    """A connection that subscribes to BROKER_SYS_TOPICS and tells BrokerStats what comes."""

    def start(self) -> None: ...

    def close(self) -> None: ...


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
        self._reader: SysReader = (
            Mqtt5SysReader(broker, options, self)
            if options.protocol == "5"
            else PahoSysReader(broker, options, self)
        )

    def start(self) -> None:
        """Connect in the background (reconnecting) and write the counters once a second."""
        self._reader.start()
        self._writer.start()

    def close(self) -> None:
        self._stop.set()
        self._reader.close()
        if self._writer.is_alive():
            self._writer.join(timeout=5)

    # what the reader reports

    def subscribed(self) -> None:
        self._subscribed_at = time.monotonic()

    def unavailable(self, why: str) -> None:
        user = self.broker.username or "anonymous"
        error = f"{user} cannot read {BROKER_SYS_TOPICS}: {why}; broker drops are not visible"
        logger.warning("broker counters from %s unavailable: %s", self.broker, error)
        with self._lock:
            self.values["error"] = error
            self._changed = True

    def received(self, topic: str, raw: bytes | bytearray) -> None:
        self._subscribed_at = None
        payload = raw.decode("utf-8", "replace")
        if topic == VERSION_TOPIC:
            self._set("version", payload)
            return
        known = SYS_FIELDS.get(topic)
        if known is None:
            return
        try:
            value = int(float(payload.split()[0]))  # "123" or, for the uptime, "123 seconds"
        except (ValueError, IndexError, OverflowError):
            logger.warning("unexpected value %r of %s", payload, topic)
            return
        self._gauges[topic].set(value)
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
                self.unavailable(
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


class Mqtt5SysReader:
    """$SYS on a second connection of ingest's MQTT 5 session: clean start, no session
    expiry, QoS 0; reconnects through iotp.retry's back-off, as the source does."""

    def __init__(self, broker: BrokerAddress, options: BrokerStatsOptions, stats: BrokerStats):
        self.broker = broker
        self.options = options
        self.stats = stats
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None
        # on the loop's thread only
        self._serving: asyncio.Task[None] | None = None
        self._session: Mqtt5Session | None = None
        self._accepted = False

    def start(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._stop = asyncio.Event()
        self._thread = threading.Thread(
            target=self._run, name="iotp-broker-stats-mqtt5", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        if self._loop is None or self._thread is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop already ended
            self._loop.call_soon_threadsafe(self._shutdown)
        self._thread.join(CLOSE_SECONDS)

    def _run(self) -> None:
        assert self._loop is not None
        try:
            run_loop(self._loop, self._serve())
        except Exception:
            # a bug here must not take ingest down: the counters stop, and say so
            logger.exception("the broker counters' MQTT connection to %s failed", self.broker)
            self.stats.unavailable("the connection reading them failed")

    async def _serve(self) -> None:
        assert self._stop is not None
        self._serving = asyncio.current_task()
        with contextlib.suppress(asyncio.CancelledError):  # closed while connecting
            await keep_connected(
                self._new_session,
                self.broker,
                self.options.tls,
                self._stop,
                task="broker counters MQTT",
                on_accepted=self._subscribe,
                on_ended=self._ended,
                on_retry=self._failed,
            )

    def _new_session(self) -> Mqtt5Session:
        options = ConnectOptions(
            client_id=self.options.client_id,
            keepalive=self.options.keepalive,
            receive_maximum=1,  # QoS 0 only: nothing is ever in flight
            max_packet_bytes=SYS_MAX_PACKET_BYTES,
            session_expiry=0,
            clean_start=True,
            username=self.broker.username,
            password=self.broker.password,
        )
        self._session = Mqtt5Session(options, self._connack, self._received)
        return self._session

    def _connack(self, connack: mqtt5.ConnAckPacket) -> None:
        self._accepted = True

    async def _subscribe(self, session: Mqtt5Session) -> None:
        codes = await session.subscribe([BROKER_SYS_TOPICS], max_qos=mqtt5.QoS.AT_MOST_ONCE)
        if not codes:  # the connection ended first: the next one subscribes again
            return
        if codes[0] >= 0x80:
            reason = reason_name(codes[0], mqtt5.SubAckReasonCode)
            self.stats.unavailable(f"the broker refused the subscription ({reason})")
        else:
            self.stats.subscribed()

    def _received(self, packets: list[mqtt5.PublishPacket], received_at: datetime) -> None:
        # A broker that sends QoS 1 anyway gets its PUBACKs at once: a count is not worth
        # holding its queue for.
        ids = [p.packet_id for p in packets if p.packet_id]
        if ids and self._session is not None:
            self._session.write_pubacks(pubacks(ids), len(ids))
        for packet in packets:
            self.stats.received(packet.topic, packet.payload)

    def _ended(self) -> None:
        self._session, self._accepted = None, False

    async def _failed(self, error: BaseException) -> None:
        if isinstance(error, ConnectRefused):
            self.stats.unavailable(str(error))

    def _shutdown(self) -> None:
        assert self._stop is not None
        self._stop.set()
        if self._session is not None and self._accepted:
            self._session.disconnect()
        elif self._serving is not None:
            self._serving.cancel()


class PahoSysReader:
    """$SYS with MQTT 3.1.1 on a paho client of its own (clean session; paho reconnects)."""

    def __init__(self, broker: BrokerAddress, options: BrokerStatsOptions, stats: BrokerStats):
        self.broker = broker
        self.options = options
        self.stats = stats
        self._mqtt = paho_client(
            broker, options.client_id, v5=False, persistent=False, tls=options.tls
        )
        self._mqtt.on_connect = self._on_connect
        self._mqtt.on_subscribe = self._on_subscribe
        self._mqtt.on_message = self._on_message

    def start(self) -> None:
        self._mqtt.connect_async(
            self.broker.host, self.broker.port, keepalive=self.options.keepalive
        )
        self._mqtt.loop_start()

    def close(self) -> None:
        self._mqtt.disconnect()
        self._mqtt.loop_stop()

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if reason.is_failure:
            self.stats.unavailable(f"the broker refused the connection: {reason}")
            return
        client.subscribe(BROKER_SYS_TOPICS, qos=0)

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, properties: Any
    ) -> None:
        failed = [r for r in reasons if r.is_failure]
        if failed:
            self.stats.unavailable(f"the broker refused the subscription ({failed[0]})")
        else:
            self.stats.subscribed()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self.stats.received(message.topic, message.payload)
