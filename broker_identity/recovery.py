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
