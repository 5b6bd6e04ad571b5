"""A Redis of a test's own that forgets: no persistence, killed and started again empty.

Run as the README runs it (``--save "" --appendonly no``): a SIGKILL loses every stream,
consumer group and key, and the server started again on the same port comes back with none.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

from local_platform.broker import free_port
from local_platform.embedded import redis_answers
from tests.support.waiting import wait_for

START_SECONDS = 10.0


class AmnesicRedis:
    """``redis-server`` without persistence on a fixed loopback port, restartable there."""

    def __init__(self, data_dir: Path) -> None:
        server = shutil.which("redis-server")
        if server is None:
            raise RuntimeError("redis-server is needed on the PATH (Debian: redis-server)")
        self.server, self.data_dir, self.port = server, data_dir, free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        """A new client (close it): one made before a restart would reconnect on its own."""
        return redis.Redis.from_url(self.url, decode_responses=True, socket_timeout=5)

    def start(self) -> None:
        """Start the server (empty: it never saved anything) and wait until it answers."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with (self.data_dir / "redis.log").open("ab") as log:
            self.process = subprocess.Popen(
                [
                    self.server,
                    "--port", str(self.port),
                    "--bind", "127.0.0.1",
                    "--save", "",
                    "--appendonly", "no",
                    "--dir", str(self.data_dir),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        wait_for(lambda: redis_answers(self.url), timeout=START_SECONDS)

    def kill(self) -> None:
        """SIGKILL: the server dies with everything it held in memory."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


@contextmanager
def amnesic_redis(data_dir: Path) -> Iterator[AmnesicRedis]:
    """A started :class:`AmnesicRedis`, killed when the block ends however it ends."""
    server = AmnesicRedis(data_dir)
    try:
        server.start()
        yield server
    finally:
        server.kill()
