"""``attune events schema`` and ``attune events summary``: the schema, and what landed in Kafka.

``summary`` reads the events topic from the beginning up to the end offsets taken when it
starts (records produced meanwhile are not waited for), and reports the count per event type
and per partition, the number of distinct ``event_id`` values (fewer than the records means
duplicates, which the speed layer drops), and a sample event; it also counts the catalog
(records and distinct item ids) and the dead-letter topic. This is how the demo shows what
landed.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

from attune.config import AttuneConfig, ConfigError
from attune.events import json_schema, spark_ddl


def cmd_schema(cfg: AttuneConfig, args: argparse.Namespace) -> int:
    if args.format == "spark-ddl":
        print(spark_ddl())
    else:
        print(json.dumps(json_schema(), indent=2))
    return 0


def read_topic(
    cfg: AttuneConfig, topic: str, *, progress: bool = False, timeout_s: float = 120.0
) -> Iterator[Any]:
    """Every record of ``topic`` from the beginning to the end offsets at call time.

    Yields kafka-python ``ConsumerRecord`` objects (``partition``, ``offset``, ``key``,
    ``value`` as bytes). No consumer group is used and nothing is committed.
    """
    import time

    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=cfg.kafka.bootstrap_servers.split(","),
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_bytes=32 * 1024 * 1024,
        max_partition_fetch_bytes=8 * 1024 * 1024,
        metrics_enabled=False,
    )
    try:
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            raise ConfigError(
                f"Kafka topic {topic!r} does not exist at {cfg.kafka.bootstrap_servers}; "
                "create the declared topics with `attune stack up`"
            )
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        begin = consumer.beginning_offsets(tps)
        end = consumer.end_offsets(tps)
        remaining = {tp for tp in tps if end[tp] > begin[tp]}
        total = sum(end[tp] - begin[tp] for tp in tps)
        consumer.seek_to_beginning(*tps)
        bar = None
        if progress and total > 50_000:
            from tqdm import tqdm

            bar = tqdm(total=total, desc=f"reading {topic}", unit="rec", file=sys.stderr)
        deadline = time.monotonic() + timeout_s
        while remaining:
            if time.monotonic() > deadline:
                raise ConfigError(
                    f"reading {topic} did not reach the end offsets within {timeout_s:.0f} s"
                )
            batches = consumer.poll(timeout_ms=500, max_records=20_000)
            for tp, records in batches.items():
                for record in records:
                    if record.offset < end[tp]:
                        yield record
                if bar is not None:
                    bar.update(len(records))
            for tp in list(remaining):
                if consumer.position(tp) >= end[tp]:
                    remaining.discard(tp)
        if bar is not None:
            bar.close()
    finally:
        consumer.close()


@dataclass
class TopicSummary:
    topic: str
    records: int = 0
    by_type: dict[str, int] = field(default_factory=dict)
    by_partition: dict[int, int] = field(default_factory=dict)
    distinct_event_ids: int = 0
    distinct_keys: int = 0
    sample: dict[str, Any] | None = None


def summarize_events(
    cfg: AttuneConfig,
    *,
    progress: bool = False,
    on_event: Callable[[dict[str, Any]], None] | None = None,
) -> TopicSummary:
    """Count the events topic by type and partition, with distinct ids and a sample."""
    topic = cfg.kafka.topic("events").name
    summary = TopicSummary(topic)
    by_type: Counter[str] = Counter()
    by_partition: Counter[int] = Counter()
    ids: set[str] = set()
    keys: set[bytes] = set()
    for record in read_topic(cfg, topic, progress=progress):
        event = orjson.loads(record.value)
        by_type[event.get("type", "?")] += 1
        by_partition[record.partition] += 1
        ids.add(event.get("event_id"))
        keys.add(record.key)
        if summary.sample is None:
            summary.sample = event
        if on_event is not None:
            on_event(event)
    summary.records = sum(by_type.values())
    summary.by_type = dict(sorted(by_type.items()))
    summary.by_partition = dict(sorted(by_partition.items()))
    summary.distinct_event_ids = len(ids)
    summary.distinct_keys = len(keys)
    return summary


def summarize_keyed(cfg: AttuneConfig, role: str) -> TopicSummary:
    """Records and distinct keys of a topic (catalog, dead letter)."""
    topic = cfg.kafka.topic(role).name
    summary = TopicSummary(topic)
    keys: set[bytes] = set()
    by_partition: Counter[int] = Counter()
    for record in read_topic(cfg, topic):
        keys.add(record.key)
        by_partition[record.partition] += 1
        if summary.sample is None and record.value is not None:
            summary.sample = orjson.loads(record.value)
    summary.records = sum(by_partition.values())
    summary.by_partition = dict(sorted(by_partition.items()))
    summary.distinct_keys = len(keys)
    return summary


def events_summary(cfg: AttuneConfig, *, progress: bool = False) -> dict[str, TopicSummary]:
    return {
        "events": summarize_events(cfg, progress=progress),
        "catalog": summarize_keyed(cfg, "catalog"),
        "dead_letter": summarize_keyed(cfg, "dead_letter"),
    }


def print_summary(summaries: dict[str, TopicSummary]) -> None:
    ev = summaries["events"]
    print(f"events topic {ev.topic}: {ev.records:,} events, {ev.distinct_event_ids:,} distinct")
    if ev.records != ev.distinct_event_ids:
        print(
            f"  {ev.records - ev.distinct_event_ids:,} duplicate records "
            "(re-sent events; the speed layer drops them by event_id)"
        )
    print(f"  {ev.distinct_keys:,} distinct keys (pseudonymized users / anonymous ids)")
    print("  by type:")
    for name, n in ev.by_type.items():
        print(f"    {name:<18} {n:>10,}")
    print("  by partition: " + ", ".join(f"{p}: {n:,}" for p, n in ev.by_partition.items()))
    cat = summaries.get("catalog")
    if cat is not None:
        print(f"catalog topic {cat.topic}: {cat.records:,} records, {cat.distinct_keys:,} items")
    dl = summaries.get("dead_letter")
    if dl is not None:
        print(f"dead-letter topic {dl.topic}: {dl.records:,} rejected events")
    if ev.sample is not None:
        print("sample event:")
        print(json.dumps(ev.sample, indent=2, sort_keys=True))


def cmd_summary(cfg: AttuneConfig, args: argparse.Namespace) -> int:
    summaries = events_summary(cfg, progress=not args.json)
    if args.json:
        print(json.dumps({k: asdict(v) for k, v in summaries.items()}, indent=2))
    else:
        print_summary(summaries)
    return 0
