"""Batch views: precomputed answers in Redis for when the model server cannot answer.

Keys (``P`` is ``speed.online_store.key_prefix``; user and item ids in braces, like the online
store's, so a user's keys share a Redis Cluster slot; names from :mod:`attune.keys`):

==============================  ======  =====================================================
key                             type    content
==============================  ======  =====================================================
``P:u:{u}:recs``                zset    precomputed recommendations: item -> score
``P:u:{u}:batch``               hash    ``segment``, ``as_of`` (the logical date)
``P:i:{item}:similar``          zset    items seen in the same sessions: item -> cosine
``P:i:{item}:bought_with``      zset    items bought by the same users: item -> cosine
``P:seg:<segment>:popular``     zset    the segment's most engaged items (``all``: everyone)
``P:views``                     hash    ``as_of``, ``users``, ``items``, ``segments``
==============================  ======  =====================================================

Recommendations per user: the neighbours (``similar``) of the user's ``seed_items`` latest
items, each weighted by ``1 / rank`` of its seed, summed per candidate; items the user already
interacted with or dismissed are left out; the best ``recs_per_user`` are kept. Users without
candidates get no key: the API falls back to their segment's popular list.

Writes are idempotent: each key is replaced whole (``DEL`` + ``ZADD`` in one ``MULTI``), so a
re-run leaves the same keys; per-user and per-item keys expire after ``batch.views.ttl`` unless
the next run renews them, and segment lists no longer produced are deleted. The writes run on
the executors (``foreachPartition``), so they scale with the cluster.

The stage also (1) writes the drift report (:mod:`spark.drift`) before touching anything and
(2) when ``correct_online_features`` is on, re-applies the window's interactions through the
online store's idempotent write script, so Redis gets whatever the stream missed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from attune.keys import KeyTemplate
from attune.redis_connect import connect
from spark.context import RunContext, Stage, StageInputs, StageOutputs, window_start

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

    from attune.config import RedisConfig

log = logging.getLogger(__name__)


def recommendations(features: DataFrame, similar: DataFrame, seed_items: int, k: int) -> DataFrame:
    """``user, rank, item_id, score`` from ``gold/user_features`` and session neighbours."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    seeds = features.select(
        "user", F.posexplode(F.slice("recent_items", 1, seed_items)).alias("pos", "seed")
    ).withColumn("w", 1.0 / (F.col("pos") + 1))
    neighbours = similar.select(
        F.col("item_id").alias("seed"), F.col("other_item_id").alias("item_id"), "score"
    )
    scored = (
        seeds.join(neighbours, "seed")
        .groupBy("user", "item_id")
        .agg(F.sum(F.col("w") * F.col("score")).alias("score"))
    )
    seen = features.select(
        "user",
        F.explode(F.array_union("recent_items", "dismissed_items")).alias("item_id"),
    )
    fresh = scored.join(seen, ["user", "item_id"], "left_anti")
    order = Window.partitionBy("user").orderBy(F.desc("score"), "item_id")
    return (
        fresh.withColumn("rank", F.row_number().over(order))
        .where(F.col("rank") <= k)
        .select("user", "rank", "item_id", "score")
    )


def _zset_rows(df: DataFrame, key_col: str, member: str, score: str) -> DataFrame:
    """``key, members`` (array of ``(member, score)``) for :class:`ZsetWriter`."""
    from pyspark.sql import functions as F

    return df.groupBy(key_col).agg(
        F.collect_list(
            F.struct(F.col(member).alias("m"), F.col(score).cast("double").alias("s"))
        ).alias("members")
    )


class ZsetWriter:
    """``foreachPartition`` function replacing one sorted set per row, atomically per key."""

    def __init__(
        self,
        redis: RedisConfig,
        key_format: str,
        ttl_s: int | None,
        extra_hash: dict[str, str] | None = None,
        hash_format: str | None = None,
        keys_per_batch: int = 500,
        counter: Any = None,
    ) -> None:
        self.redis = redis
        self.counter = counter  # a Spark accumulator: how many keys were written
        self.key_format = key_format
        self.ttl_s = ttl_s
        self.extra_hash = extra_hash
        self.hash_format = hash_format
        self.keys_per_batch = keys_per_batch

    def __call__(self, rows: Iterable[Any]) -> None:
        client = connect(self.redis)
        n = 0
        try:
            # a cluster has no transaction across slots: each key is then replaced on its own
            pipe = client.pipeline(transaction=not self.redis.cluster)
            for n, row in enumerate(rows, start=1):
                self._replace(pipe, row)
                if n % self.keys_per_batch == 0:
                    pipe.execute()
            pipe.execute()
        finally:
            client.close()
        if self.counter is not None:
            self.counter.add(n)

    def _replace(self, pipe: Any, row: Any) -> None:
        entity = row[0]
        key = self.key_format.replace("{id}", entity)
        pipe.delete(key)
        pipe.zadd(key, {m["m"]: float(m["s"]) for m in row["members"]})
        if self.ttl_s:
            pipe.expire(key, self.ttl_s)
        if self.hash_format and self.extra_hash is not None:
            hkey = self.hash_format.replace("{id}", entity)
            extra = dict(self.extra_hash)
            if "segment" in getattr(row, "__fields__", ()) and row["segment"] is not None:
                extra["segment"] = row["segment"]
            pipe.delete(hkey)
            pipe.hset(hkey, mapping=extra)
            if self.ttl_s:
                pipe.expire(hkey, self.ttl_s)


class OnlineCorrector:
    """``mapPartitions`` function re-applying interaction rows through the write script."""

    def __init__(self, redis: RedisConfig, store: Any, rows_per_call: int = 20_000):
        self.redis = redis
        self.store = store
        self.rows_per_call = rows_per_call

    def __call__(self, rows: Iterable[Any]) -> Iterable[tuple[int, int, int, int]]:
        from attune.online_store import ApplyStats, OnlineStoreWriter

        client = connect(self.redis)
        writer = OnlineStoreWriter(client, self.store)
        total = ApplyStats()
        chunk: list[tuple[str, int, str, str]] = []
        try:
            for r in rows:
                chunk.append((r["user"], int(r["ts_ms"]), r["iid"], r["payload"]))
                if len(chunk) >= self.rows_per_call:
                    total.add(writer.apply(chunk))
                    chunk = []
            if chunk:
                total.add(writer.apply(chunk))
            writer.refresh_trending()
        finally:
            client.close()
        yield (total.users, total.applied, total.duplicates, total.too_late)


class CatalogMirror:
    """``foreachPartition`` function mirroring items into ``P:i:{item}:meta``: the online store's
    write script looks the genres of each interaction up there."""

    def __init__(self, redis: RedisConfig, store: Any) -> None:
        self.redis = redis
        self.store = store

    def __call__(self, rows: Iterable[Any]) -> None:
        from attune.online_store import OnlineStoreWriter

        client = connect(self.redis)
        try:
            writer = OnlineStoreWriter(client, self.store)
            batch: dict[str, dict[str, Any]] = {}
            for r in rows:
                batch[r["item_id"]] = {
                    "title": r["title"],
                    "year": r["year"],
                    "genres": list(r["genres"] or []),
                }
                if len(batch) >= 1000:
                    writer.write_item_metadata(batch)
                    batch = {}
            if batch:
                writer.write_item_metadata(batch)
        finally:
            client.close()


def _key_format(build: Callable[[str], str]) -> str:
    """The :class:`ZsetWriter` format (``{id}`` for the entity) of a key builder."""
    return KeyTemplate.of(build).key("{id}")


def run_views(ctx: RunContext, inputs: StageInputs) -> StageOutputs:
    """The drift report, then the batch views and corrections in Redis (see above)."""
    from pyspark.sql import functions as F

    from attune.features import FeatureParams, online_rows
    from attune.online_store import OnlineStore
    from spark import drift
    from spark.tables import date_between, read_table

    spark, cfg, lake, day = ctx.spark, ctx.cfg, ctx.lake, ctx.run_date
    out: StageOutputs = {}
    out["drift"] = drift.run_drift(ctx)
    if not cfg.batch.views.write_redis:
        ctx.progress("views: batch.views.write_redis is off; nothing written to Redis")
        return out

    store = OnlineStore.from_config(cfg)
    keys = store.keys
    ttl = max(1, int(cfg.batch.views.ttl.total_seconds()))
    r = cfg.redis
    user_features, cooccurrence = inputs["gold_user_features"], inputs["gold_item_cooccurrence"]
    features = read_table(spark, user_features, ctx.version_of(user_features))
    cooc = read_table(spark, cooccurrence, ctx.version_of(cooccurrence))
    similar = cooc.where(F.col("kind") == "session")

    recs = recommendations(
        features, similar, cfg.batch.views.seed_items, cfg.batch.views.recs_per_user
    )
    per_user = _zset_rows(recs, "user", "item_id", "score").join(
        features.select("user", "segment"), "user"
    )
    user_fmt = _key_format(keys.user_recs)
    batch_fmt = _key_format(keys.user_batch)
    users_written = spark.sparkContext.accumulator(0)
    per_user.foreachPartition(
        ZsetWriter(
            r,
            user_fmt,
            ttl,
            {"as_of": day.isoformat()},
            batch_fmt,
            counter=users_written,
        )
    )
    n_users = int(users_written.value)
    ctx.progress(f"views: recommendations for {n_users:,} users")

    items_written = spark.sparkContext.accumulator(0)
    kinds = [
        ("session", _key_format(keys.item_similar)),
        ("bought", _key_format(keys.item_bought_with)),
    ]
    if cfg.batch.cooccurrence.user_knn:  # gold writes kind user only then
        kinds.append(("user", _key_format(keys.item_knn)))
    for kind, fmt in kinds:
        rows = _zset_rows(cooc.where(F.col("kind") == kind), "item_id", "other_item_id", "score")
        rows.foreachPartition(ZsetWriter(r, fmt, ttl, counter=items_written))
    n_items = int(items_written.value)
    ctx.progress(f"views: {n_items:,} neighbour lists (similar, bought with, kNN)")

    popular = read_table(spark, lake.gold_popular_by_segment)
    seg_rows = _zset_rows(popular, "segment", "item_id", "engagements").collect()
    client = connect(r)
    try:
        segments = {row["segment"] for row in seg_rows}
        # one transaction on one Redis; a cluster has none across slots (the lists and the
        # views meta are then replaced one key at a time)
        pipe = client.pipeline(transaction=not r.cluster)
        for row in seg_rows:
            key = keys.segment_popular(row["segment"])
            pipe.delete(key)
            pipe.zadd(key, {m["m"]: float(m["s"]) for m in row["members"]})
        lists = KeyTemplate.of(keys.segment_popular)
        stale = [
            k
            for k in client.scan_iter(match=lists.glob(), count=1000)
            if lists.id_of(k) not in segments
        ]
        for k in stale:  # one key per DEL: a cluster pipeline refuses a multi-key DEL
            pipe.delete(k)
        pipe.delete(keys.views_meta)
        pipe.hset(
            keys.views_meta,
            mapping={
                "as_of": day.isoformat(),
                "users": n_users,
                "items": n_items,
                "segments": ",".join(sorted(segments)),
            },
        )
        pipe.execute()
    finally:
        client.close()
    ctx.progress(f"views: popular lists of {len(segments)} segment(s)")
    out.update({"users": n_users, "items": n_items, "segments": sorted(segments)})

    if cfg.batch.views.correct_online_features:
        start = window_start(day, cfg.batch.late_days, None)
        events = read_table(spark, lake.silver_events).where(date_between("event_date", start, day))
        # The write script takes each item's genres from the catalog mirror in Redis: refresh it
        # from the items dimension first, so corrected interactions get the same genres.
        read_table(spark, lake.silver_items).select(
            "item_id", "title", "year", "genres"
        ).foreachPartition(CatalogMirror(r, store))
        rows = online_rows(events, FeatureParams.from_config(cfg)).repartition(
            cfg.spark.shuffle_partitions, "user"
        )
        stats = rows.rdd.mapPartitions(OnlineCorrector(r, store)).collect()
        users, applied, dups, late = (sum(s[i] for s in stats) for i in range(4))
        out["correction"] = {
            "users": users,
            "missing_applied": applied,
            "already_there": dups,
            "too_old_for_redis": late,
        }
        ctx.progress(
            f"views: online features re-applied for {start}..{day}: {applied:,} interaction(s) "
            f"the stream had missed, {dups:,} already there, {late:,} older than Redis keeps"
        )
    return out


STAGE = Stage(
    "views",
    run_views,
    needs=("gold_user_features", "gold_item_cooccurrence"),
    missing="no table at {path}: run the gold stage first",
)
