"""The README's "Connecting real devices" examples are valid and read as they say.

Each profile example is validated as the command API validates it; each payload example,
on its topic, is matched to its profile's tree and parsed by ingest's own parser, with
nothing dead-lettered; the gateway example maps its friendly name to its device.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import orjson

from ingest.formats import parse_payload
from ingest.payloads import DeviceInfo, Limits
from iotp.device_profiles import (
    DeviceProfile,
    GatewayDevices,
    TopicKind,
    friendly_name_conflicts,
    match_topic,
)

README = Path(__file__).parents[2] / "README.md"
BLOCK = re.compile(r"```json (profile|payload|gateway)([^\n]*)\n(.*?)```", re.DOTALL)
RECEIVED = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)


def _examples() -> list[tuple[str, str, str]]:
    text = README.read_text(encoding="utf-8")
    start = text.index("## Connecting real devices")
    end = text.index("\n## ", start + 1)
    return [(m[1], m[2].strip(), m[3]) for m in BLOCK.finditer(text[start:end])]


def test_every_payload_example_is_read_by_the_profile_before_it() -> None:
    examples = _examples()
    assert [kind for kind, _, _ in examples].count("profile") == 4
    profile: DeviceProfile | None = None
    gateway: GatewayDevices | None = None
    parsed = 0
    for kind, topic, body in examples:
        if kind == "profile":
            profile, gateway = DeviceProfile.model_validate(orjson.loads(body)), None
            continue
        assert profile is not None
        if kind == "gateway":
            spec = orjson.loads(body)
            assert spec["profile"] == profile.name and profile.gateway
            gateway = GatewayDevices(gateway_id=spec["gateway_id"], devices=spec["devices"])
            assert not friendly_name_conflicts(profile, spec["gateway_id"], list(spec["devices"]))
            continue
        match = match_topic(profile, topic)
        assert match is not None and match.kind is TopicKind.TELEMETRY, topic
        assert match.device is not None
        device_id = gateway.device_id(match.device) if gateway is not None else match.device
        assert device_id is not None, match.device
        device = DeviceInfo(device_id, "active", profile=profile.name)
        message = parse_payload(profile, match, body.encode(), RECEIVED, device, Limits())
        assert not message.rejections, (topic, message.rejections)
        assert message.readings, topic
        parsed += 1
    assert parsed == 4


def test_the_examples_store_what_they_say() -> None:
    """Spot checks: the Tasmota local time in its zone, SenML's relative time and names."""
    by_topic = {}
    profile: DeviceProfile | None = None
    for kind, topic, body in _examples():
        if kind == "profile":
            profile = DeviceProfile.model_validate(orjson.loads(body))
        elif kind == "payload" and profile is not None and not profile.gateway:
            match = match_topic(profile, topic)
            assert match is not None and match.device is not None
            device = DeviceInfo(match.device, "active", profile=profile.name)
            by_topic[topic] = parse_payload(
                profile, match, body.encode(), RECEIVED, device, Limits()
            )
    tasmota = by_topic["tele/plug-1/SENSOR"].readings
    assert [(r.ts, dict(r.metrics)) for r in tasmota] == [
        (datetime(2026, 12, 7, 8, 30, tzinfo=UTC), {"temperature": 21.3, "humidity": 45.1})
    ]
    senml = sorted(by_topic["devices/boiler-1/senml"].readings, key=lambda r: r.ts)
    assert [r.ts.timestamp() for r in senml] == [1765100000, 1765100060]
    assert dict(senml[0].metrics) == {"temperature": 21.5, "humidity": 40.2}
    plain = by_topic["living-room/sensor/temperature/state"].readings
    assert [dict(r.metrics) for r in plain] == [{"temperature": 22.4}]
