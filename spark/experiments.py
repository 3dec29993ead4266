"""``attune experiments report``: per-variant results of the experiments running on a date.

The nightly gold stage counts, per day, experiment and variant, what the recommendations of
each arm led to (``gold/experiment_metrics``, :func:`spark.gold.experiment_metrics`). This
report reads those daily rows and, for the report date ``D``, gives every variant of every
experiment *running* on ``D`` (one with traffic that day; the pseudo-experiment ``none`` of
recommendation ids that name no experiment is left out) twice:

``day``         the counts of ``D``;
``cumulative``  the counts summed from the experiment's start (its first day with traffic)
                to ``D``.

Counts: ``impressions``, ``items_shown``, ``recommendations``, ``clicks``, ``add_to_carts``,
``purchases``, ``revenue``; rates from the summed counts (never averaged over days): ``ctr`` =
clicks / impressions and ``conversion_rate`` = purchases / impressions (None without
impressions). ``user_days`` is the daily distinct users summed over the days: a user active on
three days counts three times (the daily table holds no user ids, so distinct users over a
period cannot be counted from it). A variant without traffic on ``D`` has zeros for the day.

The report is printed as a table, written as JSON to ``var/reports/experiments/<D>.json`` and
as the Delta table ``gold/experiment_report`` (partition ``report_date = D`` replaced, so a
re-run of a date replaces its rows). Statistics (intervals, significance) are not here yet.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from datetime import date
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from attune.config import AttuneConfig
    from spark.tables import Lake

log = logging.getLogger(__name__)

NO_EXPERIMENT = "none"
"""What :func:`spark.gold.experiment_metrics` calls ids that match no experiment."""

REPORT_DDL = (
    "report_date DATE, experiment STRING, variant STRING, scope STRING, start_date DATE, "
    "days INT, impressions BIGINT, items_shown BIGINT, recommendations BIGINT, clicks BIGINT, "
    "add_to_carts BIGINT, purchases BIGINT, revenue DOUBLE, user_days BIGINT, ctr DOUBLE, "
    "conversion_rate DOUBLE"
)
"""``gold/experiment_report``: one row per report date, experiment, variant and scope."""


class NoMetrics(RuntimeError):
    """Gold has nothing to report on (yet); the message says what to run."""


@dataclass(frozen=True)
class DailyMetrics:
    """One row of ``gold/experiment_metrics`` (the columns the report uses)."""

    event_date: date
    experiment: str
    variant: str
    impressions: int = 0
    items_shown: int = 0
    recommendations: int = 0
    clicks: int = 0
    add_to_carts: int = 0
    purchases: int = 0
    revenue: float = 0.0
    users: int = 0


COUNTS = (
    "impressions",
    "items_shown",
    "recommendations",
    "clicks",
    "add_to_carts",
    "purchases",
)


@dataclass(frozen=True)
class Totals:
    """Counts summed over some days, and the rates computed from them."""

    days: int = 0
    impressions: int = 0
    items_shown: int = 0
    recommendations: int = 0
    clicks: int = 0
    add_to_carts: int = 0
    purchases: int = 0
    revenue: float = 0.0
    user_days: int = 0

    @property
    def ctr(self) -> float | None:
        return self.clicks / self.impressions if self.impressions else None

    @property
    def conversion_rate(self) -> float | None:
        return self.purchases / self.impressions if self.impressions else None

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ctr": self.ctr, "conversion_rate": self.conversion_rate}


def total(rows: Iterable[DailyMetrics]) -> Totals:
    """The sum of ``rows`` (``days``: the distinct dates among them)."""
    rows = list(rows)
    sums = {name: sum(int(getattr(r, name) or 0) for r in rows) for name in COUNTS}
    return Totals(
        days=len({r.event_date for r in rows}),
        revenue=round(float(sum(float(r.revenue or 0.0) for r in rows)), 6),
        user_days=sum(int(r.users or 0) for r in rows),
        **sums,
    )


@dataclass(frozen=True)
class VariantResult:
    variant: str
    day: Totals
    cumulative: Totals


@dataclass(frozen=True)
class ExperimentResult:
    experiment: str
    start_date: date
    variants: list[VariantResult]


def experiment_report(rows: Iterable[DailyMetrics], report_date: date) -> list[ExperimentResult]:
    """The experiments running on ``report_date``, each variant's day and cumulative totals
    (see the module docstring). Rows after ``report_date`` are ignored."""
    upto = [r for r in rows if r.event_date <= report_date and r.experiment != NO_EXPERIMENT]
    running = sorted({r.experiment for r in upto if r.event_date == report_date})
    out = []
    for name in running:
        mine = [r for r in upto if r.experiment == name]
        variants = []
        for variant in sorted({r.variant for r in mine}):
            theirs = [r for r in mine if r.variant == variant]
            variants.append(
                VariantResult(
                    variant,
                    total(r for r in theirs if r.event_date == report_date),
                    total(theirs),
                )
            )
        out.append(ExperimentResult(name, min(r.event_date for r in mine), variants))
    return out


def report_rows(results: Sequence[ExperimentResult], report_date: date) -> list[tuple[Any, ...]]:
    """``gold/experiment_report`` rows (:data:`REPORT_DDL` order)."""
    rows = []
    for e in results:
        for v in e.variants:
            for scope, t in (("day", v.day), ("cumulative", v.cumulative)):
                rows.append(
                    (
                        report_date,
                        e.experiment,
                        v.variant,
                        scope,
                        e.start_date,
                        t.days,
                        t.impressions,
                        t.items_shown,
                        t.recommendations,
                        t.clicks,
                        t.add_to_carts,
                        t.purchases,
                        t.revenue,
                        t.user_days,
                        t.ctr,
                        t.conversion_rate,
                    )
                )
    return rows


def report_json(results: Sequence[ExperimentResult], report_date: date) -> dict[str, Any]:
    return {
        "report_date": report_date.isoformat(),
        "experiments": [
            {
                "experiment": e.experiment,
                "start_date": e.start_date.isoformat(),
                "variants": [
                    {
                        "variant": v.variant,
                        "day": v.day.as_dict(),
                        "cumulative": v.cumulative.as_dict(),
                    }
                    for v in e.variants
                ],
            }
            for e in results
        ],
    }


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def format_report(results: Sequence[ExperimentResult], report_date: date) -> str:
    """The report as text tables: per experiment, the day and the cumulative block."""
    if not results:
        return f"experiments on {report_date}: none had traffic that day"
    header = (
        f"    {'variant':<16} {'impressions':>11} {'clicks':>8} {'CTR':>8} {'carts':>7} "
        f"{'purchases':>9} {'conversion':>10} {'revenue':>11} {'user-days':>9}"
    )
    lines = [f"experiments on {report_date}"]
    for e in results:
        days = (report_date - e.start_date).days + 1
        lines.append(f"{e.experiment} (since {e.start_date}, day {days})")
        for label, pick in (
            (f"  on {report_date}", lambda v: v.day),
            (f"  since {e.start_date}", lambda v: v.cumulative),
        ):
            lines += [label, header]
            for v in e.variants:
                t: Totals = pick(v)
                lines.append(
                    f"    {v.variant:<16} {t.impressions:>11,} {t.clicks:>8,} "
                    f"{_pct(t.ctr):>8} {t.add_to_carts:>7,} {t.purchases:>9,} "
                    f"{_pct(t.conversion_rate):>10} {t.revenue:>11,.2f} {t.user_days:>9,}"
                )
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------
# I/O


def latest_built_date(spark: SparkSession, lake: Lake) -> date | None:
    """The latest date the gold stage has built (``gold/training_sets``, one row per run),
    else the latest date with experiment metrics."""
    from pyspark.sql import functions as F

    from spark.tables import is_table, read_table

    for path, column in (
        (lake.gold_training_sets, "as_of_date"),
        (lake.gold_experiment_metrics, "event_date"),
    ):
        if is_table(spark, path):
            row = read_table(spark, path).agg(F.max(column)).first()
            if row is not None and row[0] is not None:
                return row[0]
    return None


def read_metrics(spark: SparkSession, lake: Lake, report_date: date) -> list[DailyMetrics]:
    """The metrics of the experiments with traffic on ``report_date``, up to that date; raises
    :class:`NoMetrics` when gold has none, or has not been built for the date."""
    from pyspark.sql import functions as F

    from spark.tables import is_table, read_table

    if not is_table(spark, lake.gold_experiment_metrics):
        raise NoMetrics(
            f"gold has no experiment metrics yet (no table at {lake.gold_experiment_metrics}): "
            f"run the nightly batch first: `attune batch run --date {report_date}`"
        )
    if is_table(spark, lake.gold_training_sets):
        built = (
            read_table(spark, lake.gold_training_sets)
            .where(F.col("as_of_date") == F.lit(report_date))
            .limit(1)
            .count()
        )
        if not built:
            raise NoMetrics(
                f"gold has not been built for {report_date} yet (gold/training_sets has no row "
                f"for it): run the nightly batch first: `attune batch run --date {report_date}`"
            )
    metrics = read_table(spark, lake.gold_experiment_metrics).where(
        F.col("event_date") <= F.lit(report_date)
    )
    running = metrics.where(F.col("event_date") == F.lit(report_date)).select("experiment")
    names = [f.name for f in fields(DailyMetrics)]
    rows = metrics.join(running.distinct(), "experiment").select(*names).collect()
    return [DailyMetrics(**{n: r[n] for n in names}) for r in rows]


def write_report(
    cfg: AttuneConfig,
    spark: SparkSession,
    lake: Lake,
    results: Sequence[ExperimentResult],
    report_date: date,
) -> tuple[str, int]:
    """The JSON file and the Delta partition of ``report_date``; returns (JSON path, version)."""
    from spark.tables import sql_date, write_table

    folder = cfg.paths.resolve("reports/experiments")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{report_date.isoformat()}.json"
    path.write_text(json.dumps(report_json(results, report_date), indent=2) + "\n")
    written = write_table(
        spark.createDataFrame(report_rows(results, report_date), REPORT_DDL),
        lake.gold_experiment_report,
        partition_by="report_date",
        replace_where=f"report_date = {sql_date(report_date)}",
    )
    return str(path), written.version


def run_report(
    cfg: AttuneConfig, spark: SparkSession, report_date: date | None
) -> tuple[date, list[ExperimentResult], str, int]:
    """Read, compute and write the report of ``report_date`` (default: the latest built date)."""
    from spark.tables import Lake

    lake = Lake.from_config(cfg)
    if report_date is None:
        report_date = latest_built_date(spark, lake)
        if report_date is None:
            raise NoMetrics(
                f"gold has no experiment metrics yet (no table at "
                f"{lake.gold_experiment_metrics}): run the nightly batch first "
                "(`attune batch run --date YYYY-MM-DD`)"
            )
    results = experiment_report(read_metrics(spark, lake, report_date), report_date)
    path, version = write_report(cfg, spark, lake, results, report_date)
    return report_date, results, path, version


def cmd_report(cfg: AttuneConfig, args: argparse.Namespace) -> int:
    """``attune experiments report [--date D] [--json]``: 0 written, 1 nothing to report on."""
    from attune.config import ConfigError
    from spark.command import batch_session, failed, parse_date, setup_logging

    setup_logging()
    wanted = parse_date(args.date) if args.date else None
    try:
        with batch_session(cfg, "attune-experiments-report") as spark:
            report_date, results, path, version = run_report(cfg, spark, wanted)
    except NoMetrics as exc:
        print(f"attune experiments report: {exc}", file=sys.stderr)
        return 1
    except ConfigError:
        raise
    except Exception as exc:
        return failed(
            "experiments report",
            exc,
            "The report replaces its date's rows, so running it again is safe",
        )
    if args.json:
        print(json.dumps({**report_json(results, report_date), "json": path}, indent=2))
    else:
        print(format_report(results, report_date))
        print(f"written: {path} and gold/experiment_report (report_date {report_date}, v{version})")
    return 0
