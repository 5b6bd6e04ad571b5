"""The broker's device accounts recovered from the write store equal the ones the device
events build (broker_identity.accounts.apply_event), whatever Redis kept."""

from __future__ import annotations

from typing import Any

import psycopg
import redis

from broker_identity.accounts import BrokerState, apply_event
from broker_identity.recovery import device_accounts_from_write_store
from iotp.events import from_fields
from iotp.names import DEVICE_EVENTS_STREAM
from iotp.settings import Settings
from tests.support.api_client import AUTH, running_api, wait_relayed


def no_lookup(device_id: str) -> str | None:
    raise AssertionError(f"every event carries its hash ({device_id})")


def test_the_accounts_of_the_write_store_are_the_accounts_of_the_events(
    settings: Settings, db: psycopg.Connection[Any], redis_client: redis.Redis
) -> None:
    with running_api(settings) as api:
        for name in ("dev-a", "dev-b", "dev-c", "dev-d"):
            body = {"device_id": name, "name": name, "kind": "meter"}
            assert api.post("/devices", json=body, headers=AUTH).status_code == 201
        assert api.post("/devices/dev-b/credentials", headers=AUTH).status_code == 200
        assert api.post("/devices/dev-b/credentials", headers=AUTH).status_code == 200
        assert api.post("/devices/dev-c/decommission", headers=AUTH).status_code == 200
        assert api.patch("/devices/dev-d", json={"name": "D"}, headers=AUTH).status_code == 200
        wait_relayed(db)
    built = BrokerState()
    for _, fields in redis_client.xrange(DEVICE_EVENTS_STREAM):
        apply_event(built, from_fields(fields), no_lookup)

    recovered = device_accounts_from_write_store(db)
    assert recovered == built.devices
    assert sorted(recovered) == ["dev-a", "dev-b", "dev-d"]
    stored = db.execute("SELECT credential_hash FROM devices WHERE device_id = 'dev-b'").fetchone()
    assert stored is not None and recovered["dev-b"].password_hash == stored[0]
    assert recovered["dev-a"].write == ("devices/dev-a/telemetry",)
