"""Device profiles: how a kind of real device speaks MQTT, checked once when it is saved.

A profile names the payload format, the topic tree and the mapping from the names a firmware
uses to iotp metric names. A profile that validates can be matched unambiguously: no two of
its topic patterns claim the same topic with the same specificity. The functions here are
pure: matching a received topic against a tree, the filters ingest subscribes to, and the
topics a device's (or a gateway's) broker account may use.

Placeholders take a whole topic level: ``{device}`` is the device's topic name (in a gateway
profile, a friendly name, which may span levels), ``{gateway}`` the gateway's own topic name,
``{metric}`` the metric's name (format ``plain``). Status and command patterns may also hold
MQTT's ``+`` and a final ``#``; telemetry and availability patterns are exact.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, Field, model_validator

from iotp.model import (
    DEFAULT_PROFILE,
    MAX_DECLARED_METRICS,
    DeviceId,
    FrozenModel,
    MetricName,
    ProfileName,
    SafeText,
    Unit,
)

DEVICE, GATEWAY, METRIC = "{device}", "{gateway}", "{metric}"
PLACEHOLDERS = (DEVICE, GATEWAY, METRIC)
MAX_PATTERN_LENGTH = 256
MAX_PATTERNS = 16
MAX_GATEWAY_DEVICES = 1000
IOTP_TELEMETRY_PATTERN = "devices/{device}/telemetry"


class PayloadFormat(StrEnum):
    IOTP = "iotp"
    SENML_JSON = "senml+json"
    JSON_MAP = "json-map"
    PLAIN = "plain"


class TopicKind(StrEnum):
    TELEMETRY = "telemetry"
    AVAILABILITY = "availability"  # online/offline, the last will's topic as a rule
    STATUS = "status"  # anything else the firmware publishes in its tree


class TimestampUnit(StrEnum):
    SECONDS = "s"
    MILLISECONDS = "ms"
    ISO8601 = "iso8601"


def _check_pattern(pattern: str) -> str:
    """Syntax of one topic pattern; the placeholder rules depend on its kind (the profile's)."""
    if pattern.startswith("$"):
        raise ValueError(f"topic pattern {pattern!r} starts with '$' (the broker's own topics)")
    levels = pattern.split("/")
    for position, level in enumerate(levels):
        # An empty level is legal MQTT, but in a pattern it is nearly always a typo
        # (a leading or doubled slash) that would never match what the firmware sends.
        if not level:
            raise ValueError(f"topic pattern {pattern!r} has an empty level")
        if level == "#":
            if position != len(levels) - 1:
                raise ValueError(f"topic pattern {pattern!r}: '#' may only be the last level")
        elif level != "+" and ("+" in level or "#" in level):
            raise ValueError(f"topic pattern {pattern!r}: a wildcard must take a whole level")
        elif ("{" in level or "}" in level) and level not in PLACEHOLDERS:
            raise ValueError(
                f"topic pattern {pattern!r}: {level!r} is not a placeholder; placeholders"
                f" ({', '.join(PLACEHOLDERS)}) take a whole level"
            )
    return pattern


TopicPattern = Annotated[
    SafeText, Field(min_length=1, max_length=MAX_PATTERN_LENGTH), AfterValidator(_check_pattern)
]
Patterns = Annotated[tuple[TopicPattern, ...], Field(max_length=MAX_PATTERNS)]


class TopicTree(FrozenModel):
    """The topics of one device (or gateway) of a profile."""

    telemetry: Annotated[tuple[TopicPattern, ...], Field(min_length=1, max_length=MAX_PATTERNS)]
    availability: TopicPattern | None = None
    status: Patterns = ()
    commands: Patterns = ()  # what the firmware subscribes to: granted for reading only
    # Compared without regard to case: Tasmota says "Online", ESPHome and Zigbee2MQTT "online".
    online_payload: Annotated[SafeText, Field(min_length=1, max_length=64)] = "online"
    offline_payload: Annotated[SafeText, Field(min_length=1, max_length=64)] = "offline"

    def published(self) -> tuple[tuple[TopicKind, str], ...]:
        """Every pattern the device publishes on, with its kind."""
        availability = () if self.availability is None else (self.availability,)
        return (
            *((TopicKind.TELEMETRY, p) for p in self.telemetry),
            *((TopicKind.AVAILABILITY, p) for p in availability),
            *((TopicKind.STATUS, p) for p in self.status),
        )


_PATH_STEP = re.compile(
    r"\.(?P<key>[^.\[\]'\"]+)|\[(?P<index>\d+)\]|\['(?P<single>(?:[^'\\]|\\.)*)'\]"
    r'|\["(?P<double>(?:[^"\\]|\\.)*)"\]'
)
_ESCAPE = re.compile(r"\\(.)")

JsonPath = tuple[str | int, ...]


def parse_json_path(path: str) -> JsonPath:
    """The steps of a JSON path: ``$.a.b``, ``a.b[0]``, ``$['key.with.dots']``; or ValueError."""
    rest = path[1:] if path.startswith("$") else path
    if rest and not rest.startswith((".", "[")):
        rest = "." + rest
    steps: list[str | int] = []
    position = 0
    while position < len(rest):
        match = _PATH_STEP.match(rest, position)
        if match is None:
            raise ValueError(f"JSON path {path!r} is not understood at {rest[position:]!r}")
        if match["index"] is not None:
            steps.append(int(match["index"]))
        else:
            quoted = match["single"] if match["single"] is not None else match["double"]
            steps.append(match["key"] if quoted is None else _ESCAPE.sub(r"\1", quoted))
        position = match.end()
    if not steps:
        raise ValueError(f"JSON path {path!r} names no field")
    return tuple(steps)


def _check_json_path(path: str) -> str:
    parse_json_path(path)
    return path


def _check_time_zone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{name!r} is not an IANA time zone (e.g. Europe/Berlin)") from None
    return name


JsonPathText = Annotated[SafeText, Field(min_length=1, max_length=256)]
TimeZoneName = Annotated[str, Field(min_length=1, max_length=64), AfterValidator(_check_time_zone)]


class TimestampField(FrozenModel):
    """Where a json-map payload holds its time, and how to read it."""

    path: Annotated[JsonPathText, AfterValidator(_check_json_path)]
    unit: TimestampUnit
    # For ISO 8601 times without an offset (Tasmota's local "Time"); without it they are refused.
    time_zone: TimeZoneName | None = None

    @model_validator(mode="after")
    def _zone_for_text_only(self) -> TimestampField:
        if self.time_zone is not None and self.unit is not TimestampUnit.ISO8601:
            raise ValueError("time_zone applies to ISO 8601 times only (epoch times are UTC)")
        return self


class MetricMapping(FrozenModel):
    """One name the firmware uses, and the iotp metric it is stored as.

    ``source`` is a SenML record name (it may hold ``{device}``), a JSON path (json-map) or a
    topic level (plain). A SenML record matches only with this ``unit`` when it is set.
    """

    source: Annotated[SafeText, Field(min_length=1, max_length=256)]
    metric: MetricName
    unit: Unit | None = None


class DeviceProfile(FrozenModel):
    """A payload format, a topic tree and a metric mapping, shared by a kind of device."""

    name: ProfileName
    payload_format: PayloadFormat = PayloadFormat.IOTP
    gateway: bool = False  # one broker account speaks for many devices, by friendly name
    topics: TopicTree = TopicTree(telemetry=(IOTP_TELEMETRY_PATTERN,))
    metrics: Annotated[tuple[MetricMapping, ...], Field(max_length=MAX_DECLARED_METRICS)] = ()
    timestamp: TimestampField | None = None  # json-map only; without it, the receive time
    # SenML only: what every record's name must start with, e.g. "urn:dev:ow:{device}:".
    senml_base_name: Annotated[SafeText, Field(min_length=1, max_length=256)] | None = None

    @model_validator(mode="after")
    def _check(self) -> DeviceProfile:
        _check_placeholders(self)
        _check_format_fields(self)
        _check_mapping(self)
        _check_overlaps(self)
        return self


def _check_placeholders(profile: DeviceProfile) -> None:
    tree = profile.topics
    for kind, pattern in tree.published():
        levels = pattern.split("/")
        devices, gateways, metrics = (levels.count(p) for p in PLACEHOLDERS)
        wildcards = "+" in levels or "#" in levels
        if kind is not TopicKind.STATUS and wildcards:
            raise ValueError(f"{kind} pattern {pattern!r} must be exact: no '+' or '#'")
        # Only a gateway has topics of its own (Zigbee2MQTT's bridge/state): a device's
        # topics all name it, or the broker could not tell one device's from another's.
        exact = 1 if kind is TopicKind.TELEMETRY or not profile.gateway else None
        if devices > 1 or (exact is not None and devices != exact):
            raise ValueError(f"{kind} pattern {pattern!r} must hold {DEVICE} exactly once")
        if gateways > (1 if profile.gateway else 0):
            raise ValueError(
                f"pattern {pattern!r}: {GATEWAY} is for gateway profiles, at most once"
            )
        wants_metric = kind is TopicKind.TELEMETRY and profile.payload_format is PayloadFormat.PLAIN
        if metrics != (1 if wants_metric else 0):
            where = "exactly once in each telemetry pattern of a plain profile, nowhere else"
            raise ValueError(f"pattern {pattern!r}: {METRIC} belongs {where}")
    for pattern in tree.commands:
        levels = pattern.split("/")
        if METRIC in levels or levels.count(DEVICE) > 1 or levels.count(GATEWAY) > 1:
            raise ValueError(f"command pattern {pattern!r}: at most one {DEVICE}, no {METRIC}")
        if GATEWAY in levels and not profile.gateway:
            raise ValueError(f"pattern {pattern!r}: {GATEWAY} is for gateway profiles")


def _check_format_fields(profile: DeviceProfile) -> None:
    kind = profile.payload_format
    if profile.timestamp is not None and kind is not PayloadFormat.JSON_MAP:
        raise ValueError("a timestamp path is for json-map profiles only")
    if profile.senml_base_name is not None:
        if kind is not PayloadFormat.SENML_JSON:
            raise ValueError("senml_base_name is for senml+json profiles only")
        if profile.senml_base_name.count(DEVICE) > 1:
            raise ValueError(f"senml_base_name holds {DEVICE} at most once")
    if kind is PayloadFormat.IOTP and profile.metrics:
        raise ValueError("an iotp profile maps no metrics: its payloads name them")
    if kind is PayloadFormat.JSON_MAP and not profile.metrics:
        raise ValueError("a json-map profile maps at least one metric to a JSON path")


def _check_mapping(profile: DeviceProfile) -> None:
    kind = profile.payload_format
    sources: set[tuple[str, str | None]] = set()
    metrics: set[str] = set()
    for mapping in profile.metrics:
        if kind is PayloadFormat.JSON_MAP:
            parse_json_path(mapping.source)
        elif kind is PayloadFormat.PLAIN and any(c in mapping.source for c in "/+#"):
            raise ValueError(f"plain source {mapping.source!r} must be one topic level")
        key = (mapping.source, mapping.unit if kind is PayloadFormat.SENML_JSON else None)
        if key in sources:
            raise ValueError(f"source {mapping.source!r} is mapped twice")
        if mapping.metric in metrics:
            raise ValueError(f"metric {mapping.metric!r} is mapped from two sources")
        sources.add(key)
        metrics.add(mapping.metric)


# Tokens of a topic level, for comparing patterns: a literal, one level, or any levels.
_ONE, _ANY = object(), object()
_Token = str | object


def _tokens(pattern: str, gateway: bool) -> tuple[_Token, ...]:
    tokens: list[_Token] = []
    for level in pattern.split("/"):
        if level == "#":
            tokens.append(_ANY)  # "a/#" also matches "a": any number of levels, none included
        elif level == DEVICE and gateway:
            tokens += [_ONE, _ANY]  # a friendly name: one level or more
        elif level == "+" or level in PLACEHOLDERS:
            tokens.append(_ONE)
        else:
            tokens.append(level)
    return tuple(tokens)


def _specificity(pattern: str, gateway: bool) -> tuple[int, ...]:
    """Sort key: the more specific pattern first, level by level from the left.

    A literal level beats a placeholder, one level beats a friendly name (levels), and both
    beat '#'; a pattern that ends beats '#' but not a literal: ``tele/{device}/SENSOR``
    before ``tele/{device}/#``, ``zigbee2mqtt/bridge/#`` before ``zigbee2mqtt/{device}``.
    """
    ranks = []
    for level in pattern.split("/"):
        if level == "#":
            ranks.append(4)
        elif level == DEVICE and gateway:
            ranks.append(2)
        elif level == "+" or level in PLACEHOLDERS:
            ranks.append(1)
        else:
            ranks.append(0)
    return (*ranks, 3)


def _overlap(a: Sequence[_Token], b: Sequence[_Token]) -> bool:
    """Whether some topic matches both token sequences."""

    @functools.cache
    def step(i: int, j: int) -> bool:
        if i < len(a) and a[i] is _ANY:
            return step(i + 1, j) or (j < len(b) and step(i, j + 1))
        if j < len(b) and b[j] is _ANY:
            return step(i, j + 1) or (i < len(a) and step(i + 1, j))
        if i == len(a) or j == len(b):
            return i == len(a) and j == len(b)
        if isinstance(a[i], str) and isinstance(b[j], str) and a[i] != b[j]:
            return False
        return step(i + 1, j + 1)

    return step(0, 0)


def _check_overlaps(profile: DeviceProfile) -> None:
    published = profile.topics.published()
    for position, (_, first) in enumerate(published):
        for _, second in published[position + 1 :]:
            if first == second:
                raise ValueError(f"topic pattern {first!r} is given twice")
            # The more specific pattern wins a topic both match; of two patterns of the same
            # shape, no order could say which one a topic belongs to.
            gateway = profile.gateway
            if _specificity(first, gateway) == _specificity(second, gateway) and _overlap(
                _tokens(first, profile.gateway), _tokens(second, profile.gateway)
            ):
                raise ValueError(
                    f"topic patterns {first!r} and {second!r} overlap: a topic could be either"
                )


@dataclass(frozen=True, slots=True)
class TopicMatch:
    """What a received topic is in a profile's tree, and whose."""

    kind: TopicKind
    device: str | None  # the device's topic name or friendly name; None: the gateway's own
    metric: str | None = None  # the topic level naming the metric (plain)
    gateway: str | None = None


@dataclass(frozen=True, slots=True)
class _CompiledPattern:
    kind: TopicKind
    regex: re.Pattern[str]


def _regex(pattern: str, gateway: bool) -> re.Pattern[str]:
    levels = pattern.split("/")
    tail = ""
    if levels[-1] == "#":
        levels.pop()
        tail = "(?:/.*)?" if levels else r"(?!\$).+"
    parts = []
    for level in levels:
        if level == DEVICE:
            parts.append(r"(?P<device>[^/]+(?:/[^/]+)*)" if gateway else r"(?P<device>[^/]+)")
        elif level in (GATEWAY, METRIC):
            parts.append(rf"(?P<{level[1:-1]}>[^/]+)")
        elif level == "+":
            parts.append(r"[^/]*")
        else:
            parts.append(re.escape(level))
    return re.compile("/".join(parts) + tail, re.DOTALL)


@functools.lru_cache(maxsize=1024)
def _compiled(profile: DeviceProfile) -> tuple[_CompiledPattern, ...]:
    order = {TopicKind.TELEMETRY: 0, TopicKind.AVAILABILITY: 1, TopicKind.STATUS: 2}
    published = sorted(
        profile.topics.published(), key=lambda p: (_specificity(p[1], profile.gateway), order[p[0]])
    )
    return tuple(_CompiledPattern(kind, _regex(p, profile.gateway)) for kind, p in published)


def match_topic(profile: DeviceProfile, topic: str) -> TopicMatch | None:
    """What ``topic`` is in the profile's tree (the most specific pattern wins), or None."""
    for compiled in _compiled(profile):
        match = compiled.regex.fullmatch(topic)
        if match is not None:
            found = match.groupdict()
            return TopicMatch(
                compiled.kind, found.get("device"), found.get("metric"), found.get("gateway")
            )
    return None


def _filter_of(pattern: str, gateway: bool) -> str:
    levels: list[str] = []
    for level in pattern.split("/"):
        if level == DEVICE and gateway:
            levels.append("#")  # a friendly name spans levels: the rest is matched afterwards
            break
        levels.append("+" if level in PLACEHOLDERS else level)
    return "/".join(levels)


def _covers(broad: str, narrow: str) -> bool:
    """Whether every topic that matches filter ``narrow`` matches filter ``broad``."""
    narrow_levels = narrow.split("/")
    for position, level in enumerate(broad.split("/")):
        if level == "#":
            return True
        if position >= len(narrow_levels) or narrow_levels[position] == "#":
            return False
        if level not in ("+", narrow_levels[position]):
            return False
    return len(broad.split("/")) == len(narrow_levels)


def subscription_filters(profiles: Iterable[DeviceProfile]) -> tuple[str, ...]:
    """The MQTT filters that receive every topic the profiles' trees publish, none redundant."""
    found = {
        _filter_of(pattern, profile.gateway)
        for profile in profiles
        for _, pattern in profile.topics.published()
    }
    return tuple(sorted(f for f in found if not any(o != f and _covers(o, f) for o in found)))


@dataclass(frozen=True, slots=True)
class AclGrants:
    """The topics (MQTT filters) one broker account may publish to and subscribe to."""

    write: tuple[str, ...]
    read: tuple[str, ...]


def _check_topic_name(name: str, what: str, levels: bool) -> None:
    parts = name.split("/")
    if not name or any(not part for part in parts) or (not levels and len(parts) > 1):
        raise ValueError(f"{what} {name!r} is not a topic level" + ("s" if levels else ""))
    if any(c in name for c in "+#\x00") or name.startswith("$"):
        raise ValueError(f"{what} {name!r} holds a wildcard, NUL or a leading '$'")


def _render(pattern: str, device: str | None, gateway: str | None) -> str:
    replaced = {DEVICE: device, GATEWAY: gateway, METRIC: "+"}
    return "/".join(replaced.get(level) or level for level in pattern.split("/"))


def _grants(
    profile: DeviceProfile, devices: Sequence[str | None], gateway: str | None
) -> AclGrants:
    def rendered(patterns: Iterable[str]) -> tuple[str, ...]:
        topics: dict[str, None] = {}
        for pattern in patterns:
            names = devices if DEVICE in pattern.split("/") else (None,)
            topics.update((_render(pattern, name, gateway), None) for name in names)
        return tuple(topics)

    write = rendered(pattern for _, pattern in profile.topics.published())
    # A device may read what it publishes (firmware checks its retained state) and its commands.
    return AclGrants(write, tuple(dict.fromkeys((*write, *rendered(profile.topics.commands)))))


def device_acl(profile: DeviceProfile, device_name: str) -> AclGrants:
    """The topics of a device of a (non-gateway) profile, its topic name in place."""
    if profile.gateway:
        raise ValueError(f"profile {profile.name!r} is a gateway profile: use gateway_acl")
    _check_topic_name(device_name, "device topic name", levels=False)
    return _grants(profile, (device_name,), None)


def gateway_acl(
    profile: DeviceProfile, gateway_name: str, friendly_names: Iterable[str]
) -> AclGrants:
    """The topics of a gateway: its own, and each of its devices' by friendly name, no other."""
    if not profile.gateway:
        raise ValueError(f"profile {profile.name!r} is not a gateway profile: use device_acl")
    _check_topic_name(gateway_name, "gateway topic name", levels=False)
    names = tuple(friendly_names)
    for name in names:
        _check_topic_name(name, "friendly name", levels=True)
    return _grants(profile, names, gateway_name)


def _check_friendly_name(name: str) -> str:
    _check_topic_name(name, "friendly name", levels=True)
    return name


FriendlyName = Annotated[
    SafeText, Field(min_length=1, max_length=200), AfterValidator(_check_friendly_name)
]


class GatewayDevices(FrozenModel):
    """The devices a gateway may speak for, by the friendly name its firmware publishes.

    Friendly names may hold what device ids refuse: spaces, and '/' (Zigbee2MQTT's
    ``kitchen/floor_light``).
    """

    gateway_id: DeviceId
    devices: Annotated[dict[FriendlyName, DeviceId], Field(max_length=MAX_GATEWAY_DEVICES)] = Field(
        default_factory=dict
    )

    @model_validator(mode="after")
    def _one_name_each(self) -> GatewayDevices:
        ids = list(self.devices.values())
        twice = sorted({device_id for device_id in ids if ids.count(device_id) > 1})
        if twice:
            raise ValueError(f"devices have two friendly names: {', '.join(twice)}")
        if self.gateway_id in self.devices.values():
            raise ValueError(f"gateway {self.gateway_id!r} cannot speak for itself")
        return self

    def device_id(self, friendly_name: str) -> str | None:
        """The device the gateway publishes as ``friendly_name``, or None if it may not."""
        return self.devices.get(friendly_name)


def friendly_name_conflicts(
    profile: DeviceProfile, gateway_name: str, friendly_names: Iterable[str]
) -> tuple[str, ...]:
    """Friendly names whose telemetry topics would be read as another topic of the tree.

    Zigbee2MQTT's device named ``bridge/state`` would be its bridge's state, say.
    """
    conflicts = []
    for name in friendly_names:
        for pattern in profile.topics.telemetry:
            topic = _render(pattern, name, gateway_name).replace("+", "x")
            found = match_topic(profile, topic)
            if found is None or found.kind is not TopicKind.TELEMETRY or found.device != name:
                conflicts.append(name)
                break
    return tuple(conflicts)


# Always there, never stored: today's payload on devices/{device}/telemetry, every device's
# profile unless it names another.
BUILTIN_PROFILE = DeviceProfile(name=DEFAULT_PROFILE)


def device_topic(profile: DeviceProfile, device_name: str) -> str:
    """The first telemetry topic of a device of ``profile`` (``{metric}`` left for the firmware)."""
    return "/".join(
        device_name if level == DEVICE else level
        for level in profile.topics.telemetry[0].split("/")
    )
