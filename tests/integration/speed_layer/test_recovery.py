"""Crash and restart: kill -9 the speed layer in the middle of a replay, start it again.

Run B is ``attune speed start --foreground`` in a child process, killed (SIGKILL to its process
group: the Python driver and its JVM) while it works through a replay of real MovieTweetings
ratings sent through the collector, with a bronze batch in flight, then restarted from its
checkpoints.
Run A reads the same topic once, uninterrupted, in other micro-batches, into its own lake and
key prefix. Afterwards:

* B's bronze holds each distinct accepted event exactly once (the events topic, read with
  kafka-python, says which event ids were accepted), and so does A's;
* every Redis key of B equals A's, byte for byte (scores, counters, affinity units, ...).
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from attune import supervisor
from attune.collector.process import collector_process
from attune.config import AttuneConfig
from attune.events_cli import read_topic
from attune.online_store import OnlineStore
from attune.replay import dataset_events, replay
from attune.secrets import create_write_key
from attune.stack import create_topics
from speed_layer.control import committed_offsets, end_offsets, spawn_speed_layer, wait_running
from speed_layer.job import speed_paths
from tests.integration.speed_layer.helpers import (
    delete_prefix,
    delete_topics,
    dump_prefix,
    redis_client,
    speed_config,
    speed_layer_thread,
    wait_until,
    write_secret,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RUN = uuid.uuid4().hex[:8]
REDIS_DB = 11
RATINGS = 700  # MovieTweetings mini rows: 2 events each (item_view + rating)
WARMUP = 100  # rows sent before the replay proper


def _checkpoint_batches(checkpoint: Path, log: str) -> list[int]:
    folder = checkpoint / log
    if not folder.is_dir():
        return []
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())


def _in_flight(checkpoint: Path) -> bool:
    """A batch is planned (offset log) but not committed: a kill now interrupts it."""
    planned = _checkpoint_batches(checkpoint, "offsets")
    done = _checkpoint_batches(checkpoint, "commits")
    return bool(planned and done and planned[-1] > done[-1])


def _caught_up(cfg: AttuneConfig, checkpoint: Path) -> bool:
    topic = cfg.kafka.topic("events").name
    ends = end_offsets(cfg, topic)
    _, committed = committed_offsets(checkpoint, topic)
    return sum(ends.values()) > 0 and all(committed.get(p) == e for p, e in ends.items())


class SpeedProcess:
    """``attune speed start --foreground`` as a child in its own process group."""

    def __init__(self, cfg: AttuneConfig, name: str) -> None:
        self.cfg = cfg
        self.log = cfg.log_dir / f"speed-{name}.log"
        self.child: supervisor.Child | None = None

    def start(self) -> None:
        self.child = spawn_speed_layer(self.cfg, [], log=self.log, config_name="speed-test")
        wait_running(self.cfg, self.child, timeout_s=240)

    def kill(self) -> None:
        """SIGKILL to the whole group: the Python driver and its JVM die at once."""
        assert self.child is not None
        self.child.kill()

    def stop(self) -> None:
        # SIGTERM, then SIGKILL to the group, which also ends any JVM the driver left behind
        if self.child is not None:
            self.child.stop(120)


@pytest.fixture
def configs(
    cfg: AttuneConfig, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[AttuneConfig, AttuneConfig]]:
    b = speed_config(
        cfg,
        suffix=f"test-recovery-{RUN}",
        var_dir=tmp_path_factory.mktemp("recovery-b"),
        redis_db=REDIS_DB,
        online_max_offsets=200,
        bronze_max_offsets=400,
    )
    # A: same topics, its own var dir (lake, checkpoints) and key prefix, default batch sizes.
    a_var = tmp_path_factory.mktemp("recovery-a")
    a = b.model_copy(
        update={
            "paths": b.paths.model_copy(update={"var_dir": a_var}),
            "speed": b.speed.model_copy(
                update={
                    "online_max_offsets": 20_000,
                    "bronze_max_offsets": 200_000,
                    "online_store": b.speed.online_store.model_copy(
                        update={"key_prefix": f"a{RUN}"}
                    ),
                }
            ),
        }
    )
    r = redis_client(b)
    try:
        yield a, b
    finally:
        for c in (a, b):
            delete_prefix(r, OnlineStore.from_config(c).prefix)
        r.close()
        delete_topics(b)


def test_kill_mid_replay_then_restart_loses_and_duplicates_nothing(
    configs: tuple[AttuneConfig, AttuneConfig], spark: Any
) -> None:
    a, b = configs
    write_secret(b)
    key = create_write_key(b, "it-recovery")
    create_topics(b)
    paths_b = speed_paths(b)
    speed = SpeedProcess(b, "b")
    try:
        with collector_process(b) as url:
            speed.start()

            def send(limit: int, rate: float | None, skip: set[str] | None = None) -> Any:
                return replay(
                    b,
                    "movietweetings-mini",
                    url=url,
                    write_key=key,
                    limit=limit,
                    rate=rate,
                    batch_size=50,
                    skip_event_ids=skip,
                    progress=False,
                    say=lambda _m: None,
                )

            # Warm up (the first batches of a fresh JVM are slow), then replay the rest; B reads
            # it in small batches (200 / 400 records), so it is mid-way for a while.
            warm = send(WARMUP, None)
            wait_until(lambda: _caught_up(b, paths_b.checkpoint("online")), 300, "warm-up")
            online_done = len(_checkpoint_batches(paths_b.checkpoint("online"), "commits"))
            skip = {e["event_id"] for e in dataset_events(b, "movietweetings-mini", WARMUP)[2]}
            summary: list[Any] = []
            sender = threading.Thread(
                target=lambda: summary.append(send(RATINGS, None, skip)), daemon=True
            )
            sender.start()
            # Kill once the online query has applied some of the replay and bronze has a batch
            # in flight (planned, not committed): the restart must redo that batch.
            wait_until(
                lambda: (
                    _in_flight(paths_b.checkpoint("bronze"))
                    and len(_checkpoint_batches(paths_b.checkpoint("online"), "commits"))
                    >= online_done + 2
                ),
                240,
                "a bronze batch in flight during the replay",
                poll_s=0.01,
            )
            speed.kill()
            sender.join(timeout=300)
            assert not _caught_up(b, paths_b.checkpoint("bronze")), "killed too late"
            assert summary and warm.accepted + summary[0].accepted == 2 * RATINGS, summary
            speed.start()  # B again, from its checkpoints
            for query in ("bronze", "online"):
                wait_until(
                    lambda q=query: _caught_up(b, paths_b.checkpoint(q)),
                    300,
                    f"B's {query} query to catch up",
                    poll_s=1,
                )
            speed.stop()
    finally:
        speed.stop()

    with speed_layer_thread(a, spark):
        for query in ("bronze", "online"):
            wait_until(
                lambda q=query: _caught_up(a, speed_paths(a).checkpoint(q)),
                300,
                f"A's {query} query to catch up",
                poll_s=1,
            )

    accepted = [
        json.loads(r.value)["event_id"] for r in read_topic(b, b.kafka.topic("events").name)
    ]
    distinct = set(accepted)
    assert len(distinct) == 2 * RATINGS
    for c in (b, a):
        bronze = spark.read.format("delta").load(speed_paths(c).bronze)
        ids = [r["event_id"] for r in bronze.select("event_id").collect()]
        assert len(ids) == len(distinct), f"{len(ids)} bronze rows, {len(distinct)} distinct"
        assert set(ids) == distinct

    r = redis_client(b)
    try:
        got_b = dump_prefix(r, OnlineStore.from_config(b).prefix)
        got_a = dump_prefix(r, OnlineStore.from_config(a).prefix)
    finally:
        r.close()
    assert len(got_b) > 1000  # users' and items' keys: the replay really reached Redis
    assert got_b.keys() == got_a.keys()
    assert got_b == got_a
