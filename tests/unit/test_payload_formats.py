"""Payload formats of device profiles: real payloads stored exactly, hostile ones dead-lettered.

The good payloads come from tests/fixtures/device_payloads/, written from each firmware's
documentation; each bad one is refused with its reason code, as ingest.payloads refuses.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import orjson
import pytest

from ingest import payloads as p
from ingest.formats import Availability, parse_availability, parse_payload
from ingest.payloads import DeviceInfo, Limits, MetricRange, ParsedMessage, Reading, Rejection
from iotp.device_profiles import (
    DeviceProfile,
    PayloadFormat,
    TopicKind,
    TopicMatch,
    match_topic,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "device_payloads"
NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
LIMITS = Limits(max_payload_bytes=4096, max_readings=20, max_metrics=10)
FREE = DeviceInfo("dev-1", "active", {})
THERMO = DeviceInfo("thermo-1", "active", {"temperature": MetricRange(-40, 60)})


@cache
def fixture(firmware: str, name: str) -> dict[str, Any]:
    document = orjson.loads((FIXTURES / f"{firmware}.json").read_bytes())
    (message,) = (m for m in document["messages"] if m["name"] == name)
    assert message["source"].startswith("https://")
    return dict(message)


def telemetry(device: str | None, metric: str | None = None) -> TopicMatch:
    return TopicMatch(TopicKind.TELEMETRY, device, metric)


def parse(
    profile: DeviceProfile,
    payload: bytes | str | object,
    match: TopicMatch | None = None,
    device: DeviceInfo | None = FREE,
    limits: Limits = LIMITS,
) -> ParsedMessage:
    if isinstance(payload, str):
        raw = payload.encode()
    elif isinstance(payload, bytes):
        raw = payload
    else:
        raw = orjson.dumps(payload)
    return parse_payload(profile, match or telemetry("node"), raw, NOW, device, limits)


def reasons(result: ParsedMessage) -> list[str]:
    return [r.reason for r in result.rejections]


def changed(profile: DeviceProfile, fields: dict[str, Any]) -> DeviceProfile:
    """The profile with some fields replaced, validated as a saved profile is."""
    return DeviceProfile.model_validate({**profile.model_dump(), **fields})


def at(seconds: float) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=seconds)


# --- SenML -----------------------------------------------------------------------------

SENML = DeviceProfile(name="senml", payload_format=PayloadFormat.SENML_JSON)
ONE_WIRE = DeviceProfile(
    name="one-wire",
    payload_format=PayloadFormat.SENML_JSON,
    senml_base_name="urn:dev:ow:{device}",
    metrics=(
        {"source": "urn:dev:ow:{device}", "metric": "temperature", "unit": "Cel"},
        {"source": "urn:dev:ow:{device}:voltage", "metric": "voltage", "unit": "V"},
        {"source": "urn:dev:ow:{device}:current", "metric": "current", "unit": "A"},
    ),
)
OW = telemetry("10e2073a01080063")


def senml(name: str) -> str:
    return str(fixture("senml_rfc8428", name)["payload"])


def test_senml_single_datapoint_is_now() -> None:
    result = parse(ONE_WIRE, senml("single_datapoint"), OW)
    assert result == ParsedMessage("dev-1", (Reading(NOW, {"temperature": 23.1}),), ())


def test_senml_base_name_joins_names_and_record_units_select_the_mapping() -> None:
    result = parse(ONE_WIRE, senml("multiple_datapoints_now"), OW)
    assert result.readings == (Reading(NOW, {"voltage": 120.1, "current": 1.2}),)
    assert result.rejections == ()


def test_senml_relative_times_count_from_the_base_time() -> None:
    profile = changed(ONE_WIRE, {"senml_base_name": "urn:dev:ow:{device}:"})
    result = parse(
        profile, senml("multiple_datapoints_relative_times"), telemetry("10e2073a0108006")
    )
    assert result.rejections == ()
    base = at(1276020076.001)
    assert base == datetime(2010, 6, 8, 18, 1, 16, 1000, tzinfo=UTC)  # the RFC's own words
    assert result.readings == (
        Reading(base, {"voltage": 120.1, "current": 1.7}),
        *(
            Reading(base - timedelta(seconds=s), {"current": v})
            for s, v in [(5, 1.2), (4, 1.3), (3, 1.4), (2, 1.5), (1, 1.6)]
        ),
    )


def test_senml_units_tell_apart_records_of_one_name() -> None:
    profile = DeviceProfile(
        name="mobile",
        payload_format=PayloadFormat.SENML_JSON,
        metrics=tuple(
            {"source": "urn:dev:ow:{device}", "metric": metric, "unit": unit}
            for unit, metric in [
                ("%RH", "humidity"),
                ("lon", "lon"),
                ("lat", "lat"),
                ("%EL", "battery"),
            ]
        ),
    )
    result = parse(profile, senml("multiple_measurements"), OW)
    assert result.rejections == ()
    base = 1320067464
    assert result.readings == (
        Reading(at(base), {"humidity": 20, "lon": 24.30621, "lat": 60.07965}),
        Reading(at(base + 60), {"humidity": 20.3, "lon": 24.30622, "lat": 60.07965}),
        Reading(at(base + 120), {"humidity": 20.7, "lon": 24.30623, "lat": 60.07966}),
        Reading(at(base + 150), {"battery": 98}),
        Reading(at(base + 180), {"humidity": 21.2, "lon": 24.30628, "lat": 60.07967}),
    )


def test_senml_strings_booleans_and_data_are_dead_lettered_beside_the_number() -> None:
    profile = changed(SENML, {"senml_base_name": "urn:dev:ow:{device}:"})
    result = parse(profile, senml("multiple_data_types"), OW)
    assert result.readings == (Reading(NOW, {"temp": 23.1}),)  # unmapped, but a metric name
    assert [(r.reason, r.index) for r in result.rejections] == [
        (p.UNSUPPORTED_VALUE, 1),
        (p.UNSUPPORTED_VALUE, 2),
        (p.UNSUPPORTED_VALUE, 3),
    ]
    assert "a string (vs)" in result.rejections[0].detail
    assert "a boolean (vb)" in result.rejections[1].detail
    assert "data (vd)" in result.rejections[2].detail


def test_senml_a_base_name_for_another_device_is_refused() -> None:
    profile = changed(SENML, {"senml_base_name": "2001:db8::{device}/"})
    result = parse(profile, senml("collection_of_resources"), telemetry("2"))
    assert result.readings == (Reading(at(1320078429), {"temperature": 25.2, "humidity": 30}),)
    assert [(r.reason, r.index) for r in result.rejections] == [
        (p.BASE_NAME_MISMATCH, 2),
        (p.BASE_NAME_MISMATCH, 3),
    ]


def test_senml_names_no_metric_may_hold_are_unmapped() -> None:
    result = parse(SENML, senml("single_datapoint"), OW)
    assert reasons(result) == [p.UNMAPPED_NAME]
    assert "urn:dev:ow:10e2073a01080063" in result.rejections[0].detail
    lwm2m = changed(SENML, {"metrics": ({"source": "/3303/0/5700", "metric": "temperature"},)})
    result = parse(
        lwm2m, [{"bn": "/3303/0/", "n": "5700", "v": 21.5}, {"n": "/3304/0/5700", "v": 1}]
    )
    assert result.readings == (Reading(NOW, {"temperature": 21.5}),)
    assert [(r.reason, r.index) for r in result.rejections] == [(p.UNMAPPED_NAME, 1)]


def test_senml_a_base_fields_only_record_sets_the_base() -> None:
    result = parse(SENML, senml("setting_an_actuator"), OW)
    assert reasons(result) == [p.UNMAPPED_NAME] * 3  # urn:dev:ow:...:temp is no metric name
    profile = changed(SENML, {"senml_base_name": "urn:dev:ow:{device}:"})
    result = parse(profile, senml("setting_an_actuator"), OW)
    assert result == ParsedMessage(
        "dev-1", (Reading(NOW, {"temp": 23.1, "heat": 1, "fan": 0}),), ()
    )


def test_senml_a_unit_other_than_the_mapped_one_is_refused() -> None:
    result = parse(ONE_WIRE, [{"n": "urn:dev:ow:10e2073a01080063", "u": "K", "v": 296.25}], OW)
    assert reasons(result) == [p.UNIT_MISMATCH]
    assert "'K'" in result.rejections[0].detail and "'Cel'" in result.rejections[0].detail
    result = parse(ONE_WIRE, [{"n": "urn:dev:ow:10e2073a01080063", "v": 23}], OW)
    assert reasons(result) == [p.UNIT_MISMATCH]


def test_senml_base_value_base_sum_and_sums() -> None:
    result = parse(
        SENML,
        [
            {"bn": "meter.", "bv": 1000, "bs": 50, "n": "energy", "v": 5},
            {"n": "flow", "s": 2.5},
            {"n": "both", "v": 1, "s": 9},
        ],
    )
    assert result == ParsedMessage(
        "dev-1", (Reading(NOW, {"meter.energy": 1005, "meter.flow": 52.5, "meter.both": 1001}),), ()
    )


@pytest.mark.parametrize(
    ("t", "expected"),
    [
        (0, NOW),
        (-60, NOW - timedelta(seconds=60)),
        (-0.25, NOW - timedelta(milliseconds=250)),
        (2**28 - 1 - 2**28, NOW - timedelta(seconds=1)),
        (1795000000, at(1795000000)),
    ],
)
def test_senml_times_from_2_to_the_28_on_are_absolute(t: float, expected: datetime) -> None:
    result = parse(SENML, [{"n": "x", "t": t, "v": 1}])
    assert result.readings == (Reading(expected, {"x": 1}),)


@pytest.mark.parametrize(
    ("pack", "reason"),
    [
        ([{"n": "x", "t": 3600, "v": 1}], p.TS_IN_FUTURE),  # relative: an hour from now
        ([{"n": "x", "t": 2**28, "v": 1}], p.TS_TOO_OLD),  # absolute: 1978
        ([{"n": "x", "t": 4e9, "v": 1}], p.TS_IN_FUTURE),
        ([{"n": "x", "t": 1e300, "v": 1}], p.INVALID_TIMESTAMP),
        ([{"n": "x", "v": 1}, {"n": "x", "v": 2}], p.DUPLICATE_RECORD),
        ([{"n": "x", "vs": "1"}], p.UNSUPPORTED_VALUE),
        ([{"n": "x", "v": 1, "vb": True}], p.INVALID_SHAPE),
        ([{"n": "x"}], p.INVALID_SHAPE),
        ([{"v": 1}], p.INVALID_SHAPE),
        ([{"n": "x", "v": 1e308, "bv": 1e308}], p.INVALID_VALUE),
        ([{"n": "bad name", "v": 1}], p.UNMAPPED_NAME),
    ],
)
def test_senml_a_bad_record_is_refused_alone(pack: list[dict[str, Any]], reason: str) -> None:
    result = parse(SENML, [{"n": "good", "v": 7}, *pack])
    assert result.readings[0].metrics["good"] == 7
    assert [(r.reason, r.index) for r in result.rejections] == [(reason, len(pack))]


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ("[{", p.INVALID_JSON),
        (b"\xff[]", p.NOT_UTF8),
        ("{}", p.INVALID_SHAPE),
        ("[]", p.INVALID_SHAPE),
        ('"x"', p.INVALID_SHAPE),
        ([{"n": "x", "v": 1}] * 21, p.TOO_MANY_READINGS),
        ([{"n": "x", "v": 1}, 3], p.INVALID_SHAPE),
        ([{"bn": 5, "n": "x", "v": 1}], p.INVALID_SHAPE),
        ([{"bt": "now", "n": "x", "v": 1}], p.INVALID_SHAPE),
        ([{"n": "x", "v": "1"}], p.INVALID_SHAPE),
        ([{"n": "x", "v": True}], p.INVALID_SHAPE),
        ([{"n": "x", "vb": 1}], p.INVALID_SHAPE),
        ([{"bver": 11, "n": "x", "v": 1}], p.INVALID_SHAPE),
        ([{"bver": True, "n": "x", "v": 1}], p.INVALID_SHAPE),
        ([{"n": "x", "v": 1, "crit_": 1}], p.INVALID_SHAPE),
    ],
)
def test_senml_a_pack_that_cannot_be_read_is_refused_whole(payload: object, reason: str) -> None:
    result = parse(SENML, payload)
    assert result.readings == ()
    assert reasons(result) == [reason]


def test_senml_unknown_labels_are_ignored_and_update_time_too() -> None:
    result = parse(SENML, [{"n": "x", "v": 1, "ut": 60, "extension": {"a": 1}}])
    assert result == ParsedMessage("dev-1", (Reading(NOW, {"x": 1}),), ())


def test_senml_a_reading_holds_at_most_max_metrics() -> None:
    limits = Limits(max_readings=20, max_metrics=2)
    result = parse(SENML, [{"n": f"m{i}", "v": i} for i in range(3)], limits=limits)
    assert result.readings == (Reading(NOW, {"m0": 0, "m1": 1}),)
    assert [(r.reason, r.index) for r in result.rejections] == [(p.INVALID_SHAPE, 2)]


def test_senml_declared_metrics_and_ranges_apply() -> None:
    profile = changed(
        ONE_WIRE,
        {"metrics": (*ONE_WIRE.metrics, {"source": "urn:dev:ow:{device}:x", "metric": "x"})},
    )
    pack = [
        {"bn": "urn:dev:ow:10e2073a01080063", "u": "Cel", "v": 75},
        {"n": ":x", "v": 1},
    ]
    result = parse(profile, pack, OW, device=THERMO)
    assert result.readings == (Reading(NOW, {"temperature": 75}, out_of_range=("temperature",)),)
    assert [(r.reason, r.index) for r in result.rejections] == [(p.UNKNOWN_METRIC, 1)]


# --- json-map (Tasmota, Zigbee2MQTT) ---------------------------------------------------

TASMOTA = DeviceProfile(
    name="tasmota-am2301",
    payload_format=PayloadFormat.JSON_MAP,
    topics={
        "telemetry": ("tele/{device}/SENSOR",),
        "availability": "tele/{device}/LWT",
        "status": ("tele/{device}/#", "stat/{device}/#"),
    },
    metrics=(
        {"source": "AM2301.Temperature", "metric": "temperature", "unit": "°C"},
        {"source": "AM2301.Humidity", "metric": "humidity", "unit": "%"},
    ),
    timestamp={"path": "Time", "unit": "iso8601", "time_zone": "Europe/Berlin"},
)
ZIGBEE2MQTT = DeviceProfile(
    name="zigbee2mqtt",
    payload_format=PayloadFormat.JSON_MAP,
    gateway=True,
    topics={
        "telemetry": ("zigbee2mqtt/{device}",),
        "availability": "zigbee2mqtt/{device}/availability",
        "status": ("zigbee2mqtt/bridge/#",),
    },
    metrics=tuple(
        {"source": name, "metric": name}
        for name in ("temperature", "humidity", "pressure", "battery", "linkquality")
    ),
)


def firmware_message(profile: DeviceProfile, firmware: str, name: str) -> ParsedMessage:
    message = fixture(firmware, name)
    match = match_topic(profile, message["topic"])
    assert match is not None and match.kind is TopicKind.TELEMETRY
    return parse(profile, message["payload"], match)


def test_tasmota_local_time_is_read_in_the_profiles_zone() -> None:
    result = firmware_message(TASMOTA, "tasmota", "am2301_sensor")
    # 2019-01-01T00:00:00 in Berlin (CET, +01:00) is 23:00 UTC the day before.
    assert result == ParsedMessage(
        "dev-1",
        (
            Reading(
                datetime(2018, 12, 31, 23, 0, tzinfo=UTC), {"temperature": 24.6, "humidity": 58.2}
            ),
        ),
        (),
    )
    summer = changed(
        TASMOTA, {"timestamp": {"path": "Time", "unit": "iso8601", "time_zone": "America/New_York"}}
    )
    result = firmware_message(summer, "tasmota", "th16_am2301_sensor")
    assert result.readings[0].ts == datetime(2018, 3, 2, 23, 25, 3, tzinfo=UTC)  # EST, -05:00


@pytest.mark.parametrize(
    ("time", "expected"),
    [
        # Spring forward: 02:00-03:00 never happened in Berlin on 2024-03-31.
        ("2024-03-31T01:59:59", datetime(2024, 3, 31, 0, 59, 59, tzinfo=UTC)),
        ("2024-03-31T03:00:00", datetime(2024, 3, 31, 1, 0, tzinfo=UTC)),
        # Fall back: 02:30 happened twice on 2024-10-27; the first passing (CEST) is taken.
        ("2024-10-27T02:30:00", datetime(2024, 10, 27, 0, 30, tzinfo=UTC)),
        ("2024-10-27T03:30:00", datetime(2024, 10, 27, 2, 30, tzinfo=UTC)),
        ("2024-07-01T12:00:00+00:00", datetime(2024, 7, 1, 12, 0, tzinfo=UTC)),  # offset wins
        ("2024-07-01T12:00:00Z", datetime(2024, 7, 1, 12, 0, tzinfo=UTC)),
    ],
)
def test_offset_less_times_across_daylight_saving(time: str, expected: datetime) -> None:
    result = parse(TASMOTA, {"Time": time, "AM2301": {"Temperature": 1}})
    assert result.readings == (Reading(expected, {"temperature": 1}),)


@pytest.mark.parametrize(
    ("time", "detail"),
    [
        ("2024-03-31T02:30:00", "never happened in Europe/Berlin"),
        ("yesterday", "is not ISO 8601"),
        (1704067200, "must be ISO 8601 text"),
        (None, "must be ISO 8601 text"),
    ],
)
def test_a_bad_tasmota_time_refuses_the_message(time: object, detail: str) -> None:
    result = parse(TASMOTA, {"Time": time, "AM2301": {"Temperature": 1}})
    assert result.readings == ()
    assert reasons(result) == [p.INVALID_TIMESTAMP]
    assert detail in result.rejections[0].detail


def test_a_time_without_offset_needs_a_zone() -> None:
    profile = changed(TASMOTA, {"timestamp": {"path": "Time", "unit": "iso8601"}})
    result = parse(profile, {"Time": "2024-07-01T12:00:00", "AM2301": {"Temperature": 1}})
    assert reasons(result) == [p.INVALID_TIMESTAMP]
    assert "no UTC offset" in result.rejections[0].detail
    assert reasons(parse(profile, {"AM2301": {"Temperature": 1}})) == [p.INVALID_TIMESTAMP]


@pytest.mark.parametrize(
    ("unit", "raw", "expected"),
    [
        ("s", 1795000000, at(1795000000)),
        ("s", 1795000000.5, at(1795000000.5)),
        ("ms", 1795000000123, at(1795000000.123)),
    ],
)
def test_epoch_timestamps(unit: str, raw: float, expected: datetime) -> None:
    profile = changed(TASMOTA, {"timestamp": {"path": "$.meta.ts", "unit": unit}})
    result = parse(profile, {"meta": {"ts": raw}, "AM2301": {"Temperature": 1}})
    assert result.readings == (Reading(expected, {"temperature": 1}),)


@pytest.mark.parametrize(
    ("unit", "raw", "reason"),
    [
        ("s", "1795000000", p.INVALID_TIMESTAMP),
        ("s", True, p.INVALID_TIMESTAMP),
        ("s", 1e300, p.INVALID_TIMESTAMP),
        ("ms", 1795000000, p.TS_TOO_OLD),  # seconds sent as milliseconds: 1970
        ("s", 1795000000123, p.INVALID_TIMESTAMP),  # milliseconds as seconds: year 58851
        ("s", 1900000000, p.TS_IN_FUTURE),
    ],
)
def test_bad_epoch_timestamps(unit: str, raw: object, reason: str) -> None:
    profile = changed(TASMOTA, {"timestamp": {"path": "ts", "unit": unit}})
    assert reasons(parse(profile, {"ts": raw, "AM2301": {"Temperature": 1}})) == [reason]


def test_max_age_applies_to_mapped_times() -> None:
    limits = Limits(max_age=timedelta(days=30))
    result = firmware_message(TASMOTA, "tasmota", "am2301_sensor")
    assert result.rejections == ()
    message = fixture("tasmota", "am2301_sensor")
    late = parse(TASMOTA, message["payload"], telemetry("x"), limits=limits)
    assert reasons(late) == [p.TS_TOO_OLD]


def test_zigbee2mqtt_devices_publish_flat_json_at_the_receive_time() -> None:
    result = firmware_message(ZIGBEE2MQTT, "zigbee2mqtt", "aqara_temperature_humidity")
    assert result == ParsedMessage(
        "dev-1",
        (
            Reading(
                NOW,
                {
                    "temperature": 21.37,
                    "humidity": 48.52,
                    "pressure": 1012.4,
                    "battery": 91,
                    "linkquality": 134,
                },
            ),
        ),
        (),
    )
    result = firmware_message(ZIGBEE2MQTT, "zigbee2mqtt", "mijia_temperature_humidity")
    assert result.readings == (Reading(NOW, {"temperature": 27.34, "humidity": 44.72}),)


def test_a_json_map_message_without_any_mapped_metric_is_refused() -> None:
    result = firmware_message(ZIGBEE2MQTT, "zigbee2mqtt", "wireless_switch_action")
    assert reasons(result) == [p.INVALID_SHAPE]
    assert "none of profile 'zigbee2mqtt'" in result.rejections[0].detail


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ("{", p.INVALID_JSON),
        (b'{"temperature": "\xff"}', p.NOT_UTF8),
        ([{"temperature": 1}], p.INVALID_SHAPE),
        ("21.5", p.INVALID_SHAPE),
        ({"temperature": "21.5"}, p.INVALID_VALUE),
        ({"temperature": None}, p.INVALID_VALUE),
        ({"temperature": True}, p.INVALID_VALUE),
        ({"temperature": {"value": 1}}, p.INVALID_VALUE),
    ],
)
def test_bad_json_map_payloads(payload: object, reason: str) -> None:
    result = parse(ZIGBEE2MQTT, payload, telemetry("x"))
    assert result.readings == ()
    assert reasons(result) == [reason]


def test_a_bad_value_does_not_refuse_its_neighbours() -> None:
    result = parse(ZIGBEE2MQTT, {"temperature": 20, "battery": None}, telemetry("x"), device=THERMO)
    assert result.readings == (Reading(NOW, {"temperature": 20}),)
    assert reasons(result) == [p.INVALID_VALUE]
    result = parse(ZIGBEE2MQTT, {"temperature": 99, "humidity": 40}, telemetry("x"), device=THERMO)
    assert result.readings == (Reading(NOW, {"temperature": 99}, ("temperature",)),)
    assert reasons(result) == [p.UNKNOWN_METRIC]


def test_json_paths_reach_into_arrays_and_odd_keys() -> None:
    profile = DeviceProfile(
        name="nested",
        payload_format=PayloadFormat.JSON_MAP,
        metrics=(
            {"source": "$.ENERGY.Total", "metric": "energy_total"},
            {"source": "DS18B20-1.Temperature", "metric": "t1"},
            {"source": "probes[1].v", "metric": "probe2"},
            {"source": "$['a.b']", "metric": "dotted"},
        ),
    )
    payload = {
        "ENERGY": {"Total": 12.5},
        "DS18B20-1": {"Temperature": 4.5},
        "probes": [{"v": 1}, {"v": 2}],
        "a.b": 3,
    }
    result = parse(profile, payload)
    assert result.readings == (
        Reading(NOW, {"energy_total": 12.5, "t1": 4.5, "probe2": 2, "dotted": 3}),
    )
    assert parse(profile, {"probes": [{"v": 1}], "a": {"b": 3}}).readings == ()


def test_tasmota_state_maps_wifi_signal() -> None:
    profile = changed(
        TASMOTA,
        {
            "metrics": (
                {"source": "Wifi.RSSI", "metric": "wifi_rssi"},
                {"source": "Vcc", "metric": "vcc"},
            ),
            "topics": {"telemetry": ("tele/{device}/STATE",)},
        },
    )
    result = firmware_message(profile, "tasmota", "th16_state")
    assert result.readings == (
        Reading(datetime(2018, 3, 2, 17, 25, 2, tzinfo=UTC), {"wifi_rssi": 66, "vcc": 3.151}),
    )


# --- plain (ESPHome) -------------------------------------------------------------------

ESPHOME = DeviceProfile(
    name="esphome",
    payload_format=PayloadFormat.PLAIN,
    topics={
        "telemetry": ("{device}/sensor/{metric}/state",),
        "availability": "{device}/status",
        "status": ("{device}/#",),
    },
    metrics=({"source": "living_room_temperature", "metric": "temperature", "unit": "°C"},),
)


def test_esphome_states_are_numbers_at_the_receive_time() -> None:
    result = firmware_message(ESPHOME, "esphome", "sensor_state")
    assert result == ParsedMessage("dev-1", (Reading(NOW, {"temperature": 23.5}),), ())
    # Unmapped, the topic level is the metric when it is a valid metric name.
    result = firmware_message(ESPHOME, "esphome", "sensor_state_negative")
    assert result.readings == (Reading(NOW, {"outside_temperature": -4.25}),)


def test_esphome_nan_is_dead_lettered() -> None:
    result = firmware_message(ESPHOME, "esphome", "sensor_state_nan")
    assert result.readings == ()
    assert reasons(result) == [p.INVALID_VALUE]
    assert "'nan' is not a number" in result.rejections[0].detail


@pytest.mark.parametrize(
    ("payload", "value"),
    [
        ("23.5\n", 23.5),
        (" 7 ", 7),
        ("-0.5", -0.5),
        ("+3", 3),
        ("1e3", 1000),
        (".5", 0.5),
        ("5.", 5),
    ],
)
def test_plain_numbers(payload: str, value: float) -> None:
    result = parse(ESPHOME, payload, telemetry("n", "x"))
    assert result.readings == (Reading(NOW, {"x": value}),)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ("nan", p.INVALID_VALUE),
        ("NaN", p.INVALID_VALUE),
        ("inf", p.INVALID_VALUE),
        ("-Infinity", p.INVALID_VALUE),
        ("unknown", p.INVALID_VALUE),
        ("unavailable", p.INVALID_VALUE),
        ("ON", p.INVALID_VALUE),
        ("", p.INVALID_VALUE),
        ("1_000", p.INVALID_VALUE),
        ("0x10", p.INVALID_VALUE),
        ("1,5", p.INVALID_VALUE),
        ("23.5 °C", p.INVALID_VALUE),
        ('{"value": 1}', p.INVALID_VALUE),
        ("1e999", p.INVALID_VALUE),
        (b"\xff", p.NOT_UTF8),
    ],
)
def test_plain_non_numbers_are_dead_lettered(payload: str | bytes, reason: str) -> None:
    assert reasons(parse(ESPHOME, payload, telemetry("n", "x"))) == [reason]


def test_plain_metric_names_go_through_the_mapping() -> None:
    assert reasons(parse(ESPHOME, "1", telemetry("n", "Temp (°C)"))) == [p.UNMAPPED_NAME]
    assert reasons(parse(ESPHOME, "1", telemetry("n", None))) == [p.INVALID_TOPIC]
    result = parse(ESPHOME, "75", telemetry("n", "living_room_temperature"), device=THERMO)
    assert result.readings == (Reading(NOW, {"temperature": 75}, ("temperature",)),)
    assert reasons(parse(ESPHOME, "1", telemetry("n", "other"), device=THERMO)) == [
        p.UNKNOWN_METRIC
    ]


# --- every format: the checks before the payload ---------------------------------------

IOTP = DeviceProfile(name="iotp")
PROFILES = [IOTP, DeviceProfile(name="s", payload_format="senml+json"), TASMOTA, ESPHOME]


@pytest.mark.parametrize("profile", PROFILES, ids=lambda x: x.payload_format)
def test_every_format_refuses_unknown_stopped_and_oversized(profile: DeviceProfile) -> None:
    match = telemetry("node", "x")
    unknown = parse(profile, "1", match, device=None)
    assert unknown == ParsedMessage(
        None, (), (Rejection(p.UNKNOWN_DEVICE, "no registered device publishes as 'node'"),)
    )
    stopped = DeviceInfo("old-1", "decommissioned", {})
    assert reasons(parse(profile, "1", match, device=stopped)) == [p.DEVICE_DECOMMISSIONED]
    oversized = parse(profile, "1" * 4097, match)
    assert oversized.device_id == "dev-1"
    assert reasons(oversized) == [p.PAYLOAD_TOO_LARGE]


def test_the_iotp_format_is_todays_parser() -> None:
    payload = orjson.dumps(
        [{"ts": "2026-11-24T11:59:00Z", "metrics": {"temp": 1}}, {"metrics": {"temp": "x"}}]
    )
    through_profile = parse(IOTP, payload, telemetry("dev-1"))
    direct = p.parse_message("devices/dev-1/telemetry", payload, NOW, {"dev-1": FREE}.get, LIMITS)
    assert through_profile == direct
    assert reasons(direct) == [p.INVALID_VALUE]


def test_only_telemetry_is_parsed_as_readings() -> None:
    with pytest.raises(ValueError, match="availability"):
        parse_payload(
            ESPHOME, TopicMatch(TopicKind.AVAILABILITY, "n"), b"online", NOW, FREE, LIMITS
        )


# --- availability ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("profile", "firmware", "name", "expected"),
    [
        (TASMOTA, "tasmota", "lwt_online", Availability.ONLINE),
        (TASMOTA, "tasmota", "lwt_offline", Availability.OFFLINE),
        (ESPHOME, "esphome", "status_online", Availability.ONLINE),
        (ESPHOME, "esphome", "status_offline", Availability.OFFLINE),
        (ZIGBEE2MQTT, "zigbee2mqtt", "device_availability", Availability.ONLINE),
        (ZIGBEE2MQTT, "zigbee2mqtt", "bridge_state_online", Availability.ONLINE),
        (ZIGBEE2MQTT, "zigbee2mqtt", "bridge_state_legacy_offline", Availability.OFFLINE),
    ],
)
def test_availability_payloads(
    profile: DeviceProfile, firmware: str, name: str, expected: Availability
) -> None:
    message = fixture(firmware, name)
    match = match_topic(profile, message["topic"])
    assert match is not None and match.kind in (TopicKind.AVAILABILITY, TopicKind.STATUS)
    assert parse_availability(profile, message["payload"].encode()) is expected


@pytest.mark.parametrize("payload", [b"", b"maybe", b"\xff", b"{", b'{"state": 1}', b"[]"])
def test_availability_payloads_that_say_neither(payload: bytes) -> None:
    assert parse_availability(ESPHOME, payload) is None


def test_every_fixture_names_its_source() -> None:
    for path in sorted(FIXTURES.glob("*.json")):
        document = orjson.loads(path.read_bytes())
        assert document["source"].startswith("https://"), path.name
        for message in document["messages"]:
            assert message["source"].startswith("https://"), (path.name, message["name"])
            assert isinstance(message["payload"], str)
