"""``attune speed start | status | stop`` as a user runs them: detached process, pid file, lag."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaProducer

from attune import supervisor
from attune.config import AttuneConfig, write_config
from attune.online_store import OnlineStore
from attune.stack import create_topics
from speed_layer.job import speed_paths
from tests.integration.speed_layer.helpers import (
    attune,
    delete_prefix,
    delete_topics,
    redis_client,
    speed_config,
    wait_until,
)
from tests.unit.speed_layer.events import minutes, stored

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RUN = uuid.uuid4().hex[:8]


@pytest.fixture
def setup(
    cfg: AttuneConfig, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[AttuneConfig, Path]]:
    c = speed_config(
        cfg, suffix=f"test-cli-{RUN}", var_dir=tmp_path_factory.mktemp("cli"), redis_db=10
    )
    create_topics(c)
    config = write_config(c, c.var_dir / "attune.yaml")
    try:
        yield c, config
    finally:
        attune(config, "speed", "stop", "--timeout", "30")
        r = redis_client(c)
        delete_prefix(r, OnlineStore.from_config(c).prefix)
        r.close()
        delete_topics(c)


def _status(config: Path) -> tuple[int, dict[str, Any]]:
    result = attune(config, "speed", "status", "--json", timeout=60)
    return result.returncode, json.loads(result.stdout)


def test_start_status_stop(setup: tuple[AttuneConfig, Path]) -> None:
    c, config = setup
    code, report = _status(config)
    assert code == 1 and report["running"] is False and report["queries"] == []

    started = attune(config, "speed", "start")
    assert started.returncode == 0, started.stdout + started.stderr
    assert "speed layer running: bronze, online" in started.stdout
    record = supervisor.read_record(speed_paths(c).pid_file)
    assert record is not None
    pid = record.pid
    again = attune(config, "speed", "start")
    assert f"already running (pid {pid})" in again.stdout

    topic = c.kafka.topic("events").name
    producer = KafkaProducer(bootstrap_servers=c.kafka.bootstrap_servers)
    try:
        for i in range(10):
            e = stored(f"cli-{i}", "item_view", minutes(i), ["m1"], user=f"user{i}")
            producer.send(topic, key=e.key.encode(), value=e.to_json())
        producer.flush()
    finally:
        producer.close()

    def caught_up() -> dict[str, Any] | None:
        code, report = _status(config)
        queries = {q["name"]: q for q in report["queries"]}
        done = (
            code == 0
            and set(queries) == {"bronze", "online"}
            and all(q["active"] and q.get("total_lag") == 0 for q in queries.values())
            and all(q["last_progress"] for q in queries.values())
        )
        return report if done else None

    report = wait_until(caught_up, 240, "both queries to read all 10 events", poll_s=2)
    assert report["pid"] == pid and report["state"] == "running"
    for q in report["queries"]:
        # One row per partition of the 6-partition events topic; the 10 events all read.
        assert [row["partition"] for row in q["lag"]] == list(range(6))
        assert sum(row["end"] for row in q["lag"]) == 10
        assert sum(row["committed"] or 0 for row in q["lag"]) == 10
    online = next(q for q in report["queries"] if q["name"] == "online")
    assert online["writer"]["applied"] == 10

    text = attune(config, "speed", "status")
    assert text.returncode == 0
    assert "query online: active" in text.stdout and "query bronze: active" in text.stdout
    assert "consumer lag on " + topic in text.stdout

    stopped = attune(config, "speed", "stop")
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert not speed_paths(c).pid_file.exists()
    code, report = _status(config)
    assert code == 1 and report["running"] is False
    # The lag is still known from the checkpoints with the process gone.
    assert all(q["total_lag"] == 0 and not q["active"] for q in report["queries"])
