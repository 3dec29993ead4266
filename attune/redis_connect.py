"""The one place a Redis client is made from the config: a plain client, or a cluster client.

Every process that talks to the online store gets its client from :func:`connect` (blocking,
``redis.Redis`` or ``redis.cluster.RedisCluster``) or :func:`connect_async` (``redis.asyncio``),
never by constructing one, so ``redis.cluster: true`` turns all of them into cluster clients at
once. With a cluster, ``redis.host``/``redis.port`` is a seed node: the client reads the slot map
from it (``CLUSTER SLOTS``) and then sends each command to the master that owns its key's slot.

What a cluster client changes for the code that uses it (see docs and :mod:`attune.keys`):

* a command or script may only touch keys of one hash slot, so every key of one user shares the
  hash tag ``{<user>}`` and every key of one bandit policy ``{<policy>}``;
* ``pipeline(transaction=False)`` may span slots (redis-py splits it per master), a
  ``transaction=True`` pipeline may not; a cluster pipeline refuses ``EVALSHA``, ``MGET``,
  ``MSET`` and a ``DEL`` of several keys, so scripts are queued with :func:`queue_script`;
* ``SCAN``/``scan_iter`` visits every master (redis-py sends the first ``SCAN`` to all
  primaries and follows each node's cursor), so a prefix scan still finds every key;
* ``db`` does not exist (a cluster has only database 0; the config refuses anything else).

The keyword options (timeouts, ``retry``, ``max_connections``, ...) pass through unchanged to
either client; ``db`` is dropped for a cluster.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import redis
    import redis.asyncio as aioredis

    from attune.config import RedisConfig


def _options(r: RedisConfig, opts: dict[str, Any]) -> dict[str, Any]:
    options = {"host": r.host, "port": r.port, **opts}
    if r.cluster:
        options.pop("db", None)
    else:
        options.setdefault("db", r.db)
    return options


def connect(r: RedisConfig, **opts: Any) -> redis.Redis:
    """A blocking client for ``r``: ``redis.cluster.RedisCluster`` when ``r.cluster`` (typed as
    ``redis.Redis``: it has the same commands), else ``redis.Redis``.

    A plain client connects on its first command; a blocking cluster client connects at once
    (to read the slot map), so with the seed node down this raises
    ``redis.exceptions.ConnectionError``, the error a plain client's first command raises
    (redis-py's own is a ``RedisClusterException``, which is no ``RedisError``)."""
    if r.cluster:
        from redis.cluster import RedisCluster
        from redis.exceptions import ConnectionError, RedisClusterException

        try:
            cluster: Any = RedisCluster(**_options(r, opts))
        except RedisClusterException as exc:
            raise ConnectionError(
                f"Redis Cluster seed {r.host}:{r.port} (redis.host/redis.port): {exc}"
            ) from exc
        return cluster
    import redis

    return redis.Redis(**_options(r, opts))


def connect_async(r: RedisConfig, **opts: Any) -> aioredis.Redis:
    """An asyncio client for ``r``: ``redis.asyncio.cluster.RedisCluster`` when ``r.cluster``
    (typed as ``redis.asyncio.Redis``), else ``redis.asyncio.Redis``. Creating it does not
    connect; the cluster client reads the slot map on its first command."""
    if r.cluster:
        from redis.asyncio.cluster import RedisCluster

        cluster: Any = RedisCluster(**_options(r, opts))
        return cluster
    import redis.asyncio as aioredis

    return aioredis.Redis(**_options(r, opts))


def is_cluster(client: Any) -> bool:
    """Whether ``client`` (blocking or asyncio, or one of their pipelines) is a cluster client."""
    from redis.asyncio.cluster import ClusterPipeline as AsyncClusterPipeline
    from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
    from redis.cluster import RedisCluster

    return isinstance(client, RedisCluster | AsyncRedisCluster | AsyncClusterPipeline)


def queue_script(pipe: Any, script: Any, keys: Sequence[Any], args: Sequence[Any]) -> Any:
    """Queue one call of ``script`` (a ``register_script`` object) on ``pipe``.

    On a plain pipeline this is ``script(keys=..., args=..., client=pipe)``: ``EVALSHA``, with
    redis-py loading the script first. redis-py's cluster pipelines refuse ``EVALSHA``
    (``PIPELINE_BLOCKED_COMMANDS``), so there the call is ``EVAL`` with the script's text: it
    runs on the master of the keys' slot, which caches it like ``SCRIPT LOAD`` would. (Sent as
    a raw command: the blocking ``ClusterPipeline.eval`` of redis-py 8.1 takes no arguments.)"""
    if is_cluster(pipe):
        return pipe.execute_command("EVAL", script.script, len(keys), *keys, *args)
    return script(keys=keys, args=args, client=pipe)
