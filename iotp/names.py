"""Every Redis key, stream name and MQTT topic iotp uses, in one place."""

from __future__ import annotations

DEVICE_EVENTS_STREAM = "iotp:events:devices"
TELEMETRY_EVENTS_STREAM = "iotp:events:telemetry"
TELEMETRY_DEADLETTER_STREAM = "iotp:deadletter:telemetry"
# AlarmRaised, AlarmAcknowledged and AlarmCleared, in the order they happened (issue 16).
ALARM_EVENTS_STREAM = "iotp:events:alarms"
# AlarmRuleCreated, AlarmRuleUpdated and AlarmRuleDeleted (issue 16): configuration events.
ALARM_RULE_EVENTS_STREAM = "iotp:events:alarm-rules"
# WebhookRegistered and WebhookDeleted, relayed from the command side's outbox (issue 16).
WEBHOOK_EVENTS_STREAM = "iotp:events:webhooks"
# ApiKeyCreated/Revoked, DashboardAccountCreated/Changed and AccessDenied (issue 22).
ACCESS_EVENTS_STREAM = "iotp:events:access"
# DeviceProfileSaved/Deleted and GatewayRegistered/Changed/Deleted (issue 25): how devices
# connect. Apart from the device stream, whose every consumer relies on a device_id; read by
# ingest and broker-sync, which must know every profile and gateway.
PROFILE_EVENTS_STREAM = "iotp:events:profiles"

TELEMETRY_TOPIC_FILTER = "devices/+/telemetry"


def telemetry_topic(device_id: str) -> str:
    """The MQTT topic a device publishes its readings on."""
    return f"devices/{device_id}/telemetry"


INGEST_STATS_KEY_PREFIX = "iotp:ingest:stats:"


def ingest_stats_key(client_id: str) -> str:
    """The Redis hash where an ingest process publishes its counters for `iotp status`."""
    return f"{INGEST_STATS_KEY_PREFIX}{client_id}"


# The persistent MQTT sessions of ingest processes (client id -> JSON record), and when each
# last beat while connected (a sorted set scored by Redis time); ingest/presence.py.
INGEST_SESSIONS_KEY = "iotp:ingest:sessions"
# In the sessions key's hash slot: one script reads both (ingest/presence.py), on a cluster too.
INGEST_HEARTBEATS_KEY = "{iotp:ingest:sessions}:heartbeats"


def shared_telemetry_subscription(group: str) -> str:
    """The MQTT v5 shared subscription that splits telemetry across ingest processes."""
    return f"$share/{group}/{TELEMETRY_TOPIC_FILTER}"


RELAY_STATS_KEY = "iotp:relay:stats"  # outbox backlog, for the read side's pipeline view

# What ingest trimmed from each stream is kept beside it, in "{<stream>}:trims" (one hash
# slot with the stream: iotp.event_shards.trims_key): entries of a telemetry shard cut at its
# cap before a consumer group read them (in all, and per group as "cuts:<group>"), dead
# letters dropped at the dead-letter stream's cap, and the caps themselves. The outbox relay
# keeps the same record for each stream it fills (iotp.stream_trim): what it trimmed once
# every group had consumed it, what the cap cut from a stream no group reads, and the id
# every trimmed entry was older than ("trimmed_before").
# Gaps the aggregators found in what they read, and their heals from the write store.
READ_MODEL_HEALS_KEY = "iotp:read_models:heals"
CONSUMER_STATS_KEY_PREFIX = "iotp:consumers:"


def consumer_stats_key(group: str) -> str:
    """The Redis hash where every consumer of ``group`` adds its counters (iotp.group_reader)."""
    return f"{CONSUMER_STATS_KEY_PREFIX}{group}"


# Refused credentials and throttled requests of both HTTP APIs ("<api>:failures",
# "<api>:throttled", "last_failure_at"), for /pipeline's `auth` (iotp.auth_throttle).
AUTH_FAILURES_KEY = "iotp:auth:failures"

# Mosquitto's own counters ($SYS), as ingest last read them.
BROKER_STATS_KEY = "iotp:broker:stats"
BROKER_SYS_TOPICS = "$SYS/broker/#"


def stream_cuts_field(group: str) -> str:
    """The field of a stream's trim record counting the cuts into ``group``'s unread entries."""
    return f"cuts:{group}"
