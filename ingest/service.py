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
from iotp.errors import ServiceUnavailable
from iotp.mqtt_url import parse_mqtt_url, tls_context
from iotp.names import ingest_stats_key
from iotp.preflight import require_migrated_database, require_redis
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


def batch_policy_from(settings: Settings) -> BatchPolicy:
    return BatchPolicy(
        max_messages=settings.ingest_batch_max_messages,
        max_bytes=settings.ingest_batch_max_bytes,
        max_delay_seconds=settings.ingest_batch_max_delay_ms / 1000,
        deadletter_payload_max_bytes=settings.deadletter_payload_max_bytes,
    )


def source_options_from(settings: Settings) -> SourceOptions:
    return SourceOptions(
        tls=tls_context(parse_mqtt_url(settings.mqtt_url), settings),
        client_id=settings.ingest_client_id(),
        protocol=settings.mqtt_protocol,
        shared=settings.ingest_shared_subscription,
        share_group=settings.ingest_share_group,
        receive_maximum=settings.ingest_receive_maximum,
        max_buffered_bytes=settings.ingest_max_buffered_bytes,
        keepalive=settings.mqtt_keepalive_seconds,
    )


def run_ingest(settings: Settings, stop: threading.Event) -> None:
    """Ingest until ``stop`` is set. Raises :class:`ServiceUnavailable` if a service is down."""
    require_migrated_database(settings)
    require_redis(settings)
    broker = parse_mqtt_url(settings.mqtt_url)
    client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=5, socket_timeout=30)
    devices = DatabaseDevices(settings.database_url)
    registry = _follow_registry(settings, devices, last_device_event_id(client), stop)
    counters = IngestCounters()
    _serve_metrics(settings, counters)
    source = MqttSource(broker, source_options_from(settings))
    store = TelemetryStore(settings.database_url, consumer=settings.ingest_client_id())
    try:
        _connect_to_broker(source)
        pipeline = IngestPipeline(
            source=source,
            store=store,
            publisher=StreamPublisher(
                client, settings.telemetry_stream_maxlen, settings.deadletter_stream_maxlen
            ),
            lookup=registry.lookup,
            counters=counters,
            limits=limits_from(settings),
            policy=batch_policy_from(settings),
            stats_key=ingest_stats_key(settings.ingest_client_id()),
        )
        pipeline.run(stop)
    finally:
        stop.set()
        source.close()
        store.close()
        devices.close()
        client.close()


def _follow_registry(
    settings: Settings, devices: DatabaseDevices, position: str, stop: threading.Event
) -> DeviceRegistry:
    """The registry, loaded from the database and kept current from the device stream."""
    registry = DeviceRegistry(devices.fetch, settings.ingest_unknown_device_cache_seconds)
    registry.load(devices.fetch_all())
    logger.info("device registry loaded: %s devices", len(registry))
    follower_client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=5)
    RegistryFollower(registry, follower_client, position, stop).start()
    return registry


def _serve_metrics(settings: Settings, counters: IngestCounters) -> None:
    if not settings.ingest_metrics_port:
        return
    try:
        start_http_server(settings.ingest_metrics_port, registry=counters.registry)
        logger.info("Prometheus metrics on port %s", settings.ingest_metrics_port)
    except OSError as exc:
        logger.warning("metrics port %s unavailable: %s", settings.ingest_metrics_port, exc)


def _connect_to_broker(source: MqttSource) -> None:
    """Start the source; fail with one clear line when the broker does not answer in time."""
    source.start()
    if not source.connected.wait(BROKER_CONNECT_TIMEOUT):
        raise ServiceUnavailable(
            "the MQTT broker",
            "IOTP_MQTT_URL",
            str(source.broker),
            source.last_error or f"no connection within {BROKER_CONNECT_TIMEOUT:.0f}s",
        )
