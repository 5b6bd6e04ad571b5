"""A scripted MQTT 5 broker on loopback, for what a real one will not do: hostile packets.

Each TCP connection runs the next script (the last one repeats) and then keeps reading
until the client hangs up; everything the client sent is kept, decoded, per connection,
so that a test can check which PUBACKs and DISCONNECTs went out on which connection.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TypeVar

import mqtt5

from iotp.mqtt_url import BrokerAddress

P = TypeVar("P")
TOPIC = "devices/fake/telemetry"


class FakeConnection:
    """One client connection, as a script sees it."""

    def __init__(self, index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.index = index
        self.packets: list[object] = []  # what the client sent, decoded
        self.sent_bytes = 0
        self.opened_at = time.monotonic()
        self.closed_at: float | None = None
        self._reader, self._writer = reader, writer
        self._buffer = bytearray()

    async def receive(self, timeout: float = 10.0) -> object:
        """The client's next packet; EOFError once it closed the connection."""
        async with asyncio.timeout(timeout):
            while True:
                try:
                    packet, used = mqtt5.read(memoryview(bytes(self._buffer)))
                except IndexError:  # incomplete
                    data = await self._reader.read(65536)
                    if not data:
                        raise EOFError from None
                    self._buffer += data
                    continue
                del self._buffer[:used]
                self.packets.append(packet)
                return packet

    async def expect(self, kind: type[P], timeout: float = 10.0) -> P:
        """Read until the client sends a packet of ``kind``."""
        async with asyncio.timeout(timeout):
            while not isinstance(packet := await self.receive(), kind):
                pass
            return packet

    def send(self, data: bytes) -> None:
        self.sent_bytes += len(data)
        self._writer.write(data)

    async def accept(self, session_present: bool = False, **connack: object) -> mqtt5.ConnectPacket:
        """Wait for CONNECT and answer with a CONNACK (``connack``: its other fields)."""
        connect = await self.expect(mqtt5.ConnectPacket)
        self.send(mqtt5.ConnAckPacket(session_present=session_present, **connack).write())  # type: ignore[arg-type]
        return connect

    async def handshake(
        self,
        session_present: bool = False,
        grant: mqtt5.SubAckReasonCode = mqtt5.SubAckReasonCode.GRANTED_QOS_AT_LEAST_ONCE,
        **connack: object,
    ) -> mqtt5.SubscribePacket:
        """CONNECT, CONNACK, then the SUBSCRIBE answered with ``grant`` (QoS 1 unless said)."""
        await self.accept(session_present, **connack)
        subscribe = await self.expect(mqtt5.SubscribePacket)
        granted = [grant] * len(subscribe.topic_filters)
        self.send(mqtt5.SubAckPacket(subscribe.packet_id, granted).write())
        return subscribe

    def publish(self, packet_id: int, payload: bytes, *, duplicate: bool = False) -> None:
        """A QoS 1 PUBLISH of ``payload`` on the telemetry topic."""
        packet = mqtt5.PublishPacket(
            TOPIC,
            payload,
            qos=mqtt5.QoS.AT_LEAST_ONCE,
            packet_id=packet_id,
            duplicate=duplicate,
        )
        self.send(packet.write())

    def publish_on(self, topic: str, payload: bytes, packet_id: int = 0) -> None:
        """A PUBLISH of ``payload`` on ``topic``: QoS 0, or QoS 1 with a ``packet_id``."""
        qos = mqtt5.QoS.AT_LEAST_ONCE if packet_id else mqtt5.QoS.AT_MOST_ONCE
        packet = mqtt5.PublishPacket(topic, payload, qos=qos, packet_id=packet_id or None)
        self.send(packet.write())

    async def until_closed(self, timeout: float = 30.0) -> None:
        """Read (and keep) what the client sends until it closes the connection."""
        try:
            while True:
                await self.receive(timeout)
        except (EOFError, ConnectionError, TimeoutError):
            return

    def close(self) -> None:
        self._writer.close()

    @property
    def pubacks(self) -> list[int]:
        return [p.packet_id for p in self.packets if isinstance(p, mqtt5.PubAckPacket)]

    @property
    def disconnect_reason(self) -> int | None:
        """The reason code of the client's DISCONNECT, if it sent one."""
        for packet in self.packets:
            if isinstance(packet, mqtt5.DisconnectPacket):
                return int(packet.reason_code)
        return None


Script = Callable[[FakeConnection], Awaitable[None]]


class FakeBroker:
    """``with FakeBroker(first, second) as broker``: connection n runs script n (the last
    repeats); ``broker.address`` is where to connect."""

    def __init__(self, *scripts: Script) -> None:
        self.scripts = scripts
        self.connections: list[FakeConnection] = []
        self.errors: list[BaseException] = []  # what went wrong in a script
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fake-broker", daemon=True)
        self._stop: asyncio.Event | None = None

    def address(self, username: str | None = None, password: str | None = None) -> BrokerAddress:
        return BrokerAddress("127.0.0.1", self.port, False, username, password)

    def __enter__(self) -> FakeBroker:
        self._thread.start()
        if not self._ready.wait(5):
            raise RuntimeError("the fake broker did not start")
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        tasks: set[asyncio.Task[None]] = set()

        async def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            tasks.add(task)
            connection = FakeConnection(len(self.connections), reader, writer)
            self.connections.append(connection)
            script = self.scripts[min(connection.index, len(self.scripts) - 1)]
            try:
                await script(connection)
                await connection.until_closed()
            except (EOFError, ConnectionError):
                pass
            except Exception as exc:
                self.errors.append(exc)
            finally:
                connection.closed_at = time.monotonic()
                writer.close()
                tasks.discard(task)

        server = await asyncio.start_server(connected, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        async with server:
            await self._stop.wait()
            server.close()
            for task in list(tasks):
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
