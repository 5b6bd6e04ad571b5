"""Every Redis key, stream name and MQTT topic iotp uses, in one place."""

from __future__ import annotations

DEVICE_EVENTS_STREAM = "iotp:events:devices"
TELEMETRY_EVENTS_STREAM = "iotp:events:telemetry"
TELEMETRY_DEADLETTER_STREAM = "iotp:deadletter:telemetry"

TELEMETRY_TOPIC_FILTER = "devices/+/telemetry"


def telemetry_topic(device_id: str) -> str:
    """The MQTT topic a device publishes its readings on."""
    return f"devices/{device_id}/telemetry"
