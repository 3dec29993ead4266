"""The tracking client against a scripted HTTP transport (the real collector: integration)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest

from attune.client import Tracker, TrackerError


class Script:
    """A fake collector: answers requests with the next scripted reply, records bodies."""

    def __init__(self, replies: list[Callable[[list[dict[str, Any]]], httpx.Response]]) -> None:
        self.replies = replies
        self.bodies: list[list[dict[str, Any]]] = []
        self.times: list[float] = []
        self.headers: list[httpx.Headers] = []
        self.lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        events = orjson.loads(request.content)
        with self.lock:
            self.bodies.append(events)
            self.times.append(time.monotonic())
            self.headers.append(request.headers)
            reply = self.replies.pop(0) if self.replies else ok
        return reply(events)


def ok(events: list[dict[str, Any]]) -> httpx.Response:
    return httpx.Response(200, json={"accepted": len(events), "dropped": 0, "rejected": []})


def unavailable(retry_after: str) -> Callable[[list[dict[str, Any]]], httpx.Response]:
    return lambda events: httpx.Response(
        503, headers={"Retry-After": retry_after}, json={"error": "Kafka down"}
    )


def tracker(script: Script, **kwargs: Any) -> Tracker:
    kwargs.setdefault("batch_size", 3)
    kwargs.setdefault("flush_interval", 5.0)
    return Tracker("http://collector", "wk_test", transport=httpx.MockTransport(script), **kwargs)


def test_batches_by_size_and_sends_the_key() -> None:
    script = Script([])
    t = tracker(script)
    ids = [t.track("item_view", user_id="u", items=[{"item_id": str(i)}]) for i in range(7)]
    t.close()
    assert [len(b) for b in script.bodies] == [3, 3, 1]
    assert [e["event_id"] for b in script.bodies for e in b] == ids
    assert script.headers[0]["authorization"] == "Bearer wk_test"
    assert t.stats.accepted == 7 and t.stats.requests == 3


def test_flush_interval_sends_a_partial_batch() -> None:
    script = Script([])
    t = tracker(script, batch_size=100, flush_interval=0.2)
    start = time.monotonic()
    t.track("item_view", user_id="u", items=[{"item_id": "1"}])
    deadline = time.monotonic() + 3
    while not script.bodies and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(script.bodies) == 1
    assert 0.15 <= script.times[0] - start < 1.5
    t.close()


def test_retries_503_honouring_retry_after_with_the_same_ids() -> None:
    script = Script([unavailable("0.3"), unavailable("0.3")])
    t = tracker(script, batch_size=2)
    t.track("item_view", user_id="u", items=[{"item_id": "1"}], event_id="fixed-1")
    t.track("item_view", user_id="u", items=[{"item_id": "2"}])
    assert t.flush(timeout=5)
    t.close()
    assert len(script.bodies) == 3
    assert script.bodies[0] == script.bodies[1] == script.bodies[2]  # identical retries
    assert script.bodies[0][0]["event_id"] == "fixed-1"
    # Waited at least the 0.3 s the collector asked for, twice.
    assert script.times[1] - script.times[0] >= 0.28
    assert script.times[2] - script.times[1] >= 0.28
    assert t.stats.retries == 2 and t.stats.accepted == 2 and t.stats.failed == 0


def test_network_errors_are_retried_then_given_up() -> None:
    def boom(events: list[dict[str, Any]]) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    script = Script([boom] * 10)
    t = tracker(script, batch_size=1, max_retries=2, backoff_base=0.01)
    t.track("item_view", user_id="u", items=[{"item_id": "1"}])
    t.close()
    assert len(script.bodies) == 3  # first try + 2 retries
    assert t.stats.failed == 1 and "ConnectError" in (t.stats.last_error or "")


def test_rejections_are_kept_and_not_retried() -> None:
    def partial(events: list[dict[str, Any]]) -> httpx.Response:
        return httpx.Response(
            207,
            json={
                "accepted": 1,
                "dropped": 0,
                "rejected": [{"index": 1, "event_id": "b", "errors": [{"field": "rating"}]}],
            },
        )

    script = Script([partial])
    t = tracker(script, batch_size=2)
    t.track("item_view", user_id="u", items=[{"item_id": "1"}], event_id="a")
    t.track("rating", user_id="u", items=[{"item_id": "1"}], event_id="b")
    t.close()
    assert len(script.bodies) == 1
    assert t.stats.accepted == 1 and t.stats.rejected == 1
    assert t.rejections[0]["event_id"] == "b"


def test_refused_request_counts_as_failed() -> None:
    script = Script([lambda events: httpx.Response(401, json={"error": "unknown write key"})])
    t = tracker(script, batch_size=1)
    t.track("item_view", user_id="u", items=[{"item_id": "1"}])
    t.close()
    assert t.stats.failed == 1 and "unknown write key" in (t.stats.last_error or "")


def test_generated_fields_and_bad_use() -> None:
    script = Script([])
    t = tracker(script, batch_size=1)
    from datetime import UTC, datetime

    t.track(
        "item_view",
        user_id="u",
        items=[{"item_id": "1"}],
        timestamp=datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
    )
    with pytest.raises(TrackerError, match="no time zone"):
        t.track("item_view", user_id="u", timestamp=datetime(2024, 1, 1))
    t.close()
    (event,) = script.bodies[0]
    assert event["timestamp"] == "2024-01-02T03:04:05+00:00"
    assert len(event["event_id"]) == 36  # a uuid4
    with pytest.raises(TrackerError, match="closed"):
        t.track("item_view", user_id="u")
    with pytest.raises(TrackerError, match="batch_size"):
        Tracker("http://x", "k", batch_size=0)


def test_close_during_a_retry_stops_the_sender_and_reports_the_batch_undelivered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The collector answers 503 and asks for a 10 s pause: close(timeout=0.3) comes while the
    # sender waits to retry. Before the fix close() closed the client under the sender, whose
    # retry then failed with "Cannot send a request, as the client has been closed".
    script = Script([unavailable("10")] * 5)
    t = tracker(script, batch_size=3, max_retries=None)
    for i in range(5):  # 3 go out as one batch (batch_size 3), 2 stay queued
        t.track("item_view", user_id="u", items=[{"item_id": str(i)}])
    deadline = time.monotonic() + 3
    while t.stats.retries == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert t.stats.retries == 1  # the sender is in its 10 s backoff
    start = time.monotonic()
    stats = t.close(timeout=0.3)
    took = time.monotonic() - start
    assert took < 2.0  # 0.3 s flush + the sender waking at once, not the 10 s backoff
    assert not t._thread.is_alive()
    assert len(script.bodies) == 1  # no request after close
    # By hand: 3 in the batch being retried + 2 queued = 5 events not delivered.
    assert (stats.accepted, stats.failed, stats.unsent) == (0, 5, 5)
    assert stats.last_error is not None
    assert stats.last_error.startswith("tracker closed before 2 events were delivered")
    assert "closed" not in "".join(r.getMessage() for r in caplog.records if r.exc_info)
    messages = [r.getMessage() for r in caplog.records]
    assert any(
        "tracker closed before 3 events were delivered: close() stopped retrying the batch "
        "after 1 tries (last error: HTTP 503" in m
        for m in messages
    ), messages
    assert not any("Cannot send a request" in m for m in messages)


def test_close_waits_for_a_request_on_the_wire_and_counts_it_delivered() -> None:
    # First try 503 (retry at once), the retry is answered 200 only 0.6 s later: close(0.2)
    # comes while that request is on the wire, which is waited for (close_grace 5 s).
    release = threading.Event()

    def slow_ok(events: list[dict[str, Any]]) -> httpx.Response:
        release.wait(5)
        return ok(events)

    script = Script([unavailable("0"), slow_ok])
    t = tracker(script, batch_size=2)
    t.track("item_view", user_id="u", items=[{"item_id": "1"}])
    t.track("item_view", user_id="u", items=[{"item_id": "2"}])
    deadline = time.monotonic() + 3
    while len(script.bodies) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    threading.Timer(0.6, release.set).start()
    stats = t.close(timeout=0.2)
    assert not t._thread.is_alive()
    assert (stats.accepted, stats.failed, stats.unsent, stats.retries) == (2, 0, 0, 1)
