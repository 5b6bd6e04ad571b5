"""Telemetry from the broker: a paho-mqtt client with manual acknowledgement.

QoS 1 messages are acknowledged only when the pipeline says they are stored and published.
Until then the broker keeps them (persistent session, ``clean_start=False``), and redelivers
them after a disconnect or a crash. The broker's in-flight window (MQTT v5 Receive Maximum,
or Mosquitto's ``max_inflight_messages`` for 3.1.1) bounds how many are held here.

A session can also be emptied and ended (ingest/handover.py): :meth:`MqttSource.unsubscribe`
stops new deliveries, :meth:`MqttSource.drained` says when everything the session held was
delivered and acknowledged, and ``close(end_session=True)`` lowers its expiry to 0.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from ingest.mqtt_client import paho_client
from iotp.mqtt_url import BrokerAddress
from iotp.names import TELEMETRY_TOPIC_FILTER, shared_telemetry_subscription

logger = logging.getLogger(__name__)

SESSION_EXPIRY_SECONDS = 7 * 24 * 3600


@dataclass(slots=True)
class InboundMessage:
    topic: str
    payload: bytes
    mid: int
    qos: int
    epoch: int  # which connection delivered it: acks only go back on that connection
    received_at: datetime


@dataclass(frozen=True)
class SourceOptions:
    client_id: str
    protocol: str  # "5" or "3.1.1"
    shared: bool
    share_group: str
    receive_maximum: int
    max_buffered_bytes: int
    keepalive: int
    tls: ssl.SSLContext | None = None  # mqtts://: verified against the configured CA
    subscribe: bool = True  # False: resume the session only to empty it (`--retire`)


class Received:
    """What a source received and the pipeline has not taken, and how a batch is taken from
    it: the part both sources share (this one and ingest/mqtt5_source.py's)."""

    _queue: deque[InboundMessage]
    _cond: threading.Condition
    _closing: bool
    # The receiving side wakes the taker when the queue holds this many messages.
    _wake_at: int
    _buffered: int  # payload bytes in the queue

    def take_locked(
        self,
        max_messages: int,
        max_bytes: int,
        max_delay: float,
        stop: threading.Event,
        gather_from: int,
        linger: float = 0.0,
    ) -> list[InboundMessage]:
        """The next batch, with ``_cond`` held: waits for a first message, then up to
        ``max_delay`` for more if at least ``gather_from`` were already waiting (busy);
        else up to ``linger`` (a few ms: a steady moderate rate then comes in batches of
        some size, not of the one or two messages each read of the socket brings)."""
        batch: list[InboundMessage] = []
        size = 0
        while not self._queue:
            if stop.is_set() or self._closing:
                return batch
            self._cond.wait(0.2)
        busy = len(self._queue) >= gather_from
        deadline = time.monotonic() + (max_delay if busy else linger)
        while len(batch) < max_messages and size < max_bytes:
            if not self._queue:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or stop.is_set():
                    break
                self._wake_at = max_messages - len(batch)
                try:
                    self._cond.wait(remaining)
                finally:
                    self._wake_at = 1
                continue
            message = self._queue.popleft()
            batch.append(message)
            size += len(message.payload)
        self._buffered -= size
        return batch


class MqttSource(Received):
    def __init__(self, broker: BrokerAddress, options: SourceOptions) -> None:
        self.broker = broker
        self.options = options
        self.topic = (
            shared_telemetry_subscription(options.share_group)
            if options.shared
            else TELEMETRY_TOPIC_FILTER
        )
        self.connected = threading.Event()
        self.last_error: str | None = None
        self._v5 = options.protocol == "5"
        self._queue: deque[InboundMessage] = deque()
        # The taker is woken when the queue holds this many messages: the first one, or, while
        # it waits out a batch's delay, a whole batch. Waking it for each message (a thread
        # switch and a GIL hand-over each) made a steady trickle cost a third more CPU.
        self._wake_at = 1
        self._buffered = 0
        self._cond = threading.Condition()
        self._epoch = 0
        self._closing = False
        self._subscribing = options.subscribe
        self._unacked = 0  # QoS 1 messages this connection delivered and ingest has not acked
        self._delivered = 0  # messages delivered on any connection
        self._unsubscribed: set[int] = set()  # packet ids of UNSUBSCRIBEs the broker answered
        self._extra_filters: list[str] = []  # add_subscription's, subscribed at each connect
        self._granted: dict[int, bool] = {}  # packet ids of SUBSCRIBEs the broker answered
        self.session_present: bool | None = None  # at the first connection
        self._said_goodbye = False  # paho wrote our DISCONNECT
        self._client = self._make_client()

    def _make_client(self) -> mqtt.Client:
        client = paho_client(
            self.broker,
            self.options.client_id,
            v5=self._v5,
            persistent=True,
            tls=self.options.tls,
            manual_ack=True,
        )
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.on_unsubscribe = self._on_unsubscribe
        return client

    def start(self) -> None:
        properties = None
        if self._v5:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = SESSION_EXPIRY_SECONDS
            properties.ReceiveMaximum = self.options.receive_maximum
        self._client.connect_async(
            self.broker.host,
            self.broker.port,
            keepalive=self.options.keepalive,
            clean_start=False if self._v5 else mqtt.MQTT_CLEAN_START_FIRST_ONLY,
            properties=properties,
        )
        self._client.loop_start()

    def close(self, end_session: bool = False) -> bool:
        """Disconnect; ``end_session`` (MQTT 5) ends the session too, unless a message is
        still unacknowledged. True when the DISCONNECT that ends it went out."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            ending = end_session and self._v5 and not self._unacked and not self._queue
        properties = None
        if ending:
            # Lowering the expiry at DISCONNECT is allowed (raising it from 0 is not).
            properties = Properties(PacketTypes.DISCONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = 0
        # (paho's return value may say "not connected" when its thread wrote the packet first)
        self._client.disconnect(properties=properties)
        self._client.loop_stop()  # after the acks and the DISCONNECT are written
        return ending and self._said_goodbye

    def unsubscribe(self, timeout: float) -> bool:
        """Have the broker deal this session nothing new (also after a reconnect).

        True once the broker confirmed; it still delivers what the session already holds.
        """
        with self._cond:
            self._subscribing = False
        return self._unsubscribe(time.monotonic() + timeout)

    def drained(self, timeout: float) -> bool:
        """Whether the session holds nothing more: all it delivered is acknowledged, and
        nothing more arrived before the broker answered an UNSUBSCRIBE sent after the acks.

        The broker handles a client's packets in order and, on an acknowledgement, sends what
        it released from the session's queue before it handles the next packet (Mosquitto
        does); so its answer to the UNSUBSCRIBE comes after anything the session still held.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._unacked or self._queue:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            delivered, epoch = self._delivered, self._epoch
        if not self._unsubscribe(deadline):
            return False
        with self._cond:
            return self._delivered == delivered and self._epoch == epoch

    def add_subscription(self, topic_filter: str, timeout: float) -> bool:
        """Also take ``topic_filter`` (in the share group when shared), now and after every
        reconnect. True once the broker granted it on the current connection."""
        if self.options.shared and self._v5:
            topic_filter = f"$share/{self.options.share_group}/{topic_filter}"
        with self._cond:
            if topic_filter not in self._extra_filters:
                self._extra_filters.append(topic_filter)
            if not self.connected.is_set() or not self._subscribing:
                return False  # _on_connect subscribes to it
            _, mid = self._subscribe([topic_filter])
            if mid is None:
                return False
            deadline = time.monotonic() + timeout
            while mid not in self._granted:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return self._granted.pop(mid)

    def _subscribe(self, filters: list[str]) -> tuple[int, int | None]:
        if self._v5:
            options = SubscribeOptions(qos=1)
            return self._client.subscribe([(f, options) for f in filters])
        return self._client.subscribe([(f, 1) for f in filters])

    def _unsubscribe(self, deadline: float) -> bool:
        """Send an UNSUBSCRIBE and wait for the broker's answer until ``deadline``."""
        _, mid = self._client.unsubscribe([self.topic, *self._extra_filters])
        if mid is None:  # not connected: paho reconnects
            self.connected.wait(max(0.0, deadline - time.monotonic()))
            time.sleep(0.1)
            return False
        with self._cond:
            while mid not in self._unsubscribed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            self._unsubscribed.discard(mid)
        return True

    # paho callbacks, on paho's network thread

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if reason.is_failure:
            self.last_error = f"broker refused the connection: {reason}"
            logger.error("MQTT %s refused ingest's connection: %s", self.broker, reason)
            return
        if self.session_present is None:
            self.session_present = bool(flags.session_present)
        with self._cond:
            self._epoch += 1
            self._unacked = 0  # the broker redelivers those on this connection
            subscribing = self._subscribing
            if subscribing:
                self._subscribe([self.topic, *self._extra_filters])
        if not subscribing or flags.session_present:
            # A resumed session already holds its subscription and the broker is delivering
            # its backlog: the pipeline must start now, as the SUBACK comes after that
            # backlog, which may exceed max_buffered_bytes (and _on_message waits for room).
            self.connected.set()
        self.last_error = None
        logger.info(
            "connected to %s as %s (session present: %s)",
            self.broker,
            self.options.client_id,
            flags.session_present,
        )

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, properties: Any
    ) -> None:
        # Only now does the broker route messages to this session: publishers started after
        # this line (tests, benchmarks, `iotp up`) lose nothing.
        failed = [r for r in reasons if r.is_failure]
        with self._cond:
            self._granted[mid] = not failed
            self._cond.notify_all()
        if failed:
            self.last_error = f"broker refused the subscription to {self.topic}: {failed[0]}"
            logger.error(
                "MQTT %s refused the subscription to %s: %s", self.broker, self.topic, failed[0]
            )
            return
        self.connected.set()
        logger.info("subscribed to %s", self.topic)

    def _on_unsubscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, properties: Any
    ) -> None:
        # Any answer will do ("no subscription existed" included): it comes after what the
        # broker sent before it.
        with self._cond:
            self._unsubscribed.add(mid)
            self._cond.notify_all()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        self.connected.clear()
        if self._closing and not flags.is_disconnect_packet_from_server:
            self._said_goodbye = not reason.is_failure
        if not self._closing:
            logger.warning("disconnected from %s (%s); paho reconnects", self.broker, reason)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        received_at = datetime.now(UTC)
        size = len(message.payload)
        with self._cond:
            # Last-resort memory bound (huge payloads); normally the in-flight window is.
            while self._buffered > self.options.max_buffered_bytes and not self._closing:
                self._cond.wait(0.5)
            self._queue.append(
                InboundMessage(
                    message.topic,
                    bytes(message.payload),
                    message.mid,
                    message.qos,
                    self._epoch,
                    received_at,
                )
            )
            self._buffered += size
            self._delivered += 1
            if message.qos > 0:
                self._unacked += 1
            if (
                len(self._queue) >= self._wake_at
                or self._buffered > self.options.max_buffered_bytes
            ):
                self._cond.notify_all()

    # the pipeline's side

    def take(
        self,
        max_messages: int,
        max_bytes: int,
        max_delay: float,
        stop: threading.Event,
        gather_from: int = 1,
        linger: float = 0.0,
    ) -> list[InboundMessage]:
        """The next batch (:meth:`Received.take_locked`)."""
        with self._cond:
            batch = self.take_locked(max_messages, max_bytes, max_delay, stop, gather_from, linger)
            self._cond.notify_all()
        return batch

    def ack(self, messages: list[InboundMessage]) -> None:
        """Acknowledge, in order, what the current connection delivered.

        A message from an earlier connection is not acknowledged: the broker redelivers it
        on the new one (where it is found already stored), and its old packet id may now
        belong to another message.
        """
        with self._cond:
            for message in messages:
                if message.qos > 0 and message.epoch == self._epoch:
                    self._client.ack(message.mid, message.qos)
                    self._unacked -= 1
            self._cond.notify_all()

    @property
    def delivered(self) -> int:
        """How many messages the broker delivered, on any connection."""
        return self._delivered

    def pending(self) -> int:
        with self._cond:
            return len(self._queue)
