"""A Python tracking client for the attune collector.

>>> tracker = Tracker("http://127.0.0.1:8080", write_key)        # doctest: +SKIP
>>> tracker.track("item_view", user_id="u42", items=[{"item_id": "tt0111161"}])  # doctest: +SKIP
>>> tracker.close()                                              # doctest: +SKIP

``track()`` only queues the event (giving it an ``event_id`` and a ``timestamp`` when it has
none); a background thread sends the queue in batches of ``batch_size`` events, at the latest
``flush_interval`` seconds after an event was queued. A batch that fails with a network error,
a 5xx, 429 or 503 is retried with exponential backoff (honouring ``Retry-After``), unchanged:
the event ids are fixed when the event is queued, so a retry after a lost response is
idempotent downstream (the speed layer drops duplicate ids). Events the collector rejects
(invalid) are not retried; they are counted and kept in :attr:`Tracker.rejections`.

``flush()`` waits until everything queued so far is sent; ``close()`` flushes and stops the
thread. When the queue holds ``max_queue`` events, ``track()`` waits for room (backpressure).

The sender thread owns the HTTP client and closes it when it ends, so ``close()`` never pulls
the connection from under a request. When ``close(timeout)`` runs out of time (the collector
is down and a batch is being retried), it stops the sender: a backoff wait is cut short, no
further attempt is made, and the batch and whatever is still queued are reported as not
delivered (``stats.unsent``, ``stats.failed``, ``stats.last_error`` and a log line say why).
A request already on the wire is waited for (up to ``close_grace`` seconds) and counts as
delivered if the collector accepts it.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson

log = logging.getLogger(__name__)

EVENTS_PATH = "/v1/events"
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


class TrackerError(RuntimeError):
    """The tracker was used wrongly or gave up; the message says why."""


@dataclass
class TrackerStats:
    """Running totals since the tracker started."""

    queued: int = 0
    sent: int = 0  # events in requests the collector answered (not counting retries)
    accepted: int = 0
    dropped: int = 0
    rejected: int = 0
    failed: int = 0  # events given up on (retries exhausted or refused request, e.g. 401)
    unsent: int = 0  # of those, events close() gave up on before the collector accepted them
    requests: int = 0
    retries: int = 0
    last_error: str | None = None


class Tracker:
    """Batches events and sends them to ``POST /v1/events`` from a background thread."""

    def __init__(
        self,
        url: str,
        write_key: str,
        batch_size: int = 100,
        flush_interval: float = 1.0,
        *,
        max_queue: int = 100_000,
        timeout: float = 30.0,
        max_retries: int | None = 10,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        on_batch: Callable[[int, Mapping[str, Any]], None] | None = None,
        transport: httpx.BaseTransport | None = None,
        close_grace: float = 5.0,
    ) -> None:
        if batch_size < 1:
            raise TrackerError(f"batch_size must be at least 1, got {batch_size}")
        if flush_interval <= 0:
            raise TrackerError(f"flush_interval must be positive, got {flush_interval}")
        if not write_key:
            raise TrackerError("a write key is needed (attune keys create SOURCE makes one)")
        base = url.rstrip("/")
        self.endpoint = base if base.endswith(EVENTS_PATH) else base + EVENTS_PATH
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.max_queue = max_queue
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.on_batch = on_batch
        self.close_grace = close_grace
        self.stats = TrackerStats()
        self.rejections: list[dict[str, Any]] = []
        self._http = httpx.Client(
            timeout=timeout,
            transport=transport,
            headers={"Authorization": f"Bearer {write_key}", "Content-Type": "application/json"},
        )
        self._queue: deque[dict[str, Any]] = deque()
        self._cond = threading.Condition()
        self._in_flight = 0
        self._flush_requested = False
        self._closed = False
        self._stop = threading.Event()  # close() gave up waiting: deliver nothing more
        self._oldest: float | None = None
        self._thread = threading.Thread(target=self._run, name="attune-tracker", daemon=True)
        self._thread.start()

    # -- public API -----------------------------------------------------------------------
    def track(
        self,
        type: str,
        *,
        user_id: str | None = None,
        anonymous_id: str | None = None,
        items: list[Mapping[str, Any]] | None = None,
        timestamp: datetime | str | int | None = None,
        event_id: str | None = None,
        **fields: Any,
    ) -> str:
        """Queue one event and return its ``event_id``. Extra keyword arguments are envelope
        fields (``rating``, ``query``, ``context``, ``consent``, ``session_id``, ...)."""
        event: dict[str, Any] = {"type": type, **fields}
        if user_id is not None:
            event["user_id"] = user_id
        if anonymous_id is not None:
            event["anonymous_id"] = anonymous_id
        if items is not None:
            event["items"] = [dict(i) for i in items]
        if timestamp is not None:
            event["timestamp"] = timestamp
        if event_id is not None:
            event["event_id"] = event_id
        return self.track_event(event)

    def track_event(self, event: Mapping[str, Any]) -> str:
        """Queue an event given as a dict in the wire format (see ``GET /v1/schema``)."""
        ev = dict(event)
        ev.setdefault("event_id", str(uuid.uuid4()))
        ts = ev.get("timestamp")
        if ts is None:
            ev["timestamp"] = datetime.now(UTC).isoformat()
        elif isinstance(ts, datetime):
            if ts.tzinfo is None:
                raise TrackerError(
                    f"event {ev['event_id']}: timestamp {ts} has no time zone; "
                    "pass an aware datetime, e.g. datetime.now(UTC)"
                )
            ev["timestamp"] = ts.isoformat()
        with self._cond:
            if self._closed:
                raise TrackerError("the tracker is closed")
            while len(self._queue) >= self.max_queue:
                self._cond.wait(0.1)
            self._queue.append(ev)
            if self._oldest is None:
                self._oldest = time.monotonic()
            self.stats.queued += 1
            if len(self._queue) >= self.batch_size:
                self._cond.notify_all()
        return str(ev["event_id"])

    def flush(self, timeout: float | None = None) -> bool:
        """Send everything queued so far; True when done, False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._flush_requested = True
            self._cond.notify_all()
            while self._queue or self._in_flight:
                if not self._thread.is_alive():
                    raise TrackerError("the tracker's sender thread died; see the log")
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(0.05 if remaining is None else min(remaining, 0.05))
            self._flush_requested = False
        return True

    def close(self, timeout: float | None = None) -> TrackerStats:
        """Flush (up to ``timeout`` seconds), stop the sender thread and close the HTTP
        connection; returns the totals.

        When the flush times out, the sender is stopped instead of being left to retry: the
        batch it is retrying and the events still queued are counted in ``stats.unsent`` (and
        ``stats.failed``) with the reason in ``stats.last_error``. A request on the wire is
        waited for up to ``close_grace`` seconds; if it is still running then, the sender
        thread closes the connection itself when it ends.
        """
        with self._cond:
            if self._closed:
                return self.stats
        done = self.flush(timeout)
        with self._cond:
            self._closed = True
            if not done:
                self._stop.set()
            self._cond.notify_all()
        self._thread.join(timeout=self.close_grace)
        if self._thread.is_alive():
            log.warning(
                "tracker: a request to %s is still running %.0f s after close(); the sender "
                "thread closes the connection when it ends",
                self.endpoint,
                self.close_grace,
            )
        else:
            self._http.close()
        return self.stats

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- sender thread --------------------------------------------------------------------
    def _next_batch(self) -> list[dict[str, Any]] | None:
        with self._cond:
            while True:
                if self._stop.is_set():
                    return None
                if self._queue:
                    due = (
                        len(self._queue) >= self.batch_size
                        or self._flush_requested
                        or self._closed
                        or (
                            self._oldest is not None
                            and time.monotonic() - self._oldest >= self.flush_interval
                        )
                    )
                    if due:
                        n = min(self.batch_size, len(self._queue))
                        batch = [self._queue.popleft() for _ in range(n)]
                        self._in_flight += len(batch)
                        self._oldest = time.monotonic() if self._queue else None
                        self._cond.notify_all()  # room for blocked track() calls
                        return batch
                elif self._closed:
                    return None
                wait = self.flush_interval
                if self._oldest is not None:
                    wait = max(0.0, self.flush_interval - (time.monotonic() - self._oldest))
                self._cond.wait(min(wait, 0.5) if self._queue else 0.5)

    def _run(self) -> None:
        try:
            self._run_batches()
        finally:
            with self._cond:
                unsent = len(self._queue)
                self._queue.clear()
                self._cond.notify_all()
            if unsent:
                self._give_up(unsent, "they were still queued")
            self._http.close()  # this thread's client: closed once nothing can use it

    def _give_up(self, n: int, why: str) -> None:
        self.stats.failed += n
        self.stats.unsent += n
        reason = f"tracker closed before {n} events were delivered: {why}"
        last = self.stats.last_error
        if last and not last.startswith("tracker closed"):
            reason += f" (last error: {last})"
        self.stats.last_error = reason
        log.warning("tracker: %s", reason)

    def _run_batches(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            try:
                self._send(batch)
            except Exception as exc:  # never let the thread die with events in flight
                log.exception("tracker: sending a batch failed")
                self.stats.failed += len(batch)
                self.stats.last_error = f"{type(exc).__name__}: {exc}"
            finally:
                with self._cond:
                    self._in_flight -= len(batch)
                    self._cond.notify_all()

    def _backoff(self, attempt: int, retry_after: str | None) -> float:
        if retry_after is not None:
            try:
                return min(max(float(retry_after), 0.0), self.backoff_max)
            except ValueError:
                pass  # an HTTP date: fall back to our own backoff
        delay = min(self.backoff_base * (2**attempt), self.backoff_max)
        return delay * (0.5 + random.random() / 2)  # jitter: many clients don't retry in step

    def _send(self, batch: list[dict[str, Any]]) -> None:
        body = orjson.dumps(batch)
        attempt = 0
        while True:
            if self._stop.is_set():
                tries = f"after {attempt} tries" if attempt else "before it was sent"
                self._give_up(len(batch), f"close() stopped retrying the batch {tries}")
                return
            retry_after = None
            try:
                response = self._http.post(self.endpoint, content=body)
                self.stats.requests += 1
                status = response.status_code
                if status not in RETRY_STATUSES:
                    self._record(batch, response)
                    return
                retry_after = response.headers.get("retry-after")
                reason = f"HTTP {status}: {response.text[:300]}"
            except httpx.TransportError as exc:
                self.stats.requests += 1
                reason = f"{type(exc).__name__}: {exc}"
            self.stats.last_error = reason
            if self.max_retries is not None and attempt >= self.max_retries:
                log.error(
                    "tracker: giving up on %d events after %d tries (%s)",
                    len(batch),
                    attempt + 1,
                    reason,
                )
                self.stats.failed += len(batch)
                return
            delay = self._backoff(attempt, retry_after)
            attempt += 1
            self.stats.retries += 1
            log.warning("tracker: %s; retry %d in %.1f s", reason, attempt, delay)
            self._stop.wait(delay)  # close() cuts the wait short

    def _record(self, batch: list[dict[str, Any]], response: httpx.Response) -> None:
        status = response.status_code
        try:
            body = response.json()
        except ValueError:
            body = {}
        if status in (200, 207) or (status == 400 and "rejected" in body):
            accepted = int(body.get("accepted", 0))
            dropped = int(body.get("dropped", 0))
            rejected = body.get("rejected", [])
            self.stats.sent += len(batch)
            self.stats.accepted += accepted
            self.stats.dropped += dropped
            self.stats.rejected += len(rejected)
            if rejected:
                self.rejections.extend(rejected)
                log.warning(
                    "tracker: %d of %d events rejected, first: %s",
                    len(rejected),
                    len(batch),
                    rejected[0],
                )
            if self.on_batch is not None:
                self.on_batch(len(batch), body)
            return
        # 400 without per-event results, 401, 413, ...: the request itself was refused.
        message = body.get("error") if isinstance(body, dict) else None
        self.stats.failed += len(batch)
        self.stats.last_error = f"HTTP {status}: {message or response.text[:300]}"
        log.error("tracker: the collector refused %d events: %s", len(batch), self.stats.last_error)
        if self.on_batch is not None:
            self.on_batch(
                len(batch),
                {
                    "accepted": 0,
                    "dropped": 0,
                    "rejected": [],
                    "error": self.stats.last_error,
                    "status": status,
                },
            )
