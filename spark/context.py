"""What the stages of one batch run share, and what a stage is.

A run processes one logical date (:class:`RunContext`: config, Spark session, the lake's tables,
the date, progress). It is a sequence of stages (:class:`Stage`); each is a function of the run's
context and its inputs (the lake tables it needs, checked to exist before it starts) returning
its outputs (what it wrote, as a JSON-able report). Stages hand data to each other through the
lake, so any stage can run alone (``attune batch run --stage gold``) or as its own Airflow task,
and :mod:`spark.job` runs them in order. (Within one run the context also remembers the table
versions read, :attr:`RunContext.versions_read`: the gold stage's training-set manifest names
the bronze version the silver stage read, when silver ran in the same run.) Stage modules
import this module, never :mod:`spark.job` or each other.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import TYPE_CHECKING

from spark.tables import Lake, is_table, table_version

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from attune.config import AttuneConfig


@dataclass(frozen=True)
class CheckResult:
    """One data-quality check of the run (a row of ``quality/report``; see :mod:`spark.quality`,
    which defines the checks)."""

    stage: str
    table: str
    check: str
    value: float
    threshold: float
    passed: bool
    detail: str

    def failure(self) -> str:
        return f"data-quality check {self.check!r} failed on {self.table}: {self.detail}"


@dataclass
class RunContext:
    """What every stage of one run shares: config, session, tables, date, progress."""

    cfg: AttuneConfig
    spark: SparkSession
    lake: Lake
    run_date: date
    since: date | None = None
    say: Callable[[str], None] = print
    checks: list[CheckResult] = field(default_factory=list)
    versions_read: dict[str, int | None] = field(default_factory=dict)
    _started: float = field(default_factory=time.monotonic)

    def progress(self, message: str) -> None:
        self.say(f"batch {self.run_date} [{time.monotonic() - self._started:7.1f} s] {message}")

    def version_of(self, path: str) -> int | None:
        """The table's latest version, remembered as what this run read."""
        version = table_version(self.spark, path)
        self.versions_read[path] = version
        return version


def window_start(run_date: date, late_days: int, since: date | None) -> date:
    """First event date the silver stage re-derives for ``run_date``: ``late_days`` before it,
    or ``since`` (``--from``) when that is earlier."""
    start = run_date - timedelta(days=late_days)
    return min(since, start) if since is not None else start


StageInputs = Mapping[str, str]
"""The tables a stage needs: ``{Lake field: path}``, every one an existing Delta table."""
StageOutputs = dict[str, object]
"""What a stage reports: versions written, row counts, ... (JSON-able; ``--json`` prints it)."""


@dataclass(frozen=True)
class Stage:
    """One step of the nightly run: one ``--stage`` value, later one Airflow task.

    ``needs`` are the :class:`~spark.tables.Lake` fields of the tables the stage cannot start
    without; :meth:`inputs` checks them and ``missing`` (with ``{path}``) says what to do when
    one is absent. ``run(ctx, inputs)`` does the work and returns the stage's report.
    """

    name: str
    run: Callable[[RunContext, StageInputs], StageOutputs]
    needs: tuple[str, ...] = ()
    missing: str = "no table at {path}"

    def inputs(self, ctx: RunContext) -> StageInputs:
        """``{field: path}`` of :attr:`needs`; raises ``RuntimeError`` naming a missing one."""
        paths = ctx.lake.tables()
        found: dict[str, str] = {}
        for name in self.needs:
            if not is_table(ctx.spark, paths[name]):
                raise RuntimeError(self.missing.format(path=paths[name]))
            found[name] = paths[name]
        return found
