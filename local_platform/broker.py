"""A Mosquitto of our own on loopback, configured like production (local_platform/mosquitto.conf).

Used by the tests and the benchmarks, so that they run against the broker settings that a
deployment needs rather than Mosquitto's lossy defaults.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def production_config() -> str:
    return resources.files("local_platform").joinpath("mosquitto.conf").read_text(encoding="utf-8")


def mosquitto_config(port: int, data_dir: Path, extra: str = "") -> str:
    """The production config, listening on ``port`` on loopback with its data in ``data_dir``."""
    text = production_config()
    text = re.sub(r"^listener .*$", f"listener {port} 127.0.0.1", text, flags=re.M)
    text = re.sub(
        r"^persistence_location .*$", f"persistence_location {data_dir}/", text, flags=re.M
    )
    text = re.sub(r"^log_dest .*$", f"log_dest file {data_dir}/mosquitto.log", text, flags=re.M)
    return text + "\n" + extra


@dataclass(frozen=True)
class LocalBroker:
    url: str
    port: int
    pid: int


@contextmanager
def local_mosquitto(data_dir: Path, extra: str = "") -> Iterator[LocalBroker]:
    """Run mosquitto on a free loopback port for the block."""
    binary = shutil.which("mosquitto")
    if binary is None:
        raise RuntimeError("mosquitto is not installed (Debian: apt-get install mosquitto)")
    port = free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    config = data_dir / "mosquitto.conf"
    config.write_text(mosquitto_config(port, data_dir, extra))
    command = [binary, "-c", str(config)]
    with _serving(command, port, data_dir / "mosquitto.stderr", "mosquitto", 10) as pid:
        yield LocalBroker(f"mqtt://127.0.0.1:{port}", port, pid)


AMQTT_CONFIG = """\
listeners:
  default:
    type: tcp
    bind: 127.0.0.1:{port}
plugins:
  # Clients must give a user name: amqtt keeps offline QoS 1 messages only for
  # authenticated sessions, and ingest relies on its session keeping them.
  amqtt.plugins.authentication.AnonymousAuthPlugin:
    allow_anonymous: false
"""


@contextmanager
def local_amqtt(data_dir: Path) -> Iterator[LocalBroker]:
    """The pure-Python amqtt broker (MQTT 3.1.1 only, no shared subscriptions)."""
    port = free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    config = data_dir / "amqtt.yaml"
    config.write_text(AMQTT_CONFIG.format(port=port))
    command = [
        sys.executable,
        "-c",
        "from amqtt.scripts.broker_script import main; main()",
        "-c",
        str(config),
    ]
    with _serving(command, port, data_dir / "amqtt.log", "amqtt", 20) as pid:
        yield LocalBroker(f"mqtt://iotp:local@127.0.0.1:{port}", port, pid)


@contextmanager
def _serving(
    command: list[str], port: int, log: Path, name: str, start_timeout: float
) -> Iterator[int]:
    """Run a broker until the block ends: wait for it to listen, then stop it."""
    with log.open("ab") as output:
        process = subprocess.Popen(  # noqa: S603 - our own binaries and config files
            command, stdout=output, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{name} did not start (log: {log})") from None
                time.sleep(0.05)
        yield process.pid
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
