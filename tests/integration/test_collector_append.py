"""collector.kafka_append against a real broker: ``accumulator`` (straight to kafka-python's
record accumulator) stores exactly what ``send`` (KafkaProducer.send per record) stores.

Each mode gets its own topics (uuid suffix). The expectations are written by hand: the
values are numbered in send order, and key b"21" goes to partition 0 of 6 (Kafka's
``murmur2("21") = -973932308``, positive 1173551340, % 6 = 0: Kafka's UtilsTest).
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from attune.config import AttuneConfig, isolated_config
from attune.events_cli import read_topic
from attune.ingest.producer import KafkaSink
from tests.integration.speed_layer.helpers import delete_topics

pytestmark = pytest.mark.integration

RUN = uuid.uuid4().hex[:8]
KEYS = [b"21", b"alice", b"bob", b"carol", b"21", b"dave"]
REQUESTS, PER_REQUEST = 20, 50


def _records(topic: str) -> list[list[tuple[str, bytes, bytes]]]:
    """20 requests of 50 records; value ``v<n>`` numbers the records in send order."""
    out = []
    for r in range(REQUESTS):
        out.append(
            [
                (
                    topic,
                    KEYS[(r * PER_REQUEST + i) % len(KEYS)],
                    f"v{r * PER_REQUEST + i:04d}".encode(),
                )
                for i in range(PER_REQUEST)
            ]
        )
    return out


def _produce(cfg: AttuneConfig) -> list[tuple[int, bytes, bytes]]:
    """Send every request through a KafkaSink (one after the other, each acknowledged), then
    read the topic back: ``(partition, key, value)`` in partition, offset order."""
    topic = cfg.kafka.topic("events").name

    async def run() -> None:
        sink = KafkaSink(cfg)
        await sink.start()
        try:
            for _ in range(300):
                if sink.ready:
                    break
                await asyncio.sleep(0.05)
            assert sink.ready, sink.health()
            for request in _records(topic):
                await sink.send(request)  # returns once Kafka acknowledged all 50
        finally:
            await sink.stop()

    asyncio.run(run())
    got = [(r.partition, r.offset, r.key, r.value) for r in read_topic(cfg, topic, timeout_s=60)]
    return [(p, k, v) for p, _, k, v in sorted(got)]


@pytest.fixture(scope="module")
def produced(
    cfg: AttuneConfig, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, list[tuple[int, bytes, bytes]]]:
    from attune.stack import create_topics

    out = {}
    for mode in ("send", "accumulator"):
        mode_cfg = isolated_config(
            cfg,
            suffix=f"test-append-{mode}-{RUN}",
            var_dir=Path(tmp_path_factory.mktemp(f"append-{mode}")),
            redis_db=12,
            kafka_append=mode,
        )
        create_topics(mode_cfg)
        try:
            out[mode] = _produce(mode_cfg)
        finally:
            delete_topics(mode_cfg)
    return out


def test_every_acknowledged_record_is_stored_once(
    produced: dict[str, list[tuple[int, bytes, bytes]]],
) -> None:
    for mode, records in produced.items():
        values = sorted(v for _, _, v in records)
        assert values == [f"v{n:04d}".encode() for n in range(REQUESTS * PER_REQUEST)], mode


def test_each_partition_keeps_send_order_and_key_21_is_in_partition_0(
    produced: dict[str, list[tuple[int, bytes, bytes]]],
) -> None:
    for mode, records in produced.items():
        by_partition: dict[int, list[bytes]] = {}
        for p, _, v in records:
            by_partition.setdefault(p, []).append(v)
        for p, values in by_partition.items():
            assert values == sorted(values), (mode, p)  # offsets follow the send order
        # KEYS[0] and KEYS[4] are b"21": record n has it when n % 6 is 0 (n = 0..996: 167
        # records) or 4 (n = 4..994: 166 records), 333 in all
        key_21 = [v for p, k, v in records if k == b"21"]
        assert len(key_21) == 333
        assert {p for p, k, _ in records if k == b"21"} == {0}, mode


def test_accumulator_stores_exactly_what_send_stores(
    produced: dict[str, list[tuple[int, bytes, bytes]]],
) -> None:
    assert produced["accumulator"] == produced["send"]
