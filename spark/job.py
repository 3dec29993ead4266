"""The nightly batch run over one logical date, and ``attune batch run``.

``attune batch run --date 2013-03-01`` runs the stages in order; ``--stage`` (repeatable)
runs only some of them:

``quality``      the data-quality gate on bronze for the date (a failed check stops the run)
``silver``       erasures, then cleansed events for the late window, items and users
``gold``         features, training examples, co-occurrence, segments, experiment metrics
``views``        drift report, then batch views and corrections written to Redis
``maintenance``  retention, OPTIMIZE, VACUUM

Progress: each stage says when it starts (``stage 2/5``) and how long it took; while it runs,
every 10 s, its elapsed time and the running Spark tasks (:func:`attune.progress.spark_tasks`).
A stage's total work is unknown up front (Spark plans it as it goes), so there is no ETA.

Each stage is a :class:`spark.context.Stage`: a function of the run's context and the tables it
needs, defined in its own module (:mod:`spark.silver`, :mod:`spark.gold`, :mod:`spark.views`,
:mod:`spark.maintenance`); this module only runs them in order.

The logical date is the only notion of "now": every "as of" time is the end of that date (UTC)
and nothing reads the clock, so running a date again over the same bronze gives the same
tables. ``--from DATE`` widens the silver window back to ``DATE`` (first run on an existing
bronze, or a backfill after a long outage). Each stage reads its inputs at one pinned Delta
version, logs progress with timings, and the run ends with a one-line-per-stage summary (or
JSON with ``--json``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING, Any

from attune.progress import Heartbeat, spark_tasks
from spark import gold, maintenance, quality, silver, views
from spark.command import (  # (defined there: the other commands share them)
    batch_spark_conf,
    parse_date,
    use_this_python_for_workers,
)
from spark.context import RunContext, Stage
from spark.tables import Lake

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from attune.config import AttuneConfig

log = logging.getLogger(__name__)

PIPELINE: tuple[Stage, ...] = (
    quality.STAGE,
    silver.STAGE,
    gold.STAGE,
    views.STAGE,
    maintenance.STAGE,
)
"""Every stage, in the order a run goes through them."""
STAGES = tuple(stage.name for stage in PIPELINE)


@dataclass
class StageResult:
    stage: str
    seconds: float
    details: dict[str, Any]


@dataclass
class BatchReport:
    run_date: date
    stages: list[StageResult]

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.stages)

    def as_dict(self) -> dict[str, Any]:
        return {
            "run_date": self.run_date.isoformat(),
            "seconds": round(self.seconds, 2),
            "stages": {s.stage: {"seconds": round(s.seconds, 2), **s.details} for s in self.stages},
        }


def ordered_stages(requested: Sequence[str] | None) -> list[str]:
    from attune.config import ConfigError

    if not requested:
        return list(STAGES)
    unknown = sorted(set(requested) - set(STAGES))
    if unknown:
        raise ConfigError(f"unknown stage {unknown[0]!r}: expected one of {', '.join(STAGES)}")
    return [s for s in STAGES if s in requested]


def run_batch(
    cfg: AttuneConfig,
    run_date: date,
    stages: Sequence[str] | None = None,
    *,
    since: date | None = None,
    spark: SparkSession | None = None,
    say: Callable[[str], None] = print,
) -> BatchReport:
    """Run ``stages`` (default: all, in order) for ``run_date``; see the module docstring.

    ``spark`` defaults to a session from :func:`attune.spark_session.build_spark_session`.
    A failed data-quality check raises :class:`spark.quality.DataQualityError` and stops the run.
    """
    from attune.config import ConfigError
    from attune.spark_session import build_spark_session

    if since is not None and since > run_date:
        raise ConfigError(f"--from {since} is after --date {run_date}; give an earlier date")
    todo = ordered_stages(stages)
    use_this_python_for_workers()
    session = spark or build_spark_session(cfg, "attune-batch", batch_spark_conf(cfg))
    use_this_python_for_workers(session)
    ctx = RunContext(cfg, session, Lake.from_config(cfg), run_date, since, say)
    by_name = {stage.name: stage for stage in PIPELINE}
    results: list[StageResult] = []
    ctx.progress(f"stages {', '.join(todo)} on {cfg.spark.master} (lake {cfg.lake_root})")
    for number, name in enumerate(todo, start=1):
        stage = by_name[name]
        started = time.monotonic()
        # Spark plans a stage's work as it goes: no total, so no ETA; while the stage runs, a
        # line every 10 s says the elapsed time and the running Spark tasks (done/total)
        ctx.progress(f"{name} (stage {number}/{len(todo)}) started")
        session.sparkContext.setJobGroup(f"batch-{name}", f"attune batch {name} {run_date}")
        with Heartbeat(name, ctx.progress, every=HEARTBEAT_S, detail=lambda: spark_tasks(session)):
            details = stage.run(ctx, stage.inputs(ctx))
        seconds = time.monotonic() - started
        results.append(StageResult(name, seconds, details))
        ctx.progress(f"{name} done in {seconds:.1f} s")
    return BatchReport(run_date, results)


HEARTBEAT_S = 10.0
"""How often a running stage says it is alive (elapsed time and Spark's task counts)."""


def cmd_run(cfg: AttuneConfig, args: argparse.Namespace) -> int:
    """``attune batch run --date YYYY-MM-DD [--stage S ...] [--from YYYY-MM-DD] [--json]``."""
    from spark.quality import DataQualityError

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    run_date = parse_date(args.date)
    since = parse_date(args.since, "--from") if args.since else None
    try:
        report = run_batch(
            cfg,
            run_date,
            args.stage,
            since=since,
            say=(lambda m: print(m, file=sys.stderr)) if args.json else print,
        )
    except DataQualityError as exc:
        print(f"attune batch: stopped: {exc}", file=sys.stderr)
        return 3
    if args.json:
        print(json.dumps(report.as_dict(), indent=2, default=str))
    else:
        for s in report.stages:
            print(f"{s.stage:<12} {s.seconds:8.1f} s")
        print(f"{'total':<12} {report.seconds:8.1f} s")
    return 0
