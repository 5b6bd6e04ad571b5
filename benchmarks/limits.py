"""`iotp bench limits`: iotp's drain throughput beside the ceilings of its broker and database.

In one run, with the same workload and the same publishers as `iotp bench ingest`:
- broker ceiling: the workload queued for a persistent session, then drained by a
  subscriber that only counts: Mosquitto's own C client (``mosquitto_sub``); a paho-mqtt
  subscriber, twice: acknowledging in its own loop, and as ingest uses paho (network thread,
  manual acknowledgements sent in batches from another thread); and ingest's receive path
  (``Mqtt5Source``, taken from and acknowledged as ingest's pipeline does), whose CPU per
  message is the floor under ingest's. Each reports its CPU per 1,000 messages;
- database ceiling: binary COPY of the same data points, pre-encoded so that only
  PostgreSQL's work is timed, into a table shaped like ``telemetry`` without and with its
  unique key;
- iotp: the drain runs of `iotp bench ingest`.
"""

from __future__ import annotations

import gc
import io
import queue
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import paho.mqtt.client as mqtt
import psutil
import psycopg
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from benchmarks.ingest import DrainPlan, prepare, run_drain
from benchmarks.processes import CpuMeter, reap
from benchmarks.workload import METRICS, Workload, publish_all
from ingest.mqtt5_source import Mqtt5Source
from ingest.mqtt_source import InboundMessage, SourceOptions
from ingest.pipeline import BatchPolicy
from ingest.service import batch_policy_from, source_options_from
from iotp.errors import ConfigurationError
from iotp.mqtt_url import BrokerAddress, parse_mqtt_url
from iotp.names import TELEMETRY_TOPIC_FILTER
from iotp.runtime import settle_gc
from iotp.settings import Settings
from local_platform.broker import local_mosquitto

COUNTER_ID = "iotp-bench-counter"
# Fixed names, so that every statement here is a constant.
_CREATE = (
    "CREATE TABLE bench_copy_ceiling (device_id text NOT NULL, ts timestamptz NOT NULL,"
    " metric text NOT NULL, value float8 NOT NULL, received_at timestamptz NOT NULL)"
)
_TARGETS = {
    "no_index": _CREATE,
    "unique_key": _CREATE[:-1] + ", UNIQUE (device_id, metric, ts))",
}
COPY_CHUNK = 1 << 20


def _mosquitto_sub(url: str, *extra: str) -> list[str]:
    binary = shutil.which("mosquitto_sub")
    if binary is None:
        raise ConfigurationError(
            "mosquitto_sub is not installed (Debian: apt-get install mosquitto-clients)"
        )
    broker = parse_mqtt_url(url)
    return [binary, "-h", broker.host, "-p", str(broker.port), "-i", COUNTER_ID, "-c", "-q", "1",
            "-t", TELEMETRY_TOPIC_FILTER, *extra]  # fmt: skip


def drain_with_mosquitto_sub(
    workload: Workload, publishers: int, workdir: Path, timeout: float
) -> dict[str, Any]:
    """Messages/s a C subscriber drains from a persistent session (it only counts)."""
    with local_mosquitto(workdir / f"broker-c-{workload.per_message}") as broker:
        subprocess.run(_mosquitto_sub(broker.url, "-E"), check=True, timeout=30)  # noqa: S603
        published = publish_all(broker.url, workload, publishers)
        meter = CpuMeter()
        meter.add("broker", [psutil.Process(broker.pid)])
        started = time.perf_counter()
        counter = subprocess.Popen(  # noqa: S603 - mosquitto's own client
            _mosquitto_sub(broker.url, "-C", str(published.messages)),
            stdout=subprocess.DEVNULL,
        )
        meter.start()
        killer = threading.Timer(timeout, counter.kill)
        killer.start()
        subscriber_cpu = reap(counter)
        killer.cancel()
        seconds = time.perf_counter() - started
        cpu = meter.stop(seconds)
        cpu["subscriber"] = round(subscriber_cpu / seconds, 2)
    if counter.returncode != 0:
        raise RuntimeError(f"mosquitto_sub did not count every message (exit {counter.returncode})")
    return _drain_figures(published.messages, workload.per_message, seconds, cpu, subscriber_cpu)


def drain_with_paho(
    workload: Workload, publishers: int, workdir: Path, timeout: float, *, as_ingest: bool = False
) -> dict[str, Any]:
    """Messages/s a paho-mqtt subscriber (QoS 1, MQTT 5) drains when it only counts.

    ``as_ingest``: paho as ingest runs it (its network thread, manual acknowledgements sent
    from another thread a batch at a time) rather than acknowledging in its own loop.
    """
    name = f"broker-paho-{'ingest-' if as_ingest else ''}{workload.per_message}"
    with local_mosquitto(workdir / name) as broker:
        return _drain_in_process(
            broker.url,
            broker.pid,
            workload,
            publishers,
            timeout,
            lambda expected: _PahoCounter(broker.url, expected, as_ingest),
            "paho counter",
        )


def drain_with_ingest_receive_path(
    settings: Settings, workload: Workload, publishers: int, workdir: Path, timeout: float
) -> dict[str, Any]:
    """Messages/s ingest's MQTT source (Mqtt5Source) drains, driven as ingest's pipeline
    drives it with ingest's settings, but with nothing stored between take() and ack()."""
    with local_mosquitto(workdir / f"broker-receive-path-{workload.per_message}") as broker:
        address = parse_mqtt_url(broker.url)
        options = replace(
            source_options_from(settings), client_id=COUNTER_ID, protocol="5", tls=None
        )
        policy = batch_policy_from(settings)
        return _drain_in_process(
            broker.url,
            broker.pid,
            workload,
            publishers,
            timeout,
            lambda expected: _ReceivePathCounter(address, options, policy, expected),
            "receive path counter",
        )


class _Counting(Protocol):
    count: int

    def run(self, timeout: float) -> None: ...


def _drain_in_process(
    url: str,
    broker_pid: int,
    workload: Workload,
    publishers: int,
    timeout: float,
    counter_for: Callable[[int], _Counting],
    what: str,
) -> dict[str, Any]:
    """Create the counter's session, queue the workload for it, then time the counter (this
    process's CPU, every thread) draining it."""
    counter_for(0).run(timeout=30)  # creates the session
    published = publish_all(url, workload, publishers)
    meter = CpuMeter()
    meter.add("broker", [psutil.Process(broker_pid)])
    meter.start()
    counter = counter_for(published.messages)
    with _settled_gc():
        cpu_before = time.process_time()
        started = time.perf_counter()
        counter.run(timeout)
        seconds = time.perf_counter() - started
        subscriber_cpu = time.process_time() - cpu_before
    cpu = meter.stop(seconds)
    cpu["subscriber"] = round(subscriber_cpu / seconds, 2)
    if counter.count < published.messages:
        raise RuntimeError(f"{what} got {counter.count} of {published.messages}")
    return _drain_figures(published.messages, workload.per_message, seconds, cpu, subscriber_cpu)


@contextmanager
def _settled_gc() -> Iterator[None]:
    """The garbage collector as ingest runs it (iotp.runtime.settle_gc), for the count only.

    This process holds much more than an ingest does (the benchmark's own state): so that the
    counter's CPU per message is paho's, not that of collecting this process's objects.
    """
    thresholds = gc.get_threshold()
    settle_gc()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)


class _PahoCounter:
    def __init__(self, url: str, expected: int, as_ingest: bool = False) -> None:
        self.expected, self.count = expected, 0
        self.as_ingest = as_ingest
        self.done = threading.Event()
        self._unacked: list[tuple[int, int]] = []
        self._batch = threading.Condition()
        # Acknowledged as ingest's batches are by default: this many, or after this delay.
        fields = Settings.model_fields
        self._ack_batch: int = fields["ingest_batch_max_messages"].default
        self._ack_delay: float = fields["ingest_batch_max_delay_ms"].default / 1000
        broker = parse_mqtt_url(url)
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=COUNTER_ID,
            protocol=mqtt.MQTTv5,
            manual_ack=as_ingest,
        )
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = 3600
        properties.ReceiveMaximum = 10_000
        self.client.connect(broker.host, broker.port, clean_start=False, properties=properties)

    def _on_connect(self, client: mqtt.Client, *args: Any) -> None:
        client.subscribe(TELEMETRY_TOPIC_FILTER, qos=1)

    def _on_subscribe(self, *args: Any) -> None:
        if self.expected == 0:
            self.done.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: Any) -> None:
        self.count += 1
        if self.as_ingest:
            with self._batch:
                self._unacked.append((message.mid, message.qos))
                if len(self._unacked) >= self._ack_batch:
                    self._batch.notify()
        if self.count >= self.expected:
            self.done.set()

    def run(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        if not self.as_ingest:
            while not self.done.is_set() and time.monotonic() < deadline:
                self.client.loop(timeout=0.1)
            self.client.disconnect()
            return
        self.client.loop_start()
        while time.monotonic() < deadline:
            finished = self.done.is_set()
            with self._batch:
                if not finished:
                    self._batch.wait(self._ack_delay)
                batch, self._unacked = self._unacked, []
            for mid, qos in batch:
                self.client.ack(mid, qos)
            if finished:
                break
        self.client.disconnect()
        self.client.loop_stop()


class _ReceivePathCounter:
    """An Mqtt5Source as IngestPipeline.run uses it: batches taken with its policy on one
    thread, handed one at a time to a writer thread that acknowledges them (after the
    commit, in ingest)."""

    def __init__(
        self, broker: BrokerAddress, options: SourceOptions, policy: BatchPolicy, expected: int
    ) -> None:
        self.source = Mqtt5Source(broker, options)
        self.policy, self.expected, self.count = policy, expected, 0
        self._stop = threading.Event()

    def run(self, timeout: float) -> None:
        policy = self.policy
        handoff: queue.Queue[list[InboundMessage] | None] = queue.Queue(maxsize=1)
        writer = threading.Thread(target=self._acknowledge, args=(handoff,), name="bench-acks")
        deadline = threading.Timer(timeout, self._stop.set)
        self.source.start()
        writer.start()
        deadline.start()
        try:
            if self.expected == 0:  # only the session: subscribed, then kept
                self.source.connected.wait(timeout)
            while self.count < self.expected and not self._stop.is_set():
                # The last batch asks only for what is left: like the paho counters, this one
                # stops at its last message instead of waiting out a batch delay for more.
                wanted = min(policy.max_messages, self.expected - self.count)
                batch = self.source.take(
                    wanted, policy.max_bytes, policy.max_delay_seconds, self._stop
                )
                self.count += len(batch)
                if batch:
                    handoff.put(batch)
        finally:
            handoff.put(None)
            writer.join()
            deadline.cancel()
            self.source.close()

    def _acknowledge(self, handoff: queue.Queue[list[InboundMessage] | None]) -> None:
        while (batch := handoff.get()) is not None:
            self.source.ack(batch)


def _drain_figures(
    messages: int, per_message: int, seconds: float, cpu: dict[str, float], subscriber_cpu: float
) -> dict[str, Any]:
    return {
        "messages": messages,
        "seconds": round(seconds, 3),
        "messages_per_s": round(messages / seconds, 1),
        "readings_per_s": round(messages * per_message / seconds, 1),
        "cpu_cores": cpu,
        "subscriber_cpu_ms_per_1k_messages": round(subscriber_cpu * 1e6 / messages, 1),
    }


def copy_ceiling(settings: Settings, readings: int, devices: int) -> dict[str, Any]:
    """Readings/s that binary COPY puts into a telemetry-shaped table: no index, unique key."""
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        data = _encoded_rows(conn, readings, devices)
        figures: dict[str, Any] = {"data_points": readings * len(METRICS)}
        for name, create in _TARGETS.items():
            conn.execute("DROP TABLE IF EXISTS bench_copy_ceiling")
            conn.execute(create)
            started = time.perf_counter()
            with (
                conn.transaction(),
                conn.cursor() as cur,
                cur.copy(
                    "COPY bench_copy_ceiling (device_id, ts, metric, value, received_at)"
                    " FROM STDIN (FORMAT BINARY)"
                ) as copy,
            ):
                for offset in range(0, len(data), COPY_CHUNK):
                    copy.write(data[offset : offset + COPY_CHUNK])
            seconds = time.perf_counter() - started
            figures[name] = {
                "seconds": round(seconds, 3),
                "data_points_per_s": round(readings * len(METRICS) / seconds, 1),
                "readings_per_s": round(readings / seconds, 1),
            }
        conn.execute("DROP TABLE bench_copy_ceiling")
    return figures


def _encoded_rows(conn: psycopg.Connection[Any], readings: int, devices: int) -> bytes:
    """The data points in PostgreSQL's binary COPY format, made by PostgreSQL itself."""
    start = datetime.now(UTC) - timedelta(days=1)
    conn.execute(
        "CREATE TEMP TABLE bench_copy_source AS"
        " SELECT format('bench-%%s', lpad((n %% %s)::text, 5, '0')) AS device_id,"
        " %s::timestamptz + (n / %s) * interval '250 milliseconds' AS ts,"
        " m AS metric, random() * 100 AS value, now() AS received_at"
        " FROM generate_series(0, %s - 1) n, unnest(%s::text[]) m",
        (devices, start, devices, readings, list(METRICS)),
    )
    buffer = io.BytesIO()
    with (
        conn.cursor() as cur,
        cur.copy(
            "COPY (SELECT * FROM bench_copy_source ORDER BY random()) TO STDOUT (FORMAT BINARY)"
        ) as copy,
    ):
        for chunk in copy:
            buffer.write(chunk)
    conn.execute("DROP TABLE bench_copy_source")
    return buffer.getvalue()


def run_limits_bench(settings: Settings, plan: DrainPlan) -> dict[str, Any]:
    """The database's ceiling, then for each drain: iotp's, and the broker's two ceilings."""
    settings = prepare(settings, plan)
    workloads = plan.workloads()
    report = plan.header()
    report["database_copy"] = copy_ceiling(settings, workloads["batched"].readings, plan.devices)
    with tempfile.TemporaryDirectory(prefix="iotp-bench-") as tmp:
        for name, workload in workloads.items():
            report[name] = _drains(settings, plan, workload, Path(tmp), report["database_copy"])
    return report


def _drains(
    settings: Settings, plan: DrainPlan, workload: Workload, workdir: Path, database: dict[str, Any]
) -> dict[str, Any]:
    """One workload drained by iotp and by the counting subscribers; iotp's fractions of
    each, and each Python counter's drain rate as a fraction of mosquitto_sub's."""
    iotp = run_drain(settings, plan, workload, workdir)
    broker_c = drain_with_mosquitto_sub(workload, plan.publishers, workdir, plan.timeout)
    broker_paho = drain_with_paho(workload, plan.publishers, workdir, plan.timeout)
    paho_as_ingest = drain_with_paho(
        workload, plan.publishers, workdir, plan.timeout, as_ingest=True
    )
    receive_path = drain_with_ingest_receive_path(
        settings, workload, plan.publishers, workdir, plan.timeout
    )
    for counter in (broker_paho, paho_as_ingest, receive_path):
        counter["fraction_of_broker_mosquitto_sub"] = _fraction(
            counter["messages_per_s"], broker_c["messages_per_s"]
        )
    stored = iotp.readings_per_s_stored
    return {
        "iotp": {
            "readings_per_s_stored": stored,
            "readings_per_s_applied": iotp.readings_per_s_applied,
            "readings_per_s_applied_middle": iotp.readings_per_s_applied_middle,
            "readings_lost": iotp.readings_lost,
            "cpu_cores": iotp.cpu_cores,
            "machine_cores_busy": iotp.machine_cores_busy,
            "machine_cores_stolen": iotp.machine_cores_stolen,
            "cpu_ms_per_1k_readings": iotp.cpu_ms_per_1k_readings,
        },
        "broker_mosquitto_sub": broker_c,
        "broker_paho": broker_paho,
        "broker_paho_as_ingest": paho_as_ingest,
        "ingest_receive_path": receive_path,
        "fraction_of_broker_mosquitto_sub": _fraction(stored, broker_c["readings_per_s"]),
        "fraction_of_broker_paho": _fraction(stored, broker_paho["readings_per_s"]),
        "fraction_of_broker_paho_as_ingest": _fraction(stored, paho_as_ingest["readings_per_s"]),
        "fraction_of_ingest_receive_path": _fraction(stored, receive_path["readings_per_s"]),
        "fraction_of_database_copy_no_index": _fraction(
            stored, database["no_index"]["readings_per_s"]
        ),
        "fraction_of_database_copy_unique_key": _fraction(
            stored, database["unique_key"]["readings_per_s"]
        ),
    }


def _fraction(part: float, whole: float) -> float:
    return round(part / whole, 3) if whole else 0.0
