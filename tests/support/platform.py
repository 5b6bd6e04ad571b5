"""The platform a test runs: a private broker beside the test stores, and iotp services."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import redis

from iotp.processes import iotp_environment, stop_all
from iotp.settings import Settings
from tests.support.api_client import AUTH, running_api, wait_relayed
from tests.support.processes import ServiceProcess, run_iotp

# What a registered device declares unless a test says otherwise (ingest_harness's readings).
METRICS = [
    {"name": "temp", "min": -40, "max": 60},
    {"name": "hum", "min": 0, "max": 100},
    {"name": "bat"},
]


@dataclass
class Platform:
    settings: Settings
    mqtt_url: str
    db: psycopg.Connection[Any]
    redis: redis.Redis
    tmp: Path
    children: list[ServiceProcess] = field(default_factory=list)

    def environment(self, **settings: str) -> dict[str, str]:
        """The environment of an iotp child: this platform's settings only, and ``settings``."""
        return iotp_environment(
            {
                "database_url": self.settings.database_url,
                "redis_url": self.settings.redis_url,
                "mqtt_url": self.mqtt_url,
                "ingest_metrics_port": "0",
                # Served only by the tests of it, each on a port of its own: otherwise every
                # ingest would start its HTTP telemetry process for nothing.
                "ingest_http_port": "0",
                "log_level": "INFO",
                **settings,
            },
            inherit_settings=False,
        )

    def serve(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        ready: str | None = None,
        log: str | None = None,
    ) -> ServiceProcess:
        """Start ``iotp ARGS`` (stopped by the fixture however the test ends)."""
        process = ServiceProcess(
            args, env or self.environment(), self.tmp / f"{log or args[0]}.log", ready=ready
        )
        self.children.append(process)
        return process.start()

    def ingest(self, instance: str = "0", **settings: str) -> ServiceProcess:
        """`iotp ingest`, once it has subscribed."""
        return self._instance("ingest", instance, "subscribed to", settings)

    def aggregator(self, instance: str = "0", **settings: str) -> ServiceProcess:
        """`iotp aggregate`, once it has joined the consumer group."""
        return self._instance("aggregate", instance, "aggregating as", settings, "aggregator")

    def _instance(
        self, command: str, instance: str, ready: str, settings: dict[str, str], log: str = ""
    ) -> ServiceProcess:
        env = self.environment(**settings)
        log = f"{log or command}-{instance}"
        return self.serve(command, "--instance", instance, env=env, ready=ready, log=log)

    def run(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run ``iotp ARGS`` to its end against this platform."""
        return run_iotp(*args, env=env or self.environment(), timeout=timeout)

    def stop_children(self) -> None:
        """Stop whatever a test started, even when it failed half-way."""
        stop_all(self.children)

    def register(self, *device_ids: str, metrics: list[dict[str, Any]] | None = None) -> None:
        """Register devices through the command API; return once the relay published them."""
        with running_api(self.settings) as client:
            for device_id in device_ids:
                body = {
                    "device_id": device_id,
                    "name": device_id,
                    "kind": "sensor",
                    "metrics": METRICS if metrics is None else metrics,
                }
                assert client.post("/devices", json=body, headers=AUTH).status_code == 201
            wait_relayed(self.db)
