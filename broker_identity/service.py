"""Wiring of `iotp broker-sync`: settings to files, service accounts, and the loop."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import psycopg

from broker_identity.accounts import Account, BrokerState, HashLookup, with_services
from broker_identity.files import BrokerFiles
from broker_identity.sync import SYNC_GROUP, BrokerAccounts, broker_sync
from iotp.db import connect
from iotp.errors import ConfigurationError
from iotp.mqtt_url import parse_mqtt_url
from iotp.password_hash import hash_password, verify_password
from iotp.preflight import require_redis
from iotp.redis_client import redis_for
from iotp.settings import Settings

logger = logging.getLogger(__name__)

BROKER_COUNTERS_FILTER = "$SYS/broker/#"


def broker_files(settings: Settings) -> BrokerFiles:
    if not settings.broker_password_file or not settings.broker_acl_file:
        raise ConfigurationError(
            "IOTP_BROKER_PASSWORD_FILE and IOTP_BROKER_ACL_FILE must name the broker's"
            " password_file and acl_file for `iotp broker-sync`"
        )
    return BrokerFiles(
        Path(settings.broker_password_file),
        Path(settings.broker_acl_file),
        Path(settings.broker_pid_file) if settings.broker_pid_file else None,
    )


def service_accounts(settings: Settings, recorded: BrokerState) -> list[Account]:
    """Ingest's account: the user and password of IOTP_MQTT_URL, reading what devices publish
    and the broker's own counters ($SYS: drops and queued messages) only.

    A hash already recorded for the same password is kept, so that a restart does not
    rewrite the files (and make the broker re-check every client) for nothing.
    """
    broker = parse_mqtt_url(settings.mqtt_url)
    if not broker.username or not broker.password:
        raise ConfigurationError(
            "IOTP_MQTT_URL must carry ingest's service account (mqtt://USER:PASSWORD@host):"
            " `iotp broker-sync` gives that account the right to read telemetry"
        )
    known = recorded.services.get(broker.username)
    if known is not None and verify_password(broker.password, known.password_hash):
        password_hash = known.password_hash
    else:
        password_hash = hash_password(broker.password)
    # Every topic, not only devices/+/telemetry: ingest subscribes to the trees of the device
    # profiles in use (issue 25), which an operator may add at any time.
    read = ("#", BROKER_COUNTERS_FILTER)
    return [Account(broker.username, password_hash, read=read, service=True)]


def write_store_lookup(settings: Settings) -> HashLookup:
    """The hash of an active device, from the write store: only for events from before the
    events carried it."""

    def lookup(device_id: str) -> str | None:
        with connect(settings.database_url) as conn:
            row = conn.execute(
                "SELECT credential_hash FROM devices WHERE device_id = %s AND status = 'active'",
                (device_id,),
            ).fetchone()
        return str(row[0]) if row else None

    return lookup


def run_broker_sync(settings: Settings, stop: threading.Event) -> None:
    """Keep the broker's files in step with the device events until ``stop`` is set."""
    files = broker_files(settings)
    require_redis(settings)
    recorded = files.load()
    state = with_services(recorded, service_accounts(settings, recorded))
    client = redis_for(settings.redis_url, settings.redis_cluster, socket_connect_timeout=5)

    def write_store() -> psycopg.Connection[Any]:
        return connect(settings.database_url)

    accounts = BrokerAccounts(files, state, write_store_lookup(settings), write_store)
    logger.info(
        "broker-sync: %s devices at position %s; group %s; files %s, %s",
        len(state.devices),
        state.position,
        SYNC_GROUP,
        files.password_file,
        files.acl_file,
    )
    try:
        accounts.start()
        broker_sync(client, accounts).run(stop)
    finally:
        client.close()
