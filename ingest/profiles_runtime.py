"""Device profiles at ingest: which profile a topic belongs to, whose device it is, and its parse.

The profile book holds every stored profile (and the built-in ``iotp``) and every gateway's
devices, loaded from the write store at start and kept current from ``iotp:events:profiles``
with no restart, as the device registry is from the device events. A message's topic is
matched against each profile's tree (:func:`iotp.device_profiles.match_topic`); it belongs
to the device the topic names (for a gateway, the device its friendly name stands for) when
that device speaks that profile, and is then parsed by the profile's format
(:func:`ingest.formats.parse_payload`). Availability and status topics carry no telemetry:
they are neither stored nor dead-lettered. Everything after parsing is ingest's one path
(ingest/pipeline.py). Who published a topic is the broker's to check (its ACL): ingest
trusts that a topic of a device's tree came from that device or its gateway.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime

import psycopg

from ingest.formats import parse_payload
from ingest.payloads import (
    INVALID_TOPIC,
    UNKNOWN_DEVICE,
    DeviceInfo,
    DeviceLookup,
    Limits,
    ParsedMessage,
    clip,
    device_id_of,
    device_problem,
    parse_iotp_payload,
    parse_message,
    rejected,
    size_problem,
)
from iotp.db import ReconnectingConnection
from iotp.device_profiles import (
    BUILTIN_PROFILE,
    DeviceProfile,
    TopicKind,
    TopicMatch,
    match_topic,
    subscription_filters,
)
from iotp.events import (
    DeviceProfileDeleted,
    DeviceProfileSaved,
    GatewayAttributes,
    GatewayDeleted,
)
from iotp.model import DEFAULT_PROFILE, is_device_id
from iotp.names import TELEMETRY_TOPIC_FILTER

logger = logging.getLogger(__name__)

NO_TELEMETRY = ParsedMessage(None, (), ())  # a status or availability message: nothing to do


@dataclass(frozen=True, slots=True)
class GatewayEntry:
    gateway_id: str
    profile: str
    devices: dict[str, str] = field(default_factory=dict)  # friendly name -> device id


BookItem = DeviceProfile | GatewayEntry


class ProfileBook:
    """Profiles by name and gateways by id, as the write store has them (a snapshot swapped
    whole on each change, so that readers on other threads never see one half-made)."""

    def __init__(self) -> None:
        self._profiles: dict[str, DeviceProfile] = {BUILTIN_PROFILE.name: BUILTIN_PROFILE}
        self._gateways: dict[str, GatewayEntry] = {}

    def load(self, items: Iterable[BookItem]) -> None:
        """Replace everything with ``items`` (at start, and after a trim took events unread)."""
        profiles = {BUILTIN_PROFILE.name: BUILTIN_PROFILE}
        gateways = {}
        for item in items:
            if isinstance(item, DeviceProfile):
                profiles[item.name] = item
            else:
                gateways[item.gateway_id] = item
        self._profiles, self._gateways = profiles, gateways

    def apply(self, event: object) -> None:
        """Bring the book in line with one profile or gateway event (idempotent)."""
        if isinstance(event, DeviceProfileSaved):
            self._profiles = {**self._profiles, event.profile.name: event.profile}
        elif isinstance(event, DeviceProfileDeleted) and event.name != BUILTIN_PROFILE.name:
            self._profiles = {k: v for k, v in self._profiles.items() if k != event.name}
        elif isinstance(event, GatewayAttributes):
            entry = GatewayEntry(event.gateway_id, event.profile, dict(event.devices))
            self._gateways = {**self._gateways, event.gateway_id: entry}
        elif isinstance(event, GatewayDeleted):
            self._gateways = {k: v for k, v in self._gateways.items() if k != event.gateway_id}

    def profile(self, name: str) -> DeviceProfile | None:
        return self._profiles.get(name)

    def profiles(self) -> list[DeviceProfile]:
        return list(self._profiles.values())

    def gateways(self) -> list[GatewayEntry]:
        return list(self._gateways.values())

    def gateway(self, gateway_id: str) -> GatewayEntry | None:
        return self._gateways.get(gateway_id)


class ProfileRouter:
    """Parses a message by the profile its topic belongs to (see the module docstring)."""

    def __init__(self, book: ProfileBook, lookup: DeviceLookup) -> None:
        self.book, self.lookup = book, lookup

    def parse(
        self, topic: str, payload: bytes, received_at: datetime, limits: Limits
    ) -> ParsedMessage:
        """Readings and rejections of one MQTT message, whatever profile its topic is of."""
        # Most messages are a device of the built-in profile on its own topic: read them as
        # before profiles existed, without matching every profile's tree (that was a third
        # more parsing CPU a message, `iotp bench ingest-path`).
        device_id = device_id_of(topic)
        if device_id is not None:
            known = self.lookup(device_id)
            if known is not None and known.profile == DEFAULT_PROFILE:
                # parse_device_message's checks, with the device already looked up
                problem = size_problem(payload, limits) or device_problem(device_id, known)
                if problem is not None:
                    return rejected(device_id, *problem)
                return parse_iotp_payload(known, payload, received_at, limits)
        first: tuple[DeviceProfile, TopicMatch, DeviceInfo | None] | None = None
        for profile in self.book.profiles():
            found = match_topic(profile, topic)
            if found is None:
                continue
            if found.kind is not TopicKind.TELEMETRY:
                # Never dead-lettered: the broker let the device publish it (its tree).
                return NO_TELEMETRY
            device = self._device(profile, found)
            if device is not None and device.profile == profile.name:
                return self._parse(profile, found, device, topic, payload, received_at, limits)
            if device is not None and profile.gateway:
                return self._parse(profile, found, device, topic, payload, received_at, limits)
            first = first or (profile, found, device)
        if first is None:
            return rejected(None, INVALID_TOPIC, "the topic is in no device profile's tree")
        profile, found, device = first
        if device is None:
            return self._parse(profile, found, None, topic, payload, received_at, limits)
        detail = (
            f"device {device.device_id!r} speaks profile {device.profile!r}, not"
            f" {profile.name!r} whose tree the topic is in"
        )
        return rejected(device.device_id, INVALID_TOPIC, detail)

    def parse_for_device(
        self,
        device_id: str,
        payload: bytes,
        received_at: datetime,
        limits: Limits,
        metric: str | None = None,
    ) -> ParsedMessage:
        """One payload a device sent by another way than MQTT (HTTP), in its profile's format.

        ``metric`` names the metric of a ``plain`` profile's payload (MQTT says it in the
        topic). The caller has authenticated the device.
        """
        device = self.lookup(device_id)
        problem = device_problem(device_id, device)
        if problem is not None:
            return rejected(device_id, *problem)
        assert device is not None
        profile = self.book.profile(device.profile)
        if profile is None:
            detail = f"device profile {device.profile!r} is not known to ingest"
            return rejected(device_id, INVALID_TOPIC, detail)
        found = TopicMatch(TopicKind.TELEMETRY, device_id, metric)
        return parse_payload(profile, found, payload, received_at, device, limits)

    def _device(self, profile: DeviceProfile, found: TopicMatch) -> DeviceInfo | None:
        name = found.device
        if name is None:
            return None
        if not profile.gateway:
            return self.lookup(name) if is_device_id(name) else None
        for gateway in self._gateways_for(profile, found.gateway):
            device_id = gateway.devices.get(name)
            if device_id is not None:
                return self.lookup(device_id)
        return None

    def _gateways_for(self, profile: DeviceProfile, gateway_id: str | None) -> list[GatewayEntry]:
        if gateway_id is not None:
            gateway = self.book.gateway(gateway_id)
            return [] if gateway is None or gateway.profile != profile.name else [gateway]
        return [g for g in self.book.gateways() if g.profile == profile.name]

    def _parse(
        self,
        profile: DeviceProfile,
        found: TopicMatch,
        device: DeviceInfo | None,
        topic: str,
        payload: bytes,
        received_at: datetime,
        limits: Limits,
    ) -> ParsedMessage:
        if profile is BUILTIN_PROFILE:
            # Today's path, reasons and details unchanged (an unknown id is named).
            return parse_message(topic, payload, received_at, self.lookup, limits)
        if device is None and found.device is not None:
            name = clip(found.device)
            return rejected(None, UNKNOWN_DEVICE, f"no registered device publishes as {name!r}")
        return parse_payload(profile, found, payload, received_at, device, limits)


class SubscriptionKeeper:
    """Subscribes ingest's source to the trees of the profiles in use, as they come into use.

    A filter is never taken back: a profile out of use costs a subscription, while taking
    one back could lose a message in flight.
    """

    def __init__(
        self,
        book: ProfileBook,
        profiles_named: Callable[[], Iterable[str]],
        subscribe: Callable[[str], object],
    ) -> None:
        self.book, self.profiles_named, self.subscribe = book, profiles_named, subscribe
        self.filters: set[str] = {TELEMETRY_TOPIC_FILTER}

    def refresh(self) -> None:
        """Subscribe to the filters of every profile in use not yet subscribed to."""
        in_use = set(self.profiles_named()) | {g.profile for g in self.book.gateways()}
        profiles = [p for name in in_use if (p := self.book.profile(name)) is not None]
        for topic_filter in subscription_filters(profiles):
            if topic_filter not in self.filters:
                self.filters.add(topic_filter)
                logger.info("subscribing to %s (device profiles in use)", topic_filter)
                self.subscribe(topic_filter)


_SELECT_PROFILES = "SELECT profile FROM device_profiles"
_SELECT_GATEWAYS = "SELECT gateway_id, profile, devices FROM gateways"


class DatabaseProfiles:
    """Every profile and gateway as the write store has them, on a connection of its own."""

    def __init__(self, database_url: str) -> None:
        self._connection = ReconnectingConnection(
            lambda: psycopg.connect(database_url, autocommit=True, connect_timeout=5)
        )

    def fetch_all(self) -> list[BookItem]:
        try:
            conn = self._connection()
            items: list[BookItem] = []
            for (document,) in conn.execute(_SELECT_PROFILES).fetchall():
                items.append(DeviceProfile.model_validate(document))
            for gateway_id, profile, devices in conn.execute(_SELECT_GATEWAYS).fetchall():
                items.append(GatewayEntry(gateway_id, profile, dict(devices)))
            return items
        except psycopg.OperationalError:
            self.close()
            raise

    def close(self) -> None:
        self._connection.close()
