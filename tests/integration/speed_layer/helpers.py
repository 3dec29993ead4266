"""Shared set-up of the speed layer's integration tests: isolated config, collector, runner."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis

from attune.config import CONFIG_ENV, ENV_PREFIX, AttuneConfig, isolated_config

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


def speed_config(
    cfg: AttuneConfig, *, suffix: str, var_dir: Path, redis_db: int, **speed: Any
) -> AttuneConfig:
    """A config sharing the stack (Kafka, Redis, jars) and nothing else with ``cfg``.

    Own topics (suffix), var dir (keys, checkpoints, lake), Redis db and key prefix; short
    triggers and few partitions, because the machine is small and shared.
    """
    jars = cfg.paths.resolve(cfg.spark.jars_dir)
    out = isolated_config(cfg, suffix=suffix, var_dir=var_dir, redis_db=redis_db)
    features = out.speed.features.model_copy(update=speed.pop("features", {}))
    store = out.speed.online_store.model_copy(update={"key_prefix": f"t{suffix[-8:]}"})
    speed_cfg = out.speed.model_copy(
        update={
            "bronze_interval": timedelta(seconds=2),
            "shuffle_partitions": 2,
            "catalog_refresh": timedelta(0),  # every batch: deterministic enrichment
            "features": features,
            "online_store": store,
            **speed,
        }
    )
    spark_cfg = out.spark.model_copy(
        update={"jars_dir": jars, "master": "local[2]", "shuffle_partitions": 2}
    )
    # model_copy does not validate: round-trip through the model so "3600" becomes a duration.
    return AttuneConfig.model_validate(
        out.model_copy(update={"speed": speed_cfg, "spark": spark_cfg}).model_dump()
    )


def write_secret(cfg: AttuneConfig) -> bytes:
    """A fresh pseudonymization key for ``cfg`` (the test computes pseudonyms with it)."""
    path = cfg.paths.resolve(cfg.privacy.pseudonym_key_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_hex(32).encode()
    path.write_bytes(secret)
    os.chmod(path, 0o600)
    return secret


def pseudo(secret: bytes, user: str) -> str:
    """HMAC-SHA256 of ``user``, truncated to 32 hex digits, as the collector stores it."""
    return hmac.new(secret, user.encode(), hashlib.sha256).hexdigest()[:32]


def wait_until(check: Callable[[], Any], timeout_s: float, what: str, poll_s: float = 0.25) -> Any:
    """Poll ``check`` until it returns something truthy; fail saying ``what`` did not happen."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what} (last: {last!r})")


def redis_client(cfg: AttuneConfig) -> redis.Redis:
    from attune.redis_connect import connect

    return connect(cfg.redis)


def dump_prefix(r: redis.Redis, prefix: str) -> dict[str, Any]:
    """Every key under ``prefix`` (the prefix stripped) with its content, not its TTL. Of the
    aggregates' seen set, the ids only: its scores are arrival times."""
    out: dict[str, Any] = {}
    for key in sorted(r.scan_iter(match=f"{prefix}:*", count=1000)):
        name = key.decode()[len(prefix) :]
        kind = r.type(key)
        if name.endswith(":{agg}:seen"):
            out[name] = sorted(r.zrange(key, 0, -1))
        elif kind == b"zset":
            out[name] = r.zrange(key, 0, -1, withscores=True)
        elif kind == b"hash":
            out[name] = r.hgetall(key)
        else:
            out[name] = r.get(key)
    return out


def delete_prefix(r: redis.Redis, prefix: str) -> None:
    keys = list(r.scan_iter(match=f"{prefix}:*", count=1000))
    for i in range(0, len(keys), 1000):
        r.delete(*keys[i : i + 1000])


def delete_topics(cfg: AttuneConfig) -> None:
    from attune.stack import kafka_admin

    try:
        with kafka_admin(cfg) as admin:
            names = [t.name for t in cfg.kafka.topics.values()]
            existing = [n for n in names if n in admin.list_topics()]
            if existing:
                admin.delete_topics(existing)
    except Exception as exc:
        warnings.warn(f"could not delete test topics: {exc}", stacklevel=1)


@contextmanager
def speed_layer_thread(
    cfg: AttuneConfig, spark: SparkSession, queries: tuple[str, ...] = ("bronze", "online")
) -> Iterator[threading.Event]:
    """Run the speed layer in this process (on the tests' Spark session) until the block ends."""
    from speed_layer.control import board_state
    from speed_layer.job import run_speed_layer, speed_paths

    stop = threading.Event()
    result: list[int] = []
    thread = threading.Thread(
        target=lambda: result.append(run_speed_layer(cfg, list(queries), stop, spark=spark)),
        name="speed-layer",
        daemon=True,
    )
    thread.start()
    status = speed_paths(cfg).status_file
    try:
        wait_until(
            lambda: board_state(status) in ("running", "failed", "stopped"),
            180,
            "the speed layer to start",
        )
        assert board_state(status) == "running", status.read_text()
        yield stop
    finally:
        stop.set()
        thread.join(timeout=120)
    assert result == [0], f"the speed layer ended with {result}; see {status}"


def attune(config: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``attune --config CONFIG ARGS`` in a child, without the caller's attune overrides."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX) and k != CONFIG_ENV}
    return subprocess.run(
        [sys.executable, "-m", "attune.cli", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
