"""Telemetry from an MQTT 5 broker on asyncio: :class:`Mqtt5Source`, in place of paho's.

The guarantee is MqttSource's (ingest/mqtt_source.py), and so is the interface: QoS 1
messages are acknowledged only when the pipeline says they are stored and published, and
only on the connection that delivered them; until then the broker keeps them (persistent
session, clean start false) and redelivers them after a disconnect or a crash. Our Receive
Maximum bounds how many are held here, and ``max_buffered_bytes`` their bytes: reading
pauses past either (the count too, against a broker that overshoots the Receive Maximum, as
Mosquitto 2.0.11 does once acknowledgements flow). The hand-back (ingest/handover.py) works
as with paho: UNSUBSCRIBE, drain, then DISCONNECT with session expiry 0.

The session (ingest/mqtt5_session.py) runs on an asyncio loop in one background thread;
the pipeline's threads take and acknowledge as before. A connection that fails, or that a
broker breaks, is replaced through iotp.retry's back-off.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine
from datetime import datetime
from typing import Any

import mqtt5

from ingest.mqtt5_session import (
    ConnectOptions,
    ConnectRefused,
    Mqtt5Session,
    keep_connected,
    pubacks,
    run_loop,
)
from ingest.mqtt_source import SESSION_EXPIRY_SECONDS, InboundMessage, Received, SourceOptions
from iotp.mqtt_url import BrokerAddress
from iotp.names import TELEMETRY_TOPIC_FILTER, shared_telemetry_subscription

logger = logging.getLogger(__name__)

CLOSE_SECONDS = 10.0
MQTT_MAX_PACKET_BYTES = 268_435_460  # the largest a remaining length can announce, plus 5
# The largest packet we take (announced at CONNECT; past it the broker drops a message for
# us instead of sending it). A payload over IOTP_INGEST_MAX_PAYLOAD_BYTES but under this is
# still read, to be dead-lettered with its reason. Independent of max_buffered_bytes, which
# bounds how far ahead reading goes, not how large one message may be.
MAX_PACKET_BYTES = 64 * 1024 * 1024


class Mqtt5Source(Received):
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
        self.session_present: bool | None = None  # at the first connection
        self._queue: deque[InboundMessage] = deque()
        # The taker is woken when the queue holds this many messages: the first one, or, while
        # it waits out a batch's delay, a whole batch (one thread switch per batch, not per
        # message).
        self._wake_at = 1
        self._buffered = 0
        self._cond = threading.Condition()
        self._epoch = 0
        self._closing = False
        self._subscribing = options.subscribe
        self._unacked = 0  # QoS 1 messages this connection delivered and ingest has not acked
        self._delivered = 0  # messages delivered on any connection
        self._extra_filters: list[str] = []
        self._paused = False  # reading stopped: more held than _has_room allows
        self._said_goodbye = False  # our DISCONNECT went out and the connection closed
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None
        # on the loop's thread only
        self._session: Mqtt5Session | None = None
        self._session_epoch = 0  # the epoch of self._session once accepted, else 0
        self._suback: tuple[list[str], asyncio.Future[list[int] | None]] | None = None

    def start(self) -> None:
        """Connect (and reconnect) in a background thread; ``connected`` says when subscribed."""
        self._loop = asyncio.new_event_loop()
        self._stop = asyncio.Event()
        self._thread = threading.Thread(target=self._run, name="iotp-ingest-mqtt5", daemon=True)
        self._thread.start()

    def close(self, end_session: bool = False) -> bool:
        """Disconnect; ``end_session`` ends the session too, unless a message is still
        unacknowledged. True when the DISCONNECT that ends it went out."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            ending = end_session and not self._unacked and not self._queue
        if self._thread is None:
            return False
        self._call(self._shutdown, ending)  # after the acks already asked for
        self._thread.join(CLOSE_SECONDS)
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
        if self.options.shared:
            topic_filter = f"$share/{self.options.share_group}/{topic_filter}"
        with self._cond:
            if topic_filter not in self._extra_filters:
                self._extra_filters.append(topic_filter)
        return bool(self._on_loop(self._subscribe_now(topic_filter), time.monotonic() + timeout))

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
        """The next batch (:meth:`Received.take_locked`); reading resumes once what is
        held is back within bounds (:meth:`_has_room`)."""
        with self._cond:
            batch = self.take_locked(max_messages, max_bytes, max_delay, stop, gather_from, linger)
            resume = self._paused and self._has_room()
            self._cond.notify_all()
        if resume:
            self._call(self._resume_reading)
        return batch

    def ack(self, messages: list[InboundMessage]) -> None:
        """Acknowledge, in order, what the current connection delivered.

        A message from an earlier connection is not acknowledged: the broker redelivers it
        on the new one (where it is found already stored), and its old packet id may now
        belong to another message.
        """
        with self._cond:
            epoch = self._epoch
            ids = [m.mid for m in messages if m.qos and m.epoch == epoch]
            self._unacked -= len(ids)
            resume = self._paused and self._has_room()
            self._cond.notify_all()
        if ids:
            self._call(self._write_acks, epoch, pubacks(ids), len(ids))
        if resume:  # after the PUBACKs: the broker sends more only once it has them
            self._call(self._resume_reading)

    @property
    def delivered(self) -> int:
        """How many messages the broker delivered, on any connection."""
        return self._delivered

    def pending(self) -> int:
        with self._cond:
            return len(self._queue)

    # between the threads

    def _call(self, callback: Callable[..., None], *args: Any) -> None:
        """Run ``callback(*args)`` on the loop's thread, in the order asked; not once closed."""
        loop = self._loop
        if loop is None:
            return
        # (once the loop closed, the connection and its packet ids are gone)
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(callback, *args)

    def _on_loop(self, coroutine: Coroutine[Any, Any, bool | None], deadline: float) -> bool | None:
        """Run ``coroutine`` on the loop's thread and wait for it until ``deadline``; None
        when it did not finish in time (or the loop is gone)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            coroutine.close()
            return None
        try:
            future = asyncio.run_coroutine_threadsafe(coroutine, loop)
        except RuntimeError:
            coroutine.close()
            return None
        try:
            result: bool | None = future.result(max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            future.cancel()
            return None
        return result

    def _unsubscribe(self, deadline: float) -> bool:
        """Send an UNSUBSCRIBE and wait for the broker's answer until ``deadline``."""
        answered = self._on_loop(self._unsubscribe_now(), deadline)
        if answered is None:  # not connected: the loop reconnects
            self.connected.wait(max(0.0, deadline - time.monotonic()))
            time.sleep(0.1)
        return bool(answered)

    # on the loop's thread

    def _run(self) -> None:
        assert self._loop is not None
        try:
            run_loop(self._loop, self._serve())
        except Exception as exc:
            self.last_error = f"the MQTT session failed: {exc}"
            logger.exception("the MQTT session to %s failed", self.broker)
        finally:
            self.connected.clear()

    async def _serve(self) -> None:
        assert self._stop is not None
        why = await keep_connected(
            self._new_session,
            self.broker,
            self.options.tls,
            self._stop,
            task="ingest MQTT",
            on_accepted=self._after_connack,
            on_ended=self._ended,
            on_retry=self._failed,
        )
        self._said_goodbye = why is None

    def _new_session(self) -> Mqtt5Session:
        self._session = Mqtt5Session(self._connect_options(), self._accepted, self._received)
        return self._session

    async def _after_connack(self, session: Mqtt5Session) -> None:
        if self._suback is not None:
            await self._subscribed(*self._suback)

    def _ended(self) -> None:
        self._session, self._session_epoch, self._suback = None, 0, None
        self.connected.clear()

    def _connect_options(self) -> ConnectOptions:
        return ConnectOptions(
            client_id=self.options.client_id,
            keepalive=self.options.keepalive,
            receive_maximum=self.options.receive_maximum,
            max_packet_bytes=min(
                max(self.options.max_buffered_bytes, MAX_PACKET_BYTES), MQTT_MAX_PACKET_BYTES
            ),
            session_expiry=SESSION_EXPIRY_SECONDS,
            clean_start=False,
            username=self.broker.username,
            password=self.broker.password,
        )

    def _accepted(self, connack: mqtt5.ConnAckPacket) -> None:
        """The broker accepted the connection: a new epoch, before any of its messages."""
        session = self._session
        assert session is not None
        with self._cond:
            self._epoch += 1
            self._session_epoch = self._epoch
            self._unacked = 0  # the broker redelivers those on this connection
            subscribing = self._subscribing
            filters = [self.topic, *self._extra_filters]
            self._paused = not self._has_room()
        if self._paused:
            session.pause_reading()
        if self.session_present is None:
            self.session_present = connack.session_present
        self.last_error = None
        logger.info(
            "connected to %s as %s (session present: %s)",
            self.broker,
            self.options.client_id,
            connack.session_present,
        )
        if subscribing:
            self._suback = filters, session.subscribe(filters)
        if not subscribing or connack.session_present:
            # A resumed session already holds its subscription, and the broker is delivering
            # its backlog: the pipeline must start now. The SUBACK comes after that backlog,
            # which may be more than max_buffered_bytes, and reading pauses until it is taken.
            self.connected.set()

    async def _subscribed(
        self, filters: list[str], suback: asyncio.Future[list[int] | None]
    ) -> None:
        codes = await suback
        if codes is None:  # the connection ended first
            return
        granted = [self._granted(f, code) for f, code in zip(filters, codes, strict=False)]
        # Only now does the broker route messages to this session: publishers started after
        # the log line (tests, benchmarks, `iotp up`) lose nothing.
        if granted and granted[0]:
            self.connected.set()
            logger.info("subscribed to %s", self.topic)

    def _granted(self, topic_filter: str, code: int) -> bool:
        if code >= 0x80:
            reason = f"0x{code:02X}"
            self.last_error = f"broker refused the subscription to {topic_filter}: {reason}"
            logger.error(
                "MQTT %s refused the subscription to %s: %s", self.broker, topic_filter, reason
            )
            return False
        if code == 0:
            logger.warning(
                "%s granted only QoS 0 on %s: messages may be lost", self.broker, topic_filter
            )
        return True

    async def _subscribe_now(self, topic_filter: str) -> bool:
        session = self._session
        if session is None or not self._session_epoch or not self._subscribing:
            return False
        codes = await session.subscribe([topic_filter])
        return codes is not None and self._granted(topic_filter, codes[0])

    async def _unsubscribe_now(self) -> bool | None:
        session = self._session
        if session is None or not self._session_epoch:
            return None
        # Any answer will do ("no subscription existed" included): it comes after what the
        # broker sent before it.
        codes = await session.unsubscribe([self.topic, *self._extra_filters])
        return None if codes is None else True

    def _received(self, packets: list[mqtt5.PublishPacket], received_at: datetime) -> None:
        epoch = self._session_epoch
        # A packet id says QoS 1: the session refuses QoS 2 and QoS 1 without one. (mqtt5's
        # QoS values neither compare with ints nor are falsy at 0.)
        messages: list[InboundMessage] = []
        append = messages.append
        size = qos1 = 0
        for packet in packets:
            packet_id, payload = packet.packet_id, packet.payload
            size += len(payload)
            if packet_id:
                qos1 += 1
                append(InboundMessage(packet.topic, payload, packet_id, 1, epoch, received_at))
            else:
                append(InboundMessage(packet.topic, payload, 0, 0, epoch, received_at))
        with self._cond:
            self._queue.extend(messages)
            self._buffered += size
            self._delivered += len(messages)
            self._unacked += qos1
            room = self._has_room()
            if len(self._queue) >= self._wake_at or not room:
                self._cond.notify_all()
            pause = not room and not self._paused
            self._paused = self._paused or pause
        if pause and self._session is not None:
            self._session.pause_reading()

    def _has_room(self) -> bool:
        """Whether reading may go on (under the lock): what is held is within our Receive
        Maximum and ``max_buffered_bytes``.

        The Receive Maximum is the broker's to keep, but Mosquitto 2.0 sends past it once
        PUBACKs flow (Mqtt5Session warns), and a backlog of small messages then came in
        whole: ingest held 150,000 of them, 118 MB, in a drain of 300,000 (the byte bound
        counts payloads, and a message costs several times its payload). So reading stops
        too while more than the Receive Maximum wait for our PUBACKs, and the broker's
        writes wait in TCP until the pipeline has stored and acknowledged some.
        """
        return (
            self._buffered <= self.options.max_buffered_bytes
            and self._unacked <= self.options.receive_maximum
        )

    def _resume_reading(self) -> None:
        with self._cond:
            resume = self._paused and self._has_room()
            if resume:
                self._paused = False
        if resume and self._session is not None:
            self._session.resume_reading()

    def _write_acks(self, epoch: int, packets: bytes, count: int) -> None:
        if self._session is not None and self._session_epoch == epoch:
            self._session.write_pubacks(packets, count)

    async def _failed(self, error: BaseException) -> None:
        self.last_error = str(error)
        if isinstance(error, ConnectRefused):
            logger.error("MQTT %s refused ingest's connection: %s", self.broker, error)

    def _shutdown(self, ending: bool) -> None:
        assert self._stop is not None
        self._stop.set()
        session = self._session
        if session is None:
            return
        if self._session_epoch:
            # Lowering the expiry at DISCONNECT is allowed (raising it from 0 is not).
            session.disconnect(session_expiry=0 if ending else None)
        else:
            session.abort()
