"""Attribution: what each recommendation shown led to, per experiment, variant and user.

Exposure
    An *exposure* is a recommendation shown: an ``impression`` event carrying a
    ``recommendation_id`` (the API logs one per response). The id names the experiment and the
    variant (groups 1 and 2 of ``batch.recommendation_id_pattern``; the API writes
    ``<experiment>:<variant>:<uuid>``). Several impression events with one id (an app logging
    the same list again) are one exposure, shown at the first of them; the user of that first
    impression is the exposed user. Ids that name no experiment (``none:default:...``, ids the
    pattern does not match) and the long-term holdout (``holdout:holdout:...``) are not
    experiments (:data:`PSEUDO_EXPERIMENTS`).

Attribution
    An event carrying the same ``recommendation_id`` with a time in ``[shown, shown + window]``
    (``experiments.attribution_window``, 30 minutes by default) is attributed to the exposure:
    ``rec_click`` and ``click`` are clicks, ``add_to_cart`` carts, ``purchase`` purchases (with
    their ``revenue``), ``dwell`` adds its ``dwell_ms``, ``dismiss`` and ``not_interested`` are
    dismissals. Events outside the window, or carrying another id, are not attributed. The
    outcome is credited to the exposed user (a visitor who logs in between the impression and
    the purchase still counts once, as the user who was shown the list).

The unit of analysis is the user (:func:`experiment_users`): the user, not the impression, is
what the assignment randomizes, so the statistics treat one user's exposures as one
observation (ratio metrics such as clicks / exposures per user get the delta method).

CUPED covariate
    ``pre_events``: the user's own events (every behavioural, transactional and feedback event
    but impressions, which the system makes, and undos; :data:`PRE_PERIOD_TYPES`) in the
    ``experiments.cuped_days`` days before their first exposure to the experiment: a measure of
    how active the user was before the treatment could change anything, which explains part of
    the variance of what they do afterwards (CUPED subtracts that part).

Interleaving
    In an interleaving experiment one list merges two rankers' items, each item carrying the
    ``team`` (ranker) that contributed it (``items[].team``). :func:`interleaving_impressions`
    credits each attributed click to the team of the clicked item (an item clicked twice
    counts once: team-draft counts clicked items, not clicks) and keeps, per impression, the
    credited clicks of every team shown.

Everything here is a pure ``DataFrame -> DataFrame`` function of silver events; the gold stage
(:func:`spark.gold.run_gold`) reads and writes the tables.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from attune.events import EVENT_TYPES, Category
from attune.features import user_column

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

    from attune.config import AttuneConfig

DAY_MS = 24 * 3600 * 1000

NO_EXPERIMENT = "none"
"""What an id naming no experiment (or not matching the pattern) parses to."""
HOLDOUT = "holdout"
PSEUDO_EXPERIMENTS = (NO_EXPERIMENT, HOLDOUT)
"""Experiment names that are no experiment: never in the user-level tables."""

CLICK_TYPES = ("rec_click", "click")
DISMISS_TYPES = ("dismiss", "not_interested")
ATTRIBUTED_TYPES = (*CLICK_TYPES, "add_to_cart", "purchase", "dwell", *DISMISS_TYPES)
"""Event types attributed to the exposure whose ``recommendation_id`` they carry."""

PRE_PERIOD_TYPES = tuple(
    name
    for name, t in EVENT_TYPES.items()
    if t.category is not Category.PROFILE and not t.undoes and name != "impression"
)
"""The user's own events counted by the CUPED covariate ``pre_events``."""

EXPERIMENT_USERS_DDL = (
    "experiment STRING, variant STRING, user STRING, exposure_date DATE, "
    "first_exposure TIMESTAMP, first_exposure_date DATE, exposures BIGINT, clicks BIGINT, "
    "carts BIGINT, purchases BIGINT, revenue DOUBLE, dwell_s DOUBLE, dismissals BIGINT, "
    "pre_events BIGINT, segment STRING, device STRING"
)
"""``gold/experiment_users``, partitioned by ``experiment`` (see :func:`experiment_users`)."""

INTERLEAVING_DDL = (
    "experiment STRING, variant STRING, user STRING, recommendation_id STRING, "
    "exposure_date DATE, shown_at TIMESTAMP, teams ARRAY<STRING>, "
    "team_clicks MAP<STRING, BIGINT>, clicks BIGINT"
)
"""``gold/experiment_teams``, partitioned by ``experiment``."""


@dataclass(frozen=True)
class AttributionParams:
    """What attribution needs from the configuration."""

    pattern: str
    """``batch.recommendation_id_pattern``: group 1 = experiment, group 2 = variant."""
    window_ms: int
    """``experiments.attribution_window`` in milliseconds."""
    cuped_days: int
    """``experiments.cuped_days``: the pre-period of the CUPED covariate."""

    @classmethod
    def from_config(cls, cfg: AttuneConfig) -> AttributionParams:
        e = cfg.experiments
        return cls(
            pattern=cfg.batch.recommendation_id_pattern,
            window_ms=int(e.attribution_window.total_seconds() * 1000),
            cuped_days=int(e.cuped_days),
        )


def experiment_column(pattern: str) -> Column:
    """The experiment a ``recommendation_id`` names (``none`` when the pattern does not match)."""
    return _group(pattern, 1)


def variant_column(pattern: str) -> Column:
    """The variant a ``recommendation_id`` names (``none`` when the pattern does not match)."""
    return _group(pattern, 2)


def _group(pattern: str, n: int) -> Column:
    from pyspark.sql import functions as F

    rec = F.col("recommendation_id")
    return F.coalesce(F.nullif(F.regexp_extract(rec, pattern, n), F.lit("")), F.lit(NO_EXPERIMENT))


def exposed_experiments(events: DataFrame, pattern: str) -> list[str]:
    """The experiments with at least one exposure among ``events`` (sorted; a small list)."""
    from pyspark.sql import functions as F

    rows = (
        events.where((F.col("type") == "impression") & F.col("recommendation_id").isNotNull())
        .select(experiment_column(pattern).alias("experiment"))
        .where(~F.col("experiment").isin(*PSEUDO_EXPERIMENTS))
        .distinct()
        .collect()
    )
    return sorted(r["experiment"] for r in rows)


def exposures(events: DataFrame, pattern: str, only: list[str] | None = None) -> DataFrame:
    """One row per exposure (see the module docstring).

    ``only``: keep these experiments (default: every experiment). Columns:
    ``recommendation_id, experiment, variant, user, shown_ms`` (epoch ms), ``shown_at``,
    ``exposure_date``, ``device`` (``context.device``) and ``items`` of the first impression.
    """
    from pyspark.sql import functions as F

    imps = events.where(
        (F.col("type") == "impression") & F.col("recommendation_id").isNotNull()
    ).select(
        "recommendation_id",
        experiment_column(pattern).alias("experiment"),
        variant_column(pattern).alias("variant"),
        user_column().alias("user"),
        F.unix_millis("timestamp").alias("shown_ms"),
        F.col("timestamp").alias("shown_at"),
        F.col("event_date").alias("exposure_date"),
        F.col("context.device").alias("device"),
        "items",
        "event_id",
    )
    imps = imps.where(F.col("user").isNotNull() & ~F.col("experiment").isin(*PSEUDO_EXPERIMENTS))
    if only is not None:
        imps = imps.where(F.col("experiment").isin(*only))
    cols = [c for c in imps.columns if c not in ("recommendation_id", "event_id")]
    first = imps.groupBy("recommendation_id").agg(
        F.min_by(F.struct(*cols), F.struct("shown_ms", "event_id")).alias("e")
    )
    return first.select("recommendation_id", *[F.col(f"e.{c}").alias(c) for c in cols])


def attributed_events(events: DataFrame, shown: DataFrame, window_ms: int) -> DataFrame:
    """The events attributed to the exposures ``shown`` (:func:`exposures`): one row per event,
    ``recommendation_id, event_id, type, ts_ms, revenue, dwell_ms, items``."""
    from pyspark.sql import functions as F

    outcomes = events.where(
        F.col("recommendation_id").isNotNull() & F.col("type").isin(*ATTRIBUTED_TYPES)
    ).select(
        "recommendation_id",
        "event_id",
        "type",
        F.unix_millis("timestamp").alias("ts_ms"),
        "revenue",
        "dwell_ms",
        "items",
    )
    ts, at = F.col("ts_ms"), F.col("shown_ms")
    return (
        outcomes.join(shown.select("recommendation_id", "shown_ms"), "recommendation_id")
        .where((ts >= at) & (ts <= at + F.lit(window_ms)))
        .drop("shown_ms")
    )


def outcomes_per_exposure(attributed: DataFrame) -> DataFrame:
    """``recommendation_id, clicks, carts, purchases, revenue, dwell_s, dismissals`` summed
    over the :func:`attributed_events` of each exposure."""
    from pyspark.sql import functions as F

    t = F.col("type")
    return attributed.groupBy("recommendation_id").agg(
        F.count(F.when(t.isin(*CLICK_TYPES), 1)).alias("clicks"),
        F.count(F.when(t == "add_to_cart", 1)).alias("carts"),
        F.count(F.when(t == "purchase", 1)).alias("purchases"),
        F.sum(F.when(t == "purchase", F.coalesce("revenue", F.lit(0.0)))).alias("revenue"),
        (F.sum(F.when(t == "dwell", F.col("dwell_ms"))) / 1000.0).alias("dwell_s"),
        F.count(F.when(t.isin(*DISMISS_TYPES), 1)).alias("dismissals"),
    )


def pre_period_events(events: DataFrame, firsts: DataFrame, cuped_days: int) -> DataFrame:
    """``firsts`` (``experiment, variant, user, first_ms``) with ``pre_events``: the user's
    :data:`PRE_PERIOD_TYPES` events in ``[first_ms - cuped_days, first_ms)``."""
    from pyspark.sql import functions as F

    activity = events.where(F.col("type").isin(*PRE_PERIOD_TYPES)).select(
        user_column().alias("user"), F.unix_millis("timestamp").alias("ts_ms")
    )
    ts, first = F.col("ts_ms"), F.col("first_ms")
    before = (ts < first) & (ts >= first - F.lit(cuped_days * DAY_MS))
    return (
        firsts.join(activity, "user", "left")
        .groupBy(*firsts.columns)
        .agg(F.count(F.when(before, 1)).alias("pre_events"))
    )


def experiment_users(
    events: DataFrame,
    params: AttributionParams,
    segments: DataFrame | None = None,
    only: list[str] | None = None,
) -> DataFrame:
    """``gold/experiment_users``: per experiment, variant, user and exposure day, what the
    user's exposures of that day led to (:data:`EXPERIMENT_USERS_DDL` columns).

    ``exposure_date`` is the day the exposures were shown; their outcomes count on that day
    even when they happened after midnight. A user's data up to a day ``D`` is the sum of their
    rows with ``exposure_date <= D``: that is how the report computes each day's cumulative
    look without a table per day. Per user (the same on each of their rows):
    ``first_exposure`` (time) and ``first_exposure_date``; ``pre_events``, the CUPED covariate;
    ``segment``, the user's RFM segment in the snapshot of the day before the first exposure
    (what was known before the treatment; null without one; ``segments``: ``user, segment,
    as_of_date`` snapshots, None = no segments); ``device``, ``context.device`` of the first
    exposure. A user exposed to two variants of one experiment has rows under both.

    ``only``: the experiments to compute (default: all); ``events``: silver events.
    """
    from pyspark.sql import functions as F

    shown = exposures(events, params.pattern, only)
    per_rec = outcomes_per_exposure(attributed_events(events, shown, params.window_ms))
    key = ["experiment", "variant", "user"]
    daily = (
        shown.join(per_rec, "recommendation_id", "left")
        .groupBy(*key, "exposure_date")
        .agg(
            F.count("*").alias("exposures"),
            F.coalesce(F.sum("clicks"), F.lit(0)).cast("long").alias("clicks"),
            F.coalesce(F.sum("carts"), F.lit(0)).cast("long").alias("carts"),
            F.coalesce(F.sum("purchases"), F.lit(0)).cast("long").alias("purchases"),
            F.coalesce(F.sum("revenue"), F.lit(0.0)).cast("double").alias("revenue"),
            F.coalesce(F.sum("dwell_s"), F.lit(0.0)).cast("double").alias("dwell_s"),
            F.coalesce(F.sum("dismissals"), F.lit(0)).cast("long").alias("dismissals"),
        )
    )
    first = shown.groupBy(*key).agg(
        F.min_by(
            F.struct("shown_ms", "shown_at", "exposure_date", "device"),
            F.struct("shown_ms", "recommendation_id"),
        ).alias("f")
    )
    firsts = first.select(
        *key,
        F.col("f.shown_ms").alias("first_ms"),
        F.col("f.shown_at").alias("first_exposure"),
        F.col("f.exposure_date").alias("first_exposure_date"),
        F.col("f.device").alias("device"),
    )
    users = pre_period_events(events, firsts, params.cuped_days)
    if segments is not None:
        snap = segments.select(
            "user",
            F.date_add("as_of_date", 1).alias("first_exposure_date"),
            F.col("segment"),
        )
        users = users.join(snap, ["user", "first_exposure_date"], "left")
    else:
        users = users.withColumn("segment", F.lit(None).cast("string"))
    return daily.join(users, key).select(
        *key,
        "exposure_date",
        "first_exposure",
        "first_exposure_date",
        "exposures",
        "clicks",
        "carts",
        "purchases",
        "revenue",
        "dwell_s",
        "dismissals",
        F.col("pre_events").cast("long").alias("pre_events"),
        "segment",
        "device",
    )


def has_teams(events: DataFrame) -> bool:
    """Whether the events' items carry ``team`` (the field of interleaved lists)."""
    from pyspark.sql.types import ArrayType, StructType

    items = events.schema["items"].dataType
    return (
        isinstance(items, ArrayType)
        and isinstance(items.elementType, StructType)
        and "team" in items.elementType.fieldNames()
    )


def interleaving_impressions(
    events: DataFrame, params: AttributionParams, only: list[str] | None = None
) -> DataFrame | None:
    """``gold/experiment_teams``: one row per exposure whose items carry a ``team``
    (:data:`INTERLEAVING_DDL` columns): ``teams`` shown (sorted), ``team_clicks`` (every team
    shown: the distinct clicked items it contributed, among the clicks attributed to the
    exposure) and ``clicks``, their sum. None when the events' schema has no ``team``."""
    from pyspark.sql import functions as F

    if not has_teams(events):
        return None
    shown = exposures(events, params.pattern, only)
    items = (
        shown.select(
            "recommendation_id",
            F.explode("items").alias("item"),
        )
        .where(F.col("item.team").isNotNull())
        .groupBy("recommendation_id", F.col("item.item_id").alias("item_id"))
        .agg(F.first("item.team").alias("team"))
    )
    clicked = (
        attributed_events(events, shown, params.window_ms)
        .where(F.col("type").isin(*CLICK_TYPES))
        .select("recommendation_id", F.explode("items.item_id").alias("item_id"))
        .distinct()
        .withColumn("clicked", F.lit(1))
    )
    per_team = (
        items.join(clicked, ["recommendation_id", "item_id"], "left")
        .groupBy("recommendation_id", "team")
        .agg(F.count("clicked").alias("n"))
    )
    per_rec = per_team.groupBy("recommendation_id").agg(
        F.array_sort(F.collect_list("team")).alias("teams"),
        F.map_from_entries(F.collect_list(F.struct("team", "n"))).alias("team_clicks"),
        F.sum("n").cast("long").alias("clicks"),
    )
    return shown.join(per_rec, "recommendation_id").select(
        "experiment",
        "variant",
        "user",
        "recommendation_id",
        "exposure_date",
        "shown_at",
        "teams",
        F.col("team_clicks").cast("map<string,bigint>").alias("team_clicks"),
        "clicks",
    )


def experiments_predicate(experiments: list[str]) -> str:
    """A SQL predicate selecting the partitions of ``experiments`` (for ``replaceWhere``)."""
    quoted = ", ".join("'" + e.replace("\\", "\\\\").replace("'", "\\'") + "'" for e in experiments)
    return f"experiment IN ({quoted})"
