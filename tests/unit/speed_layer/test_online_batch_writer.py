"""The online query's batch writer waits out a Redis outage instead of failing the query."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from attune.online_store import ApplyStats
from speed_layer.job import OnlineBatchWriter

ROWS = [("u1", 1_000, "e1#0", "{}"), ("u2", 2_000, "e2#0", "{}")]


class FlakyWriter:
    """An :class:`OnlineStoreWriter` stand-in whose first ``failures`` applies cannot connect."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: list[list[tuple[str, int, str, str]]] = []
        self.trending_refreshes = 0

    def apply(self, rows: Any) -> ApplyStats:
        rows = list(rows)
        self.calls.append(rows)
        if len(self.calls) <= self.failures:
            raise redis.ConnectionError("Error 111 connecting to 127.0.0.1:6390")
        return ApplyStats(users=len(rows), applied=len(rows))

    def refresh_trending(self) -> None:
        self.trending_refreshes += 1


def batch_writer(writer: FlakyWriter, wait_s: float, slept: list[float]) -> OnlineBatchWriter:
    fake: Any = writer  # duck-typed: write() needs only apply and refresh_trending
    no_catalog: Any = None  # write() does not use it
    return OnlineBatchWriter(fake, no_catalog, None, redis_wait_s=wait_s, sleep=slept.append)


def test_a_batch_retries_the_same_rows_until_redis_answers() -> None:
    writer, slept = FlakyWriter(failures=3), list[float]()
    stats = batch_writer(writer, 60.0, slept).write(ROWS, batch_id=7)
    # three failed tries, then the fourth applies both rows; every try sends the whole batch
    assert writer.calls == [ROWS] * 4
    assert stats.applied == 2 and writer.trending_refreshes == 1
    assert slept == [0.1, 0.2, 0.4]  # backoff doubling from 0.1 s, capped at 1 s


def test_the_backoff_is_capped_at_one_second() -> None:
    writer, slept = FlakyWriter(failures=6), list[float]()
    batch_writer(writer, 60.0, slept).write(ROWS, batch_id=7)
    assert slept == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]


def test_without_a_wait_the_error_ends_the_batch_as_before() -> None:
    writer, slept = FlakyWriter(failures=1), list[float]()
    with pytest.raises(redis.ConnectionError):
        batch_writer(writer, 0.0, slept).write(ROWS, batch_id=7)
    assert writer.calls == [ROWS] and slept == []


def test_the_real_time_writer_pickles_its_redis_settings_and_connects_with_them() -> None:
    import pickle

    from attune.config import RedisConfig
    from attune.online_store import OnlineStore
    from speed_layer.job import RealTimeRedisWriter

    shipped = pickle.loads(
        pickle.dumps(RealTimeRedisWriter(RedisConfig(port=6390, db=4), OnlineStore()))
    )
    assert shipped.open(0, 0)  # no command is sent before the first rows
    assert shipped._writer is not None
    kwargs = shipped._writer.redis.connection_pool.connection_kwargs
    assert (kwargs["port"], kwargs["db"]) == (6390, 4)
    shipped.close(None)
