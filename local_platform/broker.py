"""A Mosquitto of our own on loopback, configured like production (local_platform/mosquitto.conf).

Used by the tests and the benchmarks, so that they run against the broker settings that a
deployment needs rather than Mosquitto's lossy defaults.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from local_platform.subscribe_plugin import PLUGIN_NAME, build_subscribe_plugin


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def production_config() -> str:
    return resources.files("local_platform").joinpath("mosquitto.conf").read_text(encoding="utf-8")


@dataclass(frozen=True)
class BrokerTls:
    """A TLS listener: its port and the certificate files (readable by mosquitto's user)."""

    port: int
    ca_file: Path
    cert_file: Path
    key_file: Path


TLS_BLOCK = re.compile(r"^# tls-begin\n.*?^# tls-end\n", flags=re.M | re.S)


def mosquitto_config(
    port: int,
    data_dir: Path,
    extra: str = "",
    *,
    identity: bool = False,
    tls: BrokerTls | None = None,
) -> str:
    """The production config on loopback ``port``, with its files in ``data_dir``.

    With ``identity`` the broker refuses anonymous clients, reads the password and ACL
    files `iotp broker-sync` writes in ``data_dir`` and loads the SUBSCRIBE check built
    there (local_platform/subscribe_plugin.py); without it (tests and benchmarks that
    are not about identity) it accepts any client. ``tls`` adds the TLS listener.
    """
    text = production_config()
    listener = ""
    if tls is not None:
        listener = (
            f"listener {tls.port} 127.0.0.1\ncafile {tls.ca_file}\n"
            f"certfile {tls.cert_file}\nkeyfile {tls.key_file}\n"
        )
    text = TLS_BLOCK.sub(lambda _: listener, text)
    text = re.sub(r"^listener 1883$", f"listener {port} 127.0.0.1", text, flags=re.M)
    text = re.sub(
        r"^persistence_location .*$", f"persistence_location {data_dir}/", text, flags=re.M
    )
    text = re.sub(r"^log_dest .*$", f"log_dest file {data_dir}/mosquitto.log", text, flags=re.M)
    text = re.sub(r"^pid_file .*$", f"pid_file {data_dir}/mosquitto.pid", text, flags=re.M)
    if os.geteuid() == 0:
        # Started as root, Mosquitto drops to its own user, which cannot write the pid file,
        # log and persistence in a caller's private directory. A local broker stays the
        # caller's (production runs it as its own user, with its own volumes).
        text += "\nuser root\n"
    if identity:
        text = re.sub(r"^password_file .*$", f"password_file {data_dir}/passwd", text, flags=re.M)
        text = re.sub(r"^acl_file .*$", f"acl_file {data_dir}/acl", text, flags=re.M)
        text = re.sub(r"^plugin .*$", f"plugin {data_dir}/{PLUGIN_NAME}", text, flags=re.M)
        text = re.sub(
            r"^plugin_opt_password_file .*$",
            f"plugin_opt_password_file {data_dir}/passwd",
            text,
            flags=re.M,
        )
        text = re.sub(
            r"^plugin_opt_acl_file .*$", f"plugin_opt_acl_file {data_dir}/acl", text, flags=re.M
        )
    else:
        text = re.sub(
            r"^(password_file|acl_file|plugin|plugin_opt_password_file|plugin_opt_acl_file) .*\n",
            "",
            text,
            flags=re.M,
        )
        text = re.sub(r"^allow_anonymous .*$", "allow_anonymous true", text, flags=re.M)
    return text + "\n" + extra


@dataclass(frozen=True)
class LocalBroker:
    url: str
    port: int
    pid: int
    data_dir: Path

    @property
    def password_file(self) -> Path:
        return self.data_dir / "passwd"

    @property
    def acl_file(self) -> Path:
        return self.data_dir / "acl"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "mosquitto.pid"


@contextmanager
def local_mosquitto(
    data_dir: Path,
    extra: str = "",
    *,
    identity: bool = False,
    tls: BrokerTls | None = None,
    port: int | None = None,
) -> Iterator[LocalBroker]:
    """Run mosquitto on loopback ``port`` (a free one by default) for the block; stopped with
    SIGTERM, it saves its sessions and queued messages in ``data_dir`` for the next run.

    With ``identity``, the password and ACL files must exist in ``data_dir`` (empty ones
    are made if not: nobody may connect until `iotp broker-sync` writes them).
    """
    binary = shutil.which("mosquitto")
    if binary is None:
        raise RuntimeError("mosquitto is not installed (Debian: apt-get install mosquitto)")
    port = port or free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    config = data_dir / "mosquitto.conf"
    config.write_text(mosquitto_config(port, data_dir, extra, identity=identity, tls=tls))
    if identity:
        for name in ("passwd", "acl"):
            (data_dir / name).touch()
        build_subscribe_plugin(data_dir)
    command = [binary, "-c", str(config)]
    with serving(command, port, data_dir / "mosquitto.stderr", "mosquitto", 10) as pid:
        yield LocalBroker(f"mqtt://127.0.0.1:{port}", port, pid, data_dir)


@contextmanager
def serving(
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
