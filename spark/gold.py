"""Gold: features, training data and aggregates, from all of silver up to the date.

User and item features come from the feature functions the speed layer runs
(:mod:`attune.features`): the batch runs the same row-level functions over all of history
and the aggregations that define what the stream's running updates add up to, so the nightly
result is what Redis *should* hold and the drift report can compare the two.

Tables (see :mod:`spark.tables`):

``gold/user_features``
    one row per user: recent items, genre affinities (as of the user's latest event, like
    :func:`attune.online_store.read_user_features`), counters, latest session, dismissed items,
    per-genre impressions / engagements, ignored genres, and the user's segment.
``gold/items``
    the models' item contract (:data:`attune.lake.ITEM_FIELDS`: ``item_id, title, genres, year,
    price``) plus content features (``tags``, event ``categories``, ``title_tokens`` by the
    models' own rule, :func:`attune.features.title_tokens`) and popularity (all-time
    engagements, per trending window, distinct users, mean rating).
``gold/training_examples``
    the models' interaction contract (:data:`attune.lake.INTERACTION_FIELDS`) plus what
    time-based splits need (``event_date``, ``event_id``, ``user_event_index``: the
    interaction's position in the user's history) and ``position`` / ``recommendation_id`` /
    ``session_id``. ``segment`` is the user's segment from the previous night's snapshot, i.e.
    what the system knew at event time (no leakage from the future). The one table not
    recomputed in full each night (``batch.gold.incremental``): only the event dates that
    changed are rewritten, plus every row of the few users a window-only rewrite would get
    wrong, so that it equals a full recompute (:func:`write_training_examples`).
``gold/training_sets``
    per logical date, the Delta versions the training set was built from and the version it was
    written as, so a model can be rebuilt from exactly the same data with time travel.
    (Its user and item counts are HyperLogLog++ estimates: exact for small counts.)
``gold/item_cooccurrence``
    ``kind = session``: items engaged with in the same session; ``kind = bought``: items bought
    by the same user ("users who bought X also bought Y"); ``kind = user``: items engaged with
    by the same user (item-kNN; the user's latest ``max_user_items``; only with
    ``batch.cooccurrence.user_knn``, which ``api.candidates.neighbours: user`` needs: its pairs
    are the costliest of the batch). Score: cosine of the
    co-occurrence count, ``n_ab / sqrt(n_a * n_b)``, shrunk for ``user``:
    ``n_ab / (sqrt(n_a * n_b) + user_shrinkage)``; ``top_k`` neighbours per item.
``gold/trending``, ``gold/user_segments``, ``gold/popular_by_segment``,
``gold/experiment_metrics``
    see their functions below; segments are RFM rules documented in :func:`user_segments`.
``gold/experiment_users``, ``gold/experiment_teams``
    exposures and what they led to per experiment, variant and user (and, for interleaved
    lists, the clicks credited to each ranker), rebuilt each night for the experiments with
    traffic in the late window: :mod:`spark.attribution`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import TYPE_CHECKING, Any

from attune.events import EVENT_TYPES
from attune.features import (
    FeatureParams,
    dismissed_items,
    effective_rows,
    feature_rows,
    genre_affinities,
    genre_exposure,
    ignored_genres,
    personalizing,
    popularity,
    recent_items,
    session_state,
    title_tokens_column,
    trending,
    user_activity,
    user_column,
    user_counters,
    withdraws_consent,
)
from spark.context import RunContext, Stage, StageInputs, StageOutputs, window_start

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from attune.config import CooccurrenceConfig, SegmentsConfig
    from spark.tables import Lake, Written

log = logging.getLogger(__name__)

DAY_MS = 24 * 3600 * 1000

CACHED_ROW_COLUMNS = (
    "user",
    "iid",
    "type",
    "ts_ms",
    "session_id",
    "item_id",
    "rating",
    "event_row",
    "forget",
    "genres",
    "aff_bucket",
    "aff_units",
    "is_recent",
    "is_engagement",
    "is_impression",
    "is_negative",
    "is_undo",
)
"""The feature-row columns the aggregations read (the rest is not kept in the cache)."""

TRAINING_EVENT_TYPES = tuple(
    name for name, t in EVENT_TYPES.items() if t.personalizes and "items" in t.requires
)
"""Every event type about items that may feed personalization (models pick positives); not
``undo_feedback``, which is no signal of interest (its effect is in ``dismissed_items``)."""

SEGMENTS = ("champion", "loyal", "new", "at_risk", "active", "dormant")
ALL_SEGMENTS = "all"
"""The pseudo-segment of :func:`popular_by_segment` holding the overall ranking."""

EXPERIMENT_TYPES = ("impression", "rec_click", "click", "add_to_cart", "purchase")


def end_of_day_ms(day: date) -> int:
    """The last millisecond of ``day`` (UTC): the "as of" time of a run over ``day``."""
    start = datetime.combine(day + timedelta(days=1), time(0), tzinfo=UTC)
    return int(start.timestamp() * 1000) - 1


# ----------------------------------------------------------------------------------------
# User features


def user_features(rows: DataFrame, params: FeatureParams, segments: DataFrame | None) -> DataFrame:
    """One row per user from :func:`attune.features.feature_rows` rows."""
    from pyspark.sql import functions as F

    def ranked(df: DataFrame, value: str, alias: str) -> DataFrame:
        return df.groupBy("user").agg(
            F.transform(
                F.array_sort(F.collect_list(F.struct("rank", value))), lambda x: x[value]
            ).alias(alias)
        )

    recent = recent_items(rows, params.recent_items)
    recent_agg = recent.groupBy("user").agg(
        F.array_sort(F.collect_list(F.struct("rank", "item_id", "type", "ts_ms"))).alias("_r")
    )
    recent_agg = recent_agg.select(
        "user",
        F.transform("_r", lambda x: x["item_id"]).alias("recent_items"),
        F.transform("_r", lambda x: x["type"]).alias("recent_types"),
    )
    aff = (
        genre_affinities(rows, params.half_life_ms)
        .groupBy("user")
        .agg(
            F.map_from_entries(F.array_sort(F.collect_list(F.struct("genre", "affinity")))).alias(
                "affinities"
            )
        )
    )
    counters = (
        user_counters(rows)
        .groupBy("user")
        .agg(
            F.map_from_entries(F.array_sort(F.collect_list(F.struct("type", "count")))).alias(
                "counters"
            )
        )
    )
    session = session_state(rows, params.session_gap_ms).select(
        "user",
        F.struct("session_id", "start_ms", "last_ms", "events").alias("session"),
    )
    dismissed = ranked(dismissed_items(rows, params.dismissed_items), "item_id", "dismissed")
    exposure = genre_exposure(rows)
    exposure_maps = exposure.groupBy("user").agg(
        F.map_from_entries(
            F.array_sort(
                F.collect_list(F.when(F.col("impressions") > 0, F.struct("genre", "impressions")))
            )
        ).alias("impressions_by_genre"),
        F.map_from_entries(
            F.array_sort(
                F.collect_list(F.when(F.col("engagements") > 0, F.struct("genre", "engagements")))
            )
        ).alias("engagements_by_genre"),
    )
    ignored = (
        ignored_genres(exposure, params.ignore_min_impressions)
        .groupBy("user")
        .agg(F.array_sort(F.collect_list("genre")).alias("ignored_genres"))
    )
    out = user_activity(rows)
    for part in (recent_agg, aff, counters, session, dismissed, exposure_maps, ignored):
        out = out.join(part, "user", "left")
    if segments is not None:
        out = out.join(segments.select("user", "segment"), "user", "left")
    else:
        out = out.withColumn("segment", F.lit(None).cast("string"))
    empty_s = F.array().cast("array<string>")
    return out.select(
        "user",
        "events",
        "first_ms",
        "last_ms",
        F.coalesce("recent_items", empty_s).alias("recent_items"),
        F.coalesce("recent_types", empty_s).alias("recent_types"),
        F.coalesce("affinities", F.create_map().cast("map<string,double>")).alias("affinities"),
        F.coalesce("counters", F.create_map().cast("map<string,bigint>")).alias("counters"),
        "session",
        F.coalesce("dismissed", empty_s).alias("dismissed_items"),
        F.coalesce("impressions_by_genre", F.create_map().cast("map<string,bigint>")).alias(
            "impressions_by_genre"
        ),
        F.coalesce("engagements_by_genre", F.create_map().cast("map<string,bigint>")).alias(
            "engagements_by_genre"
        ),
        F.coalesce("ignored_genres", empty_s).alias("ignored_genres"),
        "segment",
    )


# ----------------------------------------------------------------------------------------
# Items


def item_features(
    catalog: DataFrame,
    events: DataFrame,
    rows: DataFrame,
    trending_counts: dict[int, DataFrame],
) -> DataFrame:
    """``gold/items``: the catalog plus content and popularity features, one row per item.

    Items that appear in events but not in the catalog are included with empty metadata (the
    models need a row for every item they may meet). ``price`` is the catalog's, else the last
    price seen on an event.
    """
    from pyspark.sql import functions as F

    item_events = events.select(
        "timestamp",
        "event_id",
        user_column().alias("user"),
        F.explode("items").alias("item"),
    ).select(
        "timestamp",
        "event_id",
        "user",
        F.col("item.item_id").alias("item_id"),
        F.col("item.price").alias("price"),
        F.col("item.category").alias("category"),
    )
    from_events = item_events.groupBy("item_id").agg(
        F.array_sort(F.collect_set("category")).alias("categories"),
        F.max_by(
            "price", F.when(F.col("price").isNotNull(), F.struct("timestamp", "event_id"))
        ).alias("event_price"),
        F.countDistinct("user").alias("users"),
    )
    engaged = popularity(rows)
    rated = (
        rows.where((F.col("type") == "rating") & F.col("item_id").isNotNull())
        .groupBy("item_id")
        .agg(F.avg("rating").alias("mean_rating"), F.count("*").alias("ratings"))
    )
    out = catalog.join(from_events, "item_id", "full").join(engaged, "item_id", "left")
    out = out.join(rated, "item_id", "left")
    trend_cols = []
    for window_s, counts in sorted(trending_counts.items()):
        name = f"trending_{window_s}s"
        out = out.join(
            counts.select("item_id", F.col("engagements").alias(name)), "item_id", "left"
        )
        trend_cols.append(F.coalesce(F.col(name), F.lit(0)).cast("long").alias(name))
    empty_s = F.array().cast("array<string>")
    return out.select(
        "item_id",
        "title",
        F.coalesce("genres", empty_s).alias("genres"),
        "year",
        F.coalesce("price", "event_price").alias("price"),
        F.coalesce("tags", empty_s).alias("tags"),
        F.coalesce("categories", empty_s).alias("categories"),
        title_tokens_column("title").alias("title_tokens"),
        F.coalesce("engagements", F.lit(0)).cast("long").alias("engagements"),
        *trend_cols,
        F.coalesce("users", F.lit(0)).cast("long").alias("users"),
        "mean_rating",
        F.coalesce("ratings", F.lit(0)).cast("long").alias("ratings"),
    )


# ----------------------------------------------------------------------------------------
# Training examples


def training_examples(
    events: DataFrame, segments: DataFrame | None, offsets: DataFrame | None = None
) -> DataFrame:
    """``gold/training_examples`` from silver events (see the module docstring).

    Uses the online features' :func:`~attune.features.personalizing` (consent) and
    :func:`~attune.features.effective_rows` (nothing from before a withdrawal of
    personalization consent), so the models see exactly the history the features see.
    ``segments``: snapshots with ``user, segment, as_of_date``; an event on day ``d`` gets the
    snapshot of ``d - 1``. ``offsets`` (``user, offset``): examples a user already has before
    ``events`` begin (an incremental run, :func:`write_training_examples`), added to
    ``user_event_index``; users without one start at 1.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    rows = personalizing(events).select(
        user_column().alias("user"),
        "event_id",
        "type",
        "timestamp",
        F.unix_millis("timestamp").alias("ts_ms"),
        "event_date",
        "rating",
        "session_id",
        "recommendation_id",
        F.col("context.device").alias("device"),
        F.col("context.placement").alias("placement"),
        withdraws_consent().alias("forget"),
        F.posexplode_outer("items").alias("pos", "item"),
    )
    rows = effective_rows(rows.where(F.col("user").isNotNull()))
    rows = rows.where(F.col("type").isin(*TRAINING_EVENT_TYPES) & F.col("item").isNotNull())
    order = Window.partitionBy("user").orderBy("ts_ms", "event_id", "pos")
    rows = rows.withColumn("user_event_index", F.row_number().over(order))
    if offsets is not None:
        rows = (
            rows.join(
                offsets.select(F.col("user").alias("_ou"), "offset"),
                F.col("user") == F.col("_ou"),
                "left",
            )
            .withColumn(
                "user_event_index",
                (F.col("user_event_index") + F.coalesce("offset", F.lit(0))).cast("int"),
            )
            .drop("_ou", "offset")
        )
    if segments is not None:
        # one row per user with {day the snapshot applies to: segment}: joined on the user
        # alone, so the (large) examples keep the partitioning of the window above and only
        # this small side moves
        by_user = segments.groupBy(F.col("user").alias("_su")).agg(
            F.map_from_entries(
                F.collect_list(F.struct(F.date_add("as_of_date", 1), F.col("segment")))
            ).alias("_segs")
        )
        rows = rows.join(by_user, F.col("user") == F.col("_su"), "left").withColumn(
            "segment", F.element_at("_segs", F.col("event_date"))
        )
    else:
        rows = rows.withColumn("segment", F.lit(None).cast("string"))
    return rows.select(
        F.col("user").alias("user_id"),
        F.col("item.item_id").alias("item_id"),
        "timestamp",
        F.col("type").alias("event_type"),
        "rating",
        "device",
        "placement",
        "segment",
        "event_id",
        "event_date",
        "user_event_index",
        F.col("item.position").cast("int").alias("position"),
        "recommendation_id",
        "session_id",
    )


# ----------------------------------------------------------------------------------------
# Co-occurrence


def _pairs(
    baskets: DataFrame, min_count: int, top_k: int, kind: str, shrinkage: float = 0.0
) -> DataFrame:
    """``baskets``: ``basket, items`` (distinct) -> top ``top_k`` neighbours per item, scored
    ``n_ab / (sqrt(n_a n_b) + shrinkage)``."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    pairs = baskets.select(
        F.explode(
            F.flatten(
                F.transform(
                    "items",
                    lambda a: F.transform(
                        F.filter("items", lambda b: b != a),
                        lambda b: F.struct(a.alias("a"), b.alias("b")),
                    ),
                )
            )
        ).alias("p")
    ).select(F.col("p.a").alias("item_id"), F.col("p.b").alias("other_item_id"))
    counts = pairs.groupBy("item_id", "other_item_id").agg(F.count("*").alias("count"))
    support = baskets.select(F.explode("items").alias("item_id")).groupBy("item_id").count()
    sa = support.select("item_id", F.col("count").alias("_na"))
    sb = support.select(F.col("item_id").alias("other_item_id"), F.col("count").alias("_nb"))
    scored = (
        counts.where(F.col("count") >= min_count)
        .join(sa, "item_id")
        .join(sb, "other_item_id")
        .withColumn(
            "score", F.col("count") / (F.sqrt(F.col("_na") * F.col("_nb")) + F.lit(shrinkage))
        )
    )
    order = Window.partitionBy("item_id").orderBy(F.desc("score"), F.desc("count"), "other_item_id")
    return (
        scored.withColumn("rank", F.row_number().over(order))
        .where(F.col("rank") <= top_k)
        .select(F.lit(kind).alias("kind"), "item_id", "rank", "other_item_id", "count", "score")
    )


def _latest_distinct(df: DataFrame, basket: list[str], limit: int) -> DataFrame:
    """``basket, items``: the ``limit`` most recent distinct items of each basket.

    ``basket`` columns start with ``user``, so on rows partitioned by user neither grouping
    needs a shuffle.
    """
    from pyspark.sql import functions as F

    latest = df.groupBy(*basket, "item_id").agg(F.max(F.struct("ts_ms", "iid")).alias("m"))
    return (
        latest.groupBy(*basket)
        .agg(F.array_sort(F.collect_list(F.struct(F.col("m").alias("m"), "item_id"))).alias("l"))
        .select(
            F.concat_ws(":", *basket).alias("basket"),
            F.transform(F.slice(F.reverse("l"), 1, limit), lambda x: x["item_id"]).alias("items"),
        )
        .where(F.size("items") >= 2)
    )


def item_cooccurrence(
    rows: DataFrame, params: CooccurrenceConfig, session_gap_ms: int
) -> DataFrame:
    """The kinds of co-occurrence from feature rows (see the module docstring).

    A session is the events' ``session_id``; events without one are grouped per user into
    blocks of ``session_gap_ms`` (an approximation of gap-based sessions that needs no sort).
    """
    from pyspark.sql import functions as F

    engaged = rows.where("is_engagement").withColumn(
        "_session",
        F.coalesce(
            F.col("session_id"),
            F.concat(F.lit("t"), F.floor(F.col("ts_ms") / session_gap_ms).cast("string")),
        ),
    )
    sessions = _latest_distinct(engaged, ["user", "_session"], params.max_session_items)
    bought = _latest_distinct(
        rows.where((F.col("type") == "purchase") & F.col("item_id").isNotNull()),
        ["user"],
        params.max_user_purchases,
    )
    out = _pairs(sessions, params.min_count, params.top_k, "session").unionByName(
        _pairs(bought, params.min_count, params.top_k, "bought")
    )
    if not params.user_knn:
        return out
    users = _latest_distinct(engaged, ["user"], params.max_user_items)
    return out.unionByName(
        _pairs(users, params.min_count, params.top_k, "user", params.user_shrinkage)
    )


# ----------------------------------------------------------------------------------------
# Trending, segments, popularity per segment


def trending_tables(rows: DataFrame, params: FeatureParams, as_of_ms: int) -> dict[int, DataFrame]:
    return {
        w: trending(rows, w, params.trending_slices, as_of_ms) for w in params.trending_windows_s
    }


def top_trending(counts: dict[int, DataFrame], as_of_ms: int, k: int) -> DataFrame:
    """``window_s, rank, item_id, engagements, as_of_ms``: the top ``k`` of each window."""
    from functools import reduce

    from pyspark.sql import Window
    from pyspark.sql import functions as F

    parts = []
    for w, df in sorted(counts.items()):
        order = Window.orderBy(F.desc("engagements"), "item_id")
        parts.append(
            df.withColumn("rank", F.row_number().over(order))
            .where(F.col("rank") <= k)
            .select(
                F.lit(w).cast("int").alias("window_s"),
                "rank",
                "item_id",
                "engagements",
                F.lit(as_of_ms).alias("as_of_ms"),
            )
        )
    return reduce(lambda a, b: a.unionByName(b), parts)


def user_segments(events: DataFrame, params: SegmentsConfig, as_of_ms: int) -> DataFrame:
    """Each user's RFM segment as of ``as_of_ms``: the first rule that holds, in this order:

    ``champion``  >= ``champion_purchases`` purchases in the last ``active_days``;
    ``loyal``     >= ``loyal_purchases`` purchases in all, and seen in the last ``active_days``;
    ``new``       first seen in the last ``new_days``;
    ``at_risk``   has purchased, but not seen in the last ``active_days``;
    ``active``    seen in the last ``active_days`` (browsers who never bought);
    ``dormant``   everyone else.

    Recency is days since the latest event, frequency the events in the last ``active_days``,
    monetary the revenue of all purchases. Only events that may personalize count, and none
    from before the user's latest withdrawal of personalization consent (as for features).
    """
    from pyspark.sql import functions as F

    ev = personalizing(events).select(
        user_column().alias("user"),
        F.unix_millis("timestamp").alias("ts_ms"),
        "type",
        withdraws_consent().alias("forget"),
        (F.col("type") == "purchase").alias("is_purchase"),
        "revenue",
    )
    ev = effective_rows(ev.where(F.col("user").isNotNull() & (F.col("ts_ms") <= as_of_ms)))
    ev = ev.where(F.col("type") != "consent_update")
    active_from = as_of_ms - params.active_days * DAY_MS
    per_user = ev.groupBy("user").agg(
        F.min("ts_ms").alias("first_ms"),
        F.max("ts_ms").alias("last_ms"),
        F.count(F.when(F.col("ts_ms") > active_from, 1)).alias("frequency"),
        F.count(F.when(F.col("is_purchase"), 1)).alias("purchases"),
        F.count(F.when(F.col("is_purchase") & (F.col("ts_ms") > active_from), 1)).alias(
            "recent_purchases"
        ),
        F.coalesce(F.sum(F.when(F.col("is_purchase"), F.col("revenue"))), F.lit(0.0)).alias(
            "monetary"
        ),
    )
    recency = F.floor((F.lit(as_of_ms) - F.col("last_ms")) / DAY_MS).cast("int")
    age = F.floor((F.lit(as_of_ms) - F.col("first_ms")) / DAY_MS).cast("int")
    active = recency < params.active_days
    segment = (
        F.when(F.col("recent_purchases") >= params.champion_purchases, "champion")
        .when((F.col("purchases") >= params.loyal_purchases) & active, "loyal")
        .when(age < params.new_days, "new")
        .when((F.col("purchases") > 0) & ~active, "at_risk")
        .when(active, "active")
        .otherwise("dormant")
    )
    return per_user.select(
        "user",
        segment.alias("segment"),
        recency.alias("recency_days"),
        "frequency",
        "purchases",
        "recent_purchases",
        "monetary",
        age.alias("age_days"),
    )


def popular_by_segment(
    rows: DataFrame, segments: DataFrame, since_ms: int, as_of_ms: int, k: int
) -> DataFrame:
    """``segment, rank, item_id, engagements``: the top ``k`` engaged items of each segment's
    users between ``since_ms`` and ``as_of_ms``, plus the overall ranking as segment ``all``."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    recent = rows.where(
        F.col("is_engagement") & (F.col("ts_ms") > since_ms) & (F.col("ts_ms") <= as_of_ms)
    ).select("user", "item_id")
    by_segment = (
        recent.join(segments.select("user", "segment"), "user")
        .groupBy("segment", "item_id")
        .agg(F.count("*").alias("engagements"))
    )
    overall = recent.groupBy("item_id").agg(F.count("*").alias("engagements"))
    both = by_segment.unionByName(overall.withColumn("segment", F.lit(ALL_SEGMENTS)))
    order = Window.partitionBy("segment").orderBy(F.desc("engagements"), "item_id")
    return (
        both.withColumn("rank", F.row_number().over(order))
        .where(F.col("rank") <= k)
        .select("segment", "rank", "item_id", "engagements")
    )


# ----------------------------------------------------------------------------------------
# Experiment metrics


def experiment_metrics(events: DataFrame, pattern: str) -> DataFrame:
    """Daily metrics per experiment variant from events carrying a ``recommendation_id``.

    The experiment and variant are groups 1 and 2 of ``pattern`` on the recommendation id
    (``batch.recommendation_id_pattern``; ``none`` when it does not match). Per
    ``event_date, experiment, variant``: ``impressions`` (impression events),
    ``items_shown``, ``recommendations`` (distinct ids shown), ``clicks`` (rec_click and click
    events), ``add_to_carts``, ``purchases``, ``revenue``, ``users``, ``ctr`` =
    clicks / impressions and ``conversion_rate`` = purchases / impressions (null without
    impressions).
    """
    from pyspark.sql import functions as F

    rec = F.col("recommendation_id")
    ev = events.where(rec.isNotNull() & F.col("type").isin(*EXPERIMENT_TYPES)).select(
        "event_date",
        F.coalesce(F.nullif(F.regexp_extract(rec, pattern, 1), F.lit("")), F.lit("none")).alias(
            "experiment"
        ),
        F.coalesce(F.nullif(F.regexp_extract(rec, pattern, 2), F.lit("")), F.lit("none")).alias(
            "variant"
        ),
        "type",
        rec.alias("rec"),
        F.size("items").alias("n_items"),
        "revenue",
        user_column().alias("user"),
    )
    t = F.col("type")
    agg = ev.groupBy("event_date", "experiment", "variant").agg(
        F.count(F.when(t == "impression", 1)).alias("impressions"),
        F.coalesce(F.sum(F.when(t == "impression", F.col("n_items"))), F.lit(0))
        .cast("long")
        .alias("items_shown"),
        F.countDistinct(F.when(t == "impression", F.col("rec"))).alias("recommendations"),
        F.count(F.when(t.isin("rec_click", "click"), 1)).alias("clicks"),
        F.count(F.when(t == "add_to_cart", 1)).alias("add_to_carts"),
        F.count(F.when(t == "purchase", 1)).alias("purchases"),
        F.coalesce(F.sum(F.when(t == "purchase", F.col("revenue"))), F.lit(0.0)).alias("revenue"),
        F.countDistinct("user").alias("users"),
    )
    per_imp = F.when(F.col("impressions") > 0, F.col("impressions"))
    return agg.select(
        "*",
        (F.col("clicks") / per_imp).alias("ctr"),
        (F.col("purchases") / per_imp).alias("conversion_rate"),
    )


# ----------------------------------------------------------------------------------------
# The stage


def run_gold(ctx: RunContext, inputs: StageInputs) -> StageOutputs:
    """Features, training examples and aggregates from silver as of the date (see above)."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    from spark import quality
    from spark.tables import date_between, read_table, write_table

    spark, cfg, lake, day = ctx.spark, ctx.cfg, ctx.lake, ctx.run_date
    params = FeatureParams.from_config(cfg)
    as_of_ms = end_of_day_ms(day)
    versions = {
        "silver_events": ctx.version_of(inputs["silver_events"]),
        "silver_items": ctx.version_of(inputs["silver_items"]),
    }
    events = read_table(spark, inputs["silver_events"], versions["silver_events"]).where(
        F.col("event_date") <= F.lit(day)
    )
    catalog = read_table(spark, inputs["silver_items"], versions["silver_items"])
    out: StageOutputs = {"versions": versions}

    # The row-level feature functions, once. Every per-user aggregation below is clustered by
    # user (and the windows ordered by time): caching the rows partitioned by user and sorted by
    # (user, time) spares each of them a shuffle and a sort.
    rows = (
        feature_rows(events, catalog, params)
        .select(*CACHED_ROW_COLUMNS)
        .repartition(cfg.spark.shuffle_partitions, "user")
        .sortWithinPartitions("user", "ts_ms", "iid")
        .persist(StorageLevel.MEMORY_AND_DISK)
    )
    n_rows = rows.count()
    ctx.progress(f"gold: {n_rows:,} feature rows")

    segments = user_segments(events, cfg.batch.segments, as_of_ms).cache()
    seg_version = write_segment_snapshot(ctx, segments)
    ctx.progress("gold: user segments")

    uf_version = write_table(
        user_features(rows, params, segments).withColumn("as_of_date", F.lit(day)),
        lake.gold_user_features,
        metadata={"run_date": day, **versions},
    )
    ctx.progress(f"gold: user features: {uf_version.rows:,} users (v{uf_version.version})")

    trend = trending_tables(rows, params, as_of_ms)
    items_version = write_table(
        item_features(catalog, events, rows, trend).withColumn("as_of_date", F.lit(day)),
        lake.gold_items,
        metadata={"run_date": day, **versions},
    ).version
    write_table(
        top_trending(trend, as_of_ms, cfg.batch.views.popular_per_segment), lake.gold_trending
    )
    ctx.progress(f"gold: items and trending (v{items_version})")

    cooc_version = write_table(
        item_cooccurrence(rows, cfg.batch.cooccurrence, params.session_gap_ms),
        lake.gold_item_cooccurrence,
        partition_by="kind",
    )
    ctx.progress(f"gold: item co-occurrence: {cooc_version.rows:,} pairs (v{cooc_version.version})")

    since_ms = as_of_ms - cfg.batch.segments.active_days * DAY_MS
    write_table(
        popular_by_segment(
            rows, segments, since_ms, as_of_ms, cfg.batch.views.popular_per_segment
        ).withColumn("as_of_date", F.lit(day)),
        lake.gold_popular_by_segment,
    )
    ctx.progress("gold: popular items per segment")

    start = window_start(day, cfg.batch.late_days, ctx.since)
    window = date_between("event_date", start, day)
    write_table(
        experiment_metrics(events.where(window), cfg.batch.recommendation_id_pattern),
        lake.gold_experiment_metrics,
        partition_by="event_date",
        replace_where=window,
    )
    ctx.progress(f"gold: experiment metrics {start}..{day}")
    out["experiments"] = write_experiment_users(ctx, events, start, seg_version)

    seg_history = read_table(spark, lake.gold_user_segments, seg_version).where(
        F.col("as_of_date") < F.lit(day)
    )
    manifest = training_set_manifest(ctx, versions, seg_version)
    te_written, te_plan = write_training_examples(ctx, events, seg_history, manifest, start)
    te_version = te_written.version
    written = read_table(spark, lake.gold_training_examples, te_version)
    stats = quality.check_training_examples(ctx, written)
    record = spark.createDataFrame(
        [
            (
                day,
                te_version,
                versions["silver_events"],
                versions["silver_items"],
                seg_version,
                manifest["bronze_version"],
                int(stats["rows"]),
                int(stats["users"]),
                int(stats["items"]),
                stats["min_timestamp"],
                stats["max_timestamp"],
            )
        ],
        TRAINING_SETS_DDL,
    )
    write_table(
        record,
        lake.gold_training_sets,
        replace_where=f"as_of_date = DATE'{day.isoformat()}'",
    )
    out["training_examples"] = {
        "version": te_version,
        "rows": int(stats["rows"]),
        "rewritten_from": te_plan.start and te_plan.start.isoformat(),
        "users_recomputed": len(te_plan.users),
        "full_because": te_plan.reason or None,
    }
    ctx.progress(f"gold: training examples: {int(stats['rows']):,} rows (v{te_version})")
    rows.unpersist()
    segments.unpersist()
    quality.flush(ctx, "gold")
    out["feature_rows"] = n_rows
    out["user_features_version"] = uf_version.version
    return out


# ----------------------------------------------------------------------------------------
# Training examples, incrementally


def write_segment_snapshot(ctx: RunContext, segments: DataFrame) -> int:
    """Write ``segments`` as the run date's snapshot of ``gold/user_segments`` (that partition
    replaced); returns the version. The commit names the date (what :func:`rewrite_start`
    reads: the examples of the next day take their segment from it)."""
    from pyspark.sql import functions as F

    from spark.tables import write_table

    day = ctx.run_date
    return write_table(
        segments.withColumn("as_of_date", F.lit(day)),
        ctx.lake.gold_user_segments,
        partition_by="as_of_date",
        replace_where=f"as_of_date = DATE'{day.isoformat()}'",
        metadata={"as_of_date": day},
    ).version


def training_set_manifest(
    ctx: RunContext, versions: Mapping[str, int | None], seg_version: int
) -> dict[str, Any]:
    """What a training set was built from (``gold/training_sets``, and the ``training_set``
    metadata of its commit, which :func:`rewrite_start` reads back the next night)."""
    from spark.tables import table_version

    return {
        "as_of_date": ctx.run_date.isoformat(),
        "silver_events_version": versions["silver_events"],
        "silver_items_version": versions["silver_items"],
        "user_segments_version": seg_version,
        "bronze_version": ctx.versions_read.get(ctx.lake.bronze),
        "erasure_log_version": table_version(ctx.spark, ctx.lake.erasure_log),
    }


MAX_RECOMPUTED_USERS = 10_000
"""Above this many users to recompute in full (consent withdrawals, bot days and erasures since
the last run), :func:`write_training_examples` recomputes the whole table instead: the users'
ids go into the write's ``replaceWhere``."""

NO_DATA_CHANGE = frozenset(
    {
        "OPTIMIZE",
        "VACUUM START",
        "VACUUM END",
        "ADD COLUMNS",
        "SET TBLPROPERTIES",
        "UNSET TBLPROPERTIES",
    }
)
"""Delta operations that change no row: other writers may add them between two gold runs."""

ERASURE_OPERATIONS = frozenset({"MERGE"})
"""How :mod:`spark.erasure` deletes rows (the only writer that merges into these tables): what
it deleted is in ``privacy/erasure_log``, whose changes since the last run name the users
recomputed. (A ``DELETE`` is the retention policy's, :mod:`spark.maintenance`: when it removed
rows, every user with older events is renumbered by a full recompute.)"""


@dataclass(frozen=True)
class Commit:
    """One commit of a Delta table: version, operation and its parsed ``userMetadata``."""

    version: int
    operation: str
    metadata: Mapping[str, Any] | None = None
    rows_deleted: int | None = None

    @property
    def changes_nothing(self) -> bool:
        """Maintenance, or a ``DELETE`` that matched no row (the retention policy's, most
        nights)."""
        return self.operation in NO_DATA_CHANGE or (
            self.operation == "DELETE" and self.rows_deleted == 0
        )


@dataclass(frozen=True)
class ExamplesPlan:
    """How a run writes ``gold/training_examples``.

    In full when ``start`` is None (``reason`` says why); else the event dates ``start`` .. the
    run date are rewritten, and every row of ``users`` (at any date), on top of version
    ``base_version`` of the table.
    """

    start: date | None
    reason: str = ""
    users: tuple[str, ...] = ()
    base_version: int | None = None


@dataclass(frozen=True)
class Source:
    """A table the examples are built from, and how to read what its commits since the last
    gold run rewrote: ``key`` in a commit's metadata is the first date it rewrote, which
    changes the examples from ``lag_days`` later on."""

    name: str
    manifest_key: str
    commits: Sequence[Commit]
    now: int | None
    key: str
    lag_days: int = 0


def rewrite_start(
    day: date, start: date, examples: Sequence[Commit], sources: Sequence[Source]
) -> tuple[date, Mapping[str, Any]] | str:
    """The first event date an incremental run over ``day`` must rewrite, and the manifest of
    the last gold run; or, as a string, why only a full recompute gives the right table.

    ``start`` is the late window's first date (:func:`~spark.context.window_start`);
    ``examples`` the commits of ``gold/training_examples`` (any order); ``sources`` the tables
    read, each with the version this run reads (``now``; the last run's is in its manifest).

    The examples before the returned date are kept as they are, so it must be no later than:
    the day after the last gold run (``as_of_date`` of the latest commit carrying a
    ``training_set`` manifest: the table holds nothing newer), and the first date each source
    commit rewrote since (plus its lag). Commits that change rows in another way make the
    table's state unknown, except erasures (:data:`ERASURE_OPERATIONS`).
    """
    newest_first = sorted(examples, key=lambda c: c.version, reverse=True)
    last = next((c for c in newest_first if c.metadata and "training_set" in c.metadata), None)
    if last is None or last.metadata is None:
        return "no gold run's manifest in the table's history"
    for c in newest_first:
        if c.version <= last.version:
            break
        if c.operation == "DELETE" and not c.changes_nothing:
            return _retention_reason("gold/training_examples", c)
        if not c.changes_nothing and c.operation not in ERASURE_OPERATIONS:
            return f"the table was changed outside the gold stage (v{c.version}: {c.operation})"
    manifest = last.metadata["training_set"]
    built_for = date.fromisoformat(str(manifest["as_of_date"]))
    if built_for > day:
        return f"the table was last built for {built_for}, after {day}: a rerun of an earlier date"
    first = min(start, built_for + timedelta(days=1))
    for source in sources:
        read = manifest.get(source.manifest_key)
        if read is None or source.now is None or source.now < read:
            return f"{source.name} v{source.now} does not follow the v{read} the table was built on"
        by_version = {c.version: c for c in source.commits}
        for v in range(int(read) + 1, source.now + 1):
            commit = by_version.get(v)
            if commit is None:
                return f"the history of {source.name} no longer reaches v{v}"
            if commit.changes_nothing or commit.operation in ERASURE_OPERATIONS:
                continue
            if commit.operation == "DELETE":
                return _retention_reason(source.name, commit)
            since = (commit.metadata or {}).get(source.key)
            if commit.operation != "WRITE" or since is None:
                return f"{source.name} v{v} ({commit.operation}) is no batch stage's write"
            first = min(first, date.fromisoformat(str(since)) + timedelta(days=source.lag_days))
    return first, manifest


def _retention_reason(table: str, commit: Commit) -> str:
    deleted = "rows" if commit.rows_deleted is None else f"{commit.rows_deleted:,} rows"
    return (
        f"{table} v{commit.version}: the retention policy deleted {deleted}, so "
        "user_event_index counts from later events"
    )


def sql_string(value: str) -> str:
    """``value`` as a Spark SQL string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _history(spark: SparkSession, path: str) -> list[Commit]:
    from delta.tables import DeltaTable

    commits = []
    history = DeltaTable.forPath(spark, path).history()
    for r in history.select("version", "operation", "userMetadata", "operationMetrics").collect():
        try:
            meta = json.loads(r["userMetadata"]) if r["userMetadata"] else None
        except ValueError:
            meta = None
        deleted = (r["operationMetrics"] or {}).get("numDeletedRows")
        commits.append(
            Commit(
                int(r["version"]),
                str(r["operation"]),
                meta if isinstance(meta, dict) else None,
                int(deleted) if deleted is not None else None,
            )
        )
    return commits


def erased_users(
    spark: SparkSession, lake: Lake, log_version: int | None, silver_version: int
) -> set[str]:
    """The users an erasure touched since the last gold run: the pseudonyms whose
    ``privacy/erasure_log`` rows changed after ``log_version`` (None: the table is new since),
    and the users of the events they were on in ``silver/events`` as that run read it (version
    ``silver_version``): an erased anonymous id's events that carry a user id are that user's
    examples, and are gone from silver now."""
    from pyspark.sql import functions as F

    from spark.tables import read_table

    log = read_table(spark, lake.erasure_log)
    if log_version is not None:
        log = log.exceptAll(read_table(spark, lake.erasure_log, log_version))
    erased = sorted(r[0] for r in log.select("pseudonym").distinct().collect())
    if not erased:
        return set()
    was = read_table(spark, lake.silver_events, silver_version).where(
        F.col("user_id").isin(erased) | F.col("anonymous_id").isin(erased)
    )
    return set(erased) | {r[0] for r in was.select(user_column()).distinct().collect()}


def plan_training_examples(
    ctx: RunContext,
    events: DataFrame,
    expected: DataFrame,
    start: date,
    now: Mapping[str, Any],
) -> ExamplesPlan:
    """Whether and how ``gold/training_examples`` can be rewritten incrementally tonight.

    ``events``: silver up to the run date; ``expected``: the examples as a full recompute
    would write them (only its schema is used); ``start``: the late window's first date;
    ``now``: this run's manifest (the versions it reads).
    The users recomputed in full, with all their rows, are those whose rows before the
    rewritten dates a window-only rewrite would get wrong:

    * a withdrawal of personalization consent in the rewritten dates: it drops every earlier
      example of the user (:func:`~attune.features.effective_rows`), in older partitions too;
    * a bot day in the rewritten dates: silver dropped that day's events, maybe a withdrawal
      the last run had applied;
    * an erasure since the last run (:func:`erased_users`): it deleted all the user's
      examples, while silver keeps the events received after the request (and an erased
      anonymous id's events under a user id are that user's).
    """
    from delta.tables import DeltaTable

    from spark.tables import date_between, is_table, read_table, table_version

    spark, cfg, lake, day = ctx.spark, ctx.cfg, ctx.lake, ctx.run_date
    path = lake.gold_training_examples
    if not cfg.batch.gold.incremental:
        return ExamplesPlan(None, "batch.gold.incremental is off")
    if not is_table(spark, path):
        return ExamplesPlan(None, "first run: no table yet")
    table = DeltaTable.forPath(spark, path)
    parts = table.detail().select("partitionColumns").first()
    if parts is None or list(parts[0]) != ["event_date"]:
        return ExamplesPlan(None, "the table is not partitioned by event_date")
    have = [(f.name, f.dataType.simpleString()) for f in table.toDF().schema]
    want = [(f.name, f.dataType.simpleString()) for f in expected.schema]
    if have != want:
        return ExamplesPlan(None, "the table's schema is not the one written now")
    base_version = table_version(spark, path)
    sources = [
        # a silver write names the first date it rewrote
        Source(
            "silver/events",
            "silver_events_version",
            _history(spark, lake.silver_events),
            now["silver_events_version"],
            "from",
        ),
        # a snapshot of day x gives the segment of the events of x + 1
        Source(
            "gold/user_segments",
            "user_segments_version",
            _history(spark, lake.gold_user_segments),
            now["user_segments_version"],
            "as_of_date",
            lag_days=1,
        ),
    ]
    found = rewrite_start(day, start, _history(spark, path), sources)
    if isinstance(found, str):
        return ExamplesPlan(None, found)
    first, manifest = found
    window = date_between("event_date", first, day)

    forget = personalizing(events.where(window)).where(withdraws_consent())
    users = {r[0] for r in forget.select(user_column()).distinct().collect() if r[0] is not None}
    if is_table(spark, lake.silver_bot_days):
        bots = read_table(spark, lake.silver_bot_days).where(window).select("user").distinct()
        users |= {r[0] for r in bots.collect() if r[0] is not None}
    if is_table(spark, lake.erasure_log):
        if "erasure_log_version" not in manifest:
            return ExamplesPlan(None, "the last run's manifest predates erasure tracking")
        try:
            users |= erased_users(
                spark, lake, manifest["erasure_log_version"], manifest["silver_events_version"]
            )
        except Exception as exc:  # those versions' files vacuumed away
            return ExamplesPlan(
                None,
                f"the last run's privacy/erasure_log or silver/events version is unreadable "
                f"({type(exc).__name__}): the users erased since are unknown",
            )
    if len(users) > MAX_RECOMPUTED_USERS:
        return ExamplesPlan(
            None, f"{len(users):,} users to recompute in full (> {MAX_RECOMPUTED_USERS:,})"
        )
    return ExamplesPlan(first, users=tuple(sorted(users)), base_version=base_version)


def write_training_examples(
    ctx: RunContext,
    events: DataFrame,
    segments: DataFrame,
    manifest: Mapping[str, Any],
    start: date,
) -> tuple[Written, ExamplesPlan]:
    """Write ``gold/training_examples``, incrementally when :func:`plan_training_examples`
    allows it; either way the table ends up as a full recompute over ``events`` would write it.

    Incrementally: the examples of the rewritten dates come from those dates' events, each
    user's ``user_event_index`` offset by their examples before the first date already in the
    table (the table's rows before it are what a full recompute gives, as the plan ensures, and
    they all precede the window's: event dates are the events' UTC dates); segments are
    snapshots as before (the window reads those from the day before its first date on; older
    ones do not change once their day's run has written them). The users the plan names are
    recomputed from all their events and all their rows replaced, in the same commit.
    """
    from pyspark.sql import functions as F

    from spark.tables import date_between, read_table, write_table

    lake, day = ctx.lake, ctx.run_date
    path = lake.gold_training_examples
    full = training_examples(events, segments)
    plan = plan_training_examples(ctx, events, full, start, manifest)
    meta: dict[str, Any] = {"training_set": dict(manifest)}
    # (sorted by date within each task, so a task writes one file per date in turn, without
    # another shuffle of the whole table)
    if plan.start is None:
        ctx.progress(f"gold: training examples in full: {plan.reason}")
        written = write_table(
            full.sortWithinPartitions("event_date"),
            path,
            partition_by="event_date",
            metadata=meta,
        )
        return written, plan
    window = date_between("event_date", plan.start, day)
    users = list(plan.users)
    replace = f"({window})"
    if users:
        replace += f" OR user_id IN ({', '.join(sql_string(u) for u in users)})"
    recomputed = user_column().isin(users) if users else F.lit(False)
    before = read_table(ctx.spark, path, plan.base_version).where(
        F.col("event_date") < F.lit(plan.start)
    )
    if users:
        before = before.where(~F.col("user_id").isin(users))
    offsets = before.groupBy(F.col("user_id").alias("user")).agg(F.count("*").alias("offset"))
    snapshots = segments.where(
        (F.col("as_of_date") >= F.lit(plan.start - timedelta(days=1)))
        | (F.col("user").isin(users) if users else F.lit(False))
    )
    examples = training_examples(events.where(F.expr(window) | recomputed), snapshots, offsets)
    meta["incremental"] = {"from": plan.start.isoformat(), "users_recomputed": len(users)}
    ctx.progress(
        f"gold: training examples from {plan.start} and {len(users)} user(s) in full "
        f"(on v{plan.base_version})"
    )
    written = write_table(
        examples.sortWithinPartitions("event_date"),
        path,
        partition_by="event_date",
        replace_where=replace,
        metadata=meta,
    )
    return written, plan


def write_experiment_users(
    ctx: RunContext, events: DataFrame, start: date, seg_version: int
) -> list[str]:
    """``gold/experiment_users`` and ``gold/experiment_teams`` (:mod:`spark.attribution`),
    rebuilt from all of silver for the experiments with exposures between ``start`` and the
    date (their partitions replaced; the other experiments' rows stay as last built).
    Returns those experiments."""
    from pyspark.sql import functions as F

    from spark.attribution import (
        AttributionParams,
        experiment_users,
        experiments_predicate,
        exposed_experiments,
        interleaving_impressions,
    )
    from spark.tables import read_table, write_table

    params = AttributionParams.from_config(ctx.cfg)
    lake, day = ctx.lake, ctx.run_date
    running = exposed_experiments(events.where(F.col("event_date") >= F.lit(start)), params.pattern)
    if not running:
        ctx.progress(f"gold: no experiment had traffic {start}..{day}")
        return []
    # every snapshot: a user's segment is the one of the day before their first exposure
    segments = read_table(ctx.spark, lake.gold_user_segments, seg_version)
    written = write_table(
        experiment_users(events, params, segments, running),
        lake.gold_experiment_users,
        partition_by="experiment",
        replace_where=experiments_predicate(running),
        metadata={"run_date": day, "experiments": running},
    )
    teams = interleaving_impressions(events, params, running)
    if teams is not None:
        write_table(
            teams,
            lake.gold_experiment_teams,
            partition_by="experiment",
            replace_where=experiments_predicate(running),
        )
    ctx.progress(
        f"gold: experiment users of {', '.join(running)}: {written.rows:,} rows "
        f"(v{written.version})"
    )
    return running


TRAINING_SETS_DDL = (
    "as_of_date DATE, training_examples_version BIGINT, silver_events_version BIGINT, "
    "silver_items_version BIGINT, user_segments_version BIGINT, bronze_version BIGINT, "
    "rows BIGINT, users BIGINT, items BIGINT, min_timestamp TIMESTAMP, max_timestamp TIMESTAMP"
)
"""``gold/training_sets``: which versions each training set read and was written as."""


STAGE = Stage(
    "gold",
    run_gold,
    needs=("silver_events", "silver_items"),
    missing="no table at {path}: run the silver stage first",
)
