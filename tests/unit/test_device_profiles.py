"""Device profiles: what a saved profile may hold, topic matching, subscriptions and ACLs."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from iotp.device_profiles import (
    AclGrants,
    DeviceProfile,
    GatewayDevices,
    MetricMapping,
    PayloadFormat,
    TimestampField,
    TopicKind,
    TopicMatch,
    TopicTree,
    device_acl,
    friendly_name_conflicts,
    gateway_acl,
    match_topic,
    parse_json_path,
    subscription_filters,
)

TASMOTA = DeviceProfile(
    name="tasmota-am2301",
    payload_format=PayloadFormat.JSON_MAP,
    topics=TopicTree(
        telemetry=("tele/{device}/SENSOR",),
        availability="tele/{device}/LWT",
        status=("tele/{device}/#", "stat/{device}/#"),
        commands=("cmnd/{device}/#",),
    ),
    metrics=(
        MetricMapping(source="AM2301.Temperature", metric="temperature", unit="Cel"),
        MetricMapping(source="AM2301.Humidity", metric="humidity", unit="%RH"),
    ),
    timestamp=TimestampField(path="Time", unit="iso8601", time_zone="Europe/Berlin"),
)
ESPHOME = DeviceProfile(
    name="esphome",
    payload_format=PayloadFormat.PLAIN,
    topics=TopicTree(
        telemetry=("{device}/sensor/{metric}/state",),
        availability="{device}/status",
        status=("{device}/#",),
    ),
)
ZIGBEE2MQTT = DeviceProfile(
    name="zigbee2mqtt",
    payload_format=PayloadFormat.JSON_MAP,
    gateway=True,
    topics=TopicTree(
        telemetry=("zigbee2mqtt/{device}",),
        availability="zigbee2mqtt/{device}/availability",
        status=("zigbee2mqtt/bridge/#",),
        commands=("zigbee2mqtt/{device}/set", "zigbee2mqtt/bridge/request/#"),
    ),
    metrics=(
        MetricMapping(source="temperature", metric="temperature", unit="°C"),
        MetricMapping(source="humidity", metric="humidity", unit="%"),
    ),
)
SITE_GATEWAY = DeviceProfile(
    name="site-gateway",
    payload_format=PayloadFormat.SENML_JSON,
    gateway=True,
    topics=TopicTree(telemetry=("sites/{gateway}/{device}/senml",)),
)
IOTP = DeviceProfile(name="iotp")


def tree(*telemetry: str, **fields: Any) -> TopicTree:
    return TopicTree(telemetry=telemetry, **fields)


def raw(*telemetry: str, **fields: Any) -> dict[str, Any]:
    """A tree as a client sends it, validated only with its profile."""
    return {"telemetry": telemetry, **fields}


def profile(**fields: Any) -> DeviceProfile:
    return DeviceProfile(**{"name": "p", **fields})


# --- matching --------------------------------------------------------------------------


def test_the_default_profile_is_todays_topic() -> None:
    assert IOTP.payload_format is PayloadFormat.IOTP
    assert match_topic(IOTP, "devices/thermo-1/telemetry") == TopicMatch(
        TopicKind.TELEMETRY, "thermo-1"
    )
    assert match_topic(IOTP, "devices/thermo-1/status") is None


@pytest.mark.parametrize(
    ("topic", "expected"),
    [
        ("tele/kitchen/SENSOR", TopicMatch(TopicKind.TELEMETRY, "kitchen")),
        ("tele/kitchen/LWT", TopicMatch(TopicKind.AVAILABILITY, "kitchen")),
        ("tele/kitchen/STATE", TopicMatch(TopicKind.STATUS, "kitchen")),
        ("tele/kitchen/INFO1", TopicMatch(TopicKind.STATUS, "kitchen")),
        ("stat/kitchen/RESULT", TopicMatch(TopicKind.STATUS, "kitchen")),
        ("tele/kitchen", TopicMatch(TopicKind.STATUS, "kitchen")),  # '#' matches the parent
        ("cmnd/kitchen/POWER", None),  # what it reads is not what it publishes
        ("tele/kitchen/SENSOR/extra", TopicMatch(TopicKind.STATUS, "kitchen")),
        ("tele//SENSOR", None),
        ("devices/kitchen/telemetry", None),
    ],
)
def test_tasmota_topics(topic: str, expected: TopicMatch | None) -> None:
    assert match_topic(TASMOTA, topic) == expected


@pytest.mark.parametrize(
    ("topic", "expected"),
    [
        (
            "livingroom/sensor/living_room_temperature/state",
            TopicMatch(TopicKind.TELEMETRY, "livingroom", "living_room_temperature"),
        ),
        ("livingroom/status", TopicMatch(TopicKind.AVAILABILITY, "livingroom")),
        ("livingroom/debug", TopicMatch(TopicKind.STATUS, "livingroom")),
        ("livingroom/switch/relay/state", TopicMatch(TopicKind.STATUS, "livingroom")),
        ("livingroom", TopicMatch(TopicKind.STATUS, "livingroom")),
    ],
)
def test_esphome_topics(topic: str, expected: TopicMatch) -> None:
    assert match_topic(ESPHOME, topic) == expected


@pytest.mark.parametrize(
    ("topic", "expected"),
    [
        ("zigbee2mqtt/Living room sensor", TopicMatch(TopicKind.TELEMETRY, "Living room sensor")),
        ("zigbee2mqtt/kitchen/floor_light", TopicMatch(TopicKind.TELEMETRY, "kitchen/floor_light")),
        (
            "zigbee2mqtt/kitchen/floor_light/availability",
            TopicMatch(TopicKind.AVAILABILITY, "kitchen/floor_light"),
        ),
        # The bridge's own topics are more specific than any friendly name.
        ("zigbee2mqtt/bridge/state", TopicMatch(TopicKind.STATUS, None)),
        ("zigbee2mqtt/bridge/availability", TopicMatch(TopicKind.STATUS, None)),
        ("zigbee2mqtt", None),
        ("zigbee2mqtt/", None),
        ("zigbee2mqtt/a//b", None),
    ],
)
def test_gateway_friendly_names_span_levels(topic: str, expected: TopicMatch | None) -> None:
    assert match_topic(ZIGBEE2MQTT, topic) == expected


def test_a_gateway_placeholder_names_the_gateway() -> None:
    assert match_topic(SITE_GATEWAY, "sites/gw-7/pump/2/senml") == TopicMatch(
        TopicKind.TELEMETRY, "pump/2", gateway="gw-7"
    )


def test_the_more_specific_pattern_wins() -> None:
    p = profile(topics=tree("tele/{device}/SENSOR", status=("tele/{device}/#",)))
    assert match_topic(p, "tele/x/SENSOR") == TopicMatch(TopicKind.TELEMETRY, "x")
    assert match_topic(p, "tele/x/STATE") == TopicMatch(TopicKind.STATUS, "x")


def test_a_plus_in_a_status_pattern_matches_one_level() -> None:
    p = profile(topics=tree("d/{device}/t", status=("d/{device}/+/info",)))
    assert match_topic(p, "d/x/a/info") == TopicMatch(TopicKind.STATUS, "x")
    assert match_topic(p, "d/x/a/b/info") is None


def test_literal_levels_are_not_regular_expressions() -> None:
    p = profile(topics=tree("a.b/{device}/(x)"))
    assert match_topic(p, "a.b/d/(x)") == TopicMatch(TopicKind.TELEMETRY, "d")
    assert match_topic(p, "aXb/d/(x)") is None


# --- validation ------------------------------------------------------------------------

REFUSED_TREES = [
    pytest.param(raw("tele/{device}/+"), "must be exact", id="wildcard-in-telemetry"),
    pytest.param(raw("a/{device}", availability="a/{device}/#"), "exact", id="wildcard-avail"),
    pytest.param(raw("a/{device}", status=("a/#/{device}",)), "last level", id="hash-not-last"),
    pytest.param(raw("a/{device}", status=("a/x#",)), "whole level", id="hash-in-level"),
    pytest.param(raw("a/{device}", status=("a/x+/{device}",)), "whole level", id="plus-in-level"),
    pytest.param(raw("$SYS/{device}"), "'$'", id="dollar"),
    pytest.param(raw("/tele/{device}"), "empty level", id="leading-slash"),
    pytest.param(raw("tele/{device}/"), "empty level", id="trailing-slash"),
    pytest.param(raw("tele//{device}"), "empty level", id="double-slash"),
    pytest.param(raw("tele/{dev}"), "not a placeholder", id="unknown-placeholder"),
    pytest.param(raw("tele/dev-{device}"), "not a placeholder", id="partial-placeholder"),
    pytest.param(raw("tele/SENSOR"), "exactly once", id="no-device"),
    pytest.param(raw("{device}/{device}"), "exactly once", id="device-twice"),
    pytest.param(raw("a/{device}", status=("b/status",)), "exactly once", id="status-no-device"),
    pytest.param(raw("{gateway}/{device}"), "gateway profiles", id="gateway-placeholder"),
    pytest.param(raw("{device}/{metric}"), "plain profile", id="metric-not-plain"),
    pytest.param(raw("a/{device}", "a/{device}"), "given twice", id="same-pattern"),
    pytest.param(
        tree("a/{device}", availability="a/{device}", status=()), "twice", id="telemetry-is-lwt"
    ),
    pytest.param(
        raw("t/{device}", status=("a/+/{device}", "a/{device}/+")), "overlap", id="same-shape"
    ),
    pytest.param(
        raw("t/{device}", status=("+/{device}/x", "{device}/+/x")), "overlap", id="plus-vs-device"
    ),
    pytest.param(raw("a/{device}", commands=("c/{metric}",)), "no {metric}", id="metric-command"),
]


@pytest.mark.parametrize(("topics", "message"), REFUSED_TREES)
def test_a_tree_that_cannot_be_matched_is_refused(topics: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message.replace("$", r"\$")):
        profile(topics=topics)


def test_overlapping_patterns_of_different_shapes_are_resolved_by_specificity() -> None:
    p = profile(topics=tree("a/{device}", "a/x/{device}", status=("+/{device}",)))
    assert match_topic(p, "a/x") == TopicMatch(TopicKind.TELEMETRY, "x")
    assert match_topic(p, "a/x/y") == TopicMatch(TopicKind.TELEMETRY, "y")
    assert match_topic(p, "b/x") == TopicMatch(TopicKind.STATUS, "x")


@pytest.mark.parametrize(
    "pattern", ["{device}/sensor/state", "p/{device}/{gateway}/{metric}/{metric}"]
)
def test_plain_telemetry_names_its_metric_exactly_once(pattern: str) -> None:
    with pytest.raises(ValidationError, match="metric"):
        profile(payload_format="plain", topics=tree(pattern))


def test_a_gateway_may_have_topics_of_its_own_but_telemetry_names_a_device() -> None:
    profile(gateway=True, topics=tree("z/{device}", status=("z/bridge/state",)))
    with pytest.raises(ValidationError, match="exactly once"):
        profile(gateway=True, topics=tree("z/bridge"))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"name": "has space"}, "pattern"),
        ({"metrics": (MetricMapping(source="t", metric="t"),)}, "iotp profile maps no metrics"),
        ({"payload_format": "json-map"}, "at least one metric"),
        (
            {"payload_format": "json-map", "metrics": ({"source": "a..b", "metric": "t"},)},
            "JSON path",
        ),
        ({"payload_format": "senml+json", "timestamp": {"path": "t", "unit": "s"}}, "json-map"),
        ({"senml_base_name": "urn:dev:{device}:"}, "senml\\+json profiles only"),
        (
            {"payload_format": "senml+json", "senml_base_name": "{device}:{device}"},
            "at most once",
        ),
        (
            {
                "payload_format": "senml+json",
                "metrics": (
                    {"source": "a", "metric": "t", "unit": "Cel"},
                    {"source": "a", "metric": "u", "unit": "Cel"},
                ),
            },
            "mapped twice",
        ),
        (
            {
                "payload_format": "senml+json",
                "metrics": ({"source": "a", "metric": "t"}, {"source": "b", "metric": "t"}),
            },
            "two sources",
        ),
        (
            {"payload_format": "senml+json", "metrics": ({"source": "a", "metric": "bad name"},)},
            "pattern",
        ),
        (
            {
                "payload_format": "plain",
                "topics": tree("{device}/{metric}"),
                "metrics": ({"source": "a/b", "metric": "t"},),
            },
            "one topic level",
        ),
        ({"payload_format": "xml"}, "payload_format"),
        ({"topics": {"telemetry": ()}}, "at least 1"),
    ],
)
def test_a_profile_that_does_not_fit_its_format_is_refused(
    fields: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        profile(**fields)


def test_senml_units_select_among_mappings_of_one_name() -> None:
    p = profile(
        payload_format="senml+json",
        metrics=(
            {"source": "urn:dev:ow:{device}", "metric": "humidity", "unit": "%RH"},
            {"source": "urn:dev:ow:{device}", "metric": "lon", "unit": "lon"},
        ),
    )
    assert [m.metric for m in p.metrics] == ["humidity", "lon"]


@pytest.mark.parametrize(
    ("timestamp", "message"),
    [
        ({"path": "Time", "unit": "iso8601", "time_zone": "Mars/Olympus"}, "IANA"),
        ({"path": "Time", "unit": "iso8601", "time_zone": "../../etc/passwd"}, "IANA"),
        ({"path": "Time", "unit": "s", "time_zone": "Europe/Berlin"}, "ISO 8601 times only"),
        ({"path": "Time", "unit": "minutes"}, "unit"),
        ({"path": "", "unit": "s"}, "at least 1"),
    ],
)
def test_a_timestamp_field_is_checked(timestamp: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        TimestampField.model_validate(timestamp)


def test_profiles_are_immutable_and_hashable() -> None:
    with pytest.raises(ValidationError):
        TASMOTA.name = "other"  # type: ignore[misc]
    assert hash(TASMOTA) == hash(TASMOTA.model_copy())
    assert DeviceProfile.model_validate_json(TASMOTA.model_dump_json()) == TASMOTA


@pytest.mark.parametrize(
    ("path", "steps"),
    [
        ("Time", ("Time",)),
        ("AM2301.Temperature", ("AM2301", "Temperature")),
        ("$.ENERGY.Total", ("ENERGY", "Total")),
        ("DS18B20-1.Temperature", ("DS18B20-1", "Temperature")),
        ("sensors[2].value", ("sensors", 2, "value")),
        ("$['a.b'].c", ("a.b", "c")),
        ('$["it\'s"]', ("it's",)),
        ("['x\\'y']", ("x'y",)),
    ],
)
def test_json_paths(path: str, steps: tuple[str | int, ...]) -> None:
    assert parse_json_path(path) == steps


@pytest.mark.parametrize("path", ["$", "a..b", "a.", "a[x]", "a['b", "a[-1]", "a b.c]"])
def test_bad_json_paths(path: str) -> None:
    with pytest.raises(ValueError, match="JSON path"):
        parse_json_path(path)


# --- subscriptions and ACLs ------------------------------------------------------------


def test_subscription_filters_cover_every_tree_without_redundancy() -> None:
    assert subscription_filters([IOTP, TASMOTA, ZIGBEE2MQTT, SITE_GATEWAY]) == (
        "devices/+/telemetry",
        "sites/+/#",
        "stat/+/#",
        "tele/+/#",
        "zigbee2mqtt/#",
    )
    # ESPHome's tree has no prefix: its status pattern takes in every topic.
    assert subscription_filters([TASMOTA, ESPHOME]) == ("+/#",)
    assert subscription_filters([]) == ()


def test_every_published_topic_is_received_by_a_filter() -> None:
    filters = subscription_filters([IOTP, TASMOTA, ZIGBEE2MQTT])
    for topic in ("tele/a/SENSOR", "tele/a/LWT", "zigbee2mqtt/a/b/availability"):
        assert any(_mqtt_match(f, topic) for f in filters), topic


def _mqtt_match(topic_filter: str, topic: str) -> bool:
    levels = topic.split("/")
    for position, level in enumerate(topic_filter.split("/")):
        if level == "#":
            return True
        if position >= len(levels) or level not in ("+", levels[position]):
            return False
    return len(topic_filter.split("/")) == len(levels)


def test_a_device_may_use_exactly_its_own_tree() -> None:
    assert device_acl(TASMOTA, "kitchen") == AclGrants(
        write=("tele/kitchen/SENSOR", "tele/kitchen/LWT", "tele/kitchen/#", "stat/kitchen/#"),
        read=(
            "tele/kitchen/SENSOR",
            "tele/kitchen/LWT",
            "tele/kitchen/#",
            "stat/kitchen/#",
            "cmnd/kitchen/#",
        ),
    )
    assert device_acl(ESPHOME, "livingroom").write == (
        "livingroom/sensor/+/state",
        "livingroom/status",
        "livingroom/#",
    )


def test_a_gateway_may_publish_for_its_devices_and_no_other() -> None:
    grants = gateway_acl(ZIGBEE2MQTT, "gw-1", ["Living room sensor", "kitchen/floor_light"])
    assert grants.write == (
        "zigbee2mqtt/Living room sensor",
        "zigbee2mqtt/kitchen/floor_light",
        "zigbee2mqtt/Living room sensor/availability",
        "zigbee2mqtt/kitchen/floor_light/availability",
        "zigbee2mqtt/bridge/#",
    )
    assert "zigbee2mqtt/Living room sensor/set" in grants.read
    assert "zigbee2mqtt/bridge/request/#" in grants.read
    assert gateway_acl(SITE_GATEWAY, "gw-7", ["pump/2"]).write == ("sites/gw-7/pump/2/senml",)


@pytest.mark.parametrize("name", ["", "a/b", "+", "a#", "$SYS", "x\x00"])
def test_a_device_topic_name_is_one_plain_level(name: str) -> None:
    with pytest.raises(ValueError, match="device topic name"):
        device_acl(TASMOTA, name)


def test_acl_functions_refuse_the_other_kind_of_profile() -> None:
    with pytest.raises(ValueError, match="gateway profile"):
        device_acl(ZIGBEE2MQTT, "x")
    with pytest.raises(ValueError, match="not a gateway profile"):
        gateway_acl(TASMOTA, "gw", ["x"])
    with pytest.raises(ValueError, match="friendly name"):
        gateway_acl(ZIGBEE2MQTT, "gw", ["kitchen/+"])


# --- gateways --------------------------------------------------------------------------


def test_friendly_names_may_hold_what_device_ids_refuse() -> None:
    gateway = GatewayDevices(
        gateway_id="z2m-home",
        devices={"Living room sensor": "aqara-1", "kitchen/floor_light": "light-7"},
    )
    assert gateway.device_id("kitchen/floor_light") == "light-7"
    assert gateway.device_id("Living room sensor") == "aqara-1"
    assert gateway.device_id("cellar") is None


@pytest.mark.parametrize(
    ("devices", "message"),
    [
        ({"a/+": "d1"}, "wildcard"),
        ({"a/#": "d1"}, "wildcard"),
        ({"/a": "d1"}, "topic levels"),
        ({"a//b": "d1"}, "topic levels"),
        ({"": "d1"}, "at least 1"),
        ({"a": "d1", "b": "d1"}, "two friendly names"),
        ({"a": "not a device id"}, "pattern"),
        ({"a": "z2m-home"}, "speak for itself"),
        ({"bell\x07": "d1"}, "control character"),
    ],
)
def test_a_gateway_mapping_is_checked(devices: dict[str, str], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        GatewayDevices(gateway_id="z2m-home", devices=devices)


def test_friendly_names_that_would_read_as_other_topics_are_found() -> None:
    names = ["Living room sensor", "bridge/state", "bridge", "desk/availability", "a/b/c"]
    assert friendly_name_conflicts(ZIGBEE2MQTT, "gw-1", names) == (
        "bridge/state",
        "bridge",
        "desk/availability",
    )
