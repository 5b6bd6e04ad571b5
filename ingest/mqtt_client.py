"""The paho client ingest's connections share: logged in, verified TLS, bounded reconnects."""

from __future__ import annotations

import ssl

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from iotp.mqtt_url import BrokerAddress
from iotp.retry import MAX_DELAY_SECONDS


def paho_client(
    broker: BrokerAddress,
    client_id: str,
    *,
    v5: bool,
    persistent: bool,
    tls: ssl.SSLContext | None,
    manual_ack: bool = False,
) -> mqtt.Client:
    """A client with ``broker``'s user name and password; ``persistent`` keeps its session
    (MQTT 3.1.1; with v5 the session expiry at CONNECT decides)."""
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
        clean_session=None if v5 else not persistent,
        manual_ack=manual_ack,
    )
    if broker.username is not None:
        client.username_pw_set(broker.username, broker.password)
    if tls is not None:
        client.tls_set_context(tls)
    # paho reconnects in its own network thread, doubling from 1 s (whole seconds, no
    # jitter); it waits no longer than the retry policy of the other services.
    client.reconnect_delay_set(min_delay=1, max_delay=int(MAX_DELAY_SECONDS))
    return client
