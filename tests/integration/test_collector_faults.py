"""The collector SIGKILLed in the middle of a batch while a Tracker streams events (issue 14).

A real :class:`attune.client.Tracker` sends a steady stream of events in batches to a real
collector process. While one of its requests is on the wire (the collector has the batch and
has not answered), the collector is killed with SIGKILL: no graceful shutdown, no flush. The
Tracker sees the connection drop, keeps the batch and retries it with backoff (connection
refused while nothing listens); a new collector is started on the same port and the retries
and the rest of the stream reach it.

What the pipeline promises: every event the Tracker queued is in the topic at least once
(nothing acknowledged, nothing queued, is lost), and after deduplication on ``event_id`` (the
speed layer's and silver's key) each appears exactly once. The raw topic may hold a few events
twice: a batch the killed collector had already written to Kafka when it died never got its
answer to the client, which then sent it again (at-least-once). The test counts and prints
them rather than asserting a number, since whether the dead collector's produce reached the
broker first is a race.

The expected ids are the test's own (``sigkill-<run>-<i>``), fixed when queued, so nothing is
computed with the code under test.
"""

from __future__ import annotations

import os
import signal
import statistics
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from attune.client import Tracker
from attune.collector.process import collector_process, collector_url
from attune.config import AttuneConfig, isolated_config
from attune.events_cli import read_topic
from attune.secrets import create_write_key
from tests.integration.speed_layer.helpers import delete_topics

pytestmark = pytest.mark.integration

REDIS_DB = 5  # this module's Redis db (consent state only); 6-15 and 0 belong to others
RUN = uuid.uuid4().hex[:8]

N_EVENTS = 3000  # queued at RATE per second: a 6 s stream
RATE = 500
BATCH = 100
KILL_AT_REQUEST = 8  # after 7 answered batches (700 events), the 8th is killed mid-flight


@pytest.fixture(scope="module")
def faults_cfg(
    cfg: AttuneConfig, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AttuneConfig]:
    from attune.stack import create_topics

    # One worker: the process /readyz names (worker_pid) is then the collector itself, and
    # killing it leaves no orphaned worker holding the port.
    test_cfg = isolated_config(
        cfg,
        suffix=f"test-collector-faults-{RUN}",
        var_dir=tmp_path_factory.mktemp("collector-faults-var"),
        redis_db=REDIS_DB,
        workers=1,
    )
    create_topics(test_cfg)
    try:
        yield test_cfg
    finally:
        delete_topics(test_cfg)


def _collector_pid(url: str) -> int:
    """The pid of the collector serving ``url``, checked to be an ``attune serve collector``."""
    pid = int(httpx.get(f"{url}/readyz", timeout=10).json()["worker_pid"])
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert b"serve" in cmdline and b"collector" in cmdline, cmdline
    return pid


@dataclass
class _Request:
    started: float
    answered: float | None = None  # when the response headers arrived
    error: str | None = None  # the transport error instead of an answer


class _KillingTransport(httpx.HTTPTransport):
    """The Tracker's HTTP transport, which SIGKILLs the collector while a request is open.

    From request ``kill_at`` on, each request arms a timer that kills the collector half a
    typical answer time after the request was sent, unless the answer came first (then the
    next request tries again, sooner). A lock makes "the answer came first" and "killed" one
    decision, so a kill always lands while the client is still waiting for an answer.
    """

    def __init__(self, kill_at: int) -> None:
        super().__init__()
        self.kill_at = kill_at
        self.pid: int | None = None
        self.requests: list[_Request] = []
        self.killed_request: _Request | None = None
        self.killed = threading.Event()
        self._lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        record = _Request(time.monotonic())
        timer = None
        with self._lock:
            self.requests.append(record)
            if not self.killed.is_set() and len(self.requests) >= self.kill_at:
                answered = [r.answered - r.started for r in self.requests if r.answered]
                delay = statistics.median(answered) / 2 if answered else 0.005
                delay /= 2 ** (len(self.requests) - self.kill_at)  # sooner on each miss
                timer = threading.Timer(delay, self._kill, (record,))
                timer.start()
        try:
            response = super().handle_request(request)
        except httpx.TransportError as exc:
            record.error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            with self._lock:
                record.answered = time.monotonic() if record.error is None else None
            if timer is not None:
                timer.cancel()
        return response

    def _kill(self, record: _Request) -> None:
        with self._lock:
            if record.answered is not None or record.error is not None:
                return  # answered first: the next request arms another timer
            assert self.pid is not None
            os.kill(self.pid, signal.SIGKILL)
            self.killed_request = record
            self.killed.set()


@pytest.mark.timeout(240)
def test_tracker_loses_nothing_when_the_collector_is_killed_mid_batch(
    faults_cfg: AttuneConfig,
) -> None:
    cfg = faults_cfg
    key = create_write_key(cfg, "it-sigkill")
    url = collector_url(cfg)
    answers: list[tuple[float, int]] = []  # (when, accepted) per answered batch

    def on_batch(n: int, body: Any) -> None:
        answers.append((time.monotonic(), int(body.get("accepted", 0))))

    transport = _KillingTransport(KILL_AT_REQUEST)
    tracker = Tracker(
        url,
        key,
        batch_size=BATCH,
        flush_interval=1.0,  # at RATE a batch fills in 0.2 s: batches go out full
        max_retries=None,  # retry until the new collector answers; close(timeout) bounds it
        backoff_base=0.2,
        backoff_max=2.0,
        on_batch=on_batch,
        transport=transport,
    )
    queued: list[str] = []

    def feed() -> None:
        start = time.monotonic()
        for i in range(N_EVENTS):
            eid = tracker.track(
                "item_view",
                user_id=f"u{i % 50}",
                items=[{"item_id": f"{i % 97:07d}"}],
                event_id=f"sigkill-{RUN}-{i:05d}",
            )
            queued.append(eid)
            time.sleep(max(0.0, start + (i + 1) / RATE - time.monotonic()))

    feeder = threading.Thread(target=feed, name="feeder", daemon=True)
    logs = cfg.log_dir / "collector-faults"
    try:
        with collector_process(cfg, log_path=logs.with_suffix(".1.log")) as first:
            assert first == url
            transport.pid = _collector_pid(url)
            feeder.start()
            assert transport.killed.wait(30), f"no kill after {len(transport.requests)} requests"
            killed_at = time.monotonic()
        # The killed collector is gone (leaving the block only reaps it); the Tracker retries
        # into a closed port until the new collector listens on the same one.
        with collector_process(cfg, log_path=logs.with_suffix(".2.log")) as second:
            assert second == url
            restarted_at = time.monotonic()
            feeder.join(timeout=60)
            assert not feeder.is_alive()
            stats = tracker.close(timeout=60)
    finally:
        tracker.close(timeout=5)

    killed = transport.killed_request
    assert killed is not None and killed.answered is None
    print(
        f"killed request #{transport.requests.index(killed) + 1} "
        f"{1000 * (killed_at - killed.started):.0f} ms after it was sent: {killed.error}; "
        f"collector back {restarted_at - killed_at:.1f} s later; stats: {stats}"
    )
    assert killed.error is not None  # the Tracker saw the connection drop, no answer
    # Mid-stream: batches accepted before the kill and after the new collector was up, and
    # the killed batch retried.
    assert sum(n for t, n in answers if t < killed_at) >= BATCH
    assert sum(n for t, n in answers if t > restarted_at) > 0
    assert stats.retries > 0
    # Nothing lost or refused: every queued event was answered as accepted exactly once.
    assert len(queued) == N_EVENTS
    assert (stats.queued, stats.accepted, stats.sent) == (N_EVENTS, N_EVENTS, N_EVENTS)
    assert (stats.failed, stats.unsent, stats.rejected, stats.dropped) == (0, 0, 0, 0)

    counts = Counter(
        orjson.loads(r.value)["event_id"]
        for r in read_topic(cfg, cfg.kafka.topic("events").name, timeout_s=60)
    )
    duplicates = sum(n - 1 for n in counts.values())
    print(f"topic: {sum(counts.values())} records, {len(counts)} ids, {duplicates} duplicates")
    assert set(counts) == set(queued)  # all of them, and nothing the Tracker did not queue
    assert len(counts) == N_EVENTS  # after dedup on event_id: each exactly once
    # At most the killed batch can be there twice (its retry was the only re-sent request).
    assert duplicates <= BATCH
