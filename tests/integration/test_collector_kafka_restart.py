"""The collector through a Kafka restart (issue 14, item 1): a real collector, a real broker.

The broker is a private one (``stack.kafka_up`` with its own port and data directory, as the
broker-down test of ``test_collector.py`` does), so stopping it disturbs nobody else's tests;
it is stopped at the end. Events are posted one per request, each with its own id and never
retried by the test, so the topic must hold every acknowledged id exactly once and any other
id at most once.

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
