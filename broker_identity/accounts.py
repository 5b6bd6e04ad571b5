"""The broker's view of identity: accounts, what each may do, and the files Mosquitto reads.

Pure functions over :class:`BrokerState`: applying the device events, rendering Mosquitto's
password file and ACL file, and reading the state back from a password file. The password
file also records the stream position of the last event applied, on a comment line that
Mosquitto skips, so that the files and the position are replaced together by one rename.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from iotp.device_profiles import AclGrants
from iotp.events import (
    AnyEvent,
    DeviceCredentialsRotated,
    DeviceDecommissioned,
    DeviceRegistered,
)
from iotp.names import telemetry_topic

POSITION_PREFIX = "# iotp-position "
SERVICE_PREFIX = "# iotp-service "
GATEWAY_PREFIX = "# iotp-gateway "
# What Mosquitto accepts as a user name in its files: the device-id alphabet, and nothing
# that would end a field (':' in the password file, whitespace in the ACL file).
SAFE_USERNAME = re.compile(r"^[A-Za-z0-9_.\-@]{1,128}$")
HASH = re.compile(r"^\$7\$[0-9]+\$[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+$")


@dataclass(frozen=True)
class Account:
    """A broker user: its password hash and the topics it may publish to and read."""

    username: str
    password_hash: str
    write: tuple[str, ...] = ()
    read: tuple[str, ...] = ()
    service: bool = False  # a service account: from the settings, never from an event
    gateway: bool = False  # a gateway's (issue 25): speaks for the devices it lists


def device_account(device_id: str, password_hash: str) -> Account:
    """A device publishes on its own telemetry topic and reads nothing."""
    return Account(device_id, password_hash, write=(telemetry_topic(device_id),))


@dataclass
class BrokerState:
    """Every account the broker knows, and the last device event applied to them."""

    devices: dict[str, Account] = field(default_factory=dict)
    services: dict[str, Account] = field(default_factory=dict)
    position: str = "0-0"
    # Issue 25: the topics of each device whose profile is not the built-in one (its tree,
    # device_acl), and the gateways' accounts (gateway_acl); both from the write store.
    grants: dict[str, AclGrants] = field(default_factory=dict)
    gateways: dict[str, Account] = field(default_factory=dict)

    def accounts(self) -> list[Account]:
        """Service accounts first; a device can never take a service account's name, nor a
        gateway a device's."""
        devices = [
            _granted(a, self.grants.get(name))
            for name, a in sorted(self.devices.items())
            if name not in self.services
        ]
        gateways = [
            a
            for name, a in sorted(self.gateways.items())
            if name not in self.services and name not in self.devices
        ]
        return [*(self.services[name] for name in sorted(self.services)), *devices, *gateways]


def _granted(account: Account, grants: AclGrants | None) -> Account:
    if grants is None:
        return account
    return replace(account, write=grants.write, read=grants.read)


class MissingHash(LookupError):
    """An event from before events carried the hash, and the write store has none either."""


HashLookup = Callable[[str], str | None]


def apply_event(state: BrokerState, event: AnyEvent, lookup: HashLookup) -> bool:
    """Apply one device event; True when the broker's files change.

    Registration and rotation set the device's hash (from the event, else ``lookup``);
    decommission removes the device. Applying the same event again changes nothing.
    """
    if isinstance(event, DeviceDecommissioned):
        return state.devices.pop(event.device_id, None) is not None
    if not isinstance(event, DeviceRegistered | DeviceCredentialsRotated):
        return False
    password_hash = event.credential_hash or lookup(event.device_id)
    if password_hash is None:
        raise MissingHash(event.device_id)
    account = device_account(event.device_id, password_hash)
    if state.devices.get(event.device_id) == account:
        return False
    state.devices[event.device_id] = account
    return True


def render_password_file(state: BrokerState) -> str:
    """Mosquitto's password file: ``user:$7$...`` lines, with the position on a comment."""
    lines = [
        "# Written by `iotp broker-sync` from the device events; edits are overwritten.",
        f"{POSITION_PREFIX}{state.position}",
    ]
    for account in state.accounts():
        if account.service:
            lines.append(f"{SERVICE_PREFIX}{account.username}")
        if account.gateway:
            lines.append(f"{GATEWAY_PREFIX}{account.username}")
        lines.append(f"{account.username}:{account.password_hash}")
    return "\n".join(lines) + "\n"


def render_acl_file(state: BrokerState) -> str:
    """Mosquitto's ACL file: per user, the topics it may write and read; nothing else."""
    blocks = ["# Written by `iotp broker-sync`; a user may do only what its block grants."]
    for account in state.accounts():
        block = [f"user {account.username}"]
        block += [f"topic write {topic}" for topic in account.write]
        block += [f"topic read {topic}" for topic in account.read]
        blocks.append("\n".join(block))
    return "\n\n".join(blocks) + "\n"


def parse_password_file(text: str) -> BrokerState:
    """The accounts and position recorded in a password file this module wrote.

    Service accounts come back with their hash only (their rights come from the settings).
    """
    state = BrokerState()
    service_next = gateway_next = False
    for line in text.splitlines():
        if line.startswith(POSITION_PREFIX):
            state.position = line.removeprefix(POSITION_PREFIX).strip()
        elif line.startswith(SERVICE_PREFIX):
            service_next = True
        elif line.startswith(GATEWAY_PREFIX):
            gateway_next = True
        elif line and not line.startswith("#"):
            username, _, password_hash = line.partition(":")
            if service_next:
                state.services[username] = Account(username, password_hash, service=True)
            elif gateway_next:
                # Its topics come from the write store (broker_identity.recovery) at start.
                state.gateways[username] = Account(username, password_hash, gateway=True)
            else:
                state.devices[username] = device_account(username, password_hash)
            service_next = gateway_next = False
    return state


def parse_acl_file(text: str) -> dict[str, AclGrants]:
    """The topics each user's block of an ACL file this module wrote grants, by user."""
    found: dict[str, tuple[list[str], list[str]]] = {}
    current: tuple[list[str], list[str]] | None = None
    for line in text.splitlines():
        if line.startswith("user "):
            current = found.setdefault(line.removeprefix("user "), ([], []))
        elif line.startswith("topic ") and current is not None:
            # The topic is the rest of the line: friendly names may hold spaces.
            _, access, topic = line.split(" ", 2)
            current[0 if access == "write" else 1].append(topic)
    return {user: AclGrants(tuple(w), tuple(r)) for user, (w, r) in found.items()}


def with_topics(state: BrokerState, granted: dict[str, AclGrants]) -> BrokerState:
    """The state with the topics an ACL file granted its devices of stored profiles and its
    gateways (the password file does not say them), so that a restart needs no write store."""
    for name, account in state.devices.items():
        grants = granted.get(name)
        if grants is not None and (grants.write, grants.read) != (account.write, account.read):
            state.grants[name] = grants
    for name, account in list(state.gateways.items()):
        grants = granted.get(name, AclGrants((), ()))
        state.gateways[name] = replace(account, write=grants.write, read=grants.read)
    return state


def with_services(state: BrokerState, services: Iterable[Account]) -> BrokerState:
    """The state with exactly these service accounts (they come from the settings)."""
    return replace(state, services={a.username: a for a in services})
