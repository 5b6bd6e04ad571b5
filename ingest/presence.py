"""The roll of ingest sessions in Redis: which exist, which instances are live, who leaves.

Each ingest records its persistent broker session in ``iotp:ingest:sessions`` and, once
subscribed, beats into ``iotp:ingest:heartbeats`` five times per IOTP_INGEST_LIVE_SECONDS,
scored by Redis's clock so that the hosts' clocks do not matter. On SIGTERM one script
removes the instance's heartbeat and counts the other live instances of its share group in
a single step: it hands its share back only if one remains. Of instances stopping together
the last one therefore sees none and keeps its session, so the group never ends up with no
subscription, and what arrives while every instance is down waits in that session.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import orjson
import redis

from iotp.names import INGEST_HEARTBEATS_KEY, INGEST_SESSIONS_KEY
from iotp.redis_client import ingest_sessions, text
from iotp.retry import retry_transient

logger = logging.getLogger(__name__)

BEATS_PER_PERIOD = 5

_BEAT = """
local now = redis.call('TIME')
redis.call('ZADD', KEYS[1], now[1] + now[2] / 1000000, ARGV[1])
"""

# KEYS: heartbeats, sessions; ARGV: client id, share group, live seconds.
_LEAVE = """
redis.call('ZREM', KEYS[1], ARGV[1])
local now = redis.call('TIME')
local oldest = now[1] + now[2] / 1000000 - tonumber(ARGV[3])
local others = 0
for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], oldest, '+inf')) do
  local record = redis.call('HGET', KEYS[2], member)
  if record and cjson.decode(record)['share_group'] == ARGV[2] then
    others = others + 1
  end
end
return others
"""


@dataclass(frozen=True)
class SessionRecord:
    """What `iotp status` and `iotp ingest --retire` know of one ingest's broker session."""

    client_id: str
    instance: str
    host: str
    share_group: str  # empty for a plain subscription (every instance receives everything)
    protocol: str
    session_expiry_seconds: int


class Presence:
    """One ingest's entry in the roll: its session record and its heartbeat."""

    def __init__(self, client: redis.Redis, record: SessionRecord, live_seconds: float) -> None:
        self.client, self.record, self.live_seconds = client, record, live_seconds
        self._beat = client.register_script(_BEAT)
        self._leave = client.register_script(_LEAVE)
        self._halt = threading.Event()
        self._beater: threading.Thread | None = None
        self._joined_at: float | None = None

    def join(self, connected: Callable[[], bool], stop: threading.Event) -> None:
        """Record the session and beat while ``connected()``; call once subscribed."""
        retry_transient(self._enter, stop, task="ingest presence")
        self._beater = threading.Thread(
            target=self._beat_while, args=(connected,), name="iotp-ingest-heartbeat", daemon=True
        )
        self._beater.start()
        group = self.record.share_group or "(none: plain subscription)"
        logger.info("live in share group %s as %s", group, self.record.client_id)
        try:
            self._forget_expired_sessions()
            self._warn_of_parked_sessions()
        except redis.RedisError as exc:
            logger.warning("could not read the roll of ingest sessions: %s", exc)

    def leave(self) -> bool:
        """Stop beating; True when another live instance of the share group remains."""
        self._stop_beating()
        args: list[str | float] = [
            self.record.client_id,
            self.record.share_group,
            self.live_seconds,
        ]
        others = int(self._leave(keys=[INGEST_HEARTBEATS_KEY, INGEST_SESSIONS_KEY], args=args))
        if not self.record.share_group:
            return False
        if others:
            logger.info(
                "%s other live instance(s) in share group %s: handing this share back",
                others,
                self.record.share_group,
            )
            return True
        logger.info(
            "the last live instance of share group %s: keeping session %s, so that what"
            " arrives while it is down waits for its restart",
            self.record.share_group,
            self.record.client_id,
        )
        return False

    def settle(self, ended: bool) -> None:
        """After the disconnect: forget an ended session, or mark a kept one as stopped."""
        self._stop_beating()
        client_id = self.record.client_id
        try:
            if ended:
                self._forget(client_id)
            elif self._joined_at is not None:  # the record is this run's
                self.client.zrem(INGEST_HEARTBEATS_KEY, client_id)
                stopped_at = _redis_now(self.client)
                self.client.hset(INGEST_SESSIONS_KEY, client_id, self._value(stopped_at))
        except redis.RedisError as exc:
            logger.warning("could not update the roll of ingest sessions: %s", exc)

    def _enter(self) -> None:
        self._joined_at = _redis_now(self.client)
        self.client.hset(INGEST_SESSIONS_KEY, self.record.client_id, self._value(None))
        self._beat(keys=[INGEST_HEARTBEATS_KEY], args=[self.record.client_id])

    def _value(self, stopped_at: float | None) -> bytes:
        values = {**asdict(self.record), "joined_at": self._joined_at, "stopped_at": stopped_at}
        return orjson.dumps(values)

    def _beat_while(self, connected: Callable[[], bool]) -> None:
        failing = False
        while not self._halt.wait(self.live_seconds / BEATS_PER_PERIOD):
            if not connected():
                continue
            try:
                self._beat(keys=[INGEST_HEARTBEATS_KEY], args=[self.record.client_id])
            except redis.RedisError as exc:
                if not failing:
                    logger.warning("heartbeat failed (others may count this one gone): %s", exc)
                failing = True
                continue
            if failing:
                logger.info("heartbeat resumed")
            failing = False

    def _stop_beating(self) -> None:
        self._halt.set()
        if self._beater is not None:
            self._beater.join()  # no beat may land after the decision to leave

    def _forget_expired_sessions(self) -> None:
        """Drop the records of sessions the broker has expired by now (the reader skips them)."""
        recorded: Any = self.client.hkeys(INGEST_SESSIONS_KEY)  # before the reader: a record
        listed = {s["client_id"] for s in ingest_sessions(self.client, self.live_seconds)}
        for client_id in {text(key) for key in recorded} - listed:  # made meanwhile is listed
            self._forget(client_id)

    def _forget(self, client_id: str) -> None:
        pipe: Any = self.client.pipeline()
        pipe.hdel(INGEST_SESSIONS_KEY, client_id).zrem(INGEST_HEARTBEATS_KEY, client_id)
        pipe.execute()

    def _warn_of_parked_sessions(self) -> None:
        for session in ingest_sessions(self.client, self.live_seconds):
            if (
                self.record.share_group
                and session["share_group"] == self.record.share_group
                and not session["connected"]
                and session["client_id"] != self.record.client_id
            ):
                logger.warning(
                    "session %s of share group %s is not connected (last seen %s): what the"
                    " broker deals it waits there until it returns, or until"
                    " `iotp ingest --retire %s`",
                    session["client_id"],
                    self.record.share_group,
                    session["last_seen_at"],
                    session["client_id"],
                )


def _redis_now(client: redis.Redis) -> float:
    server_time: Any = client.time()
    return float(server_time[0]) + float(server_time[1]) / 1e6


class CannotRetire(Exception):
    """The session named for `iotp ingest --retire` is in use, or the name is ambiguous."""


def session_to_retire(
    client: redis.Redis, target: str, default: SessionRecord, live_seconds: float
) -> SessionRecord:
    """The session ``target`` names in the roll (a client id, else an instance), else ``default``.

    Raises :class:`CannotRetire` when its instance is connected: taking over its client id
    would only throw it off the broker, and it would throw the retiring process off again.
    """
    sessions = ingest_sessions(client, live_seconds)
    matches = [s for s in sessions if s["client_id"] == target] or [
        s for s in sessions if s["instance"] == target
    ]
    if len(matches) > 1:
        names = ", ".join(s["client_id"] for s in matches)
        raise CannotRetire(f"several sessions have instance {target} ({names}): name one")
    if not matches:
        return default
    (session,) = matches
    if session["connected"]:
        raise CannotRetire(
            f"{session['client_id']} is connected (heartbeat {session['seen_seconds_ago']}s"
            " ago): stop it instead; --retire is for an instance that is gone for good"
        )
    return SessionRecord(**{name: session[name] for name in SessionRecord.__dataclass_fields__})
