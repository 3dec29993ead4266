"""Real-time mode's JVM writer (``speed.realtime_writer: jvm``) against the Python writer.

The same events (posted once through a real collector to this module's own Kafka topic) are
read three times by the online query in real-time mode, each time from the earliest offset,
into key prefixes of their own on a private Redis:

1. with the Python ``foreach`` writer (the reference);
2. with the JVM writer: the Redis state must equal the reference key by key;
3. with the JVM writer again, into the same keys, from a fresh checkpoint, so every event is
   replayed: nothing may change (exactly once).

The events cover what the JVM writer must hand to the scripts: catalog genres and an event
category, affinities, recency, session, dismissals and an undo, a client retry, items without
catalog entries, and today's live experiment counts parsed from recommendation ids (one that
the pattern names and one it does not).
"""

from __future__ import annotations

import shutil
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from attune.collector.process import collector_process
from attune.config import AttuneConfig
from attune.experiments.live import read_live_counts
from attune.online_store import OnlineStore, read_user_features
from attune.replay import publish_catalog
from attune.secrets import create_write_key
from attune.stack import create_topics
from speed_layer.control import committed_offsets, end_offsets
from speed_layer.job import online_checkpoint_name, speed_paths, start_online
from tests.integration.private_redis import private_redis, with_private_redis
from tests.integration.speed_layer.helpers import (
    delete_topics,
    dump_prefix,
    pseudo,
    redis_client,
    speed_config,
    wait_until,
    write_secret,
)

pytestmark = pytest.mark.integration

RUN = uuid.uuid4().hex[:8]


def at(minutes: int) -> str:
    total = 12 * 60 + minutes
    return f"2013-03-01T{total // 60:02d}:{total % 60:02d}:00Z"


def event(eid: str, etype: str, minutes: int, user: str, **extra: Any) -> dict[str, Any]:
    return {
        "event_id": f"{eid}-{RUN}",
        "type": etype,
        "user_id": f"{user}-{RUN}",
        "timestamp": at(minutes),
        **extra,
    }


def items(*ids: str) -> list[dict[str, Any]]:
    return [{"item_id": i} for i in ids]


RID = f"x{RUN}:b:r1"  # experiment x<RUN>, variant b (batch.recommendation_id_pattern)
EVENTS = [
    event("a1", "item_view", 0, "alice", items=items("m1"), session_id="s1"),
    event("a2", "item_view", 30, "alice", items=items("m2"), session_id="s1"),
    event("a3", "add_to_cart", 60, "alice", items=items("m2"), session_id="s1"),
    event("a4", "purchase", 120, "alice", items=items("m2"), order_id="o1", session_id="s1"),
    event("a5", "impression", 121, "alice", items=items("m3"), session_id="s1"),
    event("a6", "dismiss", 122, "alice", items=items("m3"), session_id="s1"),
    event("a7", "item_view", 123, "alice", items=[{"item_id": "x9", "category": "Sci-Fi"}]),
    event("a8", "undo_feedback", 124, "alice", items=items("m3")),
    event("b1", "search", 10, "bob", query="drama"),
    event("b2", "click", 11, "bob", items=items("m1")),
    event("b3", "rating", 12, "bob", items=items("m3"), rating=4.5),
    event(
        "b4",
        "impression",
        13,
        "bob",
        items=[{"item_id": "m1", "position": 0}, {"item_id": "m2", "position": 1}],
        recommendation_id=RID,
    ),
    event("b5", "rec_click", 14, "bob", items=items("m2"), recommendation_id=RID),
    event("b6", "not_interested", 15, "bob", items=items("m1")),
    event("c1", "item_view", 0, "carol", items=items("m1")),
    event(
        "c2", "purchase", 5, "carol", items=items("m1"), order_id="o2", recommendation_id="plain"
    ),
]


@dataclass
class Env:
    cfg: AttuneConfig
    secret: bytes
    redis: redis.Redis
    spark: Any

    def variant(self, name: str, writer: str) -> AttuneConfig:
        """The online query into key prefix ``t<name><RUN>`` with checkpoints of its own."""
        s = self.cfg.speed
        speed = s.model_copy(
            update={
                "realtime_writer": writer,
                # each run waits for a batch end (its offsets committed): the jvm writer's
                # default batch is 5 minutes
                "realtime_batch": timedelta(seconds=5),
                "checkpoint_dir": Path(f"checkpoints/{name}"),
                "online_store": s.online_store.model_copy(update={"key_prefix": f"t{name}{RUN}"}),
            }
        )
        return AttuneConfig.model_validate(
            self.cfg.model_copy(update={"speed": speed}).model_dump()
        )


@pytest.fixture(scope="module")
def env(cfg: AttuneConfig, spark: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    test_cfg = speed_config(
        cfg,
        suffix=f"test-jvmw-{RUN}",
        var_dir=tmp_path_factory.mktemp("jvmw-var"),
        redis_db=0,
        trigger="realtime",
        starting_offsets="earliest",
        new_item_vectors=False,
        features={"affinity_half_life": timedelta(hours=1)},
    )
    # Real-time mode runs one long task per partition; the tests' session has 2 task slots.
    topics = dict(test_cfg.kafka.topics)
    topics["events"] = topics["events"].model_copy(update={"partitions": 1})
    kafka = test_cfg.kafka.model_copy(update={"topics": topics})
    test_cfg = with_private_redis(
        AttuneConfig.model_validate(test_cfg.model_copy(update={"kafka": kafka}).model_dump())
    )
    # The Python writer runs in Python workers, which must be this interpreter (attune's
    # dependencies), as build_speed_session arranges for the speed layer's own session.
    spark.sparkContext.pythonExec = sys.executable
    with private_redis(test_cfg):
        secret = write_secret(test_cfg)
        key = create_write_key(test_cfg, "it-jvm-writer")
        create_topics(test_cfg)
        publish_catalog(
            test_cfg,
            [
                {"item_id": "m1", "title": "One", "year": 1999, "genres": ["Drama", "Comedy"]},
                {"item_id": "m2", "title": "Two", "year": 2001, "genres": ["Drama"]},
                {"item_id": "m3", "title": "Three", "year": 2003, "genres": ["Horror"]},
            ],
        )
        with collector_process(test_cfg) as url:
            headers = {"X-Write-Key": key}
            r = httpx.post(f"{url}/v1/events", json=EVENTS, headers=headers, timeout=30)
            assert r.status_code == 200 and r.json()["accepted"] == len(EVENTS), r.text
            retry = httpx.post(f"{url}/v1/events", json=EVENTS[:1], headers=headers, timeout=30)
            assert retry.json()["accepted"] == 1  # a client retry: the same event again
        client = redis_client(test_cfg)
        try:
            yield Env(test_cfg, secret, client, spark)
        finally:
            client.close()
            delete_topics(test_cfg)


def run_online(env: Env, cfg: AttuneConfig, fresh: bool = True) -> None:
    """Run the online query (real-time mode) until it has committed every event of the topic."""
    paths = speed_paths(cfg)
    checkpoint = paths.checkpoint(online_checkpoint_name(cfg))
    if fresh:
        shutil.rmtree(checkpoint, ignore_errors=True)
    topic = cfg.kafka.topic("events").name
    ends = end_offsets(cfg, topic)
    assert sum(ends.values()) == len(EVENTS) + 1
    online = start_online(env.spark, cfg, paths)
    try:

        def done() -> bool:
            if not online.query.isActive:
                raise AssertionError(f"the online query stopped: {online.query.exception()}")
            return committed_offsets(checkpoint, topic)[1] == ends

        wait_until(done, 240, "the online query to commit every event", poll_s=0.5)
    finally:
        online.stop()


def state(env: Env, cfg: AttuneConfig) -> dict[str, Any]:
    """The keys under ``cfg``'s prefix (``dump_prefix``). A HyperLogLog's header caches its
    count (bytes 8-15), which PFCOUNT, a read, rewrites: compared without it."""
    out = dump_prefix(env.redis, cfg.speed.online_store.key_prefix)
    for name, value in out.items():
        if isinstance(value, bytes) and value.startswith(b"HYLL"):
            out[name] = value[:8] + value[16:]
    return out


def check_by_hand(env: Env, cfg: AttuneConfig) -> None:
    """What the events add up to, worked out by hand (the retry and replays count once)."""
    store = OnlineStore.from_config(cfg)
    alice = read_user_features(env.redis, pseudo(env.secret, f"alice-{RUN}"), store)
    # a1..a7 are events that count; a8 (an undo) is a correction, not activity
    assert alice.counters.get("events") == 7
    assert alice.recent_item_ids == ["x9", "m2", "m1"]  # newest first: +123, +120, +0
    assert alice.dismissed_items == []  # m3 dismissed at +122, undone at +124
    counts = read_live_counts(env.redis, store.keys, "2013-03-01")
    # b4 is an impression of experiment x<RUN>, variant b, by bob; b5 a click on it. c2's id
    # "plain" names no experiment: "none" / "none" (attune.experiments.live.NO_EXPERIMENT).
    assert counts[f"x{RUN}"] == {"b": {"impressions": 1, "clicks": 1, "purchases": 0, "users": 1}}
    assert counts["none"]["none"]["purchases"] == 1


@pytest.mark.slow
@pytest.mark.timeout(600)  # three runs of the online query, each to the end of a 5 s epoch
def test_the_jvm_writer_leaves_redis_as_the_python_writer_does_and_replays_change_nothing(
    env: Env,
) -> None:
    python_cfg = env.variant("py", "python")
    jvm_cfg = env.variant("jv", "jvm")

    run_online(env, python_cfg)
    reference = state(env, python_cfg)
    check_by_hand(env, python_cfg)
    assert any(k.endswith(":recent") for k in reference)  # the reference is not empty

    run_online(env, jvm_cfg)
    assert state(env, jvm_cfg) == reference
    check_by_hand(env, jvm_cfg)

    run_online(env, jvm_cfg, fresh=True)  # a fresh checkpoint: every event read again
    assert state(env, jvm_cfg) == reference
    check_by_hand(env, jvm_cfg)
