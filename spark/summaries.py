"""Summaries of the lake's tables for a person reading them (the notebooks' numbers).

The notebooks in ``notebooks/`` hold no logic of their own: what they show is computed here,
as pure ``DataFrame -> DataFrame`` functions over the batch layer's tables (see
:mod:`spark.tables`), plus the arithmetic of one confidence interval.

Long tail
    Recommendation data is concentrated: a few users do most of the events and a few items get
    most of the interactions. :func:`long_tail` ranks the values of a column by how many rows
    they have and adds the cumulative share of all rows that the top ranks hold, which is what
    a Lorenz-style plot draws; :func:`top_share` reads one point of it ("the top 20% of items
    get 60% of the interactions").

Click-through rate per variant
    :func:`spark.experiments.experiment_report` sums ``gold/experiment_metrics`` per variant,
    for a date and since the experiment started (impressions, not users; the experiments'
    statistics and verdicts are ``attune experiments report``'s, from ``gold/experiment_users``).
    :func:`compare_report` adds a first look at them: each variant's CTR with a Wilson score
    interval (:func:`wilson_interval`) and its difference from the baseline variant with
    Newcombe's interval (:func:`newcombe_interval`). Both treat every impression as one trial
    that was clicked or not, so they hold only while clicks do not outnumber impressions;
    otherwise the intervals are left out (None). Not the experiment's verdict: no sample-ratio
    check, no correction for looking every day, and impressions of one user are not
    independent trials.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from spark.experiments import ExperimentResult
    from spark.tables import Lake

Z_95 = 1.959963984540054
"""The standard normal quantile of a two-sided 95% interval."""


# ----------------------------------------------------------------------------------------
# Tables at a glance


def lake_overview(spark: SparkSession, lake: Lake) -> list[dict[str, Any]]:
    """One entry per table of ``lake``: ``table``, ``path``, and, for the tables that exist,
    their Delta ``version``, ``files`` and ``bytes`` (from the transaction log, no data read)."""
    from delta.tables import DeltaTable

    out: list[dict[str, Any]] = []
    for name, path in lake.tables().items():
        entry: dict[str, Any] = {"table": name, "path": path, "version": None}
        if DeltaTable.isDeltaTable(spark, path):
            table = DeltaTable.forPath(spark, path)
            detail = table.detail().select("numFiles", "sizeInBytes").first()
            version = table.history(1).select("version").first()
            entry.update(
                version=None if version is None else int(version[0]),
                files=None if detail is None else int(detail[0]),
                bytes=None if detail is None else int(detail[1]),
            )
        out.append(entry)
    return out


def events_per_day(events: DataFrame, by: str = "type") -> DataFrame:
    """``event_date, <by>, events``: how many rows of each ``by`` value each day.

    For bronze and silver events (``type``) and training examples (``event_type``).
    """
    from pyspark.sql import functions as F

    return (
        events.groupBy("event_date", by).agg(F.count("*").alias("events")).orderBy("event_date", by)
    )


# ----------------------------------------------------------------------------------------
# Long tail


def long_tail(df: DataFrame, key: str, count: str | None = None) -> DataFrame:
    """How concentrated the rows of ``df`` are on the values of ``key``.

    ``count``: a column that already holds each value's count (e.g. ``silver/users.events``);
    without it, the rows of ``df`` are counted per value. Returns one row per value, most
    frequent first: ``rank`` (1, 2, ...; ties broken by the value, so ranks are unique),
    ``<key>``, ``events``, ``rank_share`` (``rank`` / number of values) and
    ``cumulative_share`` (the share of all events that ranks ``1..rank`` hold).
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    if count is None:
        counts = df.groupBy(key).agg(F.count("*").alias("events"))
    else:
        counts = df.select(key, F.col(count).cast("long").alias("events"))
    # Ranking every value needs them all in one task, however it is spelled; one explicit
    # partition says so (and spares the log a warning per window). One row per value: millions
    # of users still fit one task.
    everything = Window.partitionBy(F.lit(0))
    order = everything.orderBy(F.desc("events"), F.asc(key))
    return (
        counts.withColumn("rank", F.row_number().over(order))
        .withColumn("rank_share", F.col("rank") / F.count("*").over(everything))
        .withColumn(
            "cumulative_share",
            F.sum("events").over(order.rowsBetween(Window.unboundedPreceding, Window.currentRow))
            / F.sum("events").over(everything),
        )
        .select("rank", key, "events", "rank_share", "cumulative_share")
        .orderBy("rank")
    )


def top_share(tail: DataFrame, fraction: float) -> float:
    """The share of all events held by the top ``fraction`` of values of a :func:`long_tail`
    (at least the top one value; 0.0 for an empty table)."""
    from pyspark.sql import functions as F

    if not 0 < fraction <= 1:
        raise ValueError(f"fraction {fraction} must be in (0, 1], e.g. 0.2 for the top 20%")
    row = (
        tail.where((F.col("rank_share") <= fraction) | (F.col("rank") == 1))
        .agg(F.max("cumulative_share"))
        .first()
    )
    return float(row[0]) if row is not None and row[0] is not None else 0.0


# ----------------------------------------------------------------------------------------
# Click-through rate per variant


def wilson_interval(successes: int, trials: int, z: float = Z_95) -> tuple[float, float] | None:
    """The Wilson score interval of a proportion ``successes / trials`` (None without trials).

    ``(p + z²/2n ± z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n)``: unlike ``p ± z·sqrt(p(1-p)/n)``
    it stays inside [0, 1] and does not collapse to a point at 0 or n successes.
    """
    if trials < 0 or successes < 0:
        raise ValueError(f"counts must not be negative (got {successes} of {trials})")
    if successes > trials:
        raise ValueError(
            f"{successes} successes out of {trials} trials is not a proportion: a Wilson "
            "interval needs successes <= trials"
        )
    if trials == 0:
        return None
    n, p, z2 = trials, successes / trials, z * z
    denominator = 1 + z2 / n
    center = (p + z2 / (2 * n)) / denominator
    margin = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denominator
    return max(0.0, center - margin), min(1.0, center + margin)


def newcombe_interval(
    successes: int, trials: int, base_successes: int, base_trials: int, z: float = Z_95
) -> tuple[float, float] | None:
    """Interval of the difference ``p - p_base`` of two independent proportions.

    Newcombe's hybrid score method (1998, method 10): from each proportion's Wilson interval
    ``[l, u]``, ``d - sqrt((p - l)² + (u_base - p_base)²)`` to
    ``d + sqrt((u - p)² + (p_base - l_base)²)``. None when either side has no trials.
    """
    this = wilson_interval(successes, trials, z)
    base = wilson_interval(base_successes, base_trials, z)
    if this is None or base is None:
        return None
    p, q = successes / trials, base_successes / base_trials
    d = p - q
    return (
        d - math.sqrt((p - this[0]) ** 2 + (base[1] - q) ** 2),
        d + math.sqrt((this[1] - p) ** 2 + (q - base[0]) ** 2),
    )


@dataclass(frozen=True)
class VariantCTR:
    """One variant's click-through rate, and how it differs from the baseline's."""

    experiment: str
    variant: str
    baseline: str
    impressions: int
    clicks: int
    ctr: float | None
    ctr_low: float | None
    ctr_high: float | None
    difference: float | None
    """``ctr - baseline ctr`` (0 for the baseline itself)."""
    difference_low: float | None
    difference_high: float | None
    relative_lift: float | None
    """``difference / baseline ctr`` (None when the baseline's CTR is 0 or unknown)."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _interval(clicks: int, impressions: int, z: float) -> tuple[float, float] | None:
    return wilson_interval(clicks, impressions, z) if clicks <= impressions else None


def compare_ctr(
    totals: Iterable[Mapping[str, Any]], baseline: str = "control", z: float = Z_95
) -> list[VariantCTR]:
    """Each variant's CTR against its experiment's ``baseline`` variant.

    ``totals``: one mapping per variant with ``experiment, variant, impressions, clicks``.
    An experiment without a variant named ``baseline`` is compared with its first variant in
    alphabetical order. Intervals at level ``z`` (default 95%); None where they do not apply
    (no impressions, or more clicks than impressions; see the module docstring).
    """
    by_experiment: dict[str, dict[str, tuple[int, int]]] = {}
    for row in totals:
        variants = by_experiment.setdefault(str(row["experiment"]), {})
        variants[str(row["variant"])] = (int(row["impressions"] or 0), int(row["clicks"] or 0))
    out: list[VariantCTR] = []
    for experiment in sorted(by_experiment):
        variants = by_experiment[experiment]
        base_name = baseline if baseline in variants else sorted(variants)[0]
        base_imp, base_clicks = variants[base_name]
        base_ctr = base_clicks / base_imp if base_imp else None
        for name in sorted(variants, key=lambda v: (v != base_name, v)):
            imp, clicks = variants[name]
            ctr = clicks / imp if imp else None
            ci = _interval(clicks, imp, z)
            diff = None if ctr is None or base_ctr is None else ctr - base_ctr
            diff_ci = (
                newcombe_interval(clicks, imp, base_clicks, base_imp, z)
                if clicks <= imp and base_clicks <= base_imp and name != base_name
                else None
            )
            out.append(
                VariantCTR(
                    experiment=experiment,
                    variant=name,
                    baseline=base_name,
                    impressions=imp,
                    clicks=clicks,
                    ctr=ctr,
                    ctr_low=None if ci is None else ci[0],
                    ctr_high=None if ci is None else ci[1],
                    difference=diff,
                    difference_low=None if diff_ci is None else diff_ci[0],
                    difference_high=None if diff_ci is None else diff_ci[1],
                    relative_lift=None if diff is None or not base_ctr else diff / base_ctr,
                )
            )
    return out


def compare_report(
    results: Iterable[ExperimentResult],
    baseline: str = "control",
    z: float = Z_95,
    scope: Literal["cumulative", "day"] = "cumulative",
) -> list[VariantCTR]:
    """:func:`compare_ctr` over the daily totals of
    :func:`spark.experiments.experiment_report`: each variant's counts since its experiment
    started (``scope="cumulative"``), or of the report date alone (``"day"``)."""
    return compare_ctr(
        (
            {
                "experiment": e.experiment,
                "variant": v.variant,
                "impressions": getattr(v, scope).impressions,
                "clicks": getattr(v, scope).clicks,
            }
            for e in results
            for v in e.variants
        ),
        baseline,
        z,
    )
