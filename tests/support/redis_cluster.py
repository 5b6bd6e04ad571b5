"""A real 3-master Redis Cluster on free loopback ports, made the way an operator makes one.

``redis-server --cluster-enabled yes`` three times, then ``redis-cli --cluster create``; the
fixture waits until every node says ``cluster_state:ok``. Session-scoped: a cluster takes a
few seconds to form, and each test flushes it.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from redis.cluster import RedisCluster

from tests.support.waiting import wait_for

MASTERS = 3


@dataclass(frozen=True)
class LocalCluster:
    ports: tuple[int, ...]

    @property
    def url(self) -> str:
        """IOTP_REDIS_URL for the cluster: one seed node (the client discovers the rest)."""
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def client(self) -> RedisCluster:
        return RedisCluster.from_url(self.url, decode_responses=True)

    def flush(self) -> None:
        for port in self.ports:
            node = redis.Redis(port=port)
            try:
                node.flushall()
            finally:
                node.close()


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _cluster_port(taken: set[int]) -> int:
    """A free port whose cluster bus port (port + 10000, Redis's rule) is free and valid too."""
    while True:
        port = random.randint(20000, 29999)
        if port not in taken and _bindable(port) and _bindable(port + 10000):
            return port


def _state_ok(port: int) -> bool:
    node = redis.Redis(port=port, decode_responses=True)
    try:
        return "cluster_state:ok" in str(node.execute_command("CLUSTER", "INFO"))
    except redis.RedisError:
        return False
    finally:
        node.close()


def _start_node(root: Path, port: int) -> subprocess.Popen[bytes]:
    directory = root / str(port)
    directory.mkdir(parents=True)
    return subprocess.Popen(
        [
            "redis-server",
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--cluster-enabled", "yes",
            "--cluster-config-file", str(directory / "nodes.conf"),
            "--cluster-node-timeout", "2000",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(directory),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )  # fmt: skip


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A 3-master cluster (no replicas), flushed by the tests that use it."""
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        pytest.fail("redis-server and redis-cli are needed for the Redis Cluster tests")
    root = tmp_path_factory.mktemp("redis-cluster")
    taken: set[int] = set()
    for _ in range(MASTERS):
        taken.add(_cluster_port(taken))
    ports = tuple(sorted(taken))
    nodes = [_start_node(root, port) for port in ports]
    try:
        wait_for(lambda: all(_answers(port) for port in ports), timeout=20)
        subprocess.run(
            ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports)]
            + ["--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        wait_for(lambda: all(_state_ok(port) for port in ports), timeout=30, interval=0.2)
        yield LocalCluster(ports)
    finally:
        for node in nodes:
            node.terminate()
        for node in nodes:
            node.wait(timeout=10)


def _answers(port: int) -> bool:
    node = redis.Redis(port=port)
    try:
        return bool(node.ping())
    except redis.RedisError:
        return False
    finally:
        node.close()
