"""The ingest side's view of the device registry.

Loaded from the devices table at start, kept current from ``iotp:events:devices``, and
asked of the database on a miss (a device registered a moment ago whose event is still on
its way). Misses are remembered briefly so that a flood of unknown ids cannot turn into a
flood of queries.

The stream is trimmed by what the consumer groups consumed (:mod:`iotp.stream_trim`), and
the follower is no group: when a trim took entries it had not read yet (it fell behind, or
the trim came between its start and its first read), it loads the devices table again, as
at start, rather than go on without them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any, Protocol

import psycopg
import redis

from ingest.payloads import DeviceInfo, MetricRange
from iotp.db import ReconnectingConnection
from iotp.event_shards import Entry, read_streams
from iotp.events import DeviceDecommissioned, DeviceRegistered, DeviceUpdated, from_fields
from iotp.group_reader import Counts, Decode, decode_batch
from iotp.model import DEFAULT_PROFILE, MetricSpec
from iotp.names import DEVICE_EVENTS_STREAM
from iotp.redis_client import split_id, text
from iotp.retry import Stopped, retry_transient
from iotp.stream_trim import missed_after, trimmed_before

logger = logging.getLogger(__name__)

_SELECT_DEVICES = "SELECT device_id, status, metrics, profile FROM devices"


def device_info(
    device_id: str, status: str, metrics: Iterable[MetricSpec], profile: str = DEFAULT_PROFILE
) -> DeviceInfo:
    ranges = {m.name: MetricRange(m.min, m.max) for m in metrics}
    return DeviceInfo(device_id, status, ranges, profile)


def _from_row(row: tuple[Any, ...]) -> DeviceInfo:
    device_id, status, metrics, profile = row
    specs = (MetricSpec.model_validate(m) for m in metrics)
    return device_info(device_id, status, specs, profile)


class DeviceRegistry:
    """Thread-safe enough for one writer thread and many readers (dict updates are atomic)."""

    def __init__(
        self,
        fetch: Callable[[str], DeviceInfo | None],
        unknown_ttl: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch
        self._unknown_ttl = unknown_ttl
        self._clock = clock
        self._devices: dict[str, DeviceInfo] = {}
        self._unknown_until: dict[str, float] = {}
        # Every profile a device known here names (ingest subscribes to their trees); only
        # ever grows, as a subscription is never taken back.
        self.profiles_named: set[str] = {DEFAULT_PROFILE}

    def __len__(self) -> int:
        return len(self._devices)

    def load(self, devices: Iterable[DeviceInfo]) -> None:
        for device in devices:
            self._devices[device.device_id] = device
            self._unknown_until.pop(device.device_id, None)
            self.profiles_named.add(device.profile)

    def lookup(self, device_id: str) -> DeviceInfo | None:
        """The device, from memory, else from the database (misses cached for a moment)."""
        device = self._devices.get(device_id)
        if device is not None:
            return device
        now = self._clock()
        if self._unknown_until.get(device_id, 0.0) > now:
            return None
        device = self._fetch(device_id)
        if device is None:
            if len(self._unknown_until) > 100_000:  # bound memory under an id-spraying flood
                self._unknown_until.clear()
            self._unknown_until[device_id] = now + self._unknown_ttl
            return None
        self._devices[device_id] = device
        self.profiles_named.add(device.profile)
        return device

    def apply(self, event: object) -> None:
        """Bring the view in line with one device event (idempotent)."""
        if isinstance(event, DeviceRegistered | DeviceUpdated):
            current = self._devices.get(event.device_id)
            status = current.status if current is not None else "active"
            self._devices[event.device_id] = device_info(
                event.device_id, status, event.metrics, event.profile
            )
            self._unknown_until.pop(event.device_id, None)
            self.profiles_named.add(event.profile)
        elif isinstance(event, DeviceDecommissioned):
            current = self._devices.get(event.device_id)
            if current is None:
                current = DeviceInfo(event.device_id, "active")
            self._devices[event.device_id] = replace(current, status="decommissioned")


class DeviceTable(Protocol):
    """Every device as the devices table has it now (or, for another view, its rows)."""

    def fetch_all(self) -> list[Any]: ...

    def close(self) -> None: ...


class FollowedView(Protocol):
    """What a follower keeps current: the device registry, or ingest's profile book."""

    def apply(self, event: object) -> None: ...
    def load(self, items: Iterable[Any]) -> None: ...


class DatabaseDevices:
    """Device look-ups for the registry, on a connection of their own."""

    def __init__(self, database_url: str) -> None:
        self._url = database_url
        self._connection = ReconnectingConnection(
            lambda: psycopg.connect(self._url, autocommit=True, connect_timeout=5)
        )

    def fetch(self, device_id: str) -> DeviceInfo | None:
        try:
            row = (
                self._connection()
                .execute(_SELECT_DEVICES + " WHERE device_id = %s", (device_id,))
                .fetchone()
            )
        except psycopg.OperationalError:
            self.close()
            raise
        return None if row is None else _from_row(row)

    def fetch_all(self) -> list[DeviceInfo]:
        try:
            with self._connection().cursor() as cur:
                cur.execute(_SELECT_DEVICES)
                return [_from_row(row) for row in cur]
        except psycopg.OperationalError:
            self.close()
            raise

    def close(self) -> None:
        self._connection.close()


def last_device_event_id(client: redis.Redis, stream: str = DEVICE_EVENTS_STREAM) -> str:
    """The id of the newest entry of ``stream`` (the device events by default), or 0-0."""
    entries: Any = client.xrevrange(stream, count=1)
    return text(entries[0][0]) if entries else "0-0"


class RegistryFollower(threading.Thread):
    """Applies device events from the stream to the registry as they arrive.

    Plain XREAD, not a consumer group: every ingest process needs every device event. It
    reads and decodes as the group reader does (:mod:`iotp.group_reader`). ``table`` is the
    follower's own (its thread's) way to the devices table, for when the stream was trimmed
    past its position; closed when the follower stops. The same loop follows the profile
    events into ingest's profile book (``stream``, ``decode``); ``on_change`` runs after
    each read that applied something (ingest subscribes to new profiles' trees there).
    """

    def __init__(
        self,
        registry: FollowedView,
        client: redis.Redis,
        after: str,
        stop: threading.Event,
        table: DeviceTable,
        *,
        stream: str = DEVICE_EVENTS_STREAM,
        decode: Decode[Any] = from_fields,
        task: str = "device registry",
        on_change: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(name=f"iotp-ingest-{task.replace(' ', '-')}", daemon=True)
        self.registry, self.client, self.position, self.stop = registry, client, after, stop
        self.table = table
        self.stream, self.decode, self.task, self.on_change = stream, decode, task, on_change
        self.reloads = 0

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                self.step()
        except Stopped:
            return
        finally:
            self.table.close()

    def step(self) -> None:
        """One read: apply what it brought, or reload if a trim took entries not yet read."""
        entries, trimmed = retry_transient(self._read, self.stop, task=self.task)
        if missed_after(self.position, trimmed):
            logger.warning(
                "%s: %s was trimmed up to %s, past this process's position %s;"
                " reloading from the database",
                self.task,
                self.stream,
                trimmed,
                self.position,
            )
            self.position, count = retry_transient(
                lambda: self._reload(trimmed), self.stop, task=self.task
            )
            self.reloads += 1
            logger.info("%s reloaded: %s rows", self.task, count)
            self._changed()
            return
        batch = decode_batch(entries, self.decode, Counts(), self.task)
        for delivered in batch.events:
            self.registry.apply(delivered.event)
        self.position = batch.last_ids.get(self.stream, self.position)
        if batch.events:
            self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def _read(self) -> tuple[dict[str, list[Entry]], str | None]:
        """New entries, then how far the stream was trimmed: read after the entries, a trim
        before the read is seen (one after it may reload for nothing, and misses nothing)."""
        entries = read_streams(self.client, {self.stream: self.position}, 500, 500)
        return entries, trimmed_before(self.client, self.stream)

    def _reload(self, trimmed: str | None) -> tuple[str, int]:
        """As at start: the stream's last id, then the devices table (which has every change
        up to that id: the outbox commits with the change); the new position, and how many.

        Never behind the trim, so that a stream left empty does not reload again and again.
        """
        position = max(
            last_device_event_id(self.client, self.stream), trimmed or "0-0", key=split_id
        )
        devices = self.table.fetch_all()
        self.registry.load(devices)
        return position, len(devices)
