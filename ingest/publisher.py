"""Publishing telemetry events and dead letters to Redis Streams, one round trip per batch.

The telemetry stream is trimmed so that no consumer group loses an entry it has not read
and acknowledged: it keeps entries up to its cap (IOTP_TELEMETRY_STREAM_MAXLEN, a memory
bound), and past the cap it drops only what every group has acknowledged (XTRIM MINID to
the oldest pending or undelivered entry of any group). Only when the unread entries alone
exceed the cap are some of them cut: each cut is counted in the shard's trim record (in all, and
for each group that lost entries, which the aggregators heal from the write store) and
logged as an error. Dead letters are capped (IOTP_DEADLETTER_STREAM_MAXLEN) and what the
cap drops is counted there too.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import redis

from ingest.store import StreamEntry
from iotp.event_shards import telemetry_stream_for, telemetry_streams, trims_key
from iotp.names import TELEMETRY_DEADLETTER_STREAM
from iotp.periodic import Every
from iotp.redis_client import text
from iotp.stream_trim import CONSUMED_FLOOR_LUA

logger = logging.getLogger(__name__)

# At most one error line per this many seconds while the cap keeps cutting (each counts).
CUT_LOG_SECONDS = 10.0

# Many XADDs in one command (a third of the client-side cost of pipelining them one by one),
# then the trim. Below the cap that is one XLEN: the groups' positions are looked at only
# when the stream is over its cap, which a stream that the groups keep up with reaches once
# per cap's worth of entries (the floor is iotp.stream_trim's, which the outbox relay trims
# its streams to as well). Fields as to_fields() writes them. Returns the entries cut before
# a group read them, then the groups that lost entries.
_XADD_EVENTS = (
    CONSUMED_FLOOR_LUA
    + """
local stream, record, cap = KEYS[1], KEYS[2], tonumber(ARGV[1])
redis.call('HSET', record, 'telemetry_cap', ARGV[1])  -- the cap as this process applies it
for i = 3, #ARGV, 5 do
  redis.call('XADD', stream, '*', 'type', ARGV[i], 'event_id', ARGV[i + 1],
             'device_id', ARGV[i + 2], 'schema_version', ARGV[i + 3], 'data', ARGV[i + 4])
end
if redis.call('XLEN', stream) <= cap then return {0} end
local floor, needs = consumed_floor(stream)
if floor ~= nil then
  redis.call('XTRIM', stream, 'MINID', '~', floor)
  if redis.call('XLEN', stream) <= cap then return {0} end
  redis.call('XTRIM', stream, 'MINID', floor)
  if redis.call('XLEN', stream) <= cap then return {0} end
end
-- Unread entries alone are over the cap: the oldest of them go, loudly.
local nexts = {}
for name, need in pairs(needs) do
  local entry = redis.call('XRANGE', stream, need, '+', 'COUNT', 1)[1]
  if entry then nexts[name] = entry[1] end
end
local cut = redis.call('XTRIM', stream, 'MAXLEN', cap)
local first = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)[1][1]
redis.call('HINCRBY', record, 'telemetry_cut', cut)
redis.call('HINCRBY', record, 'telemetry_cuts', 1)
redis.call('HSET', record, 'telemetry_last_cut_at', ARGV[2])
local result = {cut}
if floor == nil then
  redis.call('HINCRBY', record, 'cuts_without_group', 1)
end
for name, entry in pairs(nexts) do
  if older(entry, first) then
    redis.call('HINCRBY', record, 'cuts:' .. name, 1)
    table.insert(result, name)
  end
end
return result
"""
)
_EVENT_FIELDS = ("type", "event_id", "device_id", "schema_version", "data")

# Dead letters, each as its field count then its fields, added under the cap; returns how
# many entries the cap dropped (approximate trimming drops whole nodes, so it is counted).
_XADD_DEADLETTERS = """
local stream, record = KEYS[1], KEYS[2]
redis.call('HSET', record, 'deadletter_cap', ARGV[1])
local before, added, i = redis.call('XLEN', stream), 0, 3
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  redis.call('XADD', stream, 'MAXLEN', '~', ARGV[1], '*', unpack(ARGV, i + 1, i + 2 * n))
  i, added = i + 1 + 2 * n, added + 1
end
local dropped = before + added - redis.call('XLEN', stream)
if dropped > 0 then
  redis.call('HINCRBY', record, 'deadletter_trimmed', dropped)
  redis.call('HSET', record, 'deadletter_last_trim_at', ARGV[2])
end
return dropped
"""


class StreamPublisher:
    def __init__(
        self, client: redis.Redis, events_maxlen: int, deadletter_maxlen: int, shards: int = 1
    ) -> None:
        self.client = client
        self.events_maxlen = events_maxlen
        self.deadletter_maxlen = deadletter_maxlen
        self.shards = shards
        self._unlogged_cut = 0
        self._cut_groups = ""
        self._cut_log = Every(CUT_LOG_SECONDS)

    def publish(
        self,
        events: Sequence[StreamEntry],
        deadletters: Sequence[StreamEntry] = (),
        stats: tuple[str, Mapping[str, str | int | float]] | None = None,
    ) -> None:
        """XADD everything in one round trip (per node); raises if Redis did not take it all.

        Events go to their device's shard, each shard's in one script call (its keys share a
        slot), in the order given. The cap applies to each shard.
        """
        if not events and not deadletters and stats is None:
            return
        now = f"{time.time():.3f}"
        # EVAL, not EVALSHA: no NOSCRIPT after a Redis restart, and a redis-py pipeline
        # running a registered script asks SCRIPT EXISTS first (a second round trip). As a
        # raw command: the cluster pipeline has no eval() of its own. The scripts also record
        # the caps as this process applies them, for /pipeline.
        commands: list[tuple[Any, ...]] = []
        by_shard = self._by_shard(events)
        for stream, shard_events in by_shard.items():
            keys = (stream, trims_key(stream))
            args = [fields[k] for fields in shard_events for k in _EVENT_FIELDS]
            commands.append(("EVAL", _XADD_EVENTS, 2, *keys, self.events_maxlen, now, *args))
        dead_keys = (TELEMETRY_DEADLETTER_STREAM, trims_key(TELEMETRY_DEADLETTER_STREAM))
        if deadletters:
            counted = [
                part
                for fields in deadletters
                for part in (str(len(fields)), *(v for item in fields.items() for v in item))
            ]
            commands.append(
                ("EVAL", _XADD_DEADLETTERS, 2, *dead_keys, self.deadletter_maxlen, now, *counted)
            )
        if stats is not None:
            key, values = stats
            if values:
                commands.append(("HSET", key, *(v for item in values.items() for v in item)))
                commands.append(("EXPIRE", key, 120))
            # (also when no dead letter came yet)
            commands.append(("HSET", dead_keys[1], "deadletter_cap", self.deadletter_maxlen))
        client: Any = self.client
        if len(commands) == 1:  # the usual publish: one script call, no pipeline to build
            results = [client.execute_command(*commands[0])]
        else:
            # Any: redis-py's stubs want invariant dicts of every scalar type for fields.
            pipe: Any = client.pipeline(transaction=False)
            for command in commands:
                pipe.execute_command(*command)
            results = pipe.execute()
        # Every publish (stats too, once a second) logs what the cap cut and is not logged.
        cut = [0]
        for result in results[: len(by_shard)]:
            cut[0] += int(result[0])
            cut += result[1:]
        self._report_cut(cut)

    def _by_shard(self, events: Sequence[StreamEntry]) -> dict[str, list[StreamEntry]]:
        if self.shards <= 1:
            return {telemetry_streams(1)[0]: list(events)} if events else {}
        shards: dict[str, list[StreamEntry]] = {}
        for fields in events:
            shards.setdefault(telemetry_stream_for(fields["device_id"], self.shards), []).append(
                fields
            )
        return shards

    def _report_cut(self, result: list[Any]) -> None:
        """An error line when the cap cut unread entries: the first at once, then one a while."""
        self._unlogged_cut += int(result[0])
        if int(result[0]):
            self._cut_groups = ", ".join(text(g) for g in result[1:])
        if not self._unlogged_cut or not self._cut_log.take():
            return
        groups = self._cut_groups or "none yet (no consumer group)"
        logger.error(
            "the telemetry stream is at its cap of %s entries (IOTP_TELEMETRY_STREAM_MAXLEN):"
            " %s entries were trimmed before a consumer group read them (groups: %s); the"
            " aggregators recompute their read models from the write store",
            self.events_maxlen,
            self._unlogged_cut,
            groups,
        )
        self._unlogged_cut = 0
