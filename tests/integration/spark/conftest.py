"""An isolated world for batch runs: its own lake, catalog topic, Redis key prefix and keys."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from attune.config import AttuneConfig


def isolated_config(base: AttuneConfig, root: Path, run: str) -> AttuneConfig:
    """``base`` with a lake, secrets, catalog topic and Redis prefix of this test run only."""
    topics = dict(base.kafka.topics)
    topics["catalog"] = topics["catalog"].model_copy(
        update={"name": f"attune.catalog.test-{run}", "partitions": 1}
    )
    b = base.batch
    return base.model_copy(
        update={
            "lake": base.lake.model_copy(update={"root": str(root / "lake")}),
            "kafka": base.kafka.model_copy(update={"topics": topics}),
            "privacy": base.privacy.model_copy(
                update={
                    "pseudonym_key_file": root / "secrets" / "pseudonym.key",
                    "profile_key_file": root / "secrets" / "profile.key",
                }
            ),
            "spark": base.spark.model_copy(update={"master": "local[2]", "shuffle_partitions": 2}),
            "speed": base.speed.model_copy(
                update={
                    "online_store": base.speed.online_store.model_copy(
                        update={"key_prefix": f"t{run}"}
                    )
                }
            ),
            "batch": b.model_copy(
                update={
                    "late_days": 2,
                    "bots": b.bots.model_copy(update={"max_events_per_minute": 3}),
                    "views": b.views.model_copy(update={"drift_sample_users": 50}),
                    "maintenance": b.maintenance.model_copy(
                        update={"vacuum_retention": timedelta(0)}
                    ),
                }
            ),
        }
    )


def create_topic(cfg: AttuneConfig, name: str) -> None:
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=cfg.kafka.bootstrap_servers)
    try:
        admin.create_topics([NewTopic(name, num_partitions=1, replication_factor=1)])
    finally:
        admin.close()


def delete_topic(cfg: AttuneConfig, name: str) -> None:
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=cfg.kafka.bootstrap_servers)
    try:
        admin.delete_topics([name])
    finally:
        admin.close()


def publish(cfg: AttuneConfig, records: list[tuple[str, dict[str, Any] | None]]) -> None:
    """Produce ``(item_id, value)`` records (None = tombstone) to the catalog topic."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=cfg.kafka.bootstrap_servers, acks="all")
    try:
        for key, value in records:
            producer.send(
                cfg.kafka.topic("catalog").name,
                key=key.encode(),
                value=None if value is None else json.dumps(value).encode(),
            ).get(timeout=10)
    finally:
        producer.close()


def redis_client(cfg: AttuneConfig) -> Any:
    import redis

    return redis.Redis(host=cfg.redis.host, port=cfg.redis.port, db=cfg.redis.db)


@pytest.fixture(scope="module")
def world(cfg: AttuneConfig, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AttuneConfig]:
    """An isolated config; its catalog topic exists, and everything is removed afterwards."""
    from tests.conftest import require_stack

    require_stack(cfg)
    run = uuid.uuid4().hex[:10]
    world_cfg = isolated_config(cfg, tmp_path_factory.mktemp("batch"), run)
    topic = world_cfg.kafka.topic("catalog").name
    create_topic(world_cfg, topic)
    yield world_cfg
    delete_topic(world_cfg, topic)
    client = redis_client(world_cfg)
    try:
        keys = list(client.scan_iter(match=f"t{run}:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()
