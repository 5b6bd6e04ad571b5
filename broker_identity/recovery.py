"""The broker's device accounts as the write store has them, for when the device events are lost.

The device events only ever give a device the hash the devices table holds with them (a
registration or a rotation commits the hash and its event together) and take it away when
the device is decommissioned, so the accounts that applying every event builds
(:func:`broker_identity.accounts.apply_event`) are exactly the active devices with their
stored hash. Reading them takes one query, whatever Redis lost.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import tuple_row

from broker_identity.accounts import Account, device_account
from iotp.device_profiles import AclGrants, DeviceProfile, device_acl, gateway_acl


def device_accounts_from_write_store(conn: psycopg.Connection[Any]) -> dict[str, Account]:
    """Every active device's account (its own telemetry topic, its credential hash), by name."""
    with conn.cursor(row_factory=tuple_row) as cur:
        rows = cur.execute(
            "SELECT device_id, credential_hash FROM devices WHERE status = 'active'"
            " ORDER BY device_id"
        ).fetchall()
    return {
        device_id: device_account(device_id, password_hash) for device_id, password_hash in rows
    }


def profile_accounts_from_write_store(
    conn: psycopg.Connection[Any],
) -> tuple[dict[str, AclGrants], dict[str, Account]]:
    """The topics of every active device of a stored profile (its tree), and every gateway's
    account (its tree, for its friendly names only), by name (issue 25).

    Profiles and gateways are few and change seldom, and a profile's change touches every
    device of it: they are read whole whenever one of their events arrives.
    """
    with conn.cursor(row_factory=tuple_row) as cur:
        devices = cur.execute(
            "SELECT d.device_id, p.profile FROM devices d"
            " JOIN device_profiles p ON p.name = d.profile WHERE d.status = 'active'"
        ).fetchall()
        gateways = cur.execute(
            "SELECT g.gateway_id, g.credential_hash, g.devices, p.profile FROM gateways g"
            " JOIN device_profiles p ON p.name = g.profile"
        ).fetchall()
    grants = {}
    for device_id, document in devices:
        profile = DeviceProfile.model_validate(document)
        if not profile.gateway:
            grants[device_id] = device_acl(profile, device_id)
    accounts = {}
    for gateway_id, password_hash, names, document in gateways:
        profile = DeviceProfile.model_validate(document)
        if profile.gateway:
            acl = gateway_acl(profile, gateway_id, names)
            accounts[gateway_id] = Account(
                gateway_id, password_hash, write=acl.write, read=acl.read, gateway=True
            )
    return grants, accounts
