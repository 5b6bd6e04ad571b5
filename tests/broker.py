"""A private Mosquitto for tests, configured like production (deploy/mosquitto.conf)."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.conftest import free_port

DEPLOY_CONFIG = Path(__file__).resolve().parents[1] / "deploy" / "mosquitto.conf"


def mosquitto_config(port: int, data_dir: Path, extra: str = "") -> str:
    """deploy/mosquitto.conf, listening on ``port`` on loopback with its data in ``data_dir``."""
    text = DEPLOY_CONFIG.read_text()
    text = re.sub(r"^listener .*$", f"listener {port} 127.0.0.1", text, flags=re.M)
    text = re.sub(
        r"^persistence_location .*$", f"persistence_location {data_dir}/", text, flags=re.M
    )
    text = re.sub(r"^log_dest .*$", f"log_dest file {data_dir}/mosquitto.log", text, flags=re.M)
    return text + "\n" + extra


@contextmanager
def private_mosquitto(tmp: Path, extra: str = "") -> Iterator[str]:
    """Run mosquitto on a free port for the block; yields its ``mqtt://`` URL."""
    binary = shutil.which("mosquitto")
    assert binary, "mosquitto must be installed (apt-get install mosquitto)"
    port = free_port()
    tmp.mkdir(parents=True, exist_ok=True)
    config = tmp / "mosquitto.conf"
    config.write_text(mosquitto_config(port, tmp, extra))
    process = subprocess.Popen(
        [binary, "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    errors = process.stderr.read() if process.stderr else b""
                    raise RuntimeError(f"mosquitto did not start: {errors!r}") from None
                time.sleep(0.05)
        yield f"mqtt://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
