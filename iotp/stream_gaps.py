"""Gaps in what a consumer group applied: found, healed from the write store, reported.

A gap is an event the group never applied because it left Redis first: ingest cut it at a
telemetry shard's cap (ingest counts each cut per group in the shard's trim record), it was
deleted while pending (Redis hands such entries back without fields), the outbox relay
trimmed a stream before the group was created on it (:mod:`iotp.stream_trim`), or Redis
lost the stream or the group (a restart without its data, a flush: the group had to be
created again although the part had applied entries, or the part's recorded position is
beyond what the group was ever delivered). The write store holds every stored reading,
device and alarm, so a gap is healed by the part recomputing its state from it (its
``heal``). Heals are counted in the group's stats hash (and in ``heals_key`` when given),
and a cut counts as healed only once a heal that started after it has finished, so a crash
mid-heal heals again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import redis

from iotp.event_shards import stream_trims, telemetry_streams
from iotp.names import READ_MODEL_HEALS_KEY, consumer_stats_key, stream_cuts_field
from iotp.periodic import Every
from iotp.redis_client import split_id, text
from iotp.stream_trim import trimmed_before

logger = logging.getLogger(__name__)

CHECK_SECONDS = 1.0
# The part's heal: recompute from the write store, then record these positions (stream ->
# the id its group was last delivered) as its own.
Heal = Callable[[Mapping[str, str]], object]

# Raise a field to a value, never lower it (two consumers may finish heals out of order).
_RAISE_TO = """
local current = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if tonumber(ARGV[2]) > current then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
"""


def healed_field(group: str) -> str:
    """The field of READ_MODEL_HEALS_KEY: the cuts into ``group``'s entries already healed."""
    return f"healed:{group}"


def cuts_into(
    client: redis.Redis, group: str, shards: int = 1, trims: dict[str, str] | None = None
) -> tuple[int, int]:
    """How many cuts of the telemetry shards took entries ``group`` had not read, and healed.

    ``trims`` is :func:`stream_trims`'s record when the caller read it already.
    """
    if trims is None:
        trims = stream_trims(client, shards)
    healed: Any = client.hget(READ_MODEL_HEALS_KEY, healed_field(group))
    own = int(trims.get(stream_cuts_field(group), 0))
    return own + int(trims.get("cuts_without_group", 0)), int(healed or 0)


class GapWatch:
    """Finds the gaps of one consumer group and has the part heal them."""

    def __init__(
        self,
        client: redis.Redis,
        group: str,
        streams: tuple[str, ...],
        heal: Heal,
        *,
        shards: int = 1,
        heals_key: str | None = None,
    ) -> None:
        self.client = client
        self.group = group
        self.streams = streams
        self.shards = shards
        self.heal = heal
        self.heals_key = heals_key
        # Only the telemetry shards are ever cut at a cap (by ingest, which counts the cuts).
        self._cut = bool(set(streams) & set(telemetry_streams(shards)))
        self._found: list[str] = []  # gaps found and not yet healed, as log phrases
        self._cuts_seen: int | None = None
        self._check = Every(CHECK_SECONDS)

    def found(self, phrase: str) -> None:
        """A gap, said as a phrase for the log: healed at the next check."""
        if phrase not in self._found:
            logger.error("group %s: %s", self.group, phrase)
            self._found.append(phrase)

    def entries_deleted(self, stream: str, count: int) -> None:
        """``count`` entries of ``stream`` came back without fields: deleted before applied."""
        pipe: Any = self.client.pipeline(transaction=False)
        pipe.hincrby(consumer_stats_key(self.group), "deleted", count)
        if self.heals_key is not None:
            pipe.hincrby(self.heals_key, "deleted_entries", count)
        pipe.execute()
        self.found(
            f"{count} entries of {stream} were deleted from the stream before they were applied"
        )

    def group_created(self, stream: str, position: str | None) -> None:
        """The group was missing on ``stream`` and was created (again)."""
        if position is not None and split_id(position) > (0, 0):
            self.found(
                f"Redis lost group {self.group} of {stream}: it had to be created again after"
                f" entries up to {position} were applied"
            )
        elif (trimmed := trimmed_before(self.client, stream)) is not None:
            # A group starts at the stream's beginning; entries the relay trimmed before the
            # group existed (all the other groups had consumed them) it never saw.
            self.found(
                f"{stream} was trimmed (entries before {trimmed}) before group {self.group}"
                " was created on it"
            )

    def compare_positions(self, recorded: Mapping[str, str]) -> None:
        """A position applied beyond what Redis says the group was delivered (by stream).

        Positions only move forward, so Redis lost the stream or the group (a restart with
        an older save, a flush) and with it what was published after its last save.
        """
        delivered = delivered_positions(self.client, self.group, self.streams)
        for stream, applied in recorded.items():
            sent = delivered.get(stream, "0-0")
            if split_id(applied) > split_id(sent):
                self.found(
                    f"Redis lost entries of {stream} (applied up to {applied}, but the group"
                    f" was delivered only up to {sent})"
                )

    def check(self, *, force: bool = False) -> None:
        """Heal the gaps found, at most once per CHECK_SECONDS (always with ``force``).

        Cuts are healed once they stop (no new one since the previous check): healing while
        the cap still cuts would be undone by the next cut.
        """
        if not self._check.take() and not force:
            return
        cuts, healed = cuts_into(self.client, self.group, self.shards) if self._cut else (0, 0)
        found = list(self._found)
        if cuts > healed:
            if self._cuts_seen == cuts:
                found.append(
                    f"{cuts - healed} cuts of the telemetry stream at its cap"
                    " (IOTP_TELEMETRY_STREAM_MAXLEN) took entries before they were read"
                )
            self._cuts_seen = cuts
        if found:
            self._heal(found, cuts)

    def _heal(self, found: list[str], cuts: int) -> None:
        logger.error(
            "group %s missed events (%s); recomputing from the write store",
            self.group,
            "; ".join(found),
        )
        started = time.monotonic()
        self.heal(delivered_positions(self.client, self.group, self.streams))
        seconds = time.monotonic() - started
        self._record(found, cuts, seconds)
        self._found.clear()
        self._cuts_seen = None
        logger.warning(
            "healed: group %s recomputed its state from the write store in %.1fs",
            self.group,
            seconds,
        )

    def _record(self, found: list[str], cuts: int, seconds: float) -> None:
        pipe: Any = self.client.pipeline(transaction=False)
        record = {
            "last_heal_at": f"{time.time():.3f}",
            "last_heal_seconds": f"{seconds:.3f}",
            "last_heal_reason": "; ".join(found),
        }
        for key in (consumer_stats_key(self.group), self.heals_key):
            if key is not None:
                pipe.hincrby(key, "heals", 1)
                pipe.hset(key, mapping=record)
        pipe.execute()
        if self._cut:
            mark_healed(self.client, self.group, cuts)


def mark_healed(client: redis.Redis, group: str, cuts: int) -> None:
    """The first ``cuts`` cuts into ``group``'s entries are healed (a recompute began after)."""
    client.eval(_RAISE_TO, 1, READ_MODEL_HEALS_KEY, healed_field(group), cuts)


def delivered_positions(
    client: redis.Redis, group: str, streams: tuple[str, ...]
) -> dict[str, str]:
    """The last entry id ``group`` was delivered on each stream (0-0 where it has none)."""
    positions: dict[str, str] = {}
    for stream in streams:
        try:
            infos: Any = client.xinfo_groups(stream)
        except redis.ResponseError:
            infos = []  # no stream
        positions[stream] = next(
            (text(g["last-delivered-id"]) for g in infos if text(g["name"]) == group), "0-0"
        )
    return positions
