"""Where the local stack keeps its files: everything lives under ``cfg.paths.var_dir``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from attune.config import AttuneConfig


@dataclass(frozen=True)
class StackPaths:
    """Where the stack keeps its files; everything lives under ``cfg.paths.var_dir``."""

    kafka_jars: Path
    kafka_dir: Path
    kafka_data: Path
    kafka_properties: Path
    kafka_log4j: Path
    kafka_log: Path
    kafka_out: Path
    kafka_pid: Path
    kafka_external: Path
    redis_dir: Path
    redis_conf: Path
    redis_log: Path
    redis_out: Path
    redis_pid: Path
    redis_external: Path


def stack_paths(cfg: AttuneConfig) -> StackPaths:
    r = cfg.paths.resolve
    log, run = cfg.log_dir, cfg.run_dir
    return StackPaths(
        kafka_jars=r("jars/kafka"),
        kafka_dir=r("kafka"),
        kafka_data=r("kafka/data"),
        kafka_properties=r("kafka/server.properties"),
        kafka_log4j=r("kafka/log4j2.xml"),
        kafka_log=log / "kafka.log",
        kafka_out=log / "kafka.out",
        kafka_pid=run / "kafka.pid",
        kafka_external=run / "kafka.external",
        redis_dir=r("redis"),
        redis_conf=r("redis/redis.conf"),
        redis_log=log / "redis.log",
        redis_out=log / "redis.out",
        redis_pid=run / "redis.pid",
        redis_external=run / "redis.external",
    )
