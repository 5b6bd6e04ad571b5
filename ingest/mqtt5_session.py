"""One MQTT 5 subscriber connection on asyncio, framed here and decoded by the ``mqtt5`` codec.

What it guarantees: a PUBACK leaves only when the owner asks (``write_pubacks``, after its
commit), never on receipt. A packet it cannot trust ends the connection with a DISCONNECT
naming the reason: a remaining length over 4 bytes or one the codec cannot decode (0x81),
an unknown or unexpected type, QoS 1 with packet id 0 (0x82), a topic alias (0x94), a packet
over the maximum size (0x95, refused from its fixed header, before it is buffered). The
broker then redelivers, on the next connection, whatever was not acknowledged. A broker
silent for 1.5 x keepalive is taken for dead.

``mqtt5`` 0.8 decodes one packet per ``read()``, cannot tell a header announcing 268 MB from
an incomplete packet, accepts QoS 1 with packet id 0 and has no session layer: hence the
framing, the checks and the keepalive here.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import ssl
import struct
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import mqtt5

from iotp.mqtt_url import BrokerAddress
from iotp.retry import MAX_DELAY_SECONDS, AsyncOnRetry, Stopped, retry_transient_async

logger = logging.getLogger(__name__)

# DISCONNECT reason codes this side sends (MQTT 5, 3.14.2.1)
MALFORMED_PACKET = 0x81
PROTOCOL_ERROR = 0x82
TOPIC_ALIAS_INVALID = 0x94
PACKET_TOO_LARGE = 0x95

# The first byte of each packet a server may send a subscriber at QoS <= 1: CONNACK, PUBLISH
# QoS 0 (DUP clear) or 1 (retain either way), SUBACK, UNSUBACK, PINGRESP, DISCONNECT. The
# rest (CONNECT, PUBACK for a PUBLISH we never sent, QoS 2, AUTH we never asked for,
# reserved types, wrong flags) are protocol errors.
FROM_SERVER = frozenset({0x20, 0x30, 0x31, 0x32, 0x33, 0x3A, 0x3B, 0x90, 0xB0, 0xD0, 0xE0})
CONNACK, PUBLISH, PINGRESP = 2, 3, 13

DEAD_AFTER_KEEPALIVES = 1.5
CONNECT_TIMEOUT_SECONDS = 10.0
# A connection that lived longer than the longest back-off was a good one: when it drops,
# reconnecting starts the back-off afresh instead of continuing from its last wait.
STABLE_SECONDS = MAX_DELAY_SECONDS
_PUBACK = struct.Struct(">BBH")  # PUBACK, remaining length 2, packet id (reason 0 omitted)


class SessionClosed(ConnectionError):
    """The connection ended (or never opened): why, for a log line. Transient: reconnect."""


class ConnectRefused(SessionClosed):
    """The broker answered CONNECT with a refusal (its reason code is in the message)."""


class _Violation(Exception):
    def __init__(self, reason_code: int, why: str) -> None:
        super().__init__(why)
        self.reason_code = reason_code


@dataclass(frozen=True)
class ConnectOptions:
    client_id: str
    keepalive: int  # seconds; the broker's Server Keep Alive overrides it
    receive_maximum: int  # QoS 1 messages the broker may have in flight to us
    max_packet_bytes: int  # announced at CONNECT and enforced on every packet
    session_expiry: int = 0
    clean_start: bool = False
    username: str | None = None
    password: str | None = None


OnPublish = Callable[[list[mqtt5.PublishPacket], datetime], None]
OnConnack = Callable[[mqtt5.ConnAckPacket], None]


def pubacks(packet_ids: Iterable[int]) -> bytes:
    """PUBACKs (success) for ``packet_ids``, as one buffer for one write."""
    return b"".join([_PUBACK.pack(0x40, 2, packet_id) for packet_id in packet_ids])


def packet_size(chunk: bytes | bytearray, offset: int) -> int:
    """The size of the packet at ``offset`` from its fixed header; 0 while incomplete.

    The remaining length takes 1 to 4 bytes of 7 bits, least significant first.
    """
    length, shift, end = 0, 0, len(chunk)
    for pos in range(offset + 1, min(offset + 5, end)):
        byte = chunk[pos]
        length |= (byte & 0x7F) << shift
        if byte < 0x80:
            return pos + 1 - offset + length
        shift += 7
    if end - offset > 4:
        raise _Violation(MALFORMED_PACKET, "remaining length over 4 bytes")
    return 0


def reason_name(code: int, names: type[enum.IntEnum]) -> str:
    """``0x86 bad user name or password``, for a log line."""
    try:
        return f"0x{code:02X} {names(code).name.lower().replace('_', ' ')}"
    except ValueError:
        return f"0x{code:02X}"


class Mqtt5Session(asyncio.Protocol):
    """A subscriber connection: CONNECT, keepalive, (UN)SUBSCRIBE, PUBLISH in, PUBACK out.

    ``on_connack`` is told of an accepting CONNACK before any packet after it is handled;
    ``on_publish`` gets each socket read's PUBLISH packets together, with the time they
    came; ``closed`` resolves with why the connection ended (None: our own DISCONNECT went
    out and the connection closed cleanly).
    """

    def __init__(
        self, options: ConnectOptions, on_connack: OnConnack, on_publish: OnPublish
    ) -> None:
        loop = asyncio.get_running_loop()
        self.options = options
        self._on_connack = on_connack
        self._on_publish = on_publish
        self.connack: asyncio.Future[mqtt5.ConnAckPacket] = loop.create_future()
        self.closed: asyncio.Future[str | None] = loop.create_future()
        self.pingresps = 0
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._why: str | None = None  # the first reason the connection is ending
        self._goodbye = False  # our DISCONNECT went out
        self._keepalive = 0.0
        self._last_sent = self._last_received = self._last_ping = time.monotonic()
        self._timer: asyncio.TimerHandle | None = None
        self._paused = False
        self._inflight = 0  # QoS 1 PUBLISHes received on this connection and not PUBACKed
        self._overshot = False  # the broker exceeded our Receive Maximum (said once)
        self._server_max_packet: int | None = None
        self._next_id = 0
        self._answers: dict[int, asyncio.Future[list[int] | None]] = {}

    async def connect(
        self, host: str, port: int, tls: ssl.SSLContext | None
    ) -> mqtt5.ConnAckPacket:
        """Open the connection and send CONNECT: the CONNACK, or :class:`SessionClosed`.

        The caller bounds the wait (``asyncio.timeout``); a cancelled connect is dropped.
        """
        try:
            await self._loop.create_connection(
                lambda: self, host, port, ssl=tls, server_hostname=host if tls else None
            )
            connack = await self.connack
        except BaseException:
            self.abort()
            raise
        code = int(connack.reason_code)
        if code >= 0x80:
            why = f"the broker refused the connection: {reason_name(code, mqtt5.ConnAckReasonCode)}"
            if connack.reason_str:
                why += f" ({connack.reason_str})"
            self._why = why
            self.abort()
            raise ConnectRefused(why)
        return connack

    # what the owner asks for

    def subscribe(
        self, filters: list[str], max_qos: mqtt5.QoS = mqtt5.QoS.AT_LEAST_ONCE
    ) -> asyncio.Future[list[int] | None]:
        """SUBSCRIBE to ``filters`` (QoS 1 unless said): a future of the SUBACK's reason
        codes (None when the connection ended first)."""
        packet_id = self._packet_id()
        topics = [mqtt5.TopicFilter(f, max_qos=max_qos) for f in filters]
        return self._ask(packet_id, mqtt5.SubscribePacket(packet_id, topics).write())

    def unsubscribe(self, filters: list[str]) -> asyncio.Future[list[int] | None]:
        """UNSUBSCRIBE from ``filters``: a future of the UNSUBACK's reason codes."""
        packet_id = self._packet_id()
        return self._ask(packet_id, mqtt5.UnsubscribePacket(packet_id, filters).write())

    def write_pubacks(self, packets: bytes, count: int) -> None:
        """Acknowledge ``count`` QoS 1 messages of this connection (built by :func:`pubacks`)."""
        if self._write(packets):
            self._inflight -= count

    def disconnect(self, session_expiry: int | None = None) -> None:
        """Say goodbye (``session_expiry`` 0 ends the session) and close once it is written."""
        packet = mqtt5.DisconnectPacket(session_expiry_interval=session_expiry).write()
        self._goodbye = self._write(packet)
        self._close(None)

    def abort(self) -> None:
        """Drop the connection at once, writing nothing more."""
        self._why = self._why or "closed while connecting"
        if self._transport is not None:
            self._transport.abort()

    def pause_reading(self) -> None:
        if self._transport is not None and not self._paused:
            self._paused = True
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self._transport is not None and self._paused:
            self._paused = False
            self._last_received = time.monotonic()  # silence while paused was ours
            self._transport.resume_reading()

    @property
    def open(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        options = self.options
        connect = mqtt5.ConnectPacket(
            options.client_id,
            username=options.username,
            password=None if options.password is None else options.password.encode(),
            clean_start=options.clean_start,
            keep_alive=options.keepalive,
            session_expiry_interval=options.session_expiry,
            receive_max=options.receive_maximum,
            max_packet_size=options.max_packet_bytes,
        )
        self._write(connect.write())

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        why = self._why
        if why is None:
            why = f"connection lost: {exc}" if exc else "the broker closed the connection"
        if not self.connack.done():
            self.connack.set_exception(SessionClosed(why))
            self.connack.exception()  # seen: whoever awaits it is told, and nobody else
        for answer in self._answers.values():
            if not answer.done():
                answer.set_result(None)
        self._answers.clear()
        if not self.closed.done():
            self.closed.set_result(None if self._goodbye and exc is None else why)

    def data_received(self, data: bytes) -> None:
        self._last_received = time.monotonic()
        if self._buffer:
            self._buffer += data
            used = self._unpack(self._buffer)
            del self._buffer[:used]
        else:
            # The common case: whole packets in one read, decoded without a copy.
            used = self._unpack(data)
            if used < len(data):
                self._buffer += memoryview(data)[used:]

    # framing and decoding

    def _unpack(self, chunk: bytes | bytearray) -> int:
        """Decode every whole packet at the start of ``chunk``; how many bytes they took."""
        # Per message, this loop is most of the receive path's CPU: names are local.
        publishes: list[mqtt5.PublishPacket] = []
        append, read, allowed = publishes.append, mqtt5.read, FROM_SERVER
        view = memoryview(chunk)
        end, offset, qos1 = len(chunk), 0, 0
        limit = self.options.max_packet_bytes
        accepted = self.connack.done()
        try:
            while offset < end and self._why is None:
                first = chunk[offset]
                if first not in allowed:
                    raise _Violation(PROTOCOL_ERROR, f"unexpected packet: first byte 0x{first:02X}")
                if offset + 1 < end and chunk[offset + 1] < 0x80:  # most: a 1-byte length
                    size = chunk[offset + 1] + 2
                else:
                    size = packet_size(chunk, offset)
                    if not size:
                        break  # the header itself is incomplete
                # checked from the header, before anything of the packet is decoded or kept
                if size > limit:
                    raise _Violation(
                        PACKET_TOO_LARGE, f"a {size}-byte packet announced (maximum {limit})"
                    )
                if end - offset < size:
                    break
                try:
                    packet, used = read(view[offset : offset + size])
                except (ValueError, IndexError) as exc:
                    raise _Violation(MALFORMED_PACKET, f"undecodable packet: {exc}") from None
                if used != size:
                    raise _Violation(MALFORMED_PACKET, "packet length disagrees with its header")
                offset += size
                if first >> 4 == PUBLISH and accepted:
                    if first & 0x06:  # QoS 1
                        if not packet.packet_id:  # type: ignore[union-attr]
                            raise _Violation(PROTOCOL_ERROR, "QoS 1 PUBLISH with packet id 0")
                        qos1 += 1
                    if packet.topic_alias is not None:  # type: ignore[union-attr]
                        # we allow none (Topic Alias Maximum 0 at CONNECT)
                        raise _Violation(TOPIC_ALIAS_INVALID, "PUBLISH with a topic alias")
                    append(packet)  # type: ignore[arg-type]
                else:
                    self._handle(first >> 4, packet)
                    accepted = self.connack.done()
        except _Violation as violation:
            self._violated(violation)
        finally:
            view.release()
            if qos1:
                self._count_inflight(qos1)
            if publishes:
                self._on_publish(publishes, datetime.now(UTC))
        return offset

    def _count_inflight(self, received: int) -> None:
        self._inflight += received
        if self._inflight > self.options.receive_maximum and not self._overshot:
            # Mosquitto 2.0.11 does this once PUBACKs flow (measured: 10 in flight before,
            # 40 after 5 PUBACKs): a warning, not a DISCONNECT that would end every
            # connection to it. max_buffered_bytes still bounds our memory.
            self._overshot = True
            logger.warning(
                "the broker sent more than our Receive Maximum (%s) unacknowledged",
                self.options.receive_maximum,
            )

    def _handle(self, kind: int, packet: mqtt5.Packet) -> None:
        if kind == CONNACK:
            if self.connack.done():
                raise _Violation(PROTOCOL_ERROR, "a second CONNACK")
            assert isinstance(packet, mqtt5.ConnAckPacket)
            self.connack.set_result(packet)
            if int(packet.reason_code) < 0x80:
                self._accepted(packet)
            return
        if not self.connack.done():
            raise _Violation(PROTOCOL_ERROR, f"{type(packet).__name__} before CONNACK")
        if isinstance(packet, mqtt5.SubAckPacket | mqtt5.UnsubAckPacket):
            answer = self._answers.pop(packet.packet_id, None)
            if answer is None:  # harmless: nothing waits for it
                logger.warning("an answer to no request of ours: %s", packet)
            elif not answer.done():
                answer.set_result([int(code) for code in packet.reason_codes])
        elif kind == PINGRESP:
            self.pingresps += 1
        elif isinstance(packet, mqtt5.DisconnectPacket):
            reason = reason_name(int(packet.reason_code), mqtt5.DisconnectReasonCode)
            why = f"the broker disconnected: {reason}"
            if packet.reason_str:
                why += f" ({packet.reason_str})"
            logger.warning("%s", why)
            self._close(why)

    def _violated(self, violation: _Violation) -> None:
        why = f"protocol error by the broker: {violation}"
        logger.error("%s; disconnecting (reason 0x%02X)", why, violation.reason_code)
        if self.open:
            reason = mqtt5.DisconnectReasonCode(violation.reason_code)
            self._write(mqtt5.DisconnectPacket(reason_code=reason).write())
        self._close(why)

    def _accepted(self, connack: mqtt5.ConnAckPacket) -> None:
        # The broker may shorten or lengthen our keepalive, and caps what we may send it.
        # (Its Receive Maximum bounds PUBLISHes we would send: we send none.)
        keepalive = connack.server_keep_alive
        self._keepalive = float(self.options.keepalive if keepalive is None else keepalive)
        self._server_max_packet = connack.max_packet_size
        self._schedule_keepalive()
        self._on_connack(connack)

    # writing and keepalive

    def _packet_id(self) -> int:
        self._next_id = self._next_id % 65535 + 1
        return self._next_id

    def _ask(self, packet_id: int, packet: bytes) -> asyncio.Future[list[int] | None]:
        answer: asyncio.Future[list[int] | None] = self._loop.create_future()
        if self._server_max_packet is not None and len(packet) > self._server_max_packet:
            logger.error(
                "a %s-byte request exceeds the broker's maximum packet size (%s)",
                len(packet),
                self._server_max_packet,
            )
            answer.set_result(None)
        elif self._write(packet):
            self._answers[packet_id] = answer
        else:
            answer.set_result(None)
        return answer

    def _write(self, packet: bytes) -> bool:
        if not self.open:
            return False
        assert self._transport is not None
        self._transport.write(packet)
        self._last_sent = time.monotonic()
        return True

    def _close(self, why: str | None) -> None:
        if why is not None and self._why is None:
            self._why = why
        if self._transport is not None:
            self._transport.close()  # after what is written goes out

    def _schedule_keepalive(self) -> None:
        """Wake when a PINGREQ falls due or the broker's silence says it is gone."""
        if not self._keepalive or not self.open:
            return
        keepalive = self._keepalive
        due = [self._last_sent + keepalive]
        if not self._paused:  # (while we do not read, the broker's silence means nothing)
            due.append(self._last_received + keepalive * DEAD_AFTER_KEEPALIVES)
            if self._last_ping <= self._last_received:  # silent a keepalive: ask once
                due.append(self._last_received + keepalive)
        self._timer = self._loop.call_later(max(0.0, min(due) - time.monotonic()), self._tick)

    def _tick(self) -> None:
        now, keepalive = time.monotonic(), self._keepalive
        if now - self._last_received >= keepalive * DEAD_AFTER_KEEPALIVES and not self._paused:
            why = f"no packet from the broker in {keepalive * DEAD_AFTER_KEEPALIVES:g}s"
            logger.warning("%s: taking the connection for dead", why)
            self._why = self._why or why
            if self._transport is not None:
                self._transport.abort()
            return
        # A PINGREQ when we said nothing for a keepalive (the broker's deadline is 1.5x), or
        # heard nothing for one (its PINGRESP proves the connection lives).
        silent = (
            not self._paused
            and now - self._last_received >= keepalive
            and self._last_ping <= self._last_received
        )
        if now - self._last_sent >= keepalive or silent:
            self._last_ping = now
            self._write(mqtt5.PingReqPacket().write())
        self._schedule_keepalive()


# Every connection built on the session (ingest's source, the $SYS reader) connects, backs
# off and reconnects the same way.

OnAccepted = Callable[[Mqtt5Session], Awaitable[None]]


async def keep_connected(
    new_session: Callable[[], Mqtt5Session],
    broker: BrokerAddress,
    tls: ssl.SSLContext | None,
    stop: asyncio.Event,
    *,
    task: str,
    on_accepted: OnAccepted | None = None,
    on_ended: Callable[[], None] | None = None,
    on_retry: AsyncOnRetry | None = None,
) -> str | None:
    """Connect a ``new_session()`` to ``broker`` whenever the last one ended, until ``stop``.

    A connection that failed or ended soon is replaced after iotp.retry's back-off; one that
    lived ``STABLE_SECONDS``, at once. ``on_accepted`` runs after each CONNACK, ``on_ended``
    when each connection is over, ``on_retry`` with why one failed or ended. Returns why the
    last one ended once stopped: None when our own DISCONNECT closed it cleanly.
    """
    last: str | None = "stopped while not connected"

    async def connection() -> None:
        nonlocal last
        session = new_session()
        connected_at = 0.0
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_SECONDS):
                await session.connect(broker.host, broker.port, tls)
            connected_at = time.monotonic()
            if on_accepted is not None:
                await on_accepted(session)
            why = await session.closed
        except SessionClosed:
            if stop.is_set():
                return
            raise
        finally:
            if on_ended is not None:
                on_ended()
        if stop.is_set():
            last = why
            return
        if time.monotonic() - connected_at < STABLE_SECONDS:
            raise SessionClosed(why)
        logger.warning("%s: the connection to %s ended (%s); reconnecting", task, broker, why)
        if on_retry is not None:
            await on_retry(SessionClosed(why))

    while not stop.is_set():
        try:
            await retry_transient_async(connection, stop, task=task, on_retry=on_retry)
        except Stopped:
            break
    return last


def run_loop(loop: asyncio.AbstractEventLoop, main: Coroutine[Any, Any, None]) -> None:
    """Run ``main`` on ``loop`` in this thread, then end what it left running and close it.

    What a caller in another thread still waits for (an UNSUBSCRIBE's answer) ends with it.
    """
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(main)
    finally:
        leftovers = asyncio.all_tasks(loop)
        for task in leftovers:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*leftovers, return_exceptions=True))
        loop.close()
