"""Events the API sends to Kafka: feedback (awaited) and impressions (in the background).

Both go through the collector's own path, so they are indistinguishable from events an app
posts to ``POST /v1/events``: :class:`attune.ingest.pipeline.BatchProcessor` validates them
against the event schema and pseudonymizes the ids, the consent state the collector keeps in
Redis is applied (:meth:`ValidatedBatch.plan`: no analytics consent, not stored), and
:class:`attune.ingest.producer.KafkaSink` produces them with the idempotent ``acks=all``
producer, keyed by the pseudonymized user, to the events topic. Their source is ``api.source``.

Impressions never delay a response: :meth:`EventSender.log_impression` puts the event on a
bounded queue and a background task sends what is queued every 100 ms (or at 500 events) as
one batch. When Kafka is down or the queue is full, impressions are dropped and counted
(``attune_api_impressions_total{outcome="dropped"}``): they are measurements, not user data
the API promised to keep.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from attune.config import AttuneConfig
from attune.ingest.consent import ConsentStore
from attune.ingest.pipeline import BatchProcessor
from attune.ingest.producer import KafkaSink, KafkaUnavailable

log = logging.getLogger(__name__)

FLUSH_INTERVAL_S = 0.1
FLUSH_EVENTS = 500
QUEUE_LIMIT = 20_000


class EventRejected(ValueError):
    """An event the API built did not validate; the message names the fields."""


class EventSender:
    def __init__(
        self,
        cfg: AttuneConfig,
        pseudonymize: Callable[[str], str],
        sink: KafkaSink,
        consent: ConsentStore,
        on_impressions: Callable[[str, int], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.sink = sink
        self.consent = consent
        self.processor = BatchProcessor(pseudonymize, cfg.collector.event_times)
        self.topic = cfg.kafka.topic("events").name
        self.default_consent = cfg.privacy.default_consent.model_dump()
        self._queue: list[dict[str, Any]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._on_impressions = on_impressions or (lambda outcome, n: None)

    async def start(self) -> None:
        await self.sink.start()
        self._task = asyncio.create_task(self._flusher(), name="impressions")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._flush()  # what is still queued gets one chance
        await self.sink.stop()

    async def send(self, raw_events: Sequence[dict[str, Any]]) -> tuple[int, int]:
        """Validate, apply consent, produce; return (stored, dropped for lack of consent).

        Raises :class:`EventRejected` for an invalid event and
        :class:`attune.ingest.producer.KafkaUnavailable` when Kafka does not acknowledge.
        """
        received_at = datetime.now(UTC)
        batch = self.processor.validate(list(raw_events), received_at)
        if batch.rejections:
            errors = "; ".join(
                f"{e['field']}: {e['message']}" for r in batch.rejections for e in r.errors
            )
            raise EventRejected(errors)
        stored = await self.consent.read_many(batch.subjects())
        plan = batch.plan(
            stored,
            default=self.default_consent,
            drop_without_analytics=self.cfg.privacy.drop_without_analytics_consent,
            received_at=received_at,
            source=self.cfg.api.source,
        )
        if plan.rejections:
            raise EventRejected("; ".join(e["message"] for e in plan.rejections[0].errors))
        await self.sink.send([(self.topic, key, value) for key, value in plan.records])
        return len(plan.records), sum(plan.dropped.values())

    def log_impression(self, event: dict[str, Any]) -> None:
        """Queue an impression event (never blocks, never raises)."""
        if len(self._queue) >= QUEUE_LIMIT:
            self._on_impressions("dropped", 1)
            return
        self._queue.append(event)
        if len(self._queue) >= FLUSH_EVENTS:
            self._wake.set()

    async def _flusher(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), FLUSH_INTERVAL_S)
            self._wake.clear()
            await self._flush()

    async def _flush(self) -> None:
        """Send what is queued now, in batches of at most ``FLUSH_EVENTS``.

        Impressions queued while a batch awaits Kafka's acknowledgement wait for the next
        flush: draining them at once made the flusher run back to back (a produce request
        of two or three events every ~10 ms at 200 req/s instead of one per 100 ms), which
        cost the API 0.45-0.6 ms of CPU per request (docs/api.md, "Where the CPU goes")."""
        due = len(self._queue)  # what is unsent stays queued (stop() flushes it once more)
        while due > 0:
            take = min(due, FLUSH_EVENTS)
            batch, self._queue = self._queue[:take], self._queue[take:]
            due -= take
            try:
                stored, dropped = await self.send(batch)
            except (KafkaUnavailable, EventRejected) as exc:
                log.warning("dropped %d impression event(s): %s", len(batch), exc)
                self._on_impressions("dropped", len(batch))
                continue
            except Exception:
                log.exception("dropped %d impression event(s)", len(batch))
                self._on_impressions("dropped", len(batch))
                continue
            self._on_impressions("sent", stored)
            if dropped:
                self._on_impressions("no_consent", dropped)
