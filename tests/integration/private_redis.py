"""A Redis of one test module's own, so a fault test can stop and restart it without disturbing
the shared stack's Redis (which other tests and people use at the same time).

It is started by :func:`attune.stack.redis_up` for a config whose ``paths.var_dir`` and
``redis.port`` are the test's own, so it runs with exactly the configuration ``attune stack up``
gives the real one (append-only file, ``appendfsync everysec``; :func:`attune.stack.redis_conf`),
and :func:`attune.stack.redis_down` stops it the way ``attune stack down`` does (SIGTERM, which
lets Redis flush its append-only file).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from attune import stack
from attune.config import AttuneConfig, free_port


def with_private_redis(cfg: AttuneConfig, db: int = 0) -> AttuneConfig:
    """``cfg`` pointed at a Redis on a free port of this host, with its files in ``cfg``'s var
    dir. ``cfg``'s var dir must be the test's own (see ``speed_config``)."""
    redis = cfg.redis.model_copy(
        update={"host": "127.0.0.1", "port": free_port(), "db": db, "manage": True}
    )
    return AttuneConfig.model_validate(cfg.model_copy(update={"redis": redis}).model_dump())


@contextmanager
def private_redis(cfg: AttuneConfig) -> Iterator[AttuneConfig]:
    """Run the Redis of ``cfg`` (from :func:`with_private_redis`) until the block ends."""
    stack.redis_up(cfg)
    try:
        yield cfg
    finally:
        stack.redis_down(cfg)
