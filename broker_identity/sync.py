"""`iotp broker-sync`: keeps the broker's accounts in step with the device events.

Reads the device event stream in its own consumer group (``iotp-broker-identity``), applies
registrations, credential rotations and decommissions to the accounts, writes the password
and ACL files (the password file records the position of the last event applied, so both
change with the position by one rename), asks the broker to reload, then XACKs. After a
crash, the entries it had read but not acknowledged come back and those at or before the
recorded position are skipped: nothing is applied twice, nothing is missed. One process
owns the files; it reads as one fixed consumer, so a restarted process finds its own
pending entries.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from functools import partial
from typing import Any

import redis

from broker_identity.accounts import BrokerState, HashLookup, MissingHash, apply_event
from broker_identity.files import BrokerFiles
from iotp.event_shards import ensure_groups
from iotp.events import UndecodableEvent, from_fields
from iotp.names import DEVICE_EVENTS_STREAM
from iotp.redis_client import split_id, text
from iotp.retry import Stopped, retry_transient

logger = logging.getLogger(__name__)

SYNC_GROUP = "iotp-broker-identity"
SYNC_CONSUMER = "broker-sync"
BATCH_SIZE = 500
BLOCK_MS = 500


@dataclass
class BatchResult:
    entries: int
    changed: bool


class BrokerSync:
    """Applies device events to the broker's files; every step is safe to repeat."""

    def __init__(
        self, client: redis.Redis, files: BrokerFiles, state: BrokerState, lookup: HashLookup
    ) -> None:
        self.client, self.files, self.state, self.lookup = client, files, state, lookup

    def start(self) -> None:
        """Write the files as the state stands (service accounts may have changed), reload."""
        self.files.write(self.state)
        self.files.reload_broker()
        ensure_groups(self.client, SYNC_GROUP, (DEVICE_EVENTS_STREAM,))

    def run(self, stop: threading.Event) -> None:
        """Follow the stream until ``stop`` is set, riding out Redis outages."""
        try:
            retry_transient(self.start, stop, task="broker-sync")
            cursor = "0"  # first what this consumer read but did not acknowledge
            while not stop.is_set():
                result = retry_transient(partial(self.step, cursor), stop, task="broker-sync")
                if cursor == "0" and result.entries == 0:
                    cursor = ">"
        except Stopped:
            return

    def step(self, cursor: str = ">") -> BatchResult:
        response: Any = self.client.xreadgroup(
            SYNC_GROUP,
            SYNC_CONSUMER,
            {DEVICE_EVENTS_STREAM: cursor},
            count=BATCH_SIZE,
            block=None if cursor == "0" else BLOCK_MS,
        )
        entries = [(text(i), f) for _, batch in response or () for i, f in batch]
        if not entries:
            return BatchResult(0, False)
        changed = self.apply(entries)
        if changed:
            self.files.write(self.state)
            self.files.reload_broker()
        self.client.xack(DEVICE_EVENTS_STREAM, SYNC_GROUP, *[i for i, _ in entries])
        return BatchResult(len(entries), changed)

    def apply(self, entries: list[tuple[str, Any]]) -> bool:
        """Apply the entries after the recorded position; True when an account changed."""
        changed = False
        for entry_id, fields in entries:
            if split_id(entry_id) <= split_id(self.state.position):
                continue  # applied before a crash, and the files already say so
            if fields:
                changed |= self._apply_one(entry_id, fields)
            self.state.position = entry_id
        return changed

    def _apply_one(self, entry_id: str, fields: Any) -> bool:
        try:
            event = from_fields(fields)
        except UndecodableEvent as exc:
            logger.error("skipping undecodable device event %s: %s", entry_id, exc)
            return False
        try:
            changed = apply_event(self.state, event, self.lookup)
        except MissingHash:
            logger.error(
                "device %s: no password hash in event %s nor in the devices table; the broker"
                " will refuse it until its credentials are rotated",
                event.device_id,
                entry_id,
            )
            return False
        if changed:
            logger.info("broker: %s %s", event.type, event.device_id)
        return changed
