"""The chaos rig: a platform under a steady publisher, faults injected, and the reckoning.

Everything is real: a Mosquitto the rig can restart on the same port and data directory,
PostgreSQL and Redis reached through TCP proxies the rig can cut, and `iotp` processes it
can kill. The publisher behaves as a device: QoS 1, each reading unique, and anything not
acknowledged is sent again after a reconnect, so at the end every reading was acknowledged.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson
import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from local_platform.broker import free_port, local_mosquitto
from tests.support.ingest_harness import BASE
from tests.support.tcp_proxy import TcpProxy
from tests.support.waiting import wait_for

METRICS = ("temp", "hum")
RESULTS: list[ScenarioResult] = []


@dataclass(frozen=True)
class ScenarioResult:
    scenario: str
    published: int
    stored: int
    modelled: int
    lost: int
    duplicated: int

    def row(self) -> str:
        return (
            f"| {self.scenario} | {self.published} | {self.stored} | {self.modelled} |"
            f" {self.lost} | {self.duplicated} |"
        )


def results_table() -> str:
    lines = [
        "| scenario | published | stored | modelled | lost | duplicated |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    return "\n".join(lines + [r.row() for r in RESULTS])


class RestartableBroker:
    """Mosquitto (configured like production) that can be stopped and started again on the
    same port, with its persistence, as an operator's restart would."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir, self.port = data_dir, free_port()
        self._running = contextlib.ExitStack()

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._running.enter_context(local_mosquitto(self.data_dir, port=self.port))

    def stop(self) -> None:
        """SIGTERM: Mosquitto saves its sessions and queued messages, then exits."""
        self._running.close()


def proxied(url: str, proxy: TcpProxy) -> str:
    parts = urlsplit(url)
    auth = f"{parts.username}@" if parts.username else ""
    return urlunsplit(parts._replace(netloc=f"{auth}127.0.0.1:{proxy.port}"))


@dataclass
class SteadyPublisher:
    """Publishes one unique reading per message, round-robin over ``devices``, at ``rate``.

    Like a device, it sends a reading again when the broker has not acknowledged it after a
    while (a restarted broker may have lost the publish it never answered): the store's
    unique key makes the repeat harmless.
    """

    port: int
    devices: list[str]
    rate: float = 200.0
    acked: set[int] = field(default_factory=set)  # reading numbers the broker acknowledged
    sent: dict[int, tuple[str, bytes]] = field(default_factory=dict)  # reading -> message
    _mids: dict[int, int] = field(default_factory=dict)  # MQTT packet id -> reading
    _early: set[int] = field(default_factory=set)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> SteadyPublisher:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"chaos-{free_port()}", protocol=mqtt.MQTTv5
        )
        self.client.max_inflight_messages_set(100)
        self.client.max_queued_messages_set(0)
        self.client.on_publish = self._on_publish
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = 3600
        self.client.connect("127.0.0.1", self.port, clean_start=False, properties=properties)
        self.client.reconnect_delay_set(min_delay=1, max_delay=2)
        self.client.loop_start()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _on_publish(self, _c: Any, _u: Any, mid: int, reason: Any, _p: Any) -> None:
        if reason.value == 0:
            with self._lock:
                if mid in self._mids:
                    self.acked.add(self._mids.pop(mid))
                else:
                    self._early.add(mid)  # acknowledged before _send recorded its packet id

    def _send(self, reading: int) -> None:
        topic, payload = self.sent[reading]
        # Not under the lock: paho may call on_publish while holding its own locks.
        info = self.client.publish(topic, payload, 1)
        with self._lock:
            if info.mid in self._early:
                self._early.discard(info.mid)
                self.acked.add(reading)
            else:
                self._mids[info.mid] = reading

    def _run(self) -> None:
        start = time.monotonic()
        for i in itertools.count():
            if self._stop.is_set():
                return
            device = self.devices[i % len(self.devices)]
            reading = {
                "ts": (BASE + timedelta(milliseconds=i)).isoformat(),
                "metrics": {"temp": (i % 160) / 4, "hum": (i % 400) / 4},
            }
            self.sent[i] = (f"devices/{device}/telemetry", orjson.dumps(reading))
            self._send(i)
            time.sleep(max(0.0, start + (i + 1) / self.rate - time.monotonic()))

    def finish(self, rounds: int = 6) -> int:
        """Stop publishing; resend what stays unacknowledged until the broker has
        acknowledged every reading; how many readings were published."""
        self._stop.set()
        self._thread.join(timeout=10)
        for _ in range(rounds):
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and self._unacked():
                time.sleep(0.2)
            for reading in self._unacked():
                self._send(reading)
        wait_for(lambda: not self._unacked(), timeout=15, interval=0.2)
        self.client.disconnect()
        self.client.loop_stop()
        return len(self.sent)

    def _unacked(self) -> list[int]:
        with self._lock:
            return sorted(set(self.sent) - self.acked)


def reckon(scenario: str, db: psycopg.Connection[Any], published: int) -> ScenarioResult:
    """What the stores hold for ``published`` one-reading messages of len(METRICS) values."""
    row = db.execute(
        "SELECT (SELECT count(*) FROM telemetry),"
        " (SELECT coalesce(sum(count), 0) FROM read_models.metric_stats)"
    ).fetchone()
    assert row is not None
    stored, modelled = int(row[0]) // len(METRICS), int(row[1]) // len(METRICS)
    result = ScenarioResult(
        scenario,
        published,
        stored,
        modelled,
        lost=max(0, published - stored),
        duplicated=max(0, stored - published) + max(0, modelled - stored),
    )
    RESULTS.append(result)
    return result
