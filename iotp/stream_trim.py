"""Trimming a stream by consumption: only what every consumer group has consumed may go.

An entry may leave a stream once every consumer group has acknowledged it: it is older than
each group's oldest pending entry and than the first entry the group was not yet delivered
(the "floor"). Ingest trims the telemetry shards this way past their cap
(:mod:`ingest.publisher`); the outbox relay trims the relayed event streams this way on its
housekeeping round (:func:`trim_consumed`), whatever their length.

The relayed streams keep their newest entry, so XREVRANGE still tells a reader the stream's
last id (``iotp rebuild``'s positions, the ingest registry follower's start). A stream no
group reads yet is kept whole up to a hard cap (IOTP_EVENT_STREAM_MAXLEN); past it the
oldest entries are cut, counted and logged. Whatever leaves a relayed stream is recorded in
its trim record as ``trimmed_before`` (every entry older than that id may be gone), so a
reader that was not in a group when it happened can tell it missed entries: the ingest
registry reloads from PostgreSQL, a group created after the trim heals from the write store
(:mod:`iotp.stream_gaps`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio as aioredis

from iotp.event_shards import trims_key
from iotp.redis_client import split_id, text

# The field of a relayed stream's trim record: entries older than this id may be gone.
TRIMMED_BEFORE_FIELD = "trimmed_before"

# Lua shared by every trim script: stream ids compared, and the floor of what the groups
# consumed. A script that includes it calls consumed_floor(stream) -> floor (nil when the
# stream has no group), and each group's need (group name -> id).
CONSUMED_FLOOR_LUA = """
local function split(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local function older(a, b)
  local am, as = split(a)
  local bm, bs = split(b)
  return am < bm or (am == bm and as < bs)
end
-- What each group still needs: its oldest pending entry (of those still in the stream: the
-- ids of deleted ones stay pending until a consumer is handed them), else the one after its
-- last delivered entry. Everything older than the oldest need was read and acknowledged.
local function consumed_floor(stream)
  local first = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)[1]
  local needs, floor = {}, nil
  for _, group in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
    local info = {}
    for j = 1, #group, 2 do info[group[j]] = group[j + 1] end
    local ms, seq = split(info['last-delivered-id'])
    local need = string.format('%.0f-%.0f', ms, seq + 1)
    if first then
      local pending = redis.call('XPENDING', stream, info['name'], first[1], '+', 1)[1]
      if pending and older(pending[1], need) then need = pending[1] end
    end
    needs[info['name']] = need
    if floor == nil or older(need, floor) then floor = need end
  end
  return floor, needs
end
"""

# One relayed stream: drop what every group consumed (keeping the newest entry), or with no
# group cut down to the cap. Returns {consumed entries trimmed, entries cut at the cap,
# length after, the group holding the oldest entry ('' when none)}.
_TRIM_CONSUMED = (
    CONSUMED_FLOOR_LUA
    + """
local stream, record, cap, now = KEYS[1], KEYS[2], tonumber(ARGV[1]), ARGV[2]
redis.call('HSET', record, 'event_cap', cap)
local newest = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)[1]
if not newest then return {0, 0, 0, ''} end
local floor, needs = consumed_floor(stream)
if floor == nil then
  if redis.call('XLEN', stream) <= cap then return {0, 0, redis.call('XLEN', stream), ''} end
  local cut = redis.call('XTRIM', stream, 'MAXLEN', cap)
  local first = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)[1][1]
  redis.call('HINCRBY', record, 'cut', cut)
  redis.call('HINCRBY', record, 'cuts_without_group', 1)
  redis.call('HSET', record, 'trimmed_before', first, 'last_cut_at', now)
  return {0, cut, redis.call('XLEN', stream), ''}
end
local holder = ''
for name, need in pairs(needs) do
  if need == floor then holder = name end
end
if older(newest[1], floor) then floor = newest[1] end
local trimmed = redis.call('XTRIM', stream, 'MINID', floor)
if trimmed > 0 then
  redis.call('HINCRBY', record, 'trimmed', trimmed)
  redis.call('HSET', record, 'trimmed_before', floor, 'last_trim_at', now)
end
return {trimmed, 0, redis.call('XLEN', stream), holder}
"""
)


@dataclass(frozen=True)
class StreamTrim:
    """What one trim did to one stream."""

    stream: str
    trimmed: int  # entries every group had consumed
    cut: int  # entries cut at the cap of a stream no group reads
    length: int  # entries left
    held_by: str  # the group whose unconsumed entries are the oldest left ("" with none)


async def trim_consumed(client: aioredis.Redis, stream: str, cap: int, now: float) -> StreamTrim:
    """Trim ``stream`` to what its groups have not consumed (one atomic script)."""
    # EVAL, not EVALSHA: no NOSCRIPT after a Redis restart. Both keys share a slot.
    keys_and_args: Any = (stream, trims_key(stream), cap, f"{now:.3f}")
    reply: Any = await client.eval(_TRIM_CONSUMED, 2, *keys_and_args)
    return StreamTrim(stream, int(reply[0]), int(reply[1]), int(reply[2]), text(reply[3]))


def trimmed_before(client: redis.Redis, stream: str) -> str | None:
    """The id every trimmed entry of ``stream`` was older than, or None if none was trimmed."""
    value: Any = client.hget(trims_key(stream), TRIMMED_BEFORE_FIELD)
    return None if value is None else text(value)


def missed_after(position: str, trimmed: str | None) -> bool:
    """Whether a reader that has read up to ``position`` may have lost entries to a trim."""
    if trimmed is None:
        return False
    ms, seq = split_id(position)
    return split_id(trimmed) > (ms, seq + 1)
