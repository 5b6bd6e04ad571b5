"""Where events live on Redis, on one node or a cluster: the streams, their shards, and reads.

Telemetry events are spread over IOTP_EVENT_SHARDS streams by a stable hash of the device id,
so a device's events stay in order on one shard. Each shard's stream and its bookkeeping hash
share one hash slot (the stream's name is the other key's hash tag), so the scripts that touch
both run on one cluster node; different shards fall in different slots, so a cluster spreads
them over its masters. With one shard the stream keeps its historical name.

Consumers read every stream in their consumer group: on one node with one XREADGROUP, on a
cluster with one per stream (a multi-stream read must stay in one slot there).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping
from typing import Any

import redis
from redis.cluster import RedisCluster

from iotp.names import DEVICE_EVENTS_STREAM, TELEMETRY_DEADLETTER_STREAM, TELEMETRY_EVENTS_STREAM
from iotp.redis_client import text

Entry = tuple[str, dict[bytes, bytes] | None]


def telemetry_streams(shards: int) -> tuple[str, ...]:
    """The telemetry event streams, in shard order."""
    if shards <= 1:
        return (TELEMETRY_EVENTS_STREAM,)
    return tuple(f"{TELEMETRY_EVENTS_STREAM}:{index}" for index in range(shards))


def telemetry_stream_for(device_id: str, shards: int) -> str:
    """The shard of ``device_id``'s telemetry events (CRC-32: stable across processes)."""
    if shards <= 1:
        return TELEMETRY_EVENTS_STREAM
    return f"{TELEMETRY_EVENTS_STREAM}:{zlib.crc32(device_id.encode()) % shards}"


def event_streams(shards: int) -> tuple[str, ...]:
    """Every stream the aggregators fold: device events, then the telemetry shards."""
    return (DEVICE_EVENTS_STREAM, *telemetry_streams(shards))


def companion_key(stream: str, role: str) -> str:
    """A key in ``stream``'s hash slot (for scripts that touch both on a cluster)."""
    return "{" + stream + "}:" + role


def trims_key(stream: str) -> str:
    """Where ingest records what it trimmed from ``stream`` and the cap it applies."""
    return companion_key(stream, "trims")


def trim_record_keys(shards: int) -> tuple[str, ...]:
    """The trim records of every telemetry shard and of the dead-letter stream."""
    return tuple(trims_key(s) for s in (*telemetry_streams(shards), TELEMETRY_DEADLETTER_STREAM))


def stream_trims(client: redis.Redis, shards: int) -> dict[str, str]:
    """The trim records of every shard and the dead letters, as one record.

    Counters add up; times (``*_at``) and caps (``*_cap``) are the largest recorded.
    """
    merged: dict[str, float] = {}
    for key in trim_record_keys(shards):
        values: Any = client.hgetall(key)
        for raw_field, raw_value in values.items():
            field = text(raw_field)
            try:
                value = float(text(raw_value))
            except ValueError:
                continue
            if field.endswith(("_at", "_cap")):
                merged[field] = max(merged.get(field, value), value)
            else:
                merged[field] = merged.get(field, 0.0) + value
    return {
        field: f"{value:.3f}" if field.endswith("_at") else str(int(value))
        for field, value in merged.items()
    }


def is_cluster(client: Any) -> bool:
    return isinstance(client, RedisCluster)


def ensure_groups(client: redis.Redis, group: str, streams: Iterable[str]) -> list[str]:
    """Create ``group`` on every stream (from the stream's beginning) where it is missing;
    the streams it was missing on."""
    created = []
    for stream in streams:
        try:
            client.xgroup_create(stream, group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        else:
            created.append(stream)
    return created


def read_group(
    client: redis.Redis,
    group: str,
    consumer: str,
    positions: Mapping[str, str],
    count: int,
    block_ms: int | None = None,
) -> dict[str, list[Entry]]:
    """XREADGROUP over ``positions`` (stream -> id), by stream; entries deleted since are None.

    On a cluster each stream is read on its own; only the first waits (``block_ms``) when
    nothing was found, so an idle consumer blocks once per round rather than per stream.
    """
    if not is_cluster(client):
        streams: Any = dict(positions)
        response: Any = client.xreadgroup(group, consumer, streams, count, block_ms)
        return by_stream(response)
    batch: dict[str, list[Entry]] = {}
    for stream, position in positions.items():
        response = client.xreadgroup(group, consumer, {stream: position}, count)
        batch.update(by_stream(response))
    if block_ms is not None and not any(batch.values()) and positions:
        stream, position = next(iter(positions.items()))
        response = client.xreadgroup(group, consumer, {stream: position}, count, block_ms)
        batch.update(by_stream(response))
    return batch


def read_streams(
    client: redis.Redis, positions: Mapping[str, str], count: int, block_ms: int | None = None
) -> dict[str, list[Entry]]:
    """XREAD (no group: every reader sees every entry) after ``positions``, by stream.

    On a cluster each stream is read on its own, as :func:`read_group` does.
    """
    streams: Any = dict(positions)
    if not is_cluster(client):
        return by_stream(client.xread(streams, count, block_ms))
    batch: dict[str, list[Entry]] = {}
    for stream in streams:
        batch.update(by_stream(client.xread({stream: streams[stream]}, count, block_ms)))
    return batch


def by_stream(response: Any) -> dict[str, list[Entry]]:
    """An XREAD(GROUP) reply as stream -> [(entry id, fields or None when deleted)]."""
    batch: dict[str, list[Entry]] = {}
    for stream, entries in response or ():
        batch[text(stream)] = [(text(i), f or None) for i, f in entries]
    return batch
