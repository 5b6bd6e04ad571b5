"""The ``redis_cluster`` fixture: a real 3-master Redis Cluster (local_platform.redis_cluster).

Session-scoped: a cluster takes a few seconds to form, and each test flushes it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from local_platform.redis_cluster import LocalCluster, local_redis_cluster

__all__ = ["LocalCluster", "redis_cluster"]

MASTERS = 3


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A 3-master cluster (no replicas), flushed by the tests that use it."""
    with local_redis_cluster(tmp_path_factory.mktemp("redis-cluster"), MASTERS) as cluster:
        yield cluster
