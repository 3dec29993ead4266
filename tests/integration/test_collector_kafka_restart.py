"""The collector through a Kafka restart (issue 14, item 1): a real collector, a real broker.

The broker is a private one (``stack.kafka_up`` with its own port and data directory, as the
broker-down test of ``test_collector.py`` does), so stopping it disturbs nobody else's tests;
it is stopped at the end. In the first test, events are posted one per request, each with its
own id and never retried by the test, so the topic must hold every acknowledged id exactly once
and any other id at most once. The second does it under load: a :class:`attune.client.Tracker`
sends several hundred events a second in batches through the outage and retries what the
collector refuses, so every queued id must be in the topic (and once after dedup on
``event_id``).

Why the old collector failed here: events in flight when the broker stopped sat in a batch
that expired during the outage (``delivery_timeout_ms``, shortened here to 4 s so the outage
can be short), kafka-python then dropped its idempotent producer id without ever asking for
a new one, and the producer never sent again: every later request waited
``collector.ack_timeout_s`` and got 503 while ``/readyz`` said ready.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from attune import stack
from attune.client import Tracker
from attune.collector.process import collector_process
from attune.config import AttuneConfig, free_port, isolated_config
from attune.events_cli import read_topic
from attune.secrets import create_write_key

pytestmark = pytest.mark.integration

REDIS_DB = 14  # this module's Redis db (consent state only)
RUN = uuid.uuid4().hex[:8]
ACK_TIMEOUT_S = 4.0


@pytest.fixture(scope="module")
def broker_cfg(
    cfg: AttuneConfig, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AttuneConfig]:
    var = tmp_path_factory.mktemp("kafka-restart-var")
    base_jars = Path("var/jars").absolute()
    (var / "jars").symlink_to(base_jars if base_jars.is_dir() else cfg.paths.resolve("jars"))
    port, controller = free_port(), free_port()
    test_cfg = isolated_config(
        cfg, suffix=f"test-kafka-restart-{RUN}", var_dir=var, redis_db=REDIS_DB
    )
    test_cfg = test_cfg.model_copy(
        update={
            "kafka": test_cfg.kafka.model_copy(
                update={
                    "bootstrap_servers": f"127.0.0.1:{port}",
                    "broker": test_cfg.kafka.broker.model_copy(
                        update={"port": port, "controller_port": controller, "heap": "512m"}
                    ),
                    "producer": test_cfg.kafka.producer.model_copy(
                        update={"request_timeout_ms": 2000, "delivery_timeout_ms": 4000}
                    ),
                }
            ),
            "collector": test_cfg.collector.model_copy(
                update={"ack_timeout_s": ACK_TIMEOUT_S, "retry_after_s": 1}
            ),
        }
    )
    secret = test_cfg.paths.resolve(test_cfg.privacy.pseudonym_key_file)
    secret.parent.mkdir(parents=True, exist_ok=True)
    secret.write_bytes(uuid.uuid4().hex.encode())
    os.chmod(secret, 0o600)
    stack.kafka_up(test_cfg)
    try:
        stack.create_topics(test_cfg)
        yield test_cfg
    finally:
        stack.kafka_down(test_cfg)


class _Poster:
    """Posts one new event per request from a thread; remembers every id and its answer."""

    def __init__(self, url: str, key: str) -> None:
        self.url, self.key = url, key
        self.answers: dict[str, int] = {}  # event id -> HTTP status (0: no answer)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def post(self, client: httpx.Client) -> tuple[str, int]:
        eid = f"restart-{RUN}-{len(self.answers)}"
        event = {
            "event_id": eid,
            "type": "item_view",
            "user_id": f"u{len(self.answers) % 7}",
            "timestamp": "2013-02-28T14:38:27Z",
            "items": [{"item_id": "0114369"}],
        }
        self.answers[eid] = 0
        try:
            r = client.post(f"{self.url}/v1/events", json=event, headers={"X-Write-Key": self.key})
            self.answers[eid] = r.status_code
        except httpx.HTTPError:
            pass
        return eid, self.answers[eid]

    def _run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                self.post(client)
                time.sleep(0.02)

    def __enter__(self) -> _Poster:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


def _ready(url: str) -> bool:
    r = httpx.get(f"{url}/readyz", timeout=10)
    assert r.status_code == (200 if r.json()["ready"] else 503)
    return bool(r.json()["ready"])


@pytest.mark.timeout(300)
def test_collector_recovers_within_5s_of_a_kafka_restart(broker_cfg: AttuneConfig) -> None:
    cfg = broker_cfg
    key = create_write_key(cfg, "it-restart")
    log = cfg.log_dir / "collector-kafka-restart.log"
    with collector_process(cfg, log_path=log) as url:
        with _Poster(url, key) as poster:
            time.sleep(2.0)  # requests are being acknowledged
            assert 200 in poster.answers.values()
            stack.kafka_down(cfg)  # SIGTERM while events are being posted
            down_at = time.monotonic()
            while _ready(url) and time.monotonic() - down_at < 5:
                time.sleep(0.2)
            assert not _ready(url), "/readyz says ready while the broker is down"
            # Down for longer than delivery_timeout_ms (4 s), so batches sent to the broker
            # before it stopped expire inside the producer (what wedged the old one).
            while time.monotonic() - down_at < 8:
                assert not _ready(url)
                time.sleep(0.5)
        stack.kafka_up(cfg)  # returns once the topics have leaders again
        up_at = time.monotonic()

        with httpx.Client(timeout=30) as client:
            waited = []
            while True:
                _, status = poster.post(client)
                waited.append((round(time.monotonic() - up_at, 1), status))
                if status == 200 or time.monotonic() - up_at > 30:
                    break
                time.sleep(0.2)
        recovered_s = time.monotonic() - up_at
        print(f"first event accepted {recovered_s:.1f} s after the broker was back: {waited}")
        assert status == 200, f"no event accepted in 30 s after the restart: {waited}"
        assert recovered_s < 5.0, f"first event accepted {recovered_s:.1f} s after: {waited}"
        assert _ready(url)
        stop_at = time.monotonic()
    stopped_s = time.monotonic() - stop_at
    print(f"collector stopped in {stopped_s:.1f} s")
    # Graceful stop: well inside the SIGKILL deadline (ack_timeout_s + 10 s).
    assert stopped_s < ACK_TIMEOUT_S + 5, f"the collector took {stopped_s:.1f} s to stop"
    assert "Application shutdown complete" in log.read_text()

    counts = Counter(
        orjson.loads(r.value)["event_id"]
        for r in read_topic(cfg, cfg.kafka.topic("events").name, timeout_s=60)
    )
    acked = [eid for eid, status in poster.answers.items() if status == 200]
    assert {eid: counts[eid] for eid in acked if counts[eid] != 1} == {}
    assert all(n == 1 for n in counts.values())  # nothing else twice either (no retries)
    assert 503 in poster.answers.values()  # the outage was seen


LOAD_RATE = 400  # events per second, queued by a feeder thread
LOAD_BATCH = 50  # so a batch goes out every 1/8 s while the broker is up
DOWN_S = 8.0


@pytest.mark.timeout(300)
def test_tracker_under_load_loses_nothing_through_a_kafka_restart(
    broker_cfg: AttuneConfig,
) -> None:
    """A Tracker sending LOAD_RATE events/s while the broker is stopped for DOWN_S and started
    again: the collector accepts again within 5 s of the broker being back, and every queued
    event is in the topic (at least once; exactly once after dedup on ``event_id``).

    The events go to topics of their own on the private broker, so the test above, which
    expects each id of its topic exactly once, is not disturbed by this one's retries.
    """
    topics = {
        role: t.model_copy(update={"name": f"{t.name}.load"})
        for role, t in broker_cfg.kafka.topics.items()
    }
    cfg = broker_cfg.model_copy(
        update={"kafka": broker_cfg.kafka.model_copy(update={"topics": topics})}
    )
    stack.create_topics(cfg)
    key = create_write_key(cfg, "it-restart-load")
    accepted_at: list[tuple[float, int]] = []  # (when, accepted) per answered batch

    def on_batch(n: int, body: object) -> None:
        if isinstance(body, dict) and body.get("accepted"):
            accepted_at.append((time.monotonic(), int(body["accepted"])))

    queued: list[str] = []
    stop = threading.Event()
    log = cfg.log_dir / "collector-kafka-restart-load.log"
    with collector_process(cfg, log_path=log) as url:
        tracker = Tracker(
            url,
            key,
            batch_size=LOAD_BATCH,
            flush_interval=0.5,
            max_retries=None,  # keep retrying through the outage; close(timeout) bounds it
            backoff_base=0.2,
            backoff_max=2.0,
            on_batch=on_batch,
        )

        def feed() -> None:
            start = time.monotonic()
            while not stop.is_set():
                i = len(queued)
                queued.append(
                    tracker.track(
                        "item_view",
                        user_id=f"u{i % 31}",
                        items=[{"item_id": f"{i % 89:07d}"}],
                        event_id=f"load-{RUN}-{i:06d}",
                    )
                )
                time.sleep(max(0.0, start + (i + 1) / LOAD_RATE - time.monotonic()))

        feeder = threading.Thread(target=feed, name="feeder", daemon=True)
        try:
            feeder.start()
            time.sleep(3.0)
            assert accepted_at, f"nothing accepted in 3 s: {tracker.stats}"
            stack.kafka_down(cfg)  # SIGTERM, with batches on the wire
            down_at = time.monotonic()
            time.sleep(max(0.0, down_at + DOWN_S - time.monotonic()))
            stack.kafka_up(cfg)  # returns once the topics have leaders again
            up_at = time.monotonic()
            while not any(t > up_at for t, _ in accepted_at) and time.monotonic() < up_at + 30:
                time.sleep(0.05)
            first = min((t for t, _ in accepted_at if t > up_at), default=None)
            time.sleep(3.0)  # the stream goes on after the recovery
        finally:
            stop.set()
            feeder.join(timeout=10)
            stats = tracker.close(timeout=90)

    during = [n for t, n in accepted_at if down_at < t < up_at]
    recovered = f"{first - up_at:.2f} s" if first is not None else "never (30 s)"
    print(
        f"kafka_down..kafka_up: {up_at - down_at:.1f} s, {sum(during)} events accepted in it; "
        f"first batch accepted {recovered} after kafka_up returned; {len(queued)} queued; "
        f"stats: {stats}"
    )
    assert first is not None and first - up_at < 5.0, f"recovered: {recovered}"
    # Nothing lost or refused: every queued event was answered as accepted exactly once.
    assert (stats.queued, stats.accepted) == (len(queued), len(queued))
    assert (stats.failed, stats.unsent, stats.rejected, stats.dropped) == (0, 0, 0, 0)
    assert stats.retries > 0  # the outage was seen by the Tracker
    # DOWN_S of LOAD_RATE events/s were queued into the outage, besides 6 s around it.
    assert len(queued) > (DOWN_S + 6) * LOAD_RATE * 0.8

    counts = Counter(
        orjson.loads(r.value)["event_id"]
        for r in read_topic(cfg, cfg.kafka.topic("events").name, timeout_s=60)
    )
    duplicates = sum(n - 1 for n in counts.values())
    print(f"topic: {sum(counts.values())} records, {len(counts)} ids, {duplicates} duplicates")
    assert set(counts) == set(queued)  # every queued id, and nothing else
    assert len(counts) == len(queued)  # after dedup on event_id: each exactly once
