"""The local stack against the real thing: the broker, Redis and topics `attune stack up` made.

Two tests here restart the shared Kafka and Redis that every other integration module uses, so
`scripts/test.sh` runs this module alone, before the two parallel lanes start.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from attune import stack, supervisor
from attune.config import AttuneConfig, TopicConfig, free_port
from attune.stack import StackError, kafka
from attune.stack import redis as stack_redis

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def _attune(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "attune.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def _with_topic(cfg: AttuneConfig, topic: TopicConfig) -> AttuneConfig:
    topics = {**cfg.kafka.topics, "scratch": topic}
    return cfg.model_copy(update={"kafka": cfg.kafka.model_copy(update={"topics": topics})})


def _scratch(name: str, partitions: int, retention_ms: int) -> TopicConfig:
    return TopicConfig(
        name=name, partitions=partitions, retention_ms=retention_ms, key="test", description=""
    )


@pytest.fixture
def scratch_topic(cfg: AttuneConfig) -> Iterator[str]:
    """A unique topic name, deleted after the test."""
    name = f"attune.test.stack-{uuid.uuid4().hex[:10]}"
    yield name
    with stack.kafka_admin(cfg) as admin:
        if name in admin.list_topics():
            admin.delete_topics([name])


def _topic_state(cfg: AttuneConfig, names: list[str]) -> dict[str, tuple[int, int, str, str]]:
    """name -> (partitions, replication factor, retention.ms, cleanup.policy) from the broker."""
    from kafka.admin import ConfigResource, ConfigResourceType

    with stack.kafka_admin(cfg) as admin:
        described = {t["name"]: t for t in admin.describe_topics(names)}
        resources = [ConfigResource(ConfigResourceType.TOPIC, n) for n in names]
        configs = admin.describe_configs(resources, config_filter="all")["topic"]
    state = {}
    for name in names:
        parts = described[name]["partitions"]
        state[name] = (
            len(parts),
            len(parts[0]["replica_nodes"]),
            configs[name]["retention.ms"]["value"],
            configs[name]["cleanup.policy"]["value"],
        )
    return state


def _read_pid(pid_file: Path) -> int | None:
    record = supervisor.read_record(pid_file)
    return record.pid if record is not None else None


def _ours(pid_file: Path, name: str) -> int:
    pid = _read_pid(pid_file)
    if pid is None:
        pytest.skip(f"{name} was not started by `attune stack up` here; cannot restart it")
    return pid


def test_status_json_lists_every_component_healthy(cfg: AttuneConfig) -> None:
    result = _attune("stack", "status", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    statuses = json.loads(result.stdout)
    by_component = {s["component"]: s for s in statuses}
    topics = [t.name for t in cfg.kafka.topics.values()]
    assert sorted(by_component) == sorted(["kafka", "redis", *(f"topic:{n}" for n in topics)])
    assert [s["component"] for s in statuses if not s["healthy"]] == []
    assert by_component["kafka"]["address"] == cfg.kafka.bootstrap_servers
    assert by_component["redis"]["address"] == f"{cfg.redis.host}:{cfg.redis.port}"
    assert set(statuses[0]) == {"component", "address", "healthy", "detail"}


def test_topics_exist_as_declared(cfg: AttuneConfig) -> None:
    declared = list(cfg.kafka.topics.values())
    state = _topic_state(cfg, [t.name for t in declared])
    assert state == {
        t.name: (t.partitions, t.replication_factor, str(t.retention_ms), t.cleanup_policy)
        for t in declared
    }


def test_broker_does_not_create_topics_on_demand(cfg: AttuneConfig) -> None:
    from kafka import KafkaConsumer
    from kafka.admin import ConfigResource, ConfigResourceType

    _ours(stack.stack_paths(cfg).kafka_pid, "Kafka")
    with stack.kafka_admin(cfg) as admin:
        broker = ConfigResource(ConfigResourceType.BROKER, str(kafka.NODE_ID))
        configs = admin.describe_configs([broker], config_filter="all")["broker"]
    assert configs[str(kafka.NODE_ID)]["auto.create.topics.enable"]["value"] == "false"
    name = f"attune.test.undeclared-{uuid.uuid4().hex[:8]}"
    consumer = KafkaConsumer(bootstrap_servers=cfg.kafka.bootstrap_servers)
    try:
        assert not consumer.partitions_for_topic(name)  # a metadata request for it: none
    finally:
        consumer.close()
    with stack.kafka_admin(cfg) as admin:
        assert name not in admin.list_topics()


def test_up_twice_changes_nothing(cfg: AttuneConfig) -> None:
    paths = stack.stack_paths(cfg)
    pids_before = (_read_pid(paths.kafka_pid), _read_pid(paths.redis_pid))
    result = _attune("stack", "up")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for topic in cfg.kafka.topics.values():
        assert f"topic {topic.name} exists as declared" in out
    assert "created topic" not in out and "formatting" not in out
    assert (_read_pid(paths.kafka_pid), _read_pid(paths.redis_pid)) == pids_before
    if pids_before[0] is not None:
        assert f"Kafka already running (pid {pids_before[0]})" in out


def test_create_topics_adds_partitions_and_fixes_configs(
    cfg: AttuneConfig, scratch_topic: str
) -> None:
    stack.create_topics(_with_topic(cfg, _scratch(scratch_topic, 1, 60_000)))
    assert _topic_state(cfg, [scratch_topic]) == {scratch_topic: (1, 1, "60000", "delete")}

    # declared with more partitions and another retention: both are brought in line
    stack.create_topics(_with_topic(cfg, _scratch(scratch_topic, 3, 120_000)))
    assert _topic_state(cfg, [scratch_topic]) == {scratch_topic: (3, 1, "120000", "delete")}

    # fewer partitions than the topic has cannot be done; the error says what to do
    with pytest.raises(StackError) as err:
        stack.create_topics(_with_topic(cfg, _scratch(scratch_topic, 2, 120_000)))
    assert "has 3 partitions but kafka.topics.scratch.partitions is 2" in str(err.value)
    assert _topic_state(cfg, [scratch_topic]) == {scratch_topic: (3, 1, "120000", "delete")}


def test_kafka_restart_is_fast_and_keeps_records(cfg: AttuneConfig, scratch_topic: str) -> None:
    from kafka import KafkaConsumer, KafkaProducer
    from kafka.structs import TopicPartition

    _ours(stack.stack_paths(cfg).kafka_pid, "Kafka")
    with_scratch = _with_topic(cfg, _scratch(scratch_topic, 1, 3_600_000))
    stack.create_topics(with_scratch)
    producer = KafkaProducer(bootstrap_servers=cfg.kafka.bootstrap_servers, acks="all")
    sent = producer.send(scratch_topic, key=b"k", value=b"before the restart").get(timeout=10)
    producer.close()

    start = time.monotonic()
    stack.kafka_down(cfg)
    assert kafka.kafka_pid(cfg) is None
    stack.kafka_up(with_scratch)  # waits until the scratch topic has a leader again
    elapsed = time.monotonic() - start
    print(f"kafka down + up: {elapsed:.1f}s")
    assert elapsed < 60

    producer = KafkaProducer(bootstrap_servers=cfg.kafka.bootstrap_servers, acks="all")
    after = producer.send(scratch_topic, key=b"k", value=b"after the restart").get(timeout=10)
    producer.close()
    assert after.offset == sent.offset + 1  # the log survived: offsets continue

    consumer = KafkaConsumer(
        bootstrap_servers=cfg.kafka.bootstrap_servers, consumer_timeout_ms=10_000
    )
    tp = TopicPartition(scratch_topic, 0)
    consumer.assign([tp])
    consumer.seek(tp, sent.offset)
    values = []
    for record in consumer:
        values.append(record.value)
        if len(values) == 2:
            break
    consumer.close()
    assert values == [b"before the restart", b"after the restart"]


def test_redis_restart_keeps_the_online_store(cfg: AttuneConfig) -> None:
    _ours(stack.stack_paths(cfg).redis_pid, "Redis")
    client = stack_redis.redis_client(cfg)
    key = f"attune:test:stack:{uuid.uuid4().hex}"
    try:
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("appendfsync") == {"appendfsync": "everysec"}
        client.set(key, b"survives")
        client.close()
        stack.redis_down(cfg)
        stack.redis_up(cfg)
        client = stack_redis.redis_client(cfg)
        assert client.get(key) == b"survives"
    finally:
        client.delete(key)
        client.close()


def test_a_redis_attune_did_not_start_is_used_and_left_running(tmp_path: Path) -> None:
    server = shutil.which("redis-server")
    assert server, "redis-server should be installed by `attune stack up`"
    port = free_port()
    other = AttuneConfig.model_validate(
        {"paths": {"var_dir": str(tmp_path / "var")}, "redis": {"port": port}}
    )
    with supervisor.running(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(tmp_path)],
        name="a Redis of someone else",
        log=tmp_path / "redis.out",
        ready=lambda: stack_redis.redis_not_ready(other),
        ready_timeout_s=10,
    ) as proc:
        stack.redis_up(other)
        paths = stack.stack_paths(other)
        assert paths.redis_external.exists() and not paths.redis_pid.exists()
        [status] = [s for s in stack.component_status(other) if s.component == "redis"]
        assert status.healthy and "not started by attune" in status.detail
        stack.redis_down(other)
        assert proc.alive()  # still running
        assert stack_redis.redis_not_ready(other) is None
