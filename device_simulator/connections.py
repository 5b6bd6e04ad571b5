"""MQTT connections of simulated devices on aiomqtt: one per device, as real devices have.

A QoS 1 publish counts as acknowledged only when the broker's PUBACK says success: an MQTT
v5 PUBACK with a failure reason code (0x87 not authorised, ...) counts as refused. At most
``CONNECT_CONCURRENCY`` connects (TCP, TLS handshake, CONNECT) are under way at once, so that
thousands of devices come online without flooding the broker's accept queue. A connection
that dropped is opened again by the next publish on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import ssl
from collections.abc import Sequence
from typing import Any

import aiomqtt
import paho.mqtt.client as mqtt
import tenacity
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from device_simulator.registration import SimulatedDevice
from iotp.errors import ConfigurationError
from iotp.mqtt_url import BrokerAddress
from iotp.retry import BACKOFF

CONNECT_CONCURRENCY = 50
KEEPALIVE_SECONDS = 30
# How long a publish waits for its PUBACK, and a connect for its CONNACK.
ACK_WAIT_SECONDS = 30.0
# A device registered (or rotated) a moment ago may not be known to the broker yet: the
# broker's credentials follow the command side's events within seconds.
CREDENTIALS_GRACE_SECONDS = 15.0
# Descriptors the process needs besides one socket per connection (the API client, the
# event loop, logs, the executor's threads).
OTHER_FILES = 256
# mosquitto.conf's max_inflight_messages: more in flight on one connection is a protocol error.
MAX_INFLIGHT = 1000
VERSIONS = {"5": aiomqtt.ProtocolVersion.V5, "3.1.1": aiomqtt.ProtocolVersion.V311}


class DeviceClient(aiomqtt.Client):
    """An aiomqtt client that also counts the PUBACKs carrying a failure reason code."""

    refused = 0

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties,
    ) -> None:
        # aiomqtt wakes the publisher whatever the reason code says. Only a publish still
        # awaited counts: a late answer to a timed-out one was counted as an error already.
        if reason_code.is_failure and mid in self._pending_publishes:
            self.refused += 1
        super()._on_publish(client, userdata, mid, reason_code, properties)

    def _on_socket_register_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        # aiomqtt adds the writer one loop iteration later (paho may call this from its
        # connecting thread). By then paho may have written everything and unregistered (it
        # writes directly after a CONNACK), or closed the socket, whose number a new connection
        # may already hold: such a writer is never removed and steals that number's events.
        # So add it only while paho still wants to write on this very socket.
        def write() -> None:
            try:
                client.loop_write()
            except Exception as exc:  # as aiomqtt does: the connection is broken
                if not self._disconnected.done():
                    self._disconnected.set_exception(exc)

        def add_writer() -> None:
            current = client.socket()
            if current is not None and current is sock and client.want_write():
                self._loop.add_writer(current.fileno(), write)

        self._loop.call_soon_threadsafe(add_writer)

    def _on_socket_close(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        # A writer paho no longer counts as registered must not outlive the socket either.
        if sock.fileno() > -1:
            self._loop.remove_writer(sock.fileno())
        super()._on_socket_close(client, userdata, sock)

    def is_connected(self) -> bool:
        return self._client.is_connected()

    def forget_lost_connection(self) -> None:
        """Read the error of a connection that dropped, so that asyncio does not log it as lost."""
        if self._disconnected.done() and not self._disconnected.cancelled():
            self._disconnected.exception()


class Link:
    """One MQTT connection and the devices that publish on it (one, except in load mode)."""

    def __init__(
        self,
        identity: SimulatedDevice,
        broker: BrokerAddress,
        tls: ssl.SSLContext | None,
        protocol: str,
        devices: int,
        slots: asyncio.Semaphore,
    ) -> None:
        self.client = DeviceClient(
            broker.host,
            broker.port,
            username=identity.username,
            password=identity.password,
            identifier=f"iotp-sim-{identity.device_id}",
            protocol=VERSIONS[protocol],
            tls_context=tls,
            keepalive=KEEPALIVE_SECONDS,
            timeout=ACK_WAIT_SECONDS,
            max_inflight_messages=min(MAX_INFLIGHT, max(20, devices)),
            max_queued_outgoing_messages=0,  # unlimited: a publish waits for its turn
        )
        # Several devices of one load-mode connection publish at once; that is no warning.
        self.client.pending_calls_threshold = 2 * devices + 10
        self._slots = slots
        self._reconnecting = asyncio.Lock()
        self._open = False

    @property
    def refused(self) -> int:
        return self.client.refused

    async def open(self, grace: float = CREDENTIALS_GRACE_SECONDS) -> None:
        """Connect; a refused CONNECT is tried again for ``grace`` seconds, then raised."""
        retrying = tenacity.AsyncRetrying(
            wait=BACKOFF,
            stop=tenacity.stop_after_delay(grace),
            retry=tenacity.retry_if_exception_type(MqttConnectError),
            reraise=True,
        )
        try:
            await retrying(self._connect)
        except MqttConnectError as exc:
            raise aiomqtt.MqttError(
                f"the broker refused {self.client.identifier} (device credentials): {exc}"
            ) from exc

    async def _connect(self) -> None:
        async with self._slots:
            await self.client.__aenter__()
        self._open = True

    async def publish(self, topic: str, payload: bytes, qos: int) -> None:
        """Publish once: returns when the broker answered (QoS 1) or the message is written.

        Raises :class:`aiomqtt.MqttError` when the connection cannot be (re)opened, the
        message cannot be sent, or no PUBACK came within ``ACK_WAIT_SECONDS``.
        """
        if not self.client.is_connected():
            await self._reopen()
        await self.client.publish(topic, payload, qos)

    async def _reopen(self) -> None:
        async with self._reconnecting:  # the devices of one load-mode link reopen it once
            if self.client.is_connected():
                return
            await self.close()
            await self._connect()

    async def close(self) -> None:
        """Disconnect (cleanly when the connection is still up)."""
        if not self._open:
            return
        self._open = False
        self.client.forget_lost_connection()
        with contextlib.suppress(aiomqtt.MqttError):
            await self.client.__aexit__(None, None, None)


async def open_links(
    identities: Sequence[SimulatedDevice],
    broker: BrokerAddress,
    tls: ssl.SSLContext | None,
    protocol: str,
    devices_per_link: int,
) -> list[Link]:
    """One open connection per identity; the first failure closes them all and is raised."""
    slots = asyncio.Semaphore(CONNECT_CONCURRENCY)
    links = [Link(i, broker, tls, protocol, devices_per_link, slots) for i in identities]
    try:
        async with asyncio.TaskGroup() as group:
            for link in links:
                group.create_task(link.open())
    except BaseExceptionGroup as failed:
        await close_links(links)
        raise failed.exceptions[0] from None
    except asyncio.CancelledError:
        await close_links(links)
        raise
    return links


async def close_links(links: Sequence[Link]) -> None:
    await asyncio.gather(*(link.close() for link in links))


def ensure_open_files(connections: int) -> None:
    """Let the process hold ``connections`` sockets: raise the soft open-file limit up to
    the hard one, or raise :class:`ConfigurationError` when even that is too low."""
    needed = connections + OTHER_FILES
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise ConfigurationError(
            f"{connections} MQTT connections need about {needed} open files, but this process"
            f" may open at most {hard} (ulimit -Hn); raise the limit, or multiplex the devices"
            " with --connections"
        )
