"""Request batching: concurrent predict calls on one model signature run as one batch.

Like TF Serving's ``--enable_batching``, a queue per (model version, signature) collects
requests; a batch is cut when it holds ``max_batch_size`` rows (examples) or when the oldest
request has waited ``batch_timeout_s``. The inputs of the requests in a batch are concatenated
along the 0-th dimension, the signature runs once, and each request gets back its own slice of
every output. This trades a little latency for throughput when many small requests arrive at
once (the model's matrix products become larger and fewer).

Only requests that can be merged are queued together: same input names, dtypes and inner
shapes (``[batch, 20]`` string sequences merge with other ``[batch, 20]`` ones, not with
``[batch, 30]``). A request that has no common 0-th dimension, or is larger than
``max_batch_size`` on its own, runs directly. Every output must have the batch as its 0-th
dimension to be split back; a signature returning anything else fails its batched requests
with a message saying so (turn batching off for such models).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from attune.serving.errors import Code, ServingError

log = logging.getLogger(__name__)

Run = Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]


@dataclass(frozen=True)
class BatchingOptions:
    max_batch_size: int = 64
    batch_timeout_s: float = 0.002
    max_enqueued: int = 1000
    threads: int = 1


@dataclass
class _Task:
    inputs: Mapping[str, np.ndarray]
    rows: int
    key: tuple[object, ...]
    deadline: float
    future: Future[dict[str, np.ndarray]] = field(default_factory=Future)


def _rows(inputs: Mapping[str, np.ndarray]) -> int | None:
    """The common 0-th dimension of all inputs, None when there is none."""
    sizes = {arr.shape[0] if arr.ndim else None for arr in inputs.values()}
    if len(sizes) != 1:
        return None
    (rows,) = sizes
    return rows


class Batcher:
    """Merges concurrent calls of ``run`` (one model version's signature) into batches."""

    def __init__(
        self,
        run: Run,
        options: BatchingOptions,
        name: str = "batcher",
        on_batch: Callable[[int, int], None] | None = None,
    ) -> None:
        self._run = run
        self.options = options
        self.name = name
        self._on_batch = on_batch  # (requests, rows) of every batch run
        self._queue: list[_Task] = []
        self._cond = threading.Condition()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._loop, name=f"{name}-{i}", daemon=True)
            for i in range(max(1, options.threads))
        ]
        for t in self._threads:
            t.start()

    def submit(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run ``inputs`` as part of a batch; blocks until this request's outputs are ready."""
        rows = _rows(inputs)
        if rows is None or rows == 0 or rows > self.options.max_batch_size:
            return self._run(inputs)
        key = tuple(
            sorted((n, a.dtype.str, a.shape[1:]) for n, a in inputs.items())  # mergeable inputs
        )
        task = _Task(inputs, rows, key, time.monotonic() + self.options.batch_timeout_s)
        with self._cond:
            if self._closed:  # this version was unloaded while the request was on its way
                return self._run(inputs)
            if len(self._queue) >= self.options.max_enqueued:
                raise ServingError(
                    Code.UNAVAILABLE,
                    f"the batching queue of {self.name} is full "
                    f"({self.options.max_enqueued} requests); retry later",
                )
            self._queue.append(task)
            self._cond.notify()
        return task.future.result()

    def close(self) -> None:
        """Run what is queued, then stop the threads."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for t in self._threads:
            if t is not threading.current_thread():
                t.join()

    # worker side --------------------------------------------------------------------------
    def _next_batch(self) -> list[_Task] | None:
        with self._cond:
            while True:
                if not self._queue:
                    if self._closed:
                        return None
                    self._cond.wait()
                    continue
                first = self._queue[0]
                rows = sum(t.rows for t in self._queue if t.key == first.key)
                wait = first.deadline - time.monotonic()
                if rows >= self.options.max_batch_size or wait <= 0 or self._closed:
                    return self._take(first.key)
                self._cond.wait(wait)

    def _take(self, key: tuple[object, ...]) -> list[_Task]:
        batch: list[_Task] = []
        rest: list[_Task] = []
        total = 0
        for t in self._queue:
            if t.key == key and total + t.rows <= self.options.max_batch_size:
                batch.append(t)
                total += t.rows
            else:
                rest.append(t)
        self._queue = rest
        return batch

    def _loop(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            self._process(batch)

    def _process(self, batch: list[_Task]) -> None:
        total = sum(t.rows for t in batch)
        try:
            if len(batch) == 1:
                outputs = self._run(batch[0].inputs)
            else:
                names = list(batch[0].inputs)
                merged = {n: np.concatenate([t.inputs[n] for t in batch]) for n in names}
                outputs = self._run(merged)
                for name, arr in outputs.items():
                    if arr.ndim == 0 or arr.shape[0] != total:
                        raise ServingError(
                            Code.FAILED_PRECONDITION,
                            f"batched output '{name}' has shape {list(arr.shape)}, whose 0-th "
                            f"dimension is not the batch of {total} rows: this signature cannot "
                            "be batched (set serving.batching.enabled: false)",
                        )
        except BaseException as exc:
            for t in batch:
                t.future.set_exception(exc)
            return
        if self._on_batch is not None:
            self._on_batch(len(batch), total)
        if len(batch) == 1:
            batch[0].future.set_result(outputs)
            return
        start = 0
        for t in batch:
            end = start + t.rows
            t.future.set_result({n: a[start:end] for n, a in outputs.items()})
            start = end
