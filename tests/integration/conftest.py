"""Fixtures shared by the integration tests (defined in their own modules)."""

from tests.integration.redis_cluster import redis_cluster, redis_cluster_layout

__all__ = ["redis_cluster", "redis_cluster_layout"]
