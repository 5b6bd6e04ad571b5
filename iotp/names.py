"""Every Redis key, stream name and MQTT topic iotp uses, in one place."""

from __future__ import annotations

DEVICE_EVENTS_STREAM = "iotp:events:devices"
TELEMETRY_EVENTS_STREAM = "iotp:events:telemetry"
TELEMETRY_DEADLETTER_STREAM = "iotp:deadletter:telemetry"

TELEMETRY_TOPIC_FILTER = "devices/+/telemetry"


def telemetry_topic(device_id: str) -> str:
    """The MQTT topic a device publishes its readings on."""
    return f"devices/{device_id}/telemetry"


INGEST_STATS_KEY_PREFIX = "iotp:ingest:stats:"


def ingest_stats_key(client_id: str) -> str:
    """The Redis hash where an ingest process publishes its counters for `iotp status`."""
    return f"{INGEST_STATS_KEY_PREFIX}{client_id}"


def shared_telemetry_subscription(group: str) -> str:
    """The MQTT v5 shared subscription that splits telemetry across ingest processes."""
    return f"$share/{group}/{TELEMETRY_TOPIC_FILTER}"


RELAY_STATS_KEY = "iotp:relay:stats"  # outbox backlog, for the read side's pipeline view
