"""The collector's Kafka producer, bridged to asyncio.

kafka-python is thread-based: ``send()`` appends a record to an in-memory batch and a sender
thread ships batches and completes each record's future. :class:`KafkaSink` turns a list of
records into one awaitable that resolves when the broker has acknowledged all of them
(``acks=all``, idempotent producer): every record future counts down a shared
:class:`_BatchAck` from the sender thread, and the last one wakes the event loop once with
``loop.call_soon_threadsafe`` (one wake-up per request, not per record). The event loop never
waits on a lock held across I/O: ``send()`` only blocks when the topic's metadata is unknown,
and that first send per topic runs in a worker thread.

Reachability: a watchdog task tries a TCP connection to the bootstrap servers every second.
While none answers, :meth:`KafkaSink.send` fails at once with :class:`KafkaUnavailable` (the
app answers 503 + Retry-After) instead of queueing records that cannot be delivered. The
producer itself is created in the background and re-created until the broker answers, so the
collector starts (and reports not-ready) while Kafka is still down.

Recovery: when the broker comes back after an outage, the producer is rebuilt (a new idempotent
producer id, fresh connections and metadata) instead of reused. kafka-python (3.0.12) cannot
recover by itself once a batch it had already sent expires during the outage
(``delivery_timeout_ms``): ``TransactionManager.reset_producer_id()`` drops the producer id but
leaves the state READY, the sender only asks for a new id from state UNINITIALIZED, and it sends
nothing (and expires nothing) without an id, so every later record waits forever and
``flush()`` never returns. The same rebuild happens when the broker answers but the producer
has acknowledged nothing for ``collector.ack_timeout_s`` while a request waited (a stalled
producer). While a producer is being rebuilt the sink is not ready and ``send`` fails fast.
Records the old producer still held were never acknowledged to anyone (their requests were
answered 503 or are answered 503 when the old producer is closed), so dropping them loses no
acknowledged event; a client's retry may store some of them twice, which ``event_id`` dedups.

Appending (``collector.kafka_append: accumulator``, the default): ``KafkaProducer.send()``
costs about a third of the collector's CPU per event, and much of it is per-record checks the
collector does not need (header types, serializers, metadata and partition checks it already
made once per request, a size estimate for records far below the limit, a debug log line whose
arguments are formatted anyway) and a sender wake-up per new batch. The sink calls what
``send()`` calls after those checks, ``producer._accumulator.append(...)``, once per record:
the same batches, linger, compression, sequence numbers, acks and per-record futures, so the
zero-loss accounting (one acknowledgement per record, from its own future) is unchanged; the
sender is woken once per request when a batch was created or filled. It uses kafka-python
internals (pinned 3.0.12; ``close_producer`` already does), so ``tests/unit/ingest`` checks the
bytes it produces against ``send()``'s; ``collector.kafka_append: send`` keeps the old path.

Shutdown is bounded: :meth:`KafkaSink.stop` waits up to ``collector.ack_timeout_s`` for the
records awaiting acknowledgement, logs how many it gives up on, and force-closes the producer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from attune.config import AttuneConfig

log = logging.getLogger(__name__)


class KafkaUnavailable(Exception):
    """Kafka did not acknowledge the records; the message says why (for the 503 body)."""


def producer_settings(cfg: AttuneConfig) -> dict[str, Any]:
    """kafka-python ``KafkaProducer`` keyword arguments from ``cfg.kafka.producer``.

    Shared with the replay tool and the ingest benchmark so all of them produce the same way.
    ``buffer_memory`` is not a kafka-python setting (the library's buffer is unbounded); the
    collector enforces it itself as a cap on bytes awaiting acknowledgement.
    """
    p = cfg.kafka.producer
    return {
        "bootstrap_servers": cfg.kafka.bootstrap_servers.split(","),
        "acks": p.acks,
        "enable_idempotence": True,
        "compression_type": None if p.compression_type == "none" else p.compression_type,
        "linger_ms": p.linger_ms,
        "batch_size": p.batch_size,
        "max_block_ms": p.max_block_ms,
        "request_timeout_ms": p.request_timeout_ms,
        "delivery_timeout_ms": p.delivery_timeout_ms,
        # Reconnect quickly after a broker restart (the default backoff grows to 30 s).
        "reconnect_backoff_max_ms": 2000,
        # kafka-python's client-side metrics cost ~10% of the send path and nobody reads them;
        # the collector exports its own (attune.collector.metrics).
        "metrics_enabled": False,
    }


def bootstrap_addresses(cfg: AttuneConfig) -> list[tuple[str, int]]:
    out = []
    for server in cfg.kafka.bootstrap_servers.split(","):
        host, _, port = server.strip().rpartition(":")
        out.append((host.strip("[]") or "127.0.0.1", int(port or 9092)))
    return out


class KeyPartitioner:
    """kafka-python's default key -> partition mapping, memoized per key.

    The mapping is the Java client's (murmur2 of the key bytes, positive, modulo the number of
    partitions, indexing the sorted partition ids), so every producer puts a user's events in
    the same partition. kafka-python computes murmur2 in pure Python on every send; users
    recur, so remembering the answer saves about a quarter of the per-record send cost.
    """

    def __init__(self, max_keys: int = 500_000) -> None:
        self.max_keys = max_keys
        self._tables: dict[tuple[str, tuple[int, ...]], dict[bytes, int]] = {}

    def table(self, topic: str, partitions: Iterable[int]) -> dict[bytes, int]:
        """The memo for ``topic`` with these partitions (a new one if the count changed)."""
        key = (topic, tuple(sorted(partitions)))
        table = self._tables.get(key)
        if table is None or len(table) > self.max_keys:
            table = self._tables[key] = {}
        return table

    @staticmethod
    def partition(key: bytes, partitions: tuple[int, ...]) -> int:
        from kafka.partitioner.default import murmur2

        return partitions[(murmur2(key) & 0x7FFFFFFF) % len(partitions)]


# Records up to this many bytes are far below kafka-python's max_request_size (1 MiB by
# default, and the collector keeps values under attune.ingest.pipeline.MAX_RECORD_BYTES);
# only larger ones pay for send()'s size estimate.
_SIZE_CHECK_ABOVE = 64 * 1024
_NO_HEADERS: list[tuple[str, bytes]] = []  # shared, never mutated (the builder only reads it)


def _kafka_producer(settings: dict[str, Any]) -> Any:
    from kafka import KafkaProducer

    return KafkaProducer(**settings)


class _BatchAck:
    """Counts one request's record acknowledgements down, from any thread."""

    __slots__ = ("error", "future", "lock", "loop", "remaining")

    def __init__(self, loop: asyncio.AbstractEventLoop, count: int) -> None:
        self.loop = loop
        self.future: asyncio.Future[None] = loop.create_future()
        self.remaining = count
        self.error: BaseException | None = None
        self.lock = threading.Lock()

    def ok(self, _metadata: Any) -> None:
        with self.lock:
            self.remaining -= 1
            done = self.remaining == 0
        if done:
            self.loop.call_soon_threadsafe(self._finish)

    def failed(self, exc: BaseException) -> None:
        with self.lock:
            self.remaining -= 1
            if self.error is None:
                self.error = exc
            done = self.remaining == 0
        if done:
            self.loop.call_soon_threadsafe(self._finish)

    def _finish(self) -> None:
        if self.future.done():  # timed out and cancelled already
            return
        if self.error is not None:
            self.future.set_exception(self.error)
        else:
            self.future.set_result(None)


def close_producer(producer: Any, timeout_s: float) -> bool:
    """Close a kafka-python producer within about ``timeout_s`` (+1 s); True if it flushed.

    ``KafkaProducer.close(timeout)`` first flushes, and raises when the flush times out
    without ever stopping its sender thread, so a producer whose records cannot be delivered
    could not be closed at all. When the flush times out, the sender is force-closed (the
    library's own path for an expired close timeout): it fails every record it still holds.
    """
    from kafka.errors import KafkaTimeoutError

    try:
        producer.close(timeout=timeout_s)
        return True
    except KafkaTimeoutError:
        pass
    sender = getattr(producer, "_sender", None)
    if sender is not None:
        sender.force_close()
    with contextlib.suppress(KafkaTimeoutError):
        producer.close(timeout=1.0)
    return False


class KafkaSink:
    """One idempotent kafka-python producer per collector process (rebuilt after outages)."""

    def __init__(
        self,
        cfg: AttuneConfig,
        on_error: Callable[[str], None] | None = None,
        on_probe: Callable[[bool], None] | None = None,
        producer_factory: Callable[[dict[str, Any]], Any] | None = None,
    ) -> None:
        self.cfg = cfg
        self._producer_factory = producer_factory or _kafka_producer
        self.ack_timeout_s = cfg.collector.ack_timeout_s
        self.max_pending_bytes = cfg.kafka.producer.buffer_memory
        self._on_error = on_error or (lambda kind: None)
        self._on_probe = on_probe or (lambda reachable: None)
        self._producer: Any = None
        self._known_topics: set[str] = set()
        self._partitioner = KeyPartitioner()
        self._append_direct = cfg.collector.kafka_append == "accumulator"
        self._pending_bytes = 0
        self._pending_records = 0
        self._pending_requests = 0
        self._last_ack = time.monotonic()  # when a request was last fully acknowledged
        self.reachable = False
        self.last_error: str | None = None
        self.rebuilds = 0
        # 3 workers: closing an old producer, building a new one, first sends to a topic
        self._executor = ThreadPoolExecutor(max_workers=3, thread_name_prefix="kafka-sink")
        self._tasks: list[asyncio.Task[None]] = []
        self._connect: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Future[bool]] = set()
        self._stopping = False

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        self.reachable = await self._probe()
        self._on_probe(self.reachable)
        self._tasks = [asyncio.create_task(self._watchdog(), name="kafka-watchdog")]
        self._start_connecting()

    async def stop(self) -> None:
        """Stop, whatever state Kafka is in, within ``collector.ack_timeout_s`` + 8 s at most.

        Waits up to ``ack_timeout_s`` for requests still waiting for acks, then closes the
        producer with a 1 s flush (force-closed if that times out: :func:`close_producer`),
        and logs an error naming what was not flushed.
        """
        self._stopping = True
        tasks = [*self._tasks, *([self._connect] if self._connect is not None else [])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        producer, self._producer = self._producer, None
        if producer is not None:
            # Requests still waiting get their answer: wait (bounded) for their acks.
            deadline = time.monotonic() + self.ack_timeout_s
            while self._pending_requests and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            requests, records, size = (
                self._pending_requests,
                self._pending_records,
                self._pending_bytes,
            )
            flushed = False
            with contextlib.suppress(TimeoutError):
                flushed = await asyncio.wait_for(
                    asyncio.get_running_loop().run_in_executor(
                        self._executor, close_producer, producer, 1.0
                    ),
                    timeout=5.0,
                )
            if requests or not flushed:
                what = (
                    f"{records} record(s) ({size} bytes) of {requests} waiting request(s)"
                    if requests
                    else "the records it still held (their requests had already timed out)"
                )
                log.error(
                    "shutdown: Kafka did not acknowledge everything within %g s "
                    "(collector.ack_timeout_s); the producer was closed without flushing %s. "
                    "No acknowledged event is lost: those requests were answered 503 and "
                    "clients retry them",
                    self.ack_timeout_s,
                    what,
                )
        if self._closing:
            await asyncio.wait(self._closing, timeout=3.0)
        self._executor.shutdown(wait=False)

    @property
    def ready(self) -> bool:
        """The broker answers and a producer that is not stalled is connected to it."""
        return self.reachable and self._producer is not None

    def _start_connecting(self) -> None:
        if self._stopping or (self._connect is not None and not self._connect.done()):
            return
        self._connect = asyncio.create_task(self._connect_loop(), name="kafka-connect")

    def _close_in_background(self, producer: Any, timeout_s: float, which: str) -> None:
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(self._executor, close_producer, producer, timeout_s)
        self._closing.add(fut)

        def closed(fut: asyncio.Future[bool]) -> None:
            self._closing.discard(fut)
            if fut.cancelled():
                return
            if fut.exception() is not None:
                log.warning("closing the %s Kafka producer failed: %s", which, fut.exception())
            elif not fut.result():
                log.warning(
                    "closed the %s Kafka producer without flushing it: the records it still "
                    "held were not acknowledged by Kafka, so their requests were answered 503 "
                    "and clients retry them",
                    which,
                )

        fut.add_done_callback(closed)

    def rebuild(self, reason: str) -> None:
        """Drop the current producer (closed in the background) and connect a new one."""
        old, self._producer = self._producer, None
        if old is None or self._stopping:
            return
        self.rebuilds += 1
        self.last_error = reason
        self._on_error("producer_rebuilt")
        log.warning("rebuilding the Kafka producer: %s", reason)
        self._known_topics.clear()
        # The old producer's records were never acknowledged to anyone: fail them at once.
        self._close_in_background(old, timeout_s=0.0, which="old")
        self._start_connecting()

    async def _probe(self) -> bool:
        for host, port in bootstrap_addresses(self.cfg):
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 1.0)
            except (OSError, TimeoutError):
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return True
        return False

    async def _watchdog(self) -> None:
        while not self._stopping:
            await asyncio.sleep(1.0)
            reachable = await self._probe()
            self._on_probe(reachable)
            if reachable != self.reachable:
                log.warning("Kafka is %s", "reachable again" if reachable else "unreachable")
                if not reachable:
                    self._on_error("unreachable")
                else:  # see the module docstring: an old producer may never send again
                    self.rebuild("Kafka is reachable again after an outage")
            self.reachable = reachable

    async def _connect_loop(self) -> None:
        loop = asyncio.get_running_loop()
        settings = {**producer_settings(self.cfg), "bootstrap_timeout_ms": 3000}
        while self._producer is None and not self._stopping:
            try:
                producer = await loop.run_in_executor(
                    self._executor, self._producer_factory, settings
                )
                if self._stopping:
                    self._close_in_background(producer, timeout_s=0.0, which="new")
                    return
                self._producer = producer
                self._last_ack = time.monotonic()
                log.info("Kafka producer connected to %s", self.cfg.kafka.bootstrap_servers)
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                self._on_error(type(exc).__name__)
                log.warning("Kafka producer not connected yet (%s); retrying", self.last_error)
                await asyncio.sleep(1.0)

    # -- sending --------------------------------------------------------------------------
    async def send(self, records: Sequence[tuple[str, bytes, bytes]]) -> None:
        """Produce ``(topic, key, value)`` records; return once Kafka acknowledged all of them.

        Raises :class:`KafkaUnavailable` when Kafka is unreachable, does not acknowledge within
        ``collector.ack_timeout_s``, fails a record, or too many bytes await acknowledgement.
        """
        if not records:
            return
        producer = self._producer
        if not self.reachable:
            raise KafkaUnavailable(f"Kafka at {self.cfg.kafka.bootstrap_servers} is not reachable")
        if producer is None:
            raise KafkaUnavailable(
                f"the Kafka producer is (re)connecting to {self.cfg.kafka.bootstrap_servers}"
                + (f" ({self.last_error})" if self.last_error else "")
            )
        size = sum(len(v) for _, _, v in records)
        if self._pending_bytes + size > self.max_pending_bytes:
            self._on_error("backpressure")
            raise KafkaUnavailable(
                f"Kafka is behind: {self._pending_bytes} bytes await acknowledgement "
                f"(limit kafka.producer.buffer_memory={self.max_pending_bytes})"
            )
        loop = asyncio.get_running_loop()
        ack = _BatchAck(loop, len(records))
        started = time.monotonic()
        self._pending_bytes += size
        self._pending_records += len(records)
        self._pending_requests += 1
        try:
            unknown = {t for t, _, _ in records} - self._known_topics
            if unknown:  # first send to a topic may block on metadata: not on the loop
                await loop.run_in_executor(self._executor, self._send_all, producer, records, ack)
                self._known_topics |= unknown
            else:
                self._send_all(producer, records, ack)
            try:
                await asyncio.wait_for(ack.future, self.ack_timeout_s)
            except TimeoutError:
                self._on_error("ack_timeout")
                if self._last_ack < started and producer is self._producer and self.reachable:
                    # Nothing at all was acknowledged while this request waited: stalled.
                    self.rebuild(
                        f"the producer acknowledged nothing for {self.ack_timeout_s:g} s "
                        "while Kafka was reachable"
                    )
                raise KafkaUnavailable(
                    f"Kafka did not acknowledge within {self.ack_timeout_s:g} s"
                ) from None
            except Exception as exc:
                self._on_error(type(exc).__name__)
                self.last_error = f"{type(exc).__name__}: {exc}"
                raise KafkaUnavailable(f"Kafka refused the events ({self.last_error})") from None
            self._last_ack = time.monotonic()
        finally:
            self._pending_bytes -= size
            self._pending_records -= len(records)
            self._pending_requests -= 1

    def _send_all(
        self, producer: Any, records: Sequence[tuple[str, bytes, bytes]], ack: _BatchAck
    ) -> None:
        accumulator = getattr(producer, "_accumulator", None) if self._append_direct else None
        if accumulator is None:  # collector.kafka_append: send (or a test's fake producer)
            self._send_each(producer, records, ack)
        else:
            self._append_each(producer, accumulator, records, ack)

    def _append_each(
        self,
        producer: Any,
        accumulator: Any,
        records: Sequence[tuple[str, bytes, bytes]],
        ack: _BatchAck,
    ) -> None:
        """``collector.kafka_append: accumulator``: each record goes straight to
        ``producer._accumulator.append`` (see the module docstring), the sender is woken once."""
        from kafka.structs import TopicPartition

        ok, failed = ack.ok, ack.failed
        append = accumulator.append
        tables: dict[str, tuple[dict[bytes, int], tuple[int, ...], dict[int, Any]]] = {}
        wake = False
        for topic, key, value in records:
            try:
                entry = tables.get(topic)
                if entry is None:
                    if producer._closed:
                        raise RuntimeError("the Kafka producer is closed")
                    # waits for the topic's metadata, like send() (first send: in a thread)
                    parts = tuple(sorted(producer.partitions_for(topic)))
                    tps = {p: TopicPartition(topic, p) for p in parts}
                    entry = tables[topic] = (self._partitioner.table(topic, parts), parts, tps)
                table, parts, tps = entry
                partition = table.get(key)
                if partition is None:
                    partition = table[key] = KeyPartitioner.partition(key, parts)
                if len(value) > _SIZE_CHECK_ABOVE:  # smaller records cannot exceed the limit
                    producer._ensure_valid_record_size(
                        producer._estimate_size_in_bytes(key, value, [])
                    )
                fut, full, created, _ = append(tps[partition], None, key, value, _NO_HEADERS)
            except Exception as exc:  # count it so the ack completes
                failed(exc)
                continue
            wake = wake or full or created
            fut.add_callback(ok)
            fut.add_errback(failed)
        if wake:  # send() wakes the sender at every new or full batch; once is enough
            producer._sender.wakeup()

    def _send_each(
        self, producer: Any, records: Sequence[tuple[str, bytes, bytes]], ack: _BatchAck
    ) -> None:
        send = producer.send
        ok, failed = ack.ok, ack.failed
        tables: dict[str, tuple[dict[bytes, int], tuple[int, ...]]] = {}
        for topic, key, value in records:
            try:
                entry = tables.get(topic)
                if entry is None:
                    parts = tuple(sorted(producer.partitions_for(topic)))
                    entry = tables[topic] = (self._partitioner.table(topic, parts), parts)
                table, parts = entry
                partition = table.get(key)
                if partition is None:
                    partition = table[key] = KeyPartitioner.partition(key, parts)
                fut = send(topic, key=key, value=value, partition=partition)
            except Exception as exc:  # e.g. metadata timeout; count it so the ack completes
                failed(exc)
                continue
            fut.add_callback(ok)
            fut.add_errback(failed)

    def health(self) -> dict[str, Any]:
        return {
            "reachable": self.reachable,
            "producer": self._producer is not None,
            "producer_rebuilds": self.rebuilds,
            "pending_bytes": self._pending_bytes,
            "last_error": self.last_error,
            "checked_at": time.time(),
        }
