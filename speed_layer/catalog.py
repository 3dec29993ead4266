"""The item catalog the speed layer enriches events with (genres / categories per item).

Two sources, chosen by ``speed.catalog_source``:

``topic``
    The compacted catalog topic (``kafka.topics.catalog``): JSON ``{item_id, title, year,
    genres}`` keyed by item id, a null value deleting the item. Read from the beginning at
    start, then incrementally: each refresh consumes only what was added since.
``delta``
    A Delta table (``<lake>/<speed.catalog_table>``, e.g. the batch layer's items dimension)
    with at least ``item_id`` and ``genres``; reloaded when its version changes.

The speed layer mirrors the catalog into Redis (``P:i:{item}:meta``: title, year, genres), where
the online store's write script looks each event's items up (the same rule as
:func:`attune.features.with_genres`, which the batch layer joins with) and where the
personalization API reads titles and genres without Spark. :class:`CatalogRefresher` keeps the
mirror current from a background thread of the speed-layer process.

A change is read once (the topic is consumed incrementally, a Delta version compared once), so a
mirror write that fails (Redis down) must not drop it: :class:`Catalog` keeps the changes it
could not write and writes them, merged with the newer ones, with every later refresh until a
write succeeds. The outage is logged when the first write fails and when one succeeds again,
not at every retry.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from kafka import KafkaConsumer
    from pyspark.sql import SparkSession

    from attune.config import AttuneConfig

log = logging.getLogger(__name__)

ItemRecord = dict[str, Any]


def parse_catalog_record(key: bytes | None, value: bytes | None) -> tuple[str, ItemRecord | None]:
    """``(item_id, record)`` of one catalog-topic record; ``record`` is None for a tombstone.

    Raises ``ValueError`` saying what is wrong with a malformed record.
    """
    item_key = key.decode("utf-8", "replace") if key else None
    if value is None:
        if not item_key:
            raise ValueError("tombstone without a key")
        return item_key, None
    try:
        data = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, got {type(data).__name__}")
    item_id = data.get("item_id") or item_key
    if not isinstance(item_id, str) or not item_id:
        raise ValueError("no item_id (neither in the value nor as the key)")
    genres = data.get("genres") or []
    if not isinstance(genres, list) or not all(isinstance(g, str) for g in genres):
        raise ValueError("genres must be a list of strings")
    return item_id, {
        "item_id": item_id,
        "title": data.get("title"),
        "year": data.get("year"),
        "genres": [g for g in genres if g],
    }


class Catalog:
    """The current catalog (``items``), reporting each change to ``on_change``.

    ``on_change`` gets ``{item_id: record or None (deleted)}`` and writes it somewhere (the
    speed layer: the Redis mirror,
    :meth:`attune.online_store.OnlineStoreWriter.write_item_metadata`, which replaces each
    item's whole entry, so writing a change twice changes nothing). When it raises, the
    changes stay in ``pending`` and are handed over again, with the changes read since (an
    item's newest record wins), at the next refresh, until ``on_change`` returns.

    The first write (the whole catalog, at start) is the exception: its failure is raised, so
    the speed layer does not start applying events against an empty mirror. Later failures
    are logged once per outage (a warning at the first, an info line when a write succeeds
    again) and not raised: the in-memory catalog is current, only the mirror lags.
    """

    def __init__(
        self,
        cfg: AttuneConfig,
        spark: SparkSession | None,
        on_change: Callable[[dict[str, ItemRecord | None]], None] | None = None,
    ) -> None:
        if cfg.speed.catalog_source == "delta" and spark is None:
            raise ValueError("a Delta catalog (speed.catalog_source: delta) needs a Spark session")
        self.cfg = cfg
        self.spark = spark
        self.on_change = on_change
        self.items: dict[str, ItemRecord] = {}
        self.malformed = 0
        self.version: int | None = None
        self._consumer: KafkaConsumer | None = None
        self.interval_s = cfg.speed.catalog_refresh.total_seconds()
        self._refreshed_at = float("-inf")
        # changes on_change has not taken yet (its last call raised), and the mirror's state
        self.pending: dict[str, ItemRecord | None] = {}
        self.mirror_failing = False
        self._mirrored_once = False

    def refresh(self) -> bool:
        """Pick up catalog changes; True if any item changed."""
        self._refreshed_at = time.monotonic()
        if self.cfg.speed.catalog_source == "delta":
            return self._refresh_delta()
        return self._refresh_topic()

    def refresh_if_due(self) -> bool:
        """:meth:`refresh` when ``speed.catalog_refresh`` has passed since the last one."""
        if time.monotonic() - self._refreshed_at < self.interval_s:
            return False
        return self.refresh()

    # -- topic --------------------------------------------------------------------------
    def _open_consumer(self) -> KafkaConsumer:
        from kafka import KafkaConsumer, TopicPartition

        topic = self.cfg.kafka.topic("catalog").name
        consumer = KafkaConsumer(
            bootstrap_servers=self.cfg.kafka.bootstrap_servers,
            enable_auto_commit=False,
            group_id=None,
            consumer_timeout_ms=1000,
        )
        partitions = consumer.partitions_for_topic(topic) or set()
        if not partitions:
            consumer.close()
            raise RuntimeError(
                f"catalog topic {topic!r} does not exist; create the topics with `attune stack up`"
            )
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        return consumer

    def _refresh_topic(self) -> bool:
        if self._consumer is None:
            self._consumer = self._open_consumer()
        consumer = self._consumer
        tps = list(consumer.assignment())
        end = consumer.end_offsets(tps)
        changes: dict[str, ItemRecord | None] = {}
        empty_polls = 0
        # Stop at the end offsets of the start of this refresh; a compacted tail (no records
        # up to the end offset) shows up as empty polls, so a few of those end the loop too.
        while any(consumer.position(tp) < end[tp] for tp in tps) and empty_polls < 3:
            batches = consumer.poll(timeout_ms=500, max_records=5000)
            if not batches:
                empty_polls += 1
                continue
            empty_polls = 0
            for records in batches.values():
                for rec in records:
                    try:
                        item_id, record = parse_catalog_record(rec.key, rec.value)
                    except ValueError as exc:
                        self.malformed += 1
                        log.warning(
                            "catalog record %s/%d@%d skipped: %s",
                            rec.topic,
                            rec.partition,
                            rec.offset,
                            exc,
                        )
                        continue
                    changes[item_id] = record
        changed = False
        for item_id, record in changes.items():
            if record is None:
                changed |= self.items.pop(item_id, None) is not None
            elif self.items.get(item_id) != record:
                self.items[item_id] = record
                changed = True
        self._mirror(changes)
        return changed

    # -- delta --------------------------------------------------------------------------
    def _delta_path(self) -> str:
        return f"{self.cfg.lake_root.rstrip('/')}/{self.cfg.speed.catalog_table}"

    def _refresh_delta(self) -> bool:
        from delta.tables import DeltaTable

        spark = self.spark
        assert spark is not None
        path = self._delta_path()
        if not DeltaTable.isDeltaTable(spark, path):
            if self.version is None:
                log.warning("catalog table %s does not exist (yet); no genres until it does", path)
                self.version = -1
            return False
        latest = DeltaTable.forPath(spark, path).history(1).first()
        version = int(latest["version"]) if latest is not None else -1
        if version == self.version:
            return False
        rows = spark.read.format("delta").load(path).select("item_id", "genres").collect()
        fresh = {
            r["item_id"]: {"item_id": r["item_id"], "genres": list(r["genres"] or [])}
            for r in rows
            if r["item_id"]
        }
        self.version = version
        changes: dict[str, ItemRecord | None] = {
            k: v for k, v in fresh.items() if self.items.get(k) != v
        }
        changes.update({k: None for k in self.items.keys() - fresh.keys()})
        self.items = fresh
        self._mirror(changes)
        return bool(changes)

    # -- the mirror ---------------------------------------------------------------------
    def _mirror(self, changes: dict[str, ItemRecord | None]) -> None:
        """Hand ``changes``, after the ones still pending, to ``on_change`` (see the class)."""
        if self.on_change is None:
            return
        self.pending.update(changes)  # a newer record of an item replaces the pending one
        if not self.pending:
            self._mirrored_once = True
            return
        try:
            self.on_change(dict(self.pending))
        except Exception as exc:
            if not self._mirrored_once:
                raise
            if not self.mirror_failing:
                log.warning(
                    "catalog mirror: writing %d item changes failed (%s: %s); keeping them and "
                    "writing them with each later refresh (speed.catalog_refresh: %.0f s) until "
                    "one succeeds",
                    len(self.pending),
                    type(exc).__name__,
                    exc,
                    self.interval_s,
                )
                self.mirror_failing = True
            return
        if self.mirror_failing:
            log.info(
                "catalog mirror: written again, with the %d item changes kept meanwhile",
                len(self.pending),
            )
        self.mirror_failing = False
        self._mirrored_once = True
        self.pending.clear()

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None


class CatalogRefresher(threading.Thread):
    """Refreshes a :class:`Catalog` every ``speed.catalog_refresh`` (at least 0.5 s) until stopped.

    Real-time mode uses it; in micro-batch mode each batch refreshes the catalog first when it
    is due, so an item published before its events is always known when they are applied.
    """

    def __init__(self, catalog: Catalog) -> None:
        super().__init__(name="attune-catalog-refresher", daemon=True)
        self.catalog = catalog
        self.interval_s = max(0.5, catalog.interval_s)
        self._stop_event = threading.Event()

    def run(self) -> None:
        failing = False
        while not self._stop_event.wait(self.interval_s):
            try:
                self.catalog.refresh()
            except Exception:
                if not failing:  # once per outage (Kafka down), not every interval
                    log.exception(
                        "refreshing the catalog failed; retrying every %.0f s", self.interval_s
                    )
                failing = True
                continue
            if failing:
                log.info("refreshing the catalog works again")
            failing = False

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=10)
        self.catalog.close()


# ----------------------------------------------------------------------------------------
# New items: retrieval vectors from content, for items the served model does not know


def content_inputs(records: list[ItemRecord]) -> dict[str, list[Any]]:
    """The ``item_embeddings`` signature's columnar inputs for catalog records: ``item_ids``,
    ``genres`` (padded with ``""`` to the longest list, at least one column), ``title``,
    ``year`` (0 when unknown or not a number)."""
    width = max([1, *(len(r.get("genres") or []) for r in records)])
    years = []
    for r in records:
        try:
            years.append(int(r.get("year") or 0))
        except (TypeError, ValueError):
            years.append(0)
    return {
        "item_ids": [str(r["item_id"]) for r in records],
        "genres": [
            [*(r.get("genres") or []), *[""] * (width - len(r.get("genres") or []))]
            for r in records
        ],
        "title": [str(r.get("title") or "") for r in records],
        "year": years,
    }


def served_version(status: dict[str, Any]) -> str | None:
    """The version a TF Serving ``GET /v1/models/{name}`` status answers requests with: the
    highest AVAILABLE one (None when none is)."""
    versions = [
        int(v["version"])
        for v in status.get("model_version_status") or []
        if v.get("state") == "AVAILABLE"
    ]
    return str(max(versions)) if versions else None


class NewItemVectors(threading.Thread):
    """Keeps the Redis vectors of catalog items the served retrieval model does not know.

    The retrieval SavedModel's index holds the items it was trained with; an item added to the
    catalog later would only reach users through the trending fill. Every
    ``speed.catalog_refresh`` (at least 1 s) this thread reads the catalog's changes (with a
    :class:`Catalog` of its own, which mirrors the metadata too, so a new item's title and
    genres reach Redis even while no event flows), compares the catalog with what it last
    handled and asks the model server (REST, ``item_embeddings`` signature of
    ``api.model_server.retrieval_model``) for the vectors of new and changed items, from their
    content (genres, title, year). The signature also says which items the model knows
    (``known``): their vectors are dropped (the model's own index has them). Unknown items get
    ``P:i:{item}:vec`` (float32 little-endian) and a member of ``P:new_items`` (time written,
    ms); ``P:new_items:meta`` says which model version made them. When the served version
    changes (a retrained model), every item is handled again, so the vectors always live in the
    served model's space and items the new model knows leave the set.

    While the model server cannot be reached nothing changes in Redis; the thread logs it once
    and retries every round.
    """

    BATCH = 512

    def __init__(self, cfg: AttuneConfig, catalog: Catalog, redis_client: Any) -> None:
        super().__init__(name="attune-new-item-vectors", daemon=True)
        from attune.keys import Keys

        m = cfg.api.model_server
        host = cfg.serving.host if cfg.serving.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
        self.base_url = (m.rest_url or f"http://{host}:{cfg.serving.rest_port}").rstrip("/")
        self.model = m.retrieval_model
        self.catalog = catalog
        self.redis = redis_client
        self.keys = Keys.from_config(cfg)
        self.interval_s = max(1.0, catalog.interval_s)
        self.version: str | None = None  # the served version the Redis vectors belong to
        self.handled: dict[str, ItemRecord] = {}
        self.unreachable = False
        self.stats = {"vectors": 0, "known": 0, "removed": 0}
        self._stop_event = threading.Event()

    def run(self) -> None:
        while True:
            try:
                self.catalog.refresh()
                self.sync()
            except Exception as exc:
                if not self.unreachable:
                    log.warning("new-item vectors: %s; retrying every %.0f s", exc, self.interval_s)
                self.unreachable = True
            if self._stop_event.wait(self.interval_s):
                return

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=10)
        self.catalog.close()

    def sync(self) -> int:
        """One round (see the class docstring); the number of items handled."""
        import httpx

        with httpx.Client(base_url=self.base_url, timeout=10.0) as http:
            r = http.get(f"/v1/models/{self.model}")
            r.raise_for_status()
            version = served_version(r.json())
            if version is None:
                raise RuntimeError(f"model {self.model!r} has no available version yet")
            items = dict(self.catalog.items)
            if version != self.version:
                todo = list(items.values())
                gone = set(self.handled) | {
                    m.decode() for m in self.redis.zrange(self.keys.new_items, 0, -1)
                }
                gone -= items.keys()
            else:
                todo = [rec for i, rec in items.items() if self.handled.get(i) != rec]
                gone = set(self.handled) - items.keys()
            for start in range(0, len(todo), self.BATCH):
                chunk = todo[start : start + self.BATCH]
                resp = http.post(
                    f"/v1/models/{self.model}/versions/{version}:predict",
                    json={"signature_name": "item_embeddings", "inputs": content_inputs(chunk)},
                )
                if resp.status_code != 200:
                    raise RuntimeError(
                        f"item_embeddings of {self.model} v{version}: HTTP {resp.status_code}: "
                        f"{resp.text[:300]} (a model exported before new items had no such "
                        "signature: retrain it)"
                    )
                out = resp.json()["outputs"]
                self._write(chunk, out["embeddings"], out["known"], version)
        self._remove(gone)
        for item in gone:
            self.handled.pop(item, None)
        if self.unreachable:
            log.info("new-item vectors: the model server answers again (version %s)", version)
        self.unreachable = False
        self.version = version
        return len(todo)

    def _write(
        self, records: list[ItemRecord], vectors: list[list[float]], known: list[bool], version: str
    ) -> None:
        import numpy as np

        now_ms = int(time.time() * 1000)
        pipe = self.redis.pipeline(transaction=False)
        dim = 0
        for rec, vec, is_known in zip(records, vectors, known, strict=True):
            item = str(rec["item_id"])
            if is_known:
                pipe.delete(self.keys.item_vector(item))
                pipe.zrem(self.keys.new_items, item)
                self.stats["known"] += 1
            else:
                arr = np.asarray(vec, dtype="<f4")
                dim = len(arr)
                pipe.set(self.keys.item_vector(item), arr.tobytes())
                pipe.zadd(self.keys.new_items, {item: now_ms})
                self.stats["vectors"] += 1
            self.handled[item] = rec
        meta: dict[str, Any] = {"model": self.model, "version": version, "updated_ms": now_ms}
        if dim:
            meta["dim"] = dim
        pipe.hset(self.keys.new_items_meta, mapping=meta)
        pipe.execute()

    def _remove(self, items: set[str]) -> None:
        if not items:
            return
        pipe = self.redis.pipeline(transaction=False)
        for item in items:
            pipe.delete(self.keys.item_vector(item))
            pipe.zrem(self.keys.new_items, item)
        pipe.execute()
        self.stats["removed"] += len(items)
