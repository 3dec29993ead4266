"""The Kafka-to-asyncio bridge and the producer settings (no broker needed)."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from attune.config import AttuneConfig, CollectorConfig, KafkaConfig
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


class _FakeFuture:
    """A kafka-python record future: completed by the fake producer, or never (wedged)."""

    def __init__(self) -> None:
        self.callbacks: list[Any] = []
        self.errbacks: list[Any] = []

    def add_callback(self, fn: Any) -> None:
        self.callbacks.append(fn)

    def add_errback(self, fn: Any) -> None:
        self.errbacks.append(fn)


class _FakeSender:
    def __init__(self, producer: _FakeProducer) -> None:
        self.producer = producer
        self.force_closed = False

    def force_close(self) -> None:  # kafka-python fails every record it still holds
        self.force_closed = True
        for fut in self.producer.held:
            for fn in fut.errbacks:
                fn(RuntimeError("Producer is closed forcefully."))
        self.producer.held.clear()


class _FakeProducer:
    """The parts of KafkaProducer the sink uses. ``wedged``: acknowledges nothing, and its
    close(timeout) times out in flush, as kafka-python 3.0.12's does after an expired batch."""

    def __init__(self, wedged: bool) -> None:
        self.wedged = wedged
        self.held: list[_FakeFuture] = []
        self.sent: list[bytes] = []
        self.closed = False
        self._sender = _FakeSender(self)

    def partitions_for(self, topic: str) -> set[int]:
        return {0}

    def send(self, topic: str, key: bytes, value: bytes, partition: int) -> _FakeFuture:
        fut = _FakeFuture()
        if self.wedged:
            self.held.append(fut)
        else:
            self.sent.append(value)
            threading.Timer(0.01, lambda: [fn(None) for fn in fut.callbacks]).start()
        return fut

    def close(self, timeout: float | None = None) -> None:
        from kafka.errors import KafkaTimeoutError

        if self.held:
            raise KafkaTimeoutError("Timeout waiting for future")
        self.closed = True


def _sink(ack_timeout_s: float, producers: list[_FakeProducer]) -> KafkaSink:
    cfg = AttuneConfig(
        kafka=KafkaConfig(bootstrap_servers="127.0.0.1:1"),
        collector=CollectorConfig(ack_timeout_s=ack_timeout_s),
    )
    made = iter(producers)
    return KafkaSink(cfg, producer_factory=lambda settings: next(made))


async def _until(condition: Any, timeout_s: float = 3.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def test_a_stalled_producer_is_rebuilt_and_readiness_follows() -> None:
    wedged, healthy = _FakeProducer(wedged=True), _FakeProducer(wedged=False)
    sink = _sink(0.3, [wedged, healthy])

    async def run() -> list[bool]:
        sink.reachable = True  # the broker answers (no watchdog in this test)
        sink._start_connecting()
        await _until(lambda: sink.ready)
        with pytest.raises(KafkaUnavailable, match=r"did not acknowledge within 0\.3 s"):
            await sink.send([("t", b"k", b"lost")])
        ready_after_stall = sink.ready  # the stalled producer is gone at once
        await _until(lambda: sink.ready)
        await sink.send([("t", b"k", b"after")])  # acknowledged by the new producer
        await sink.stop()
        return [ready_after_stall, wedged._sender.force_closed, healthy.closed]

    assert asyncio.run(run()) == [False, True, True]
    assert sink.rebuilds == 1
    assert healthy.sent == [b"after"]


def test_broker_back_after_an_outage_gets_a_new_producer() -> None:
    first, second = _FakeProducer(wedged=False), _FakeProducer(wedged=False)
    sink = _sink(1.0, [first, second])
    probes = iter([True, False, False, True])  # start, then down twice, then back

    async def probe() -> bool:
        return next(probes, True)

    sink._probe = probe  # type: ignore[method-assign]

    async def run() -> tuple[bool, bool]:
        await sink.start()
        await _until(lambda: sink.ready)
        await _until(lambda: not sink.reachable)  # the watchdog probes once a second
        down_ready = sink.ready
        await _until(lambda: sink.ready and sink.rebuilds == 1, timeout_s=5.0)
        await sink.send([("t", b"k", b"v")])
        await sink.stop()
        return down_ready, first.closed

    assert asyncio.run(run()) == (False, True)
    assert second.sent == [b"v"] and first.sent == []


def test_stop_never_hangs_on_a_wedged_producer_and_says_what_was_not_flushed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    wedged = _FakeProducer(wedged=True)
    sink = _sink(0.5, [wedged])

    async def run() -> float:
        sink.reachable = True
        sink._start_connecting()
        await _until(lambda: sink.ready)
        request = asyncio.create_task(sink.send([("t", b"k", b"v1"), ("t", b"k", b"v2")]))
        await asyncio.sleep(0.1)  # the request waits for acks that never come
        start = time.monotonic()
        await sink.stop()
        took = time.monotonic() - start
        with pytest.raises(KafkaUnavailable):  # answered (503), not left hanging
            await request
        return took

    # By hand: stop() waits for the request until its 0.5 s ack timeout (0.4 s left), then
    # spends the 1 s flush of close_producer before force-closing: about 1.4 s, under 3 s.
    assert asyncio.run(run()) < 3.0
    assert sink.rebuilds == 0
    assert wedged._sender.force_closed
    assert any(
        "closed without flushing" in r.getMessage() and r.levelname in ("ERROR", "WARNING")
        for r in caplog.records
    ), [r.getMessage() for r in caplog.records]


# -- collector.kafka_append: accumulator --------------------------------------------------


class _AccumulatorProducer:
    """What the sink's accumulator path uses of a KafkaProducer, around kafka-python's real
    RecordAccumulator and its own size checks (no broker: nothing is ever drained)."""

    from kafka.producer.kafka import KafkaProducer as _KP

    _ensure_valid_record_size = _KP._ensure_valid_record_size
    _estimate_size_in_bytes = _KP._estimate_size_in_bytes
    max_usable_produce_magic = _KP.max_usable_produce_magic

    def __init__(self, partitions: set[int], batch_size: int = 16384) -> None:
        from kafka.producer.record_accumulator import RecordAccumulator

        self._accumulator = RecordAccumulator(batch_size=batch_size)
        self._closed = False
        self._sender = self
        self.wakeups = 0
        self.partitions = partitions
        self.config = {"max_request_size": 1048576, "api_version": (2, 8)}

    def wakeup(self) -> None:
        self.wakeups += 1

    def partitions_for(self, topic: str) -> set[int]:
        return self.partitions

    def send(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the accumulator path must not call send()")

    def batches(self, topic: str) -> dict[int, list[Any]]:
        """Partition -> the ProducerBatches the accumulator holds for it."""
        return {tp.partition: list(dq) for tp, dq in self._accumulator._batches.items() if dq}


def _records_in(batch: Any) -> list[tuple[bytes, bytes]]:
    """(key, value) of every record of a ProducerBatch, decoded by kafka-python's reader."""
    from kafka.record.memory_records import MemoryRecords

    batch.records.close()
    records = MemoryRecords(bytes(batch.records.buffer()))
    out = []
    while records.has_next():
        for rec in records.next_batch():
            out.append((bytes(rec.key), bytes(rec.value)))
    return out


def _direct_sink() -> KafkaSink:
    cfg = AttuneConfig(kafka=KafkaConfig(bootstrap_servers="127.0.0.1:1"))
    assert cfg.collector.kafka_append == "accumulator"  # the default
    return KafkaSink(cfg)


def test_accumulator_path_appends_each_record_to_its_key_partition_in_order() -> None:
    from kafka.partitioner.default import DefaultPartitioner

    producer = _AccumulatorProducer({0, 1, 2})
    sink = _direct_sink()
    keys = [b"21", b"alice", b"21", b"bob", b"alice", b"21"]
    records = [("t", k, f"v{i}".encode()) for i, k in enumerate(keys)]

    async def run() -> tuple[bool, bool]:
        ack = _BatchAck(asyncio.get_running_loop(), len(records))
        sink._send_all(producer, records, ack)
        await asyncio.sleep(0.01)
        pending = not ack.future.done()  # nothing is acknowledged before the broker answers
        for batches in producer.batches("t").values():
            for batch in batches:  # what the sender does on the broker's answer
                batch.complete(base_offset=0, log_append_time=-1)
        await asyncio.wait_for(ack.future, 1.0)
        return pending, ack.future.exception() is None

    assert asyncio.run(run()) == (True, True)
    # b"21": murmur2 1173551340 (Kafka's UtilsTest), % 3 = 0 (its digits sum to 30).
    reference = DefaultPartitioner()
    expected: dict[int, list[tuple[bytes, bytes]]] = {}
    for _, k, v in records:
        p = reference.partition("t", k, k, v, v, _Cluster({0, 1, 2}))
        expected.setdefault(p, []).append((k, v))
    assert expected[0][:1] == [(b"21", b"v0")]
    got = {p: [r for b in bs for r in _records_in(b)] for p, bs in producer.batches("t").items()}
    assert got == expected  # every record once, in its key's partition, in request order
    assert producer.wakeups == 1  # new batches were created: the sender is woken once


def test_accumulator_path_fails_only_the_oversized_record() -> None:
    from kafka.errors import MessageSizeTooLargeError

    producer = _AccumulatorProducer({0})
    sink = _direct_sink()
    # 1,048,577 value bytes alone are over max_request_size (1,048,576): refused like send()
    records = [("t", b"k", b"small"), ("t", b"k", b"x" * 1_048_577), ("t", b"k", b"also small")]

    async def run() -> BaseException | None:
        ack = _BatchAck(asyncio.get_running_loop(), len(records))
        sink._send_all(producer, records, ack)
        for batch in producer.batches("t")[0]:
            batch.complete(base_offset=0, log_append_time=-1)
        with pytest.raises(MessageSizeTooLargeError):
            await asyncio.wait_for(ack.future, 1.0)
        return ack.error

    assert isinstance(asyncio.run(run()), MessageSizeTooLargeError)
    appended = [r for b in producer.batches("t")[0] for r in _records_in(b)]
    assert appended == [(b"k", b"small"), (b"k", b"also small")]


def test_accumulator_path_on_a_closed_producer_fails_every_record() -> None:
    producer = _AccumulatorProducer({0})
    producer._closed = True
    sink = _direct_sink()

    async def run() -> None:
        ack = _BatchAck(asyncio.get_running_loop(), 2)
        sink._send_all(producer, [("t", b"k", b"a"), ("t", b"k", b"b")], ack)
        with pytest.raises(RuntimeError, match="closed"):
            await asyncio.wait_for(ack.future, 1.0)

    asyncio.run(run())
    assert producer.batches("t") == {}


def test_kafka_append_send_keeps_calling_send() -> None:
    cfg = AttuneConfig(
        kafka=KafkaConfig(bootstrap_servers="127.0.0.1:1"),
        collector=CollectorConfig(kafka_append="send"),
    )
    sink = KafkaSink(cfg)
    producer = _FakeProducer(wedged=False)
    producer._accumulator = object()  # type: ignore[attr-defined]  # present, but not used

    async def run() -> None:
        ack = _BatchAck(asyncio.get_running_loop(), 2)
        sink._send_all(producer, [("t", b"k", b"a"), ("t", b"k", b"b")], ack)
        await asyncio.wait_for(ack.future, 1.0)

    asyncio.run(run())
    assert producer.sent == [b"a", b"b"]
