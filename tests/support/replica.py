"""A real streaming replica of a read store, made on this machine once per test run.

A private primary (initdb into a temporary directory, on a free loopback port, with
``wal_level = replica``) holds a migrated write and read store; ``pg_basebackup -R`` copies
it into a standby that streams from it on another free port. Both are stopped
(``pg_ctl stop -m fast``) and their directories removed at the end of the session. PostgreSQL
refuses to run as root, so as root every server binary runs as the ``postgres`` user
(``runuser``), in a directory that user owns. Skipped only when the binaries are missing.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from iotp.migrate import migrate
from iotp.settings import Settings
from local_platform.broker import free_port
from read_models.schema import READ_STORE_MIGRATIONS
from tests.support.waiting import wait_for

SERVER_BINARIES = ("initdb", "pg_ctl", "pg_basebackup")
SERVER_USER = "postgres"
DATABASE = "iotp"


@dataclass(frozen=True)
class StreamingReplica:
    """A primary holding the stores and a standby streaming from it."""

    primary_url: str  # the `iotp` database on the primary: write and read store
    replica_url: str  # the same database on the standby (read only)

    def wait_until_received(self, primary: psycopg.Connection[Any]) -> None:
        """Wait until the standby has received every WAL record the primary wrote so far."""
        self._wait_for("pg_last_wal_receive_lsn()", primary)

    def wait_until_replayed(self, primary: psycopg.Connection[Any]) -> None:
        """Wait until the standby has replayed every WAL record the primary wrote so far."""
        self._wait_for("pg_last_wal_replay_lsn()", primary)

    def _wait_for(self, position: str, primary: psycopg.Connection[Any]) -> None:
        row = primary.execute("SELECT pg_current_wal_lsn()::text").fetchone()
        assert row is not None
        query = f"SELECT coalesce({position} >= %s::pg_lsn, false)"

        def reached() -> bool:
            with psycopg.connect(self.replica_url, autocommit=True) as standby:
                done = standby.execute(query, (row[0],)).fetchone()
            return bool(done and done[0])

        wait_for(reached, timeout=30)


def server_binaries() -> Path | None:
    """The newest PostgreSQL server binary directory holding initdb, pg_ctl and pg_basebackup."""
    found = [
        directory
        for directory in Path("/usr/lib/postgresql").glob("*/bin")
        if all((directory / name).exists() for name in SERVER_BINARIES)
    ]
    found.sort(key=lambda d: int(d.parent.name) if d.parent.name.isdigit() else 0)
    if found:
        return found[-1]
    on_path = shutil.which("initdb")
    if on_path and all(shutil.which(name) for name in SERVER_BINARIES):
        return Path(on_path).parent
    return None


class _Servers:
    """The binaries, run as the server's user when we are root, and the servers started."""

    def __init__(self, binaries: Path, root: Path) -> None:
        self.binaries = binaries
        self.root = root
        self.started: list[Path] = []

    def run(self, name: str, *args: str) -> None:
        command: Sequence[str] = [str(self.binaries / name), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", SERVER_USER, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=self.root)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed: {done.stderr.strip()[-2000:]}")

    def start(self, data: Path) -> None:
        self.run("pg_ctl", "start", "-w", "-t", "60", "-D", str(data), "-l", f"{data}.log")
        self.started.append(data)

    def stop_all(self) -> None:
        for data in reversed(self.started):  # the standby first: it would retry its primary
            try:
                self.run("pg_ctl", "stop", "-w", "-m", "fast", "-D", str(data))
            except RuntimeError as exc:
                print(f"stopping the test server in {data}: {exc}")


def _private_directory() -> Path:
    """A temporary directory the server's user owns (root's pytest tmp dirs are closed to it)."""
    root = Path(tempfile.mkdtemp(prefix="iotp-replica-"))
    if os.geteuid() == 0:
        user = pwd.getpwnam(SERVER_USER)
        os.chown(root, user.pw_uid, user.pw_gid)
    return root


def _configure(data: Path, port: int, socket_dir: Path, extra: str = "") -> None:
    with (data / "postgresql.conf").open("a", encoding="utf-8") as conf:
        conf.write(
            f"\nport = {port}\nlisten_addresses = '127.0.0.1'\n"
            f"unix_socket_directories = '{socket_dir}'\n{extra}"
        )


def _make_primary(servers: _Servers, port: int) -> Path:
    data = servers.root / "primary"
    servers.run(
        "initdb", "--no-sync", "-A", "trust", "-U", SERVER_USER, "-E", "UTF8", "-D", str(data)
    )
    # fsync off: a test server that loses its data on a crash loses nothing of value.
    _configure(
        data,
        port,
        servers.root,
        "wal_level = replica\nmax_wal_senders = 4\nfsync = off\nmax_connections = 40\n",
    )
    with (data / "pg_hba.conf").open("a", encoding="utf-8") as hba:
        hba.write("host replication all 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 trust\n")
    servers.start(data)
    return data


def _make_standby(servers: _Servers, primary_port: int, port: int) -> Path:
    data = servers.root / "standby"
    servers.run(
        "pg_basebackup",
        *("-h", "127.0.0.1", "-p", str(primary_port), "-U", SERVER_USER),
        *("-D", str(data), "-R", "-X", "stream", "--checkpoint=fast", "--no-sync"),
    )
    _configure(data, port, servers.root, "hot_standby = on\n")
    servers.start(data)
    return data


def _streaming(url: str) -> bool:
    with psycopg.connect(url, autocommit=True) as standby:
        row = standby.execute(
            "SELECT pg_is_in_recovery() AND EXISTS"
            " (SELECT 1 FROM pg_stat_wal_receiver WHERE status = 'streaming')"
        ).fetchone()
    return bool(row and row[0])


@pytest.fixture(scope="session")
def streaming_replica() -> Iterator[StreamingReplica]:
    """A migrated primary and a standby streaming from it, for the whole session."""
    binaries = server_binaries()
    if binaries is None:
        pytest.skip(f"PostgreSQL server binaries ({', '.join(SERVER_BINARIES)}) not found")
    servers = _Servers(binaries, _private_directory())
    try:
        primary_port = free_port()
        _make_primary(servers, primary_port)
        standby_port = free_port()  # asked once the primary listens, so never the same
        primary_url = f"postgresql://{SERVER_USER}@127.0.0.1:{primary_port}/{DATABASE}"
        migrate(Settings(database_url=primary_url, timescaledb="off"), READ_STORE_MIGRATIONS)
        _make_standby(servers, primary_port, standby_port)
        replica = StreamingReplica(
            primary_url=primary_url,
            replica_url=f"postgresql://{SERVER_USER}@127.0.0.1:{standby_port}/{DATABASE}",
        )
        wait_for(lambda: _streaming(replica.replica_url), timeout=30)
        yield replica
    finally:
        servers.stop_all()
        shutil.rmtree(servers.root, ignore_errors=True)
