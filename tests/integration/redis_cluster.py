"""A Redis Cluster of three masters for the tests, started by the stack's own functions
(:mod:`attune.stack.redis_cluster`) from the Debian ``redis-server`` on free loopback ports, its
files under the session's tmp folder; stopped when the session ends.

``redis_cluster`` (session scope) yields the test configuration (``cfg``) pointed at the
cluster: ``redis.host``/``redis.port`` the first master as seed, ``redis.db`` 0,
``redis.cluster`` true, ``redis.manage`` false, so every client attune makes from it
(:mod:`attune.redis_connect`) is a cluster client. ``redis_cluster_layout`` yields where the
nodes listen (:class:`attune.stack.redis_cluster.RedisClusterLayout`), for tests that talk to
one node directly. Tests share the cluster: each uses a key prefix of its own.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from attune.config import AttuneConfig
from attune.stack.redis_cluster import (
    RedisClusterLayout,
    free_cluster_ports,
    redis_cluster_down,
    redis_cluster_up,
)

MASTERS = 3


@pytest.fixture(scope="session")
def redis_cluster_layout(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RedisClusterLayout]:
    """Three masters, started for the session and stopped after it."""
    root = tmp_path_factory.mktemp("redis-cluster")
    layout = RedisClusterLayout(root=root, ports=free_cluster_ports(MASTERS))
    try:
        redis_cluster_up(layout)
        yield layout
    finally:
        redis_cluster_down(layout)


@pytest.fixture(scope="session")
def redis_cluster(cfg: AttuneConfig, redis_cluster_layout: RedisClusterLayout) -> AttuneConfig:
    """``cfg`` with its redis section pointed at the session's cluster (``cluster: true``)."""
    redis = redis_cluster_layout.seed
    return AttuneConfig.model_validate(cfg.model_copy(update={"redis": redis}).model_dump())
