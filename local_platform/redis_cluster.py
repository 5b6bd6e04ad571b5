"""A real Redis Cluster on loopback, made the way an operator makes one, for tests and benches.

``redis-server --cluster-enabled yes`` once per master, then ``redis-cli --cluster create``;
the block starts only when every node says ``cluster_state:ok``, and every node is stopped
when it ends (also when forming the cluster failed). Nodes keep nothing on disk beyond their
``nodes.conf``: the cluster is throw-away.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from redis.cluster import RedisCluster

BUS_PORT_OFFSET = 10000  # Redis's rule: a node's cluster bus listens on its port + 10000
FORM_TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True)
class LocalCluster:
    ports: tuple[int, ...]
    pids: tuple[int, ...] = ()  # the nodes' redis-server processes, in port order

    @property
    def url(self) -> str:
        """IOTP_REDIS_URL for the cluster: one seed node (the client discovers the rest)."""
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def client(self) -> RedisCluster:
        return RedisCluster.from_url(self.url, decode_responses=True)

    def node(self, port: int) -> redis.Redis:
        """A plain client of one node (for what is per node: INFO, FLUSHALL)."""
        return redis.Redis(port=port, decode_responses=True)

    def flush(self) -> None:
        for port in self.ports:
            node = self.node(port)
            try:
                node.flushall()
            finally:
                node.close()

    def command_calls(self) -> dict[str, tuple[int, int]]:
        """(calls, microseconds) of each command since the nodes started, summed over them
        (INFO commandstats; keys as Redis names them, e.g. ``cmdstat_xadd``)."""
        total: Counter[str] = Counter()
        usec: Counter[str] = Counter()
        for port in self.ports:
            node = self.node(port)
            try:
                stats: dict[str, Any] = node.info("commandstats")
            finally:
                node.close()
            for name, values in stats.items():
                total[name] += int(values["calls"])
                usec[name] += int(values["usec"])
        return {name: (calls, usec[name]) for name, calls in total.items()}


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def cluster_ports(count: int) -> tuple[int, ...]:
    """``count`` free ports whose bus ports (port + 10000, below 65536) are free too."""
    taken: set[int] = set()
    while len(taken) < count:
        port = random.randint(20000, 65535 - BUS_PORT_OFFSET)
        if port not in taken and _bindable(port) and _bindable(port + BUS_PORT_OFFSET):
            taken.add(port)
    return tuple(sorted(taken))


def _node_says(port: int, check: Callable[[redis.Redis], bool]) -> bool:
    node = redis.Redis(port=port, decode_responses=True, socket_timeout=2)
    try:
        return check(node)
    except redis.RedisError:
        return False
    finally:
        node.close()


def _answers(port: int) -> bool:
    return _node_says(port, lambda node: bool(node.ping()))


def _state_ok(port: int) -> bool:
    # redis-py answers CLUSTER INFO as a dict of its fields.
    return _node_says(port, lambda node: node.cluster("INFO").get("cluster_state") == "ok")


def _wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"the local Redis Cluster: {what} within {timeout:.0f} s")
        time.sleep(0.1)


def _start_node(server: str, root: Path, port: int) -> subprocess.Popen[bytes]:
    directory = root / str(port)
    directory.mkdir(parents=True)
    return subprocess.Popen(  # noqa: S603 - the system's redis-server with our arguments
        [
            server,
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


def _form(cli: str, ports: tuple[int, ...]) -> None:
    _wait_until(lambda: all(_answers(port) for port in ports), 20, "a node did not answer")
    nodes = [f"127.0.0.1:{port}" for port in ports]
    subprocess.run(  # noqa: S603 - the system's redis-cli with our arguments
        [cli, "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    _wait_until(
        lambda: all(_state_ok(port) for port in ports),
        FORM_TIMEOUT_SECONDS,
        "cluster_state:ok not reached",
    )


@contextmanager
def local_redis_cluster(root: Path, masters: int = 3) -> Iterator[LocalCluster]:
    """A cluster of ``masters`` masters (no replicas), node directories under ``root``."""
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if server is None or cli is None:
        raise RuntimeError("redis-server and redis-cli are needed (Debian: redis-server)")
    ports = cluster_ports(masters)
    nodes: list[subprocess.Popen[bytes]] = []
    try:
        nodes.extend(_start_node(server, root, port) for port in ports)
        _form(cli, ports)
        yield LocalCluster(ports, tuple(node.pid for node in nodes))
    finally:
        for node in nodes:
            node.terminate()
        for node in nodes:
            try:
                node.wait(timeout=10)
            except subprocess.TimeoutExpired:
                node.kill()
                node.wait()
