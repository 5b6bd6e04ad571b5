"""Wiring of one ingest process: registry, broker, store, publisher, counters, presence.

``run_ingest`` serves until SIGTERM, then hands its share back or keeps its session
(handover); ``retire_ingest`` empties and ends the session of an instance that is gone.
"""

from __future__ import annotations

import functools
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import timedelta

import redis
from prometheus_client import start_http_server

from ingest.broker_stats import broker_stats_from
from ingest.counters import IngestCounters
from ingest.handover import Departure
from ingest.http_inbox import HttpIngestPipeline
from ingest.http_process import serving_http_in_child
from ingest.mqtt5_source import Mqtt5Source
from ingest.mqtt_source import SESSION_EXPIRY_SECONDS, MqttSource, SourceOptions
from ingest.payloads import Limits
from ingest.pipeline import BatchPolicy, IngestPipeline, MessageSource
from ingest.presence import Presence, SessionRecord, session_to_retire
from ingest.profiles_runtime import (
    DatabaseProfiles,
    ProfileBook,
    ProfileRouter,
    SubscriptionKeeper,
)
from ingest.publisher import StreamPublisher
from ingest.registry import DatabaseDevices, DeviceRegistry, RegistryFollower, last_device_event_id
from ingest.store import TelemetryStore
from iotp.errors import ConfigurationError, ServiceUnavailable
from iotp.events import profile_event_from_fields
from iotp.mqtt_url import BrokerAddress, parse_mqtt_url, tls_context
from iotp.names import PROFILE_EVENTS_STREAM, ingest_stats_key
from iotp.preflight import require_migrated_database, require_redis
from iotp.redis_client import redis_for
from iotp.retry import Stopped
from iotp.runtime import settle_gc
from iotp.settings import Settings

logger = logging.getLogger(__name__)

BROKER_CONNECT_TIMEOUT = 15.0

BrokerSource = MqttSource | Mqtt5Source


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
        busy_messages=settings.ingest_batch_busy_messages,
        linger_seconds=settings.ingest_batch_linger_ms / 1000,
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


def mqtt_source(broker: BrokerAddress, options: SourceOptions) -> BrokerSource:
    """MQTT 5 on asyncio and the compiled codec; paho for 3.1.1 (NATS, older brokers)."""
    if options.protocol == "5":
        return Mqtt5Source(broker, options)
    return MqttSource(broker, options)


def run_ingest(settings: Settings, stop: threading.Event) -> None:
    """Ingest until ``stop`` is set, then hand the share back or keep the session (handover).

    Raises :class:`ServiceUnavailable` if a service is down.
    """
    require_migrated_database(settings)
    require_redis(settings)
    options = source_options_from(settings)
    counters = IngestCounters()
    _serve_metrics(settings, counters)
    with (
        _backends(settings) as (client, registry, router),
        serving_http_in_child(settings, options.client_id, counters, stop),
    ):
        source = mqtt_source(parse_mqtt_url(settings.mqtt_url), options)
        _subscribe_to_profiles(router, registry, source)
        presence = Presence(client, session_record(settings, options), settings.ingest_live_seconds)
        departure = Departure(source, presence.leave, stop, settings.ingest_handover_seconds)
        pipeline = _pipeline(settings, source, client, router, counters, options.client_id)
        # The broker's own counters ($SYS: drops, stored messages) read beside the telemetry.
        broker_counters = broker_stats_from(settings, client, counters.registry)
        try:
            _connect_to_broker(source)
            settle_gc()
            broker_counters.start()
            presence.join(source.connected.is_set, stop)
            departure.start()
            pipeline.run(departure.halt)
        except Stopped:
            logger.info("stopped before ingesting anything")
        finally:
            broker_counters.close()
            departure.finish()
            ended = source.close(end_session=departure.drained)
            pipeline.store.close()
            presence.settle(ended)
        if ended:
            logger.info(
                "handed its share back to share group %s and ended session %s",
                options.share_group,
                options.client_id,
            )


def run_http_ingest(
    settings: Settings,
    client_id: str,
    listen_fd: int,
    counters: IngestCounters,
    stop: threading.Event,
    serving: Callable[[], None],
) -> None:
    """The HTTP telemetry process (ingest/http_process.py): serve on the socket its parent
    bound (``listen_fd``), and run ``serving()`` while it does (it returns at ``stop``).

    Its pipeline is ingest's, over the HTTP inbox: same checks and events, its own writer
    and ledger consumer (``client_id``); ``counters`` report to the parent, not to Redis.
    """
    # Here, not at the top: the MQTT ingest process never loads the web stack.
    from ingest.http_server import serving_http_telemetry

    listener = socket.socket(fileno=listen_fd)
    require_migrated_database(settings)
    require_redis(settings)
    with (
        _backends(settings) as (client, _, router),
        serving_http_telemetry(
            settings,
            lambda inbox: _pipeline(
                settings,
                inbox,
                client,
                router,
                counters,
                client_id,
                functools.partial(HttpIngestPipeline, parse_for_device=router.parse_for_device),
                report_stats=False,
            ),
            stop,
            listener,
        ),
    ):
        settle_gc()
        serving()


@dataclass(frozen=True)
class Retirement:
    client_id: str
    session_present: bool  # the broker held a session for it
    messages: int  # messages received from the session (stored, or dead-lettered)
    ended: bool  # the broker no longer holds the session

    def summary(self) -> str:
        if not self.ended:
            return (
                f"could not finish retiring {self.client_id} ({self.messages} messages"
                " stored): its session is kept with what it still holds; run it again"
            )
        if not self.session_present:
            return f"retired {self.client_id}: the broker held no session for it"
        return (
            f"retired {self.client_id}: stored the {self.messages} messages parked in its"
            " session, and the broker no longer holds it"
        )


def retire_ingest(settings: Settings, target: str, stop: threading.Event) -> Retirement:
    """Take over the session of an instance that will not return, store what it holds, end it.

    ``target`` is a client id or an instance name (`iotp status` lists both). Raises
    :class:`CannotRetire` when that instance is connected.
    """
    require_migrated_database(settings)
    require_redis(settings)
    if settings.mqtt_protocol != "5":
        raise ConfigurationError(
            "`iotp ingest --retire` ends the session at DISCONNECT, which needs MQTT 5"
            " (IOTP_MQTT_PROTOCOL is 3.1.1)"
        )
    counters = IngestCounters()
    with _backends(settings) as (client, _, router):
        default = session_record(
            settings.model_copy(update={"ingest_instance": target}), source_options_from(settings)
        )
        record = session_to_retire(client, target, default, settings.ingest_live_seconds)
        options = replace(
            source_options_from(settings),
            client_id=record.client_id,
            shared=bool(record.share_group),
            share_group=record.share_group or settings.ingest_share_group,
            subscribe=False,
        )
        source = mqtt_source(parse_mqtt_url(settings.mqtt_url), options)
        emptying = Departure(source, lambda: True, _already(), abort=stop)
        pipeline = _pipeline(settings, source, client, router, counters, record.client_id)
        try:
            _connect_to_broker(source)
            logger.info(
                "took over session %s (held by the broker: %s); storing what it holds",
                record.client_id,
                source.session_present,
            )
            emptying.start()
            pipeline.run(emptying.halt)
        finally:
            emptying.finish()
            ended = source.close(end_session=emptying.drained)
            pipeline.store.close()
            if ended:
                Presence(client, record, settings.ingest_live_seconds).settle(ended=True)
    return Retirement(
        record.client_id, bool(source.session_present), counters.totals["received"], ended
    )


def session_record(settings: Settings, options: SourceOptions) -> SessionRecord:
    return SessionRecord(
        client_id=settings.ingest_client_id(),
        instance=settings.ingest_instance,
        host=socket.gethostname(),
        share_group=options.share_group if options.shared and options.protocol == "5" else "",
        protocol=options.protocol,
        session_expiry_seconds=SESSION_EXPIRY_SECONDS,
    )


@contextmanager
def _backends(
    settings: Settings,
) -> Iterator[tuple[redis.Redis, DeviceRegistry, ProfileRouter]]:
    """A Redis client, the device registry and the device profiles' router, kept current
    until the block ends."""
    client = redis_for(
        settings.redis_url, settings.redis_cluster, socket_connect_timeout=5, socket_timeout=30
    )
    devices = DatabaseDevices(settings.database_url)
    done = threading.Event()
    try:
        registry = _follow_registry(settings, devices, last_device_event_id(client), done)
        book = _follow_profiles(settings, last_device_event_id(client, PROFILE_EVENTS_STREAM), done)
        yield client, registry, ProfileRouter(book, registry.lookup)
    finally:
        done.set()
        devices.close()
        client.close()


def _pipeline(
    settings: Settings,
    source: MessageSource,
    client: redis.Redis,
    router: ProfileRouter,
    counters: IngestCounters,
    client_id: str,
    kind: Callable[..., IngestPipeline] = IngestPipeline,
    report_stats: bool = True,
) -> IngestPipeline:
    # ``client_id`` also names the ledger of the pipeline's unpublished events: each
    # pipeline needs its own. Without ``report_stats`` the counters are not written to
    # Redis: another process reports them.
    return kind(
        source=source,
        store=TelemetryStore(settings.database_url, consumer=client_id),
        publisher=StreamPublisher(
            client,
            settings.telemetry_stream_maxlen,
            settings.deadletter_stream_maxlen,
            settings.event_shards,
        ),
        lookup=router.lookup,
        counters=counters,
        limits=limits_from(settings),
        policy=batch_policy_from(settings),
        stats_key=ingest_stats_key(client_id) if report_stats else None,
        parse=router.parse,
    )


def _already() -> threading.Event:
    event = threading.Event()
    event.set()
    return event


def _follow_registry(
    settings: Settings, devices: DatabaseDevices, position: str, stop: threading.Event
) -> DeviceRegistry:
    """The registry, loaded from the database and kept current from the device stream."""
    registry = DeviceRegistry(devices.fetch, settings.ingest_unknown_device_cache_seconds)
    registry.load(devices.fetch_all())
    logger.info("device registry loaded: %s devices", len(registry))
    follower_client = redis_for(
        settings.redis_url, settings.redis_cluster, socket_connect_timeout=5
    )
    # A connection of the follower's own for its reloads (opened only if one is needed).
    table = DatabaseDevices(settings.database_url)
    RegistryFollower(registry, follower_client, position, stop, table).start()
    return registry


def _follow_profiles(settings: Settings, position: str, stop: threading.Event) -> ProfileBook:
    """The profile book, loaded from the database and kept current from the profile stream.

    Loaded after the position is read: what changed in between is applied twice, harmlessly.
    """
    table = DatabaseProfiles(settings.database_url)
    book = ProfileBook()
    book.load(table.fetch_all())
    logger.info("device profiles loaded: %s profiles", len(book.profiles()))
    follower_client = redis_for(
        settings.redis_url, settings.redis_cluster, socket_connect_timeout=5
    )
    follower = RegistryFollower(
        book,
        follower_client,
        position,
        stop,
        table,
        stream=PROFILE_EVENTS_STREAM,
        decode=profile_event_from_fields,
        task="profile book",
    )
    follower.start()
    return book


def _subscribe_to_profiles(
    router: ProfileRouter, registry: DeviceRegistry, source: BrokerSource
) -> None:
    """Subscribe to the trees of the profiles in use now, and of each that comes into use
    (checked each second: devices and profiles arrive on two streams, in either order)."""
    keeper = SubscriptionKeeper(
        router.book,
        lambda: set(registry.profiles_named),
        lambda topic_filter: source.add_subscription(topic_filter, BROKER_CONNECT_TIMEOUT),
    )
    keeper.refresh()  # before connecting: subscribed with the telemetry filter
    threading.Thread(
        target=_keep_subscribed, args=(keeper, source), name="iotp-ingest-profiles", daemon=True
    ).start()


def _keep_subscribed(keeper: SubscriptionKeeper, source: BrokerSource) -> None:
    while True:
        time.sleep(1.0)
        try:
            keeper.refresh()
        except Exception:  # never end the thread: the next profile must still be subscribed
            logger.exception("subscribing to the device profiles' topics failed")


def _serve_metrics(settings: Settings, counters: IngestCounters) -> None:
    if not settings.ingest_metrics_port:
        return
    try:
        start_http_server(settings.ingest_metrics_port, registry=counters.registry)
        logger.info("Prometheus metrics on port %s", settings.ingest_metrics_port)
    except OSError as exc:
        logger.warning("metrics port %s unavailable: %s", settings.ingest_metrics_port, exc)


def _connect_to_broker(source: BrokerSource) -> None:
    """Start the source; fail with one clear line when the broker does not answer in time."""
    source.start()
    if not source.connected.wait(BROKER_CONNECT_TIMEOUT):
        raise ServiceUnavailable(
            "the MQTT broker",
            "IOTP_MQTT_URL",
            str(source.broker),
            source.last_error or f"no connection within {BROKER_CONNECT_TIMEOUT:.0f}s",
        )
