"""One typed settings object, read from ``IOTP_*`` environment variables."""

from __future__ import annotations

import socket
from datetime import timedelta
from functools import lru_cache
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

# Tokens that appear in examples and docs; a deployment that kept one is not protected.
PLACEHOLDER_TOKENS = frozenset({"", "changeme", "change-me", "secret", "token", "dev", "iotp"})
MIN_TOKEN_LENGTH = 16


class Settings(BaseSettings):
    """Every knob of iotp; each field is the environment variable ``IOTP_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="IOTP_", extra="ignore", frozen=True)

    database_url: str = "postgresql://localhost:5432/iotp"
    read_database_url: str | None = None
    # A streaming replica of the read store: the query API and the dashboard read there,
    # the aggregators keep writing the read store above.
    read_replica_url: str | None = None
    redis_url: str = "redis://localhost:6379/0"
    # A Redis Cluster behind IOTP_REDIS_URL (a seed node): every client is redis-py's cluster
    # client, and the telemetry events are sharded over IOTP_EVENT_SHARDS streams.
    redis_cluster: bool = False
    event_shards: int = Field(default=1, ge=1, le=1024)
    mqtt_url: str = "mqtt://localhost:1883"

    api_token: SecretStr | None = None
    # Devices' MQTT passwords (and idempotent replays) are derived with it; unset, it is
    # IOTP_API_TOKEN, so that token can be retired without changing any device's password.
    device_password_pepper: SecretStr | None = None
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8000, ge=1, le=65535)
    request_max_bytes: int = Field(default=64 * 1024, ge=1024)
    idempotency_ttl_hours: int = Field(default=24, ge=1)
    # Refused credentials from one client address: past the limit within the window, both
    # APIs answer 429 to that address, whatever it sends, until the window has moved on.
    auth_failure_limit: int = Field(default=20, ge=1)
    auth_failure_window_seconds: float = Field(default=60.0, gt=0, le=86_400)

    timescaledb: Literal["auto", "on", "off"] = "auto"
    telemetry_chunk_hours: int = Field(default=24, ge=1)
    telemetry_compress_after_days: int = Field(default=7, ge=0)
    telemetry_retention_days: int = Field(default=0, ge=0)

    relay_batch_size: int = Field(default=500, ge=1, le=10_000)
    relay_poll_seconds: float = Field(default=1.0, gt=0)
    outbox_keep_hours: int = Field(default=168, ge=1)
    # The relayed event streams (devices, alarms, alarm rules, webhooks, access) are trimmed
    # by the relay's housekeeping to what every consumer group has consumed; a stream no
    # group reads yet is kept whole up to this many entries, then its oldest are cut
    # (iotp/stream_trim.py). It never cuts entries a group has not consumed.
    event_stream_maxlen: int = Field(default=100_000, ge=1000)

    mqtt_protocol: Literal["5", "3.1.1"] = "5"
    mqtt_keepalive_seconds: int = Field(default=30, ge=5)
    # TLS (mqtts:// URLs): the CA to trust (default: the system's), and an optional client
    # certificate and key for brokers that ask for one.
    mqtt_ca_file: str | None = None
    mqtt_cert_file: str | None = None
    mqtt_key_file: str | None = None

    # The broker's identity files that `iotp broker-sync` keeps in step with the devices,
    # and the broker's pid file: when set, the broker is sent SIGHUP after each change
    # (otherwise something beside the broker must reload it: docker-compose's watcher).
    broker_password_file: str | None = None
    broker_acl_file: str | None = None
    broker_pid_file: str | None = None

    ingest_instance: str = "0"
    ingest_shared_subscription: bool = True
    ingest_share_group: str = "iotp-ingest"
    ingest_receive_maximum: int = Field(default=10000, ge=1, le=65535)
    ingest_max_buffered_bytes: int = Field(default=64 * 1024 * 1024, ge=1024 * 1024)
    # 1,000: the single drain's rate of 2,000, and its ingest under 100 MB (105 MB at 2,000).
    ingest_batch_max_messages: int = Field(default=1000, ge=1)
    # 512 KiB: the same batched drain rate as 1 MiB, and 21 MB less peak RSS (iotp bench ingest).
    ingest_batch_max_bytes: int = Field(default=512 * 1024, ge=1024)
    # Batches gather for up to the delay only while ingest is busy: when at least
    # IOTP_INGEST_BATCH_BUSY_MESSAGES wait. Otherwise a batch lingers a few ms for more, so
    # that a moderate rate is stored with a short wait (freshness) and a heavy one in big
    # batches.
    ingest_batch_max_delay_ms: int = Field(default=50, ge=0)
    ingest_batch_busy_messages: int = Field(default=100, ge=1)
    # Not busy, a batch waits this long for more after its first message (0: none).
    ingest_batch_linger_ms: int = Field(default=2, ge=0, le=1000)
    ingest_max_payload_bytes: int = Field(default=256 * 1024, ge=64)
    ingest_max_readings_per_message: int = Field(default=1000, ge=1)
    ingest_max_future_seconds: int = Field(default=300, ge=0)
    ingest_max_age_days: int = Field(default=0, ge=0)
    ingest_metrics_port: int = Field(default=9108, ge=0, le=65535)
    ingest_unknown_device_cache_seconds: float = Field(default=1.0, ge=0)
    # HTTP telemetry (POST /telemetry/{device_id}) for devices without MQTT, served by each
    # ingest process on its own port (0: off); ingest/http_telemetry.py. A request waits for
    # its batch's commit, and is answered 429 while this many requests already wait (or
    # IOTP_INGEST_MAX_BUFFERED_BYTES of their bodies). A device's verified password is
    # remembered for the cache's seconds (so a rotated one works that much longer).
    ingest_http_host: str = "127.0.0.1"
    ingest_http_port: int = Field(default=8088, ge=0, le=65535)
    ingest_http_max_pending: int = Field(default=1000, ge=1)
    ingest_http_credentials_cache_seconds: float = Field(default=30.0, ge=0, le=3600)
    # An ingest counts as live while its last heartbeat (five per period) is younger than
    # this; on SIGTERM it hands its share back only to live instances, within the handover
    # time (below a supervisor's grace before SIGKILL), else it keeps its session.
    ingest_live_seconds: float = Field(default=5.0, ge=1)
    ingest_handover_seconds: float = Field(default=8.0, gt=0)
    # The telemetry stream's memory cap: past it only what every consumer group acknowledged
    # is trimmed; unread entries only when they alone exceed it (an error, healed by the
    # aggregators from the write store). ingest/publisher.py.
    telemetry_stream_maxlen: int = Field(default=1_000_000, ge=1000)
    deadletter_stream_maxlen: int = Field(default=100_000, ge=100)
    deadletter_payload_max_bytes: int = Field(default=1024, ge=16)

    aggregator_instance: str = "0"
    aggregator_batch_size: int = Field(default=2000, ge=1, le=100_000)
    aggregator_block_ms: int = Field(default=500, ge=1)
    # After a read of at least IOTP_AGGREGATOR_GATHER_MIN_EVENTS events (busy) but fewer than
    # a batch, wait this long for more to apply with them; a smaller read is applied at once.
    aggregator_gather_ms: int = Field(default=50, ge=0, le=5000)
    aggregator_gather_min_events: int = Field(default=100, ge=1)
    # A smaller read waits this long for more (0: applied at once).
    aggregator_linger_ms: int = Field(default=3, ge=0, le=5000)
    aggregator_claim_idle_ms: int = Field(default=30_000, ge=100)
    applied_events_keep_hours: int = Field(default=48, ge=1)
    # Rollup tiers (issue 24): minute buckets are kept this many days, hour buckets this many,
    # day buckets for ever. The retention job runs in one aggregator at a time, every
    # IOTP_RETENTION_INTERVAL_SECONDS.
    rollup_minute_retention_days: int = Field(default=7, ge=1)
    rollup_hour_retention_days: int = Field(default=400, ge=1)
    retention_interval_seconds: float = Field(default=300.0, gt=0)
    liveness_timeout_seconds: int = Field(default=300, ge=1)
    liveness_timeouts: dict[str, int] = Field(default_factory=dict)
    # The alarm process (`iotp alarms`, issue 16): readings per batch, and how often its
    # offline timer looks for devices silent past their liveness timeout.
    alarm_batch_size: int = Field(default=1000, ge=1, le=100_000)
    alarm_tick_seconds: float = Field(default=1.0, gt=0, le=60)
    query_token: SecretStr | None = None
    query_host: str = "127.0.0.1"
    query_port: int = Field(default=8001, ge=1, le=65535)
    query_max_page_size: int = Field(default=500, ge=1)
    # Longest time range one export (GET /devices/{id}/export) may cover.
    export_max_days: int = Field(default=31, ge=1, le=3660)

    dashboard_host: str = "127.0.0.1"
    dashboard_port: int = Field(default=8501, ge=1, le=65535)
    dashboard_refresh_seconds: float = Field(default=5.0, ge=0)
    dashboard_timezone: str = "UTC"
    dashboard_page_size: int = Field(default=50, ge=5, le=500)
    dashboard_password: SecretStr | None = None  # set: the dashboard asks for it first
    # The key the dashboard sends commands with (it needs dashboard-users:act to send them
    # for a logged-in person); unset, IOTP_API_TOKEN. dashboard.login: how often a session's
    # account is re-checked (a disabled account is logged out within twice this).
    dashboard_api_key: SecretStr | None = None
    dashboard_account_check_seconds: float = Field(default=20.0, ge=0.5, le=30)

    state_dir: str = ".iotp"
    up_own_broker: bool = False  # `iotp up` runs its own Mosquitto even when one answers

    # The notifier (`iotp notify`, issue 16): its consumer of the alarm events, its delivery
    # workers, and how long a delivery is retried (capped exponential back-off with jitter)
    # before it is marked failed.
    notify_instance: str = "0"
    notify_batch_size: int = Field(default=200, ge=1, le=10_000)
    notify_block_ms: int = Field(default=1000, ge=1)
    notify_claim_idle_ms: int = Field(default=30_000, ge=100)
    notify_workers: int = Field(default=4, ge=1, le=64)
    notify_poll_seconds: float = Field(default=1.0, gt=0)
    notify_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    notify_backoff_first_seconds: float = Field(default=5.0, gt=0)
    notify_backoff_max_seconds: float = Field(default=300.0, gt=0)
    notify_give_up_hours: float = Field(default=24.0, gt=0)
    notify_keep_days: int = Field(default=30, ge=1)  # finished deliveries, and their log
    # Webhook URLs must reach public addresses only, unless this is set (labs, tests); webhook
    # secrets are stored encrypted with the first of these comma-separated Fernet keys.
    notify_allow_private_targets: bool = False
    notify_secret_key: SecretStr | None = None

    # The audit trail (`iotp audit`, issue 22): its consumer's instance name, and how long a
    # command stays in the audit log (older rows are deleted a few at a time).
    audit_instance: str = "0"
    audit_retention_days: int = Field(default=400, ge=1)

    log_level: str = "INFO"

    def notifier_consumer(self) -> str:
        """The consumer name of this notifier process in its group."""
        return f"notifier-{socket.gethostname()}-{self.notify_instance}"

    def audit_consumer(self) -> str:
        """The consumer name of this audit process in its group."""
        return f"audit-{socket.gethostname()}-{self.audit_instance}"

    def read_url(self) -> str:
        """The read store's database: its own setting, else the write database."""
        return self.read_database_url or self.database_url

    def reader_url(self) -> str:
        """Where the query API and the dashboard read: the read store's replica, if any."""
        return self.read_replica_url or self.read_url()

    def aggregator_consumer(self) -> str:
        """The consumer name of this aggregator process in its group."""
        return f"aggregator-{socket.gethostname()}-{self.aggregator_instance}"

    def device_pepper(self) -> SecretStr | None:
        """What device passwords are derived with: its own setting, else IOTP_API_TOKEN."""
        return self.device_password_pepper or self.api_token

    def dashboard_command_key(self) -> SecretStr | None:
        """What the dashboard calls the command API with: its own key, else IOTP_API_TOKEN."""
        return self.dashboard_api_key or self.api_token

    def query_token_value(self) -> SecretStr | None:
        """The query API's token: its own setting, else the command API's."""
        return self.query_token or self.api_token

    def ingest_client_id(self) -> str:
        """A stable MQTT client id, so that the broker keeps this process's session."""
        return f"iotp-ingest-{socket.gethostname()}-{self.ingest_instance}"

    def ingest_max_age(self) -> timedelta | None:
        days = self.ingest_max_age_days or self.telemetry_retention_days
        return timedelta(days=days) if days else None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once on first use (never at import)."""
    return Settings()


def token_problem(token: SecretStr | None) -> str | None:
    """Why ``token`` cannot protect the command API, or None when it can."""
    if token is None or not token.get_secret_value():
        return "IOTP_API_TOKEN is not set"
    value = token.get_secret_value()
    if value.strip().lower() in PLACEHOLDER_TOKENS:
        return "IOTP_API_TOKEN is a placeholder value"
    if len(value) < MIN_TOKEN_LENGTH:
        return f"IOTP_API_TOKEN is shorter than {MIN_TOKEN_LENGTH} characters"
    return None
