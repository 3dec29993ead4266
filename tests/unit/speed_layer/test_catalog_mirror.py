"""The catalog mirror in Redis survives a Redis outage (issue 14): the catalog changes read while
Redis is down are written once it is back, although the catalog topic is read only once.

No services: the catalog topic is an in-memory partition read through a stand-in of the
``KafkaConsumer`` calls :class:`speed_layer.catalog.Catalog` makes, and Redis is a fake whose
pipelines fail while it is "down"; the mirror is written by the real
:meth:`attune.online_store.OnlineStoreWriter.write_item_metadata`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
import redis

from attune.config import AttuneConfig, PathsConfig
from attune.online_store import OnlineStore, OnlineStoreWriter
from speed_layer.catalog import Catalog, CatalogRefresher

TP = ("attune.catalog", 0)  # the topic's one partition


class FakeTopic:
    """The catalog topic, read the way :meth:`Catalog._refresh_topic` reads it (assigned
    partitions, end offsets, positions, polls that advance the position)."""

    def __init__(self) -> None:
        self.records: list[tuple[bytes, bytes | None]] = []
        self.pos = 0

    def publish(self, item_id: str, record: dict[str, Any] | None) -> None:
        value = None if record is None else orjson.dumps({"item_id": item_id, **record})
        self.records.append((item_id.encode(), value))

    def assignment(self) -> set[tuple[str, int]]:
        return {TP}

    def end_offsets(self, tps: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
        return {TP: len(self.records)}

    def position(self, tp: tuple[str, int]) -> int:
        return self.pos

    def poll(self, timeout_ms: int, max_records: int) -> dict[tuple[str, int], list[Any]]:
        batch = self.records[self.pos : self.pos + max_records]
        records = [
            SimpleNamespace(key=k, value=v, topic=TP[0], partition=TP[1], offset=self.pos + n)
            for n, (k, v) in enumerate(batch)
        ]
        self.pos += len(batch)
        return {TP: records} if records else {}

    def close(self) -> None:
        pass


class FakeRedis:
    """Hashes in a dict; while ``down``, a pipeline's ``execute`` cannot connect (nothing of it
    is applied, as when the connection is refused)."""

    def __init__(self) -> None:
        self.hashes: dict[str, dict[str, str]] = {}
        self.down = False
        self.executes = 0  # pipelines sent, failed ones included

    def register_script(self, script: str) -> object:
        return object()  # OnlineStoreWriter registers its scripts; the mirror uses none

    def pipeline(self, transaction: bool = True) -> FakePipeline:
        return FakePipeline(self)


class FakePipeline:
    def __init__(self, r: FakeRedis) -> None:
        self.r = r
        self.ops: list[tuple[str, str, dict[str, Any] | None]] = []

    def delete(self, key: str) -> None:
        self.ops.append(("delete", key, None))

    def hset(self, key: str, mapping: dict[str, Any]) -> None:
        self.ops.append(("hset", key, mapping))

    def execute(self) -> None:
        self.r.executes += 1
        if self.r.down:
            raise redis.ConnectionError(
                "Error 111 connecting to 127.0.0.1:6379. Connection refused."
            )
        for op, key, mapping in self.ops:
            if op == "delete":
                self.r.hashes.pop(key, None)
            else:
                assert mapping is not None
                self.r.hashes.setdefault(key, {}).update({k: str(v) for k, v in mapping.items()})
        self.ops = []


def _catalog(tmp_path: Path) -> tuple[Catalog, FakeTopic, FakeRedis]:
    cfg = AttuneConfig(paths=PathsConfig(var_dir=tmp_path / "var"))
    topic, r = FakeTopic(), FakeRedis()
    writer = OnlineStoreWriter(r, OnlineStore.from_config(cfg))  # type: ignore[arg-type]
    catalog = Catalog(cfg, None, on_change=writer.write_item_metadata)
    catalog._consumer = topic  # the topic's consumer, opened at the first refresh otherwise
    return catalog, topic, r


def test_changes_read_during_an_outage_reach_redis_when_it_is_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    catalog, topic, r = _catalog(tmp_path)
    topic.publish("m1", {"title": "Se7en", "year": 1995, "genres": ["Crime", "Drama"]})
    topic.publish("m2", {"title": "Heat", "year": 1995, "genres": ["Crime"]})
    catalog.refresh()
    assert set(r.hashes) == {"att:i:{m1}:meta", "att:i:{m2}:meta"}

    r.down = True
    topic.publish("m2", {"title": "Heat (1995)", "year": 1995, "genres": ["Crime", "Thriller"]})
    topic.publish("m3", {"title": "Up", "year": 2008, "genres": ["Animation"]})
    topic.publish("m1", None)  # a tombstone: m1 leaves the catalog
    with caplog.at_level(logging.INFO, logger="speed_layer.catalog"):
        catalog.refresh()  # reads the three records (the topic position moves past them)
        topic.publish("m3", {"title": "Up", "year": 2009, "genres": ["Animation", ""]})
        topic.publish("m4", {"title": "Coco", "genres": ["Animation", "Music"]})
        catalog.refresh()  # and these two; still down
        assert topic.pos == len(topic.records) == 7
        assert r.executes == 3  # one pipeline at start, one failed per refresh in the outage
        assert set(catalog.pending) == {"m1", "m2", "m3", "m4"}

        r.down = False
        catalog.refresh()  # nothing new on the topic: only the kept changes are written

    # By hand, from the records above: m1 deleted; m2 and m3 with their newest records (m3:
    # year 2009, the empty genre dropped); m4 without a year (it has none). Genres are the
    # JSON list the online store's write script reads, year a string, title as published.
    assert r.hashes == {
        "att:i:{m2}:meta": {
            "title": "Heat (1995)",
            "genres": '["Crime","Thriller"]',
            "year": "1995",
        },
        "att:i:{m3}:meta": {"title": "Up", "genres": '["Animation"]', "year": "2009"},
        "att:i:{m4}:meta": {"title": "Coco", "genres": '["Animation","Music"]'},
    }
    assert catalog.pending == {} and not catalog.mirror_failing
    assert set(catalog.items) == {"m2", "m3", "m4"}
    # the outage is logged once (two failed writes), and its end once
    messages = [(rec.levelname, rec.getMessage()) for rec in caplog.records]
    assert [level for level, _ in messages] == ["WARNING", "INFO"], messages
    assert messages[0][1].startswith("catalog mirror: writing 3 item changes failed")
    assert "ConnectionError" in messages[0][1]
    assert messages[1][1] == "catalog mirror: written again, with the 4 item changes kept meanwhile"

    r.down = True  # a second outage is logged again
    topic.publish("m5", {"title": "Rango", "year": 2011, "genres": ["Western"]})
    with caplog.at_level(logging.INFO, logger="speed_layer.catalog"):
        caplog.clear()
        catalog.refresh()
    assert [rec.levelname for rec in caplog.records] == ["WARNING"]
    assert catalog.pending == {
        "m5": {"item_id": "m5", "title": "Rango", "year": 2011, "genres": ["Western"]}
    }


def test_the_first_write_at_start_raises_and_keeps_the_changes(tmp_path: Path) -> None:
    # the speed layer must not apply events against an empty mirror: start fails as before
    catalog, topic, r = _catalog(tmp_path)
    topic.publish("m1", {"title": "Se7en", "year": 1995, "genres": ["Crime"]})
    r.down = True
    with pytest.raises(redis.ConnectionError):
        catalog.refresh()
    r.down = False
    catalog.refresh()  # e.g. the next start's refresh: the record read before is written
    assert r.hashes == {
        "att:i:{m1}:meta": {"title": "Se7en", "genres": '["Crime"]', "year": "1995"}
    }


class FlakyCatalog:
    """A catalog whose refresh fails ``failures`` times (Kafka down), then stops the refresher."""

    def __init__(self, failures: int) -> None:
        self.interval_s = 0.0
        self.failures = failures
        self.calls = 0
        self.refresher: CatalogRefresher | None = None

    def refresh(self) -> bool:
        self.calls += 1
        if self.calls <= self.failures:
            raise OSError("NoBrokersAvailable")
        assert self.refresher is not None
        self.refresher._stop_event.set()
        return False

    def close(self) -> None:
        pass


def test_the_refresher_logs_a_failing_refresh_once_per_outage(
    caplog: pytest.LogCaptureFixture,
) -> None:
    catalog = FlakyCatalog(failures=3)
    refresher = CatalogRefresher(catalog)  # type: ignore[arg-type]
    catalog.refresher = refresher
    refresher.interval_s = 0.001
    with caplog.at_level(logging.INFO, logger="speed_layer.catalog"):
        refresher.run()  # in this thread: returns when the fourth refresh stops it
    assert catalog.calls == 4
    assert [(rec.levelname, rec.getMessage().split(";")[0]) for rec in caplog.records] == [
        ("ERROR", "refreshing the catalog failed"),
        ("INFO", "refreshing the catalog works again"),
    ]
