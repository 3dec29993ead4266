"""Feature definitions shared by the layers, written once.

**Online features** (the speed layer and the nightly batch), as pure ``DataFrame -> DataFrame``
functions. The stream applies the *row-level* ones (:func:`interactions`, :func:`with_weights`,
:func:`with_affinity_units`, :func:`with_flags`, :func:`with_trending_slices`, bundled by
:func:`online_rows`) to every micro-batch and hands the rows to the Redis write script
(:mod:`attune.online_store`), which adds them up idempotently; the batch layer runs the same
row-level functions plus :func:`with_genres` over the whole bronze table (:func:`feature_rows`)
and the *aggregations* below (:func:`recent_items`, :func:`genre_affinities`,
:func:`user_counters`, ...) to recompute, from scratch, exactly what the stream accumulated, and
to correct it.

Inputs are events with the columns of :func:`attune.events.spark_schema` (the bronze table has
them, plus partition and Kafka columns). Nothing here reads a clock: every time is an event
time, and "as of" times are parameters.

**Item content** (the batch's ``gold/items`` and the models): how a title becomes tokens, where a
title's year is, how ids and labels (genres, tags) are cleaned. Each rule is one set of
constants with a pure-Python reference and the Spark expression built from the same constants
(see :func:`title_tokens`).

Which event types do what is fixed here, next to the definitions:
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from attune.bandits.registry import configured_policies
from attune.experiments.bandit import POLICY_PREFIX as EXPERIMENT_PREFIX
from attune.experiments.live import LIVE_COUNTS
from attune.online_store import BUCKET_HALF_LIVES, SCALE

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

    from attune.config import AttuneConfig

RECENT_TYPES = (
    "item_view",
    "click",
    "rec_click",
    "dwell",
    "add_to_cart",
    "checkout",
    "purchase",
    "rating",
)
"""Interactions that put an item in the user's recent items."""
ENGAGEMENT_TYPES = ("item_view", "click", "rec_click", "add_to_cart", "purchase")
"""Interactions that count for popularity and trending, and as a click on the item's genres."""
IMPRESSION_TYPES = ("impression",)
"""An item was shown: counts toward "shown but never clicked" genres."""
NEGATIVE_TYPES = ("dismiss", "not_interested")
"""Explicit negative feedback: the item goes to the user's dismissed items."""
UNDO_TYPES = ("undo_feedback",)
"""Takes back :data:`NEGATIVE_TYPES` of its items: a dismissal is in force only while it is later
than the item's latest undo (equal times: undone; see :func:`dismissed_items`). A correction, not
activity: an undo is no interaction, has no affinity weight and carries no event-level updates
(counters, session)."""

__doc__ = (__doc__ or "") + (
    f"""
* recent items: {", ".join(RECENT_TYPES)};
* popularity, trending and genre engagement: {", ".join(ENGAGEMENT_TYPES)};
* genre impressions: {", ".join(IMPRESSION_TYPES)}; dismissed items: {", ".join(NEGATIVE_TYPES)},
  unless undone later by {", ".join(UNDO_TYPES)};
* affinities: every type with a weight in ``speed.features.affinity_weights``;
* counters and session state: every event that may be used for personalization, but undos.
"""
)

CATALOG_DDL = "item_id STRING, genres ARRAY<STRING>"
"""Columns an item catalog must have for :func:`with_genres` (more are ignored)."""


@dataclass(frozen=True)
class FeatureParams:
    """The explicit parameters of the feature functions (from ``speed.features``)."""

    half_life_ms: int
    affinity_weights: Mapping[str, float]
    rating_neutral: float
    trending_windows_s: tuple[int, ...]
    trending_slices: int
    recent_items: int
    dismissed_items: int
    session_gap_ms: int
    ignore_min_impressions: int
    # placements of bandit decisions (attune.bandits.registry): their item is an arm (a content
    # variant, a message), not a catalog item, see with_bandit_arms
    bandit_placements: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, cfg: AttuneConfig) -> FeatureParams:
        f = cfg.speed.features
        return cls(
            half_life_ms=int(f.affinity_half_life.total_seconds() * 1000),
            affinity_weights=dict(f.affinity_weights),
            rating_neutral=f.rating_neutral,
            trending_windows_s=tuple(int(w.total_seconds()) for w in f.trending_windows),
            trending_slices=f.trending_slices,
            recent_items=f.recent_items,
            dismissed_items=f.dismissed_items,
            session_gap_ms=int(f.session_gap.total_seconds() * 1000),
            ignore_min_impressions=f.ignore_min_impressions,
            bandit_placements=tuple(sorted(configured_policies(cfg))),
        )


# ----------------------------------------------------------------------------------------
# Who an event is about, and whether it withdraws consent (the stream and the batch)


def user_column() -> Column:
    """The user an event belongs to: the pseudonymized user id, else the anonymous id.

    The events topic's key, the online store's ``{u}`` and the batch tables' ``user``.
    """
    from pyspark.sql import functions as F

    return F.coalesce(F.col("user_id"), F.col("anonymous_id"))


def withdraws_consent() -> Column:
    """True for a ``consent_update`` that withdraws personalization consent: the user's
    features are forgotten, and nothing from before it counts any more."""
    from pyspark.sql import functions as F

    return (F.col("type") == "consent_update") & ~F.col("consent.personalization")


# ----------------------------------------------------------------------------------------
# Row level (the stream and the batch)


def personalizing(events: DataFrame) -> DataFrame:
    """Events that may feed personalization features.

    Those whose resolved consent allows personalization, plus the ``consent_update`` events
    that withdraw it: they make the online store forget the user's features.
    """
    from pyspark.sql import functions as F

    return events.where(F.col("consent.personalization") | withdraws_consent())


def interactions(events: DataFrame) -> DataFrame:
    """One row per item of each event (one row, without item, for events without items).

    Columns: ``user`` (pseudonymized user id, else anonymous id: the events topic's key),
    ``event_id``, ``iid`` (interaction id ``<event_id>#<position>``, unique), ``type``,
    ``ts_ms`` (event time, epoch ms), ``session_id``, ``item_id``, ``category``, ``position``,
    ``rating``, ``event_row`` (the row that carries the event-level updates: counters, session;
    none for an undo, which has no event-level updates), ``forget`` (a consent_update
    withdrawing personalization consent), ``recommendation_id`` and ``placement`` (the event's
    ``context.placement``).
    """
    from pyspark.sql import functions as F

    exploded = events.select(
        user_column().alias("user"),
        "event_id",
        "type",
        F.unix_millis("timestamp").alias("ts_ms"),
        "session_id",
        "rating",
        withdraws_consent().alias("forget"),
        "recommendation_id",
        F.col("context.placement").alias("placement"),
        F.posexplode_outer("items").alias("pos", "item"),
    )
    return exploded.select(
        "user",
        "event_id",
        F.concat("event_id", F.lit("#"), F.coalesce("pos", F.lit(0)).cast("string")).alias("iid"),
        "type",
        "ts_ms",
        "session_id",
        F.col("item.item_id").alias("item_id"),
        F.col("item.category").alias("category"),
        F.col("item.position").alias("position"),
        "rating",
        (F.coalesce(F.col("pos") == 0, F.lit(True)) & ~F.col("type").isin(*UNDO_TYPES)).alias(
            "event_row"
        ),
        "forget",
        "recommendation_id",
        "placement",
    )


def with_genres(rows: DataFrame, catalog: DataFrame) -> DataFrame:
    """Add ``genres``: the catalog's genres of the item, else the event's item category.

    ``catalog`` has at least :data:`CATALOG_DDL`'s columns, one row per item; it is small and
    broadcast.
    """
    from pyspark.sql import functions as F

    cat = catalog.select(F.col("item_id").alias("_cat_item"), F.col("genres").alias("_cat_g"))
    joined = rows.join(F.broadcast(cat), rows["item_id"] == cat["_cat_item"], "left")
    fallback = F.when(F.col("category").isNotNull(), F.array("category"))
    genres = F.coalesce(
        F.when(F.size("_cat_g") > 0, F.col("_cat_g")), fallback, F.array().cast("array<string>")
    )
    return joined.withColumn("genres", F.array_distinct(genres)).drop("_cat_item", "_cat_g")


def with_weights(rows: DataFrame, weights: Mapping[str, float], rating_neutral: float) -> DataFrame:
    """Add ``weight``: the interaction's affinity weight (0 for rows without an item).

    A rating weighs ``weights["rating"] * (rating - rating_neutral) / rating_neutral``, so a 10
    counts as much as ``weights["rating"]``, a neutral rating not at all, a 0 against.
    """
    from pyspark.sql import functions as F

    expr: Column = F.lit(0.0)
    for event_type, w in sorted(weights.items()):
        if event_type == "rating":
            value = F.lit(float(w)) * (F.col("rating") - rating_neutral) / float(rating_neutral)
            value = F.coalesce(value, F.lit(0.0))
        else:
            value = F.lit(float(w))
        expr = F.when(F.col("type") == event_type, value).otherwise(expr)
    return rows.withColumn("weight", F.when(F.col("item_id").isNotNull(), expr).otherwise(0.0))


def with_affinity_units(rows: DataFrame, half_life_ms: int) -> DataFrame:
    """Add ``aff_bucket`` and ``aff_units``: the weight as integer units of its bucket.

    ``aff_units = round(weight * SCALE * 2 ** ((ts_ms - aff_bucket * span) / half_life_ms))``
    with ``span = BUCKET_HALF_LIVES * half_life_ms`` (see :mod:`attune.online_store`).
    """
    from pyspark.sql import functions as F

    span = BUCKET_HALF_LIVES * half_life_ms
    bucket = F.floor(F.col("ts_ms") / F.lit(span)).cast("long")
    offset = (F.col("ts_ms") - bucket * F.lit(span)) / F.lit(float(half_life_ms))
    units = F.round(F.col("weight") * F.lit(float(SCALE)) * F.pow(F.lit(2.0), offset)).cast("long")
    return rows.withColumn("aff_bucket", bucket).withColumn("aff_units", units)


def with_flags(rows: DataFrame) -> DataFrame:
    """Add ``is_recent``, ``is_engagement``, ``is_impression``, ``is_negative``, ``is_undo``."""
    from pyspark.sql import functions as F

    has_item = F.col("item_id").isNotNull()
    return rows.select(
        "*",
        (has_item & F.col("type").isin(*RECENT_TYPES)).alias("is_recent"),
        (has_item & F.col("type").isin(*ENGAGEMENT_TYPES)).alias("is_engagement"),
        (has_item & F.col("type").isin(*IMPRESSION_TYPES)).alias("is_impression"),
        (has_item & F.col("type").isin(*NEGATIVE_TYPES)).alias("is_negative"),
        (has_item & F.col("type").isin(*UNDO_TYPES)).alias("is_undo"),
    )


def slice_ms(window_s: int, slices: int) -> int:
    """Length of one trending slice: windows slide by ``window / slices``."""
    return window_s * 1000 // slices


def with_trending_slices(rows: DataFrame, windows_s: Sequence[int], slices: int) -> DataFrame:
    """Add ``trend_slices``: ``"<window_s>:<slice index>"`` per window, for engagements."""
    from pyspark.sql import functions as F

    parts = [
        F.concat(
            F.lit(f"{w}:"),
            F.floor(F.col("ts_ms") / F.lit(slice_ms(w, slices))).cast("long").cast("string"),
        )
        for w in windows_s
    ]
    value = F.array(*parts) if parts else F.array().cast("array<string>")
    return rows.withColumn(
        "trend_slices",
        F.when(F.col("is_engagement"), value).otherwise(F.array().cast("array<string>")),
    )


def with_bandit_arms(rows: DataFrame, placements: Sequence[str]) -> DataFrame:
    """Add ``arm``: on a row whose placement is a bandit decision point's (``placements``, and
    every ``experiment:<id>``: an experiment bandit's decision), the item is the arm the bandit
    showed (a content variant, a message id, a variant), not a catalog item.

    Such a row moves its item id to ``arm`` and keeps no ``item_id``, so every item feature
    (affinities, recent items, trending, item statistics) leaves it out, in the stream and in
    the nightly batch alike: a clicked banner variant is no trending title. The speed layer
    counts these rows for the bandit instead (:mod:`attune.bandits.feedback`).
    """
    from pyspark.sql import functions as F

    # an experiment's decision impression (placement experiment:<id>) names its variant
    is_arm = F.coalesce(F.col("placement").startswith(EXPERIMENT_PREFIX), F.lit(False))
    if placements:
        is_arm = is_arm | F.coalesce(F.col("placement").isin(*placements), F.lit(False))
    return rows.withColumn("arm", F.when(is_arm, F.col("item_id"))).withColumn(
        "item_id", F.when(~is_arm, F.col("item_id"))
    )


def stream_rows(events: DataFrame, params: FeatureParams) -> DataFrame:
    """Every row-level function but the catalog join, in order (see :func:`feature_rows`)."""
    rows = with_bandit_arms(interactions(personalizing(events)), params.bandit_placements)
    rows = with_weights(rows, params.affinity_weights, params.rating_neutral)
    rows = with_affinity_units(rows, params.half_life_ms)
    rows = with_flags(rows)
    return with_trending_slices(rows, params.trending_windows_s, params.trending_slices)


def feature_rows(events: DataFrame, catalog: DataFrame, params: FeatureParams) -> DataFrame:
    """What the aggregations below start from: :func:`stream_rows` with ``genres``."""
    return with_genres(stream_rows(events, params), catalog)


def online_rows(
    events: DataFrame,
    params: FeatureParams | DataFrame,
    legacy_params: FeatureParams | None = None,
) -> DataFrame:
    """:func:`stream_rows` as ``(user, ts_ms, iid, payload)``: what the Redis writer applies.

    (``online_rows(events, catalog, params)``, the earlier form, still works; the catalog is
    not needed any more, see below.)

    ``payload`` is the compact JSON the write script of :mod:`attune.online_store` reads. The
    catalog join of :func:`with_genres` is not in it: the write script looks each item's genres
    up in the catalog mirror in Redis (``P:i:{item}:meta``) with the same rule (catalog genres,
    else the event's item category), so this plan has no join and is built once per query, and
    a catalog change reaches the next event without restarting anything.

    ``rc`` is the event's ``recommendation_id`` on the event row of the types that today's live
    experiment counts count (:data:`attune.experiments.live.LIVE_COUNTS`); the writer parses it
    into what the script counts (:func:`attune.experiments.live.live_fields`).

    ``ar`` and ``pl`` are the arm and the placement (the policy name) of a bandit decision's
    impression or click (:func:`with_bandit_arms`); the online writer hands them to
    :mod:`attune.bandits.feedback`, the write script ignores them.
    """
    from pyspark.sql import functions as F

    def flag(name: str) -> Column:
        return F.when(F.col(name), F.lit(1))

    payload = F.to_json(
        F.struct(
            F.col("iid").alias("i"),
            F.col("ts_ms").alias("t"),
            F.col("type").alias("y"),
            flag("event_row").alias("x"),
            F.col("session_id").alias("s"),
            F.col("item_id").alias("it"),
            F.col("category").alias("ca"),
            F.when(F.col("aff_units") != 0, F.col("aff_bucket")).alias("b"),
            F.when(F.col("aff_units") != 0, F.col("aff_units").cast("string")).alias("a"),
            flag("is_recent").alias("r"),
            flag("is_engagement").alias("n"),
            flag("is_impression").alias("m"),
            flag("is_negative").alias("d"),
            flag("is_undo").alias("u"),
            F.when(F.size("trend_slices") > 0, F.col("trend_slices")).alias("tr"),
            flag("forget").alias("c"),
            F.when(
                F.col("event_row") & F.col("type").isin(*LIVE_COUNTS), F.col("recommendation_id")
            ).alias("rc"),
            F.col("arm").alias("ar"),
            F.when(F.col("arm").isNotNull(), F.col("placement")).alias("pl"),
        )
    )
    if not isinstance(params, FeatureParams):
        if legacy_params is None:
            raise TypeError("online_rows(events, params): params must be a FeatureParams")
        params = legacy_params
    return stream_rows(events, params).select("user", "ts_ms", "iid", payload.alias("payload"))


# ----------------------------------------------------------------------------------------
# Aggregations (the batch layer; they define what the stream's running updates add up to)


def effective_rows(rows: DataFrame) -> DataFrame:
    """Rows that count: drops a user's rows up to their latest consent withdrawal.

    The online store forgets a user's features when they withdraw personalization consent and
    ignores their earlier events from then on; the aggregations do the same.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    last_forget = F.max(F.when(F.col("forget"), F.col("ts_ms"))).over(Window.partitionBy("user"))
    return (
        rows.withColumn("_forgot_at", last_forget)
        .where(F.col("_forgot_at").isNull() | (F.col("ts_ms") > F.col("_forgot_at")))
        .drop("_forgot_at")
    )


def recent_items(rows: DataFrame, n: int) -> DataFrame:
    """``user, rank, item_id, type, ts_ms``: each user's last ``n`` distinct items, rank 1 newest.

    An item's type and time are those of its latest interaction (ties: highest ``iid``); items
    tie-break by id, descending, like Redis' ``ZREVRANGE``.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    latest = (
        effective_rows(rows)
        .where("is_recent")
        .groupBy("user", "item_id")
        .agg(F.max(F.struct("ts_ms", "iid", "type")).alias("m"))
        .select("user", "item_id", "m.type", "m.ts_ms")
    )
    order = Window.partitionBy("user").orderBy(F.desc("ts_ms"), F.desc("item_id"))
    return (
        latest.withColumn("rank", F.row_number().over(order))
        .where(F.col("rank") <= n)
        .select("user", "rank", "item_id", "type", "ts_ms")
    )


def affinity_units(rows: DataFrame) -> DataFrame:
    """``user, aff_bucket, genre, units``: the integer sums the online store holds.

    Keeps, like the store, only each user's newest bucket and the one before it.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    weighted = (
        effective_rows(rows)
        .where((F.col("aff_units") != 0) & (F.size("genres") > 0))
        .select("user", "aff_bucket", F.explode("genres").alias("genre"), "aff_units")
    )
    summed = weighted.groupBy("user", "aff_bucket", "genre").agg(F.sum("aff_units").alias("units"))
    newest = F.max("aff_bucket").over(Window.partitionBy("user"))
    return (
        summed.withColumn("_newest", newest)
        .where(F.col("aff_bucket") >= F.col("_newest") - 1)
        .drop("_newest")
    )


def genre_affinities(rows: DataFrame, half_life_ms: int, as_of_ms: int | None = None) -> DataFrame:
    """``user, genre, affinity``: sum of ``weight * 2 ** (-(as_of - t) / half_life)``.

    ``as_of_ms`` defaults to each user's latest event time, as :func:`read_user_features` does.
    """
    from pyspark.sql import functions as F

    span = BUCKET_HALF_LIVES * half_life_ms
    units = affinity_units(rows)
    if as_of_ms is None:
        last = user_activity(rows).select("user", F.col("last_ms").alias("_as_of"))
        units = units.join(last, "user")
    else:
        units = units.withColumn("_as_of", F.lit(as_of_ms))
    value = (
        F.col("units")
        * F.pow(
            F.lit(2.0),
            (F.col("aff_bucket") * F.lit(span) - F.col("_as_of")) / F.lit(float(half_life_ms)),
        )
        / F.lit(float(SCALE))
    )
    return units.groupBy("user", "genre").agg(F.sum(value).alias("affinity"))


def user_counters(rows: DataFrame) -> DataFrame:
    """``user, type, count``: events per type (one per event, not per item)."""
    return effective_rows(rows).where("event_row").groupBy("user", "type").count()


def user_activity(rows: DataFrame) -> DataFrame:
    """``user, events, first_ms, last_ms``."""
    from pyspark.sql import functions as F

    return (
        effective_rows(rows)
        .where("event_row")
        .groupBy("user")
        .agg(
            F.count("*").alias("events"),
            F.min("ts_ms").alias("first_ms"),
            F.max("ts_ms").alias("last_ms"),
        )
    )


def session_state(rows: DataFrame, gap_ms: int) -> DataFrame:
    """``user, session_id, start_ms, last_ms, events``: each user's latest session.

    A session is the events sharing a ``session_id``; events without one are split into
    sessions by ``gap_ms`` of inactivity and named ``t<start_ms>``. (The stream applies the
    same rule incrementally; the two agree unless sessions interleave in time.)
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    ev = effective_rows(rows).where("event_row").select("user", "session_id", "ts_ms", "iid")
    order = Window.partitionBy("user").orderBy("ts_ms", "iid")
    gapped = ev.withColumn("_prev", F.lag("ts_ms").over(order)).withColumn(
        "_new", F.col("_prev").isNull() | (F.col("ts_ms") - F.col("_prev") > gap_ms)
    )
    gapped = gapped.withColumn(
        "_start",
        F.max(F.when(F.col("_new"), F.col("ts_ms"))).over(
            order.rowsBetween(Window.unboundedPreceding, Window.currentRow)
        ),
    )
    sid = F.coalesce("session_id", F.concat(F.lit("t"), F.col("_start").cast("string")))
    sessions = gapped.withColumn("sid", sid)
    latest = sessions.groupBy("user").agg(F.max(F.struct("ts_ms", "iid", "sid")).alias("m"))
    return (
        sessions.join(latest.select("user", F.col("m.sid").alias("_latest")), "user")
        .where(F.col("sid") == F.col("_latest"))
        .groupBy("user", F.col("sid").alias("session_id"))
        .agg(
            F.min("ts_ms").alias("start_ms"),
            F.max("ts_ms").alias("last_ms"),
            F.count("*").alias("events"),
        )
    )


def dismissed_items(rows: DataFrame, n: int) -> DataFrame:
    """``user, rank, item_id, ts_ms``: the dismissals in force among the last ``n``, rank 1 newest.

    What the online store keeps and its reader returns: the ``n`` items with the newest latest
    dismissal and the ``n`` with the newest latest undo (:data:`UNDO_TYPES`); a dismissal is in
    force when it is later than the item's undo among those, if any. Top-``n`` of maxima of
    event times: the result does not depend on the order or repetition of the rows.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    def newest(flag: str, alias: str) -> DataFrame:
        latest = (
            effective_rows(rows)
            .where(flag)
            .groupBy("user", "item_id")
            .agg(F.max("ts_ms").alias(alias))
        )
        order = Window.partitionBy("user").orderBy(F.desc(alias), F.desc("item_id"))
        return latest.withColumn("_r", F.row_number().over(order)).where(F.col("_r") <= n)

    in_force = (
        newest("is_negative", "ts_ms")
        .drop("_r")
        .join(newest("is_undo", "_undo_ms").drop("_r"), ["user", "item_id"], "left")
        .where(F.col("_undo_ms").isNull() | (F.col("ts_ms") > F.col("_undo_ms")))
    )
    order = Window.partitionBy("user").orderBy(F.desc("ts_ms"), F.desc("item_id"))
    return in_force.withColumn("rank", F.row_number().over(order)).select(
        "user", "rank", "item_id", "ts_ms"
    )


def genre_exposure(rows: DataFrame) -> DataFrame:
    """``user, genre, impressions, engagements`` per genre of the items involved."""
    from pyspark.sql import functions as F

    exploded = (
        effective_rows(rows)
        .where(F.col("is_impression") | F.col("is_engagement"))
        .select("user", "is_impression", "is_engagement", F.explode("genres").alias("genre"))
    )
    return exploded.groupBy("user", "genre").agg(
        F.count(F.when(F.col("is_impression"), 1)).alias("impressions"),
        F.count(F.when(F.col("is_engagement"), 1)).alias("engagements"),
    )


def ignored_genres(exposure: DataFrame, min_impressions: int) -> DataFrame:
    """``user, genre``: genres shown at least ``min_impressions`` times and never engaged with."""
    from pyspark.sql import functions as F

    return exposure.where(
        (F.col("impressions") >= min_impressions) & (F.col("engagements") == 0)
    ).select("user", "genre")


def popularity(rows: DataFrame) -> DataFrame:
    """``item_id, engagements`` of all time.

    Item aggregates are not personal: withdrawing consent forgets the user's own features but
    does not un-count their past engagements, so this and :func:`trending` use every row.
    """
    from pyspark.sql import functions as F

    return rows.where("is_engagement").groupBy("item_id").agg(F.count("*").alias("engagements"))


def trending(rows: DataFrame, window_s: int, slices: int, as_of_ms: int) -> DataFrame:
    """``item_id, engagements`` in the sliding window of ``window_s`` ending at ``as_of_ms``.

    The window is made of whole slices (``window / slices`` long): the slice holding
    ``as_of_ms`` and the ``slices - 1`` before it.
    """
    from pyspark.sql import functions as F

    length = slice_ms(window_s, slices)
    last = as_of_ms // length
    idx = F.floor(F.col("ts_ms") / F.lit(length))
    return (
        rows.where(F.col("is_engagement") & (idx > last - slices) & (idx <= last))
        .groupBy("item_id")
        .agg(F.count("*").alias("engagements"))
    )


# ----------------------------------------------------------------------------------------
# Item content (the batch's gold/items and the models)
#
# Each rule below is written once: regular-expression constants, a pure-Python reference (what
# the models run while they build their item table, which is exported inside the SavedModel)
# and the Spark expression (what the batch writes to gold/items), built from the same sets of
# characters. Python's ``re`` and Java's ``java.util.regex`` spell some classes differently;
# the sets are the same (Unicode general categories), so both agree for every character of
# Unicode 13, what the JVM's regex tables know (Python 3.11 knows Unicode 14: characters added
# since may differ).

WHITESPACE = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680"
    "\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)
"""What ``str.strip()`` and Python's ``\\s`` remove: the characters :meth:`str.isspace` accepts.
Java's ``\\s`` is ASCII only and Spark's ``trim`` removes spaces alone, so the Spark side spells
the set out (:data:`WHITESPACE_CLASS`)."""

WHITESPACE_CLASS = "[" + "".join(f"\\u{ord(c):04x}" for c in WHITESPACE) + "]"
""":data:`WHITESPACE` as a character class both Python's ``re`` and Java's regex read."""

TITLE_YEAR = re.compile(r"\s*\((\d{4})\)\s*$")
"""A trailing ``(YYYY)`` in a title (``Dune (2021)``), group 1 the year: where a catalog without
a year column keeps it, and what :func:`title_tokens` leaves out (a year is no word of the
title; the year is a feature of its own)."""
_TITLE_YEAR_JAVA = WHITESPACE_CLASS + r"*\(\p{Nd}{4}\)" + WHITESPACE_CLASS + "*$"
# Python's \d is Unicode's decimal digits (Nd), Java's \d only 0-9: \p{Nd} is Python's \d.

TITLE_TOKEN = re.compile(r"[^\W_]+")
"""A title word: a run of letters and digits (Unicode categories L and N), so punctuation,
symbols, spaces and ``_`` separate words and accents stay (``café`` is one word)."""
_TITLE_TOKEN_JAVA = r"[\p{L}\p{N}]+"


def title_tokens(title: str | None) -> list[str]:
    """The words of a title: lower-cased, in order, repeats kept, without a trailing ``(YYYY)``.

    ``"Amélie (2001)"`` -> ``["amélie"]``; ``"Se7en: Part 2 (1995)"`` -> ``["se7en", "part",
    "2"]``. The reference implementation; :func:`title_tokens_column` is the same rule in Spark.
    """
    if not title:
        return []
    return TITLE_TOKEN.findall(TITLE_YEAR.sub("", title).lower())


def title_tokens_column(title: Column | str) -> Column:
    """:func:`title_tokens` of a string column, as an ``array<string>`` (empty for null)."""
    from pyspark.sql import functions as F

    text = F.coalesce(F.col(title) if isinstance(title, str) else title, F.lit(""))
    lowered = F.lower(F.regexp_replace(text, _TITLE_YEAR_JAVA, ""))
    return F.regexp_extract_all(lowered, F.lit(_TITLE_TOKEN_JAVA), 0)


def clean_text(value: object) -> str | None:
    """An id or label as text without surrounding whitespace (:data:`WHITESPACE`); None when
    missing or blank."""
    if value is None:
        return None
    return str(value).strip() or None


def clean_text_column(value: Column | str) -> Column:
    """:func:`clean_text` of a string column."""
    from pyspark.sql import functions as F

    col = F.col(value) if isinstance(value, str) else value
    edges = f"^{WHITESPACE_CLASS}+|{WHITESPACE_CLASS}+$"
    return F.nullif(F.regexp_replace(col, edges, ""), F.lit(""))


def clean_labels(values: Iterable[object]) -> tuple[str, ...]:
    """Labels (genres, tags) through :func:`clean_text`, blanks and repeats dropped, in order."""
    return tuple(dict.fromkeys(t for v in values if (t := clean_text(v)) is not None))


def clean_labels_column(values: Column | str) -> Column:
    """:func:`clean_labels` of an ``array<string>`` column (null stays null)."""
    from pyspark.sql import functions as F

    col = F.col(values) if isinstance(values, str) else values
    cleaned = F.transform(col, clean_text_column)
    return F.array_distinct(F.filter(cleaned, lambda label: label.isNotNull()))
