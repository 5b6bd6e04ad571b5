"""`iotp broker-sync`: keeps the broker's accounts in step with the device events.

The kernel's group reader (:mod:`iotp.group_reader`) feeds the device events in the group
``iotp-broker-identity``; each batch's registrations, credential rotations and
decommissions are applied to the accounts, and the password and ACL files are written (the
password file records the position of the last event applied, so both change with the
position by one rename) before the batch is acknowledged. Entries handed again after a crash
at or before the recorded position are skipped: nothing is applied twice, nothing is missed.
Device events that left Redis before they were applied are healed by writing the files from
the write store's devices (:mod:`broker_identity.recovery`). One process owns the files; it
reads as one fixed consumer, so a restarted process finds its own pending entries.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import psycopg
import redis

from broker_identity.accounts import BrokerState, HashLookup, MissingHash, apply_event
from broker_identity.files import BrokerFiles
from broker_identity.recovery import (
    device_accounts_from_write_store,
    profile_accounts_from_write_store,
)
from iotp.events import (
    AnyEvent,
    AnyProfileEvent,
    DeviceRegistered,
    DeviceUpdated,
    Event,
    from_fields,
    profile_event_from_fields,
)
from iotp.group_reader import Batch, Delivered, GroupReader, ReaderOptions, StreamPart
from iotp.model import DEFAULT_PROFILE
from iotp.names import DEVICE_EVENTS_STREAM, PROFILE_EVENTS_STREAM
from iotp.redis_client import split_id

logger = logging.getLogger(__name__)

SYNC_GROUP = "iotp-broker-identity"
SYNC_CONSUMER = "broker-sync"
BATCH_SIZE = 500
BLOCK_MS = 500
CLAIM_IDLE_MS = 30_000
READER = ReaderOptions(
    group=SYNC_GROUP,
    consumer=SYNC_CONSUMER,
    streams=(DEVICE_EVENTS_STREAM, PROFILE_EVENTS_STREAM),
    batch_size=BATCH_SIZE,
    block_ms=BLOCK_MS,
    claim_idle_ms=CLAIM_IDLE_MS,
    task="broker-sync",
)


SyncEvent = AnyEvent | AnyProfileEvent
_PROFILE_TYPES = frozenset(
    {
        "DeviceProfileSaved",
        "DeviceProfileDeleted",
        "GatewayRegistered",
        "GatewayChanged",
        "GatewayDeleted",
    }
)


def decode_sync_event(fields: dict[bytes, bytes]) -> SyncEvent:
    """A device event, or a profile or gateway event (they change what accounts may do)."""
    kind = fields.get(b"type", b"").decode(errors="replace")
    if kind in _PROFILE_TYPES:
        return profile_event_from_fields(fields)
    return from_fields(fields)


def _changes_topics(event: SyncEvent) -> bool:
    """Whether the event may change some account's topics: a profile or gateway event, or a
    device (re)described with a profile of its own (its tree is in the write store)."""
    if type(event).__name__ in _PROFILE_TYPES:
        return True
    return isinstance(event, DeviceRegistered | DeviceUpdated) and (
        event.profile != DEFAULT_PROFILE or "profile" in getattr(event, "changed", ())
    )


class BrokerAccounts(StreamPart[SyncEvent]):
    """Applies device events to the broker's files; every step is safe to repeat.

    The state in memory is always what the files say: after a failed write it is read back
    from them (``close``), so a batch whose files were not written is applied again.
    """

    def __init__(
        self,
        files: BrokerFiles,
        state: BrokerState,
        lookup: HashLookup,
        write_store: Callable[[], psycopg.Connection[Any]],
    ) -> None:
        self.files, self.state, self.lookup = files, state, lookup
        self._write_store = write_store
        self._written = True

    def start(self) -> None:
        """Write the files as the state stands (service accounts may have changed), reload."""
        self._write()

    def apply(self, batch: Batch[SyncEvent]) -> int:
        """Apply the events after the recorded position; how many changed an account."""
        devices = [d for d in batch.events if d.stream == DEVICE_EVENTS_STREAM]
        changed = sum(self._apply_one(d) for d in devices if self._after_position(d))
        if any(_changes_topics(d.event) for d in batch.events):
            changed += self._read_profile_accounts()
        last = batch.last_ids.get(DEVICE_EVENTS_STREAM)
        if last is not None and split_id(last) > split_id(self.state.position):
            self.state.position = last
        if changed:
            self._write()
        return changed

    def positions(self) -> Mapping[str, str]:
        return {DEVICE_EVENTS_STREAM: self.state.position}

    def heal(self, delivered: Mapping[str, str]) -> None:
        """Every active device's account from the write store, at the delivered position."""
        with self._write_store() as conn:
            self.state.devices = device_accounts_from_write_store(conn)
            self.state.grants, self.state.gateways = profile_accounts_from_write_store(conn)
        self.state.position = delivered.get(DEVICE_EVENTS_STREAM, "0-0")
        self._write()
        logger.info("broker: %s device accounts from the write store", len(self.state.devices))

    def close(self) -> None:
        if not self._written:  # the files are the truth: forget what they do not say
            recorded = self.files.load()
            self.state = BrokerState(
                recorded.devices,
                self.state.services,
                recorded.position,
                recorded.grants,
                recorded.gateways,
            )
            self._written = True

    def _read_profile_accounts(self) -> int:
        """The profiles' and gateways' topics from the write store; 1 when they changed."""
        with self._write_store() as conn:
            found = profile_accounts_from_write_store(conn)
        if found == (self.state.grants, self.state.gateways):
            return 0
        self.state.grants, self.state.gateways = found
        logger.info(
            "broker: %s devices of stored profiles, %s gateways", len(found[0]), len(found[1])
        )
        return 1

    def _write(self) -> None:
        self._written = False
        self.files.write(self.state)
        self._written = True
        self.files.reload_broker()

    def _after_position(self, delivered: Delivered[SyncEvent]) -> bool:
        # at or before it: applied before a crash, and the files already say so
        return split_id(delivered.entry_id) > split_id(self.state.position)

    def _apply_one(self, delivered: Delivered[SyncEvent]) -> bool:
        event = delivered.event
        if not isinstance(event, Event):  # only the device stream's reach here
            return False
        try:
            changed = apply_event(self.state, event, self.lookup)
        except MissingHash:
            logger.error(
                "device %s: no password hash in event %s nor in the devices table; the broker"
                " will refuse it until its credentials are rotated",
                event.device_id,
                delivered.entry_id,
            )
            return False
        if changed:
            logger.info("broker: %s %s", event.type, event.device_id)
        return changed


def broker_sync(client: redis.Redis, accounts: BrokerAccounts) -> GroupReader[SyncEvent]:
    """broker-sync: the group reader feeding :class:`BrokerAccounts`."""
    return GroupReader(client, accounts, READER, decode_sync_event)
