"""A 3-broker KRaft cluster from the jars (``attune stack up --brokers 3``), one broker killed
during a replay: every event the collector acknowledged is in the topic exactly once.

The cluster is this module's own (its own var dir and ports, found free), started and stopped
by the stack functions the CLI uses; the collector is a real ``attune serve collector`` child
process bootstrapping from all three nodes. Topics get replication 3 and min.insync.replicas 2,
so with one broker down an acks=all write still needs two copies and still succeeds.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from attune.collector.process import collector_process
from attune.config import AttuneConfig, isolated_config
from attune.events_cli import read_topic
from attune.replay import replay
from attune.secrets import create_write_key
from attune.stack import create_topics, kafka_admin
from attune.stack.kafka import kafka_down, kafka_node, kafka_up, with_brokers
from attune.supervisor import read_record

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

RUN = uuid.uuid4().hex[:8]
ROOT = Path(__file__).resolve().parents[2]
REDIS_DB = 13


def _free_block(step: int, nodes: int) -> int:
    """A base port such that base + i * step and base + 1 + i * step are free for every node."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + 1 + (nodes - 1) * step > 65000:
            continue
        ports = [base + d + i * step for i in range(nodes) for d in (0, 1)]
        if all(_free(p) for p in ports):
            return base
    raise RuntimeError("no free block of ports for the test cluster")


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.fixture(scope="module")
def cluster(cfg: AttuneConfig, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AttuneConfig]:
    var = tmp_path_factory.mktemp("kafka-cluster-var")
    base = _free_block(10, 3)
    own = isolated_config(cfg, suffix=f"test-cluster-{RUN}", var_dir=var, redis_db=REDIS_DB)
    broker = own.kafka.broker.model_copy(
        update={"port": base, "controller_port": base + 1, "port_step": 10, "heap": "384m"}
    )
    own = own.model_copy(update={"kafka": own.kafka.model_copy(update={"broker": broker})})
    # the stack's jars, this module's var dir
    jars = cfg.paths.resolve("jars/kafka")
    (var / "jars").mkdir()
    (var / "jars" / "kafka").symlink_to(jars)
    three = with_brokers(own, 3)
    try:
        kafka_up(three)
        create_topics(three)
        yield three
    finally:
        kafka_down(three)


def test_with_brokers_sets_the_cluster_for_every_client(cluster: AttuneConfig) -> None:
    b = cluster.kafka.broker
    assert cluster.kafka.bootstrap_servers == ",".join(
        f"127.0.0.1:{b.port + 10 * i}" for i in range(3)
    )
    with kafka_admin(cluster) as admin:
        brokers = admin.describe_cluster()["brokers"]
        assert len(brokers) == 3
        (topic,) = admin.describe_topics([cluster.kafka.topic("events").name])
    assert {len(p["replica_nodes"]) for p in topic["partitions"]} == {3}


def test_a_broker_killed_during_a_replay_loses_and_repeats_nothing(
    cluster: AttuneConfig,
) -> None:
    key = create_write_key(cluster, "it-cluster")
    victim = kafka_node(cluster, 1)
    record = read_record(victim.pid)
    assert record is not None
    pid = record.pid
    assert "kafka.Kafka" in Path(f"/proc/{pid}/cmdline").read_text()
    killed = threading.Event()
    lines: list[str] = []

    def say(line: str) -> None:
        lines.append(line)

    with collector_process(cluster) as url:
        # the replay sends 10,382 events in batches of 500; the kill lands after about a third
        def kill_when_a_third_is_in() -> None:
            topic = cluster.kafka.topic("events").name
            while not killed.is_set():
                if sum(_end_offsets(cluster, topic)) >= 3000:
                    os.kill(pid, signal.SIGKILL)
                    killed.set()
                    return
                time.sleep(0.05)

        killer = threading.Thread(target=kill_when_a_third_is_in, daemon=True)
        killer.start()
        summary = replay(
            cluster,
            "movietweetings-mini",
            url=url,
            write_key=key,
            progress=False,
            rate=2500,
            say=say,
        )
        killer.join(timeout=60)
    assert killed.is_set(), "the broker was never killed: the replay ended first"
    # movietweetings-mini: 5,191 ratings -> 10,382 events (test_replay.py), all acknowledged
    got = (summary.events, summary.accepted, summary.failed, summary.dropped)
    assert got == (10382, 10382, 0, 0), f"{summary}; replay said: {lines}"
    records = read_topic(cluster, cluster.kafka.topic("events").name, timeout_s=60)
    ids = Counter(orjson.loads(r.value)["event_id"] for r in records)
    assert len(ids) == 10382, "acknowledged events are missing"
    assert max(ids.values()) == 1, f"duplicated: {[i for i, n in ids.items() if n > 1][:5]}"


def _end_offsets(cfg: AttuneConfig, topic: str) -> list[int]:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=cfg.kafka.bootstrap_servers.split(","), request_timeout_ms=5000
    )
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or []]
        return list(consumer.end_offsets(parts).values())
    finally:
        consumer.close()


def test_stack_up_brokers_flag_is_in_the_cli() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "attune.cli", "stack", "up", "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    ).stdout
    assert "--brokers N" in out
