"""Wiring of one ingest process: registry, broker, store, publisher, counters."""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

import redis
from prometheus_client import start_http_server

from ingest.counters import IngestCounters
from ingest.mqtt_source import MqttSource, SourceOptions
from ingest.payloads import Limits
from ingest.pipeline import BatchPolicy, IngestPipeline
from ingest.publisher import StreamPublisher
from ingest.registry import DatabaseDevices, DeviceRegistry, RegistryFollower, last_device_event_id
from ingest.store import TelemetryStore
from iotp.db import connect
from iotp.errors import ServiceUnavailable
from iotp.mqtt_url import parse_mqtt_url
from iotp.names import ingest_stats_key
from iotp.redis_client import redis_unavailable
from iotp.settings import Settings

logger = logging.getLogger(__name__)

BROKER_CONNECT_TIMEOUT = 15.0


def limits_from(settings: Settings) -> Limits:
    return Limits(
        max_payload_bytes=settings.ingest_max_payload_bytes,
        max_readings=settings.ingest_max_readings_per_message,
        max_future=timedelta(seconds=settings.ingest_max_future_seconds),
        max_age=settings.ingest_max_age(),
    )


def run_ingest(settings: Settings, stop: threading.Event) -> None:
    """Ingest until ``stop`` is set. Raises :class:`ServiceUnavailable` if a service is down."""
    broker = parse_mqtt_url(settings.mqtt_url)
    client_id = settings.ingest_client_id()
    client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=5, socket_timeout=30)
    follower_client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=5)
    try:
        position = last_device_event_id(client)
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise redis_unavailable(settings.redis_url, exc) from exc

    devices = DatabaseDevices(settings.database_url)
    registry = DeviceRegistry(devices.fetch, settings.ingest_unknown_device_cache_seconds)
    connect(settings.database_url).close()  # one clear line when the database is away
    registry.load(devices.fetch_all())
    logger.info("device registry loaded: %s devices", len(registry))
    RegistryFollower(registry, follower_client, position, stop).start()

    counters = IngestCounters()
    if settings.ingest_metrics_port:
        try:
            start_http_server(settings.ingest_metrics_port, registry=counters.registry)
            logger.info("Prometheus metrics on port %s", settings.ingest_metrics_port)
        except OSError as exc:
            logger.warning("metrics port %s unavailable: %s", settings.ingest_metrics_port, exc)

    source = MqttSource(
        broker,
        SourceOptions(
            client_id=client_id,
            protocol=settings.mqtt_protocol,
            shared=settings.ingest_shared_subscription,
            share_group=settings.ingest_share_group,
            receive_maximum=settings.ingest_receive_maximum,
            max_buffered_bytes=settings.ingest_max_buffered_bytes,
            keepalive=settings.mqtt_keepalive_seconds,
        ),
    )
    store = TelemetryStore(settings.database_url, consumer=client_id)
    try:
        source.start()
        if not source.connected.wait(BROKER_CONNECT_TIMEOUT):
            raise ServiceUnavailable(
                "the MQTT broker",
                "IOTP_MQTT_URL",
                str(broker),
                source.last_error or f"no connection within {BROKER_CONNECT_TIMEOUT:.0f}s",
            )
        pipeline = IngestPipeline(
            source=source,
            store=store,
            publisher=StreamPublisher(
                client, settings.telemetry_stream_maxlen, settings.deadletter_stream_maxlen
            ),
            lookup=registry.lookup,
            counters=counters,
            limits=limits_from(settings),
            policy=BatchPolicy(
                max_messages=settings.ingest_batch_max_messages,
                max_bytes=settings.ingest_batch_max_bytes,
                max_delay_seconds=settings.ingest_batch_max_delay_ms / 1000,
                deadletter_payload_max_bytes=settings.deadletter_payload_max_bytes,
            ),
            stats_key=ingest_stats_key(client_id),
        )
        pipeline.run(stop)
    finally:
        stop.set()
        source.close()
        store.close()
        devices.close()
        client.close()
