"""Fixtures of the bandit tests against the real Redis: a client on db 3 (free among the
integration tests' dbs) and a key prefix of the test's own, whose keys are deleted afterwards."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis

from attune.config import AttuneConfig
from attune.keys import Keys

REDIS_DB = 3


@pytest.fixture
def client(cfg: AttuneConfig) -> Iterator[redis.Redis]:
    r = redis.Redis(host=cfg.redis.host, port=cfg.redis.port, db=REDIS_DB)
    yield r
    r.close()


@pytest.fixture
def keys(client: redis.Redis) -> Iterator[Keys]:
    k = Keys(f"tb{uuid.uuid4().hex[:8]}")
    yield k
    found = list(client.scan_iter(match=f"{k.prefix}:*", count=1000))
    if found:
        client.delete(*found)
