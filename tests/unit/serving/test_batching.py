"""The batching queue (attune.serving.batching) with a fake model: y = 2 x per row."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping

import numpy as np
import pytest

from attune.serving.batching import Batcher, BatchingOptions
from attune.serving.errors import Code, ServingError


class Model:
    """Doubles ``x``; records the row count of every call."""

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.lock = threading.Lock()

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self.lock:
            self.calls.append(int(inputs["x"].shape[0]))
        return {"y": inputs["x"] * 2}


def submit_together(batcher: Batcher, inputs: list[dict[str, np.ndarray]]) -> list[object]:
    """Submit all ``inputs`` from separate threads at the same moment; results in order."""
    results: list[object] = [None] * len(inputs)
    barrier = threading.Barrier(len(inputs))

    def one(i: int) -> None:
        barrier.wait()
        try:
            results[i] = batcher.submit(inputs[i])
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    return results


def test_concurrent_requests_run_as_one_batch_and_get_their_own_rows() -> None:
    model = Model()
    # the batch is cut as soon as it holds 4 rows; the 5 s timeout never fires
    batcher = Batcher(model, BatchingOptions(max_batch_size=4, batch_timeout_s=5.0))
    try:
        requests = [{"x": np.array([float(i)], np.float32)} for i in range(4)]
        results = submit_together(batcher, requests)
    finally:
        batcher.close()
    assert model.calls == [4]  # one call with all four rows
    # request i sent x = i and gets back its own row 2 i
    assert [r["y"].tolist() for r in results] == [[0.0], [2.0], [4.0], [6.0]]  # type: ignore[index]


def test_a_lone_request_waits_only_the_timeout() -> None:
    model = Model()
    batcher = Batcher(model, BatchingOptions(max_batch_size=64, batch_timeout_s=0.05))
    try:
        started = time.monotonic()
        out = batcher.submit({"x": np.array([1.0, 2.0], np.float32)})
        waited = time.monotonic() - started
    finally:
        batcher.close()
    assert out["y"].tolist() == [2.0, 4.0]
    assert 0.04 <= waited < 2.0


def test_requests_that_cannot_merge_run_separately() -> None:
    model = Model()
    batcher = Batcher(model, BatchingOptions(max_batch_size=4, batch_timeout_s=0.2))
    try:
        # inner shapes [2] and [3] cannot be concatenated along the batch dimension
        results = submit_together(
            batcher, [{"x": np.zeros((1, 2), np.float32)}, {"x": np.ones((1, 3), np.float32)}]
        )
        # larger than max_batch_size, and inputs without a common batch size: run directly
        big = batcher.submit({"x": np.zeros(5, np.float32)})
        ragged = batcher.submit({"x": np.zeros(2, np.float32), "z": np.zeros(3, np.float32)})
    finally:
        batcher.close()
    assert sorted(model.calls) == [1, 1, 2, 5]
    assert [r["y"].shape for r in results] == [(1, 2), (1, 3)]  # type: ignore[index]
    assert big["y"].shape == (5,) and ragged["y"].shape == (2,)


def test_an_error_reaches_every_request_of_the_batch() -> None:
    def broken(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise ServingError(Code.INVALID_ARGUMENT, "bad input")

    batcher = Batcher(broken, BatchingOptions(max_batch_size=2, batch_timeout_s=5.0))
    try:
        results = submit_together(batcher, [{"x": np.zeros(1)}, {"x": np.zeros(1)}])
    finally:
        batcher.close()
    assert [getattr(r, "message", None) for r in results] == ["bad input", "bad input"]


def test_outputs_without_the_batch_dimension_cannot_be_split() -> None:
    def total(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"total": np.array(inputs["x"].sum())}

    batcher = Batcher(total, BatchingOptions(max_batch_size=2, batch_timeout_s=5.0))
    try:
        results = submit_together(batcher, [{"x": np.ones(1)}, {"x": np.ones(1)}])
    finally:
        batcher.close()
    for r in results:
        assert isinstance(r, ServingError) and r.code == Code.FAILED_PRECONDITION
        assert "cannot be batched" in r.message


def test_a_full_queue_refuses_with_unavailable() -> None:
    release, running = threading.Event(), threading.Event()

    def slow(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        running.set()
        release.wait(10)
        return {"y": inputs["x"]}

    batcher = Batcher(slow, BatchingOptions(max_batch_size=8, batch_timeout_s=0.0, max_enqueued=1))
    first = threading.Thread(target=batcher.submit, args=({"x": np.zeros(1)},))
    first.start()
    assert running.wait(5)  # the worker is busy with the first request
    second = threading.Thread(target=batcher.submit, args=({"x": np.zeros(1)},))
    second.start()
    deadline = time.monotonic() + 5
    while len(batcher._queue) < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.raises(ServingError) as err:
        batcher.submit({"x": np.zeros(1)})
    assert err.value.code == Code.UNAVAILABLE and err.value.http_status == 503
    release.set()
    first.join(5)
    second.join(5)
    batcher.close()


def test_close_answers_what_is_queued_and_later_requests_run_directly() -> None:
    model = Model()
    batcher = Batcher(model, BatchingOptions(max_batch_size=64, batch_timeout_s=5.0))
    result: list[object] = []
    t = threading.Thread(target=lambda: result.append(batcher.submit({"x": np.ones(1)})))
    t.start()
    time.sleep(0.1)  # queued, waiting for more rows
    batcher.close()  # does not wait the 5 s: closing cuts the batch
    t.join(5)
    assert [r["y"].tolist() for r in result] == [[2.0]]  # type: ignore[index]
    assert batcher.submit({"x": np.ones(1)})["y"].tolist() == [2.0]
    assert model.calls == [1, 1]
