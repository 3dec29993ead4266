"""The Kafka-to-asyncio bridge and the producer settings (no broker needed)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from attune.config import AttuneConfig, KafkaConfig
from attune.ingest.producer import (
    KafkaSink,
    KafkaUnavailable,
    KeyPartitioner,
    _BatchAck,
    bootstrap_addresses,
    producer_settings,
)


def test_ack_resolves_once_all_records_are_acknowledged_from_other_threads() -> None:
    async def run() -> tuple[bool, bool]:
        loop = asyncio.get_running_loop()
        ack = _BatchAck(loop, 50)
        threads = [threading.Thread(target=lambda: [ack.ok(None) for _ in range(10)])]
        threads += [threading.Thread(target=lambda: [ack.ok(None) for _ in range(10)])]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        # 20 of 50 acknowledged: still pending after the loop ran its callbacks.
        await asyncio.sleep(0.01)
        pending = not ack.future.done()
        for _ in range(30):
            ack.ok(None)
        await asyncio.wait_for(ack.future, 1.0)
        return pending, ack.future.done()

    assert asyncio.run(run()) == (True, True)


def test_ack_reports_the_first_failure_after_all_records_completed() -> None:
    async def run() -> None:
        ack = _BatchAck(asyncio.get_running_loop(), 3)
        ack.ok(None)
        ack.failed(RuntimeError("NotEnoughReplicas"))
        await asyncio.sleep(0.01)
        assert not ack.future.done()  # one record still outstanding
        ack.failed(RuntimeError("second"))
        with pytest.raises(RuntimeError, match="NotEnoughReplicas"):
            await ack.future

    asyncio.run(run())


def test_late_ack_after_timeout_is_ignored() -> None:
    async def run() -> None:
        ack = _BatchAck(asyncio.get_running_loop(), 1)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(ack.future, 0.01)  # cancels the future
        ack.ok(None)  # arrives late: must not raise InvalidStateError in the loop
        await asyncio.sleep(0.01)

    asyncio.run(run())


def test_producer_settings_follow_the_config() -> None:
    cfg = AttuneConfig(kafka=KafkaConfig(bootstrap_servers="a:1,b:2"))
    s = producer_settings(cfg)
    assert s["bootstrap_servers"] == ["a:1", "b:2"]
    assert s["acks"] == "all" and s["enable_idempotence"] is True
    assert s["compression_type"] == "lz4"
    assert "buffer_memory" not in s  # not a kafka-python setting
    assert bootstrap_addresses(cfg) == [("a", 1), ("b", 2)]


def test_send_fails_fast_without_a_producer() -> None:
    cfg = AttuneConfig(kafka=KafkaConfig(bootstrap_servers="127.0.0.1:1"))
    sink = KafkaSink(cfg)

    async def run() -> None:
        with pytest.raises(KafkaUnavailable, match="not reachable"):
            await sink.send([("t", b"k", b"v")])

    asyncio.run(run())


class _Cluster:
    """The two methods of kafka-python's ClusterMetadata its DefaultPartitioner calls."""

    def __init__(self, partitions: set[int]) -> None:
        self.partitions = partitions

    def topics(self) -> set[str]:
        return {"t"}

    def partitions_for_topic(self, topic: str) -> set[int]:
        return self.partitions

    def available_partitions_for_topic(self, topic: str) -> set[int]:
        return self.partitions


@pytest.mark.parametrize("partitions", [{0, 1, 2, 3, 4, 5}, {0, 1, 2}, {0}])
def test_key_partitioner_agrees_with_kafka_pythons_default(partitions: set[int]) -> None:
    from kafka.partitioner.default import DefaultPartitioner

    reference = DefaultPartitioner()
    parts = tuple(sorted(partitions))
    table = KeyPartitioner().table("t", parts)
    for i in range(300):
        key = f"{i:032x}".encode()
        expected = reference.partition("t", key, key, b"v", b"v", _Cluster(partitions))
        assert KeyPartitioner.partition(key, parts) == expected
        table[key] = expected
    assert len(table) == 300


def test_key_partitioner_known_value() -> None:
    # Kafka's Java client: Utils.murmur2("21".getBytes()) == -973932308 (Kafka's UtilsTest);
    # positive: -973932308 & 0x7fffffff = 1173551340; 1173551340 % 6 = 0.
    assert KeyPartitioner.partition(b"21", (0, 1, 2, 3, 4, 5)) == 1173551340 % 6


def test_key_partitioner_new_table_when_partitions_change() -> None:
    kp = KeyPartitioner()
    first = kp.table("t", (0, 1, 2))
    first[b"k"] = 1
    assert kp.table("t", (2, 1, 0)) is first  # same set of partitions
    assert kp.table("t", (0, 1, 2, 3)) is not first
