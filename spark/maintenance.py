"""Maintenance: the retention policy, compaction of small streaming files, and VACUUM.

1. Retention: rows older than ``batch.maintenance.event_retention`` before the logical date
   are deleted from every dated table (bronze and quarantine included), by their date column.
   Partition-aligned, so Delta removes whole files without rewriting any.
2. OPTIMIZE: the speed layer appends a few small files to bronze every micro-batch; the
   partitions of the late window (``D - batch.late_days`` .. ``D``, the ones still receiving
   late events) are compacted, as is the quarantine. Compaction only rewrites files, so it
   never conflicts with the streaming appends running at the same time.
3. VACUUM: files no longer referenced by a table version younger than
   ``batch.maintenance.vacuum_retention`` are deleted from every table. This is what makes
   deletions (retention, erasure) physical: until then old versions keep the rows for time
   travel. Delta refuses retentions under 7 days unless its safety check is turned off; a
   shorter configured retention turns it off for this call only, and says so. Delta 4 reads the
   retention from each table's ``delta.deletedFileRetentionDuration`` (VACUUM's own argument
   only counts when it is 0), so a configured retention other than the 7-day default is set as
   that property on the batch's tables (bronze and quarantine are left to the speed layer: a
   metadata change would fail its concurrent appends).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import timedelta
from typing import TYPE_CHECKING

from attune.progress import progress_lines
from spark.context import RunContext, Stage, StageInputs, StageOutputs

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

# Dated tables and the column the retention policy cuts on.
RETENTION_COLUMNS = {
    "bronze": "event_date",
    "quarantine": "quarantine_date",
    "silver_events": "event_date",
    "silver_bot_days": "event_date",
    "gold_training_examples": "event_date",
    "gold_experiment_metrics": "event_date",
    "gold_user_segments": "as_of_date",
    "quality_report": "run_date",
    "quality_drift": "as_of_date",
}
DELTA_MIN_RETENTION = timedelta(days=7)


@contextmanager
def temporary_conf(spark: SparkSession, conf: dict[str, str]) -> Iterator[None]:
    """Set runtime SQL settings for the duration of the block, then restore them."""
    previous: dict[str, str | None] = {k: spark.conf.get(k, None) for k in conf}
    for k, v in conf.items():
        spark.conf.set(k, v)
    try:
        yield
    finally:
        for k, old in previous.items():
            if old is None:
                spark.conf.unset(k)
            else:
                spark.conf.set(k, old)


def vacuum_tables(
    spark: SparkSession,
    retention: timedelta,
    tables: dict[str, str],
    say: Callable[[str], None] | None = None,
) -> float:
    """VACUUM ``tables`` (``{Lake field: path}``) with ``retention`` (see the module docstring:
    the retention check, and the table property Delta 4 reads); returns the retention in hours.
    ``say``: progress lines (tables vacuumed, rate, ETA) every 5 s.

    Shared by the maintenance stage and ``attune privacy vacuum`` (:mod:`spark.privacy`).
    """
    from delta.tables import DeltaTable

    hours = retention.total_seconds() / 3600
    conf = {
        # Delta lists a table's files with this many tasks (default 10,000: minutes of task
        # overhead per table on a small machine; a handful of tasks list a table just as well).
        "spark.sql.sources.parallelPartitionDiscovery.parallelism": str(
            max(2, spark.sparkContext.defaultParallelism)
        )
    }
    if retention < DELTA_MIN_RETENTION:
        log.warning(
            "VACUUM retention %.1f h is under Delta's 7-day minimum: time travel and readers "
            "older than that may fail; turning Delta's retention check off for this VACUUM",
            hours,
        )
        conf["spark.databricks.delta.retentionDurationCheck.enabled"] = "false"
    # Delta 4 takes the retention from the table property delta.deletedFileRetentionDuration
    # (ignoring VACUUM's argument unless it is 0): set it where it differs. A metadata commit,
    # made only when the configured retention changes.
    wanted = f"interval {int(retention.total_seconds())} seconds"
    for name, path in tables.items() if hours > 0 else ():
        detail = DeltaTable.forPath(spark, path).detail().select("properties").first()
        props = (detail[0] if detail is not None else None) or {}
        current = props.get("delta.deletedFileRetentionDuration")
        if current == wanted or (current is None and retention == DELTA_MIN_RETENTION):
            continue
        if name in ("bronze", "quarantine"):
            # a metadata commit would fail the speed layer's concurrent appends: leave it
            log.warning(
                "%s keeps its file retention %s (VACUUM retention %s is configured); set "
                "delta.deletedFileRetentionDuration on it while the speed layer is stopped",
                path,
                current or "7 days (default)",
                wanted,
            )
        else:
            spark.sql(
                f"ALTER TABLE delta.`{path.replace('`', '``')}` SET TBLPROPERTIES "
                f"('delta.deletedFileRetentionDuration' = '{wanted}')"
            )  # fmt: skip
    with temporary_conf(spark, conf), ThreadPoolExecutor(max_workers=4) as pool:
        # Each VACUUM is a few small Spark jobs; running some side by side hides their latency.
        vacuumed = pool.map(
            lambda path: DeltaTable.forPath(spark, path).vacuum(hours), tables.values()
        )
        for _ in progress_lines(
            vacuumed, "VACUUM", len(tables), "tables", say=say or (lambda _: None)
        ):
            pass
    return hours


def run_maintenance(ctx: RunContext, inputs: StageInputs) -> StageOutputs:
    """Retention, OPTIMIZE and VACUUM over every table of the lake that exists (see above)."""
    from delta.tables import DeltaTable

    from spark.tables import date_between, first_row, is_table, sql_date

    spark, cfg, lake, day = ctx.spark, ctx.cfg, ctx.lake, ctx.run_date
    m = cfg.batch.maintenance
    tables = {name: path for name, path in lake.tables().items() if is_table(spark, path)}
    out: StageOutputs = {}

    cutoff = day - timedelta(days=m.event_retention.days)
    removed: dict[str, int] = {}
    for name, column in RETENTION_COLUMNS.items():
        if name not in tables:
            continue
        path = tables[name].replace("`", "``")
        result = spark.sql(
            f"DELETE FROM delta.`{path}` WHERE {column} < {sql_date(cutoff)}"
        ).first()
        n = int(result[0]) if result is not None and result[0] is not None else 0
        if n:
            removed[name] = n
    out["retention"] = {"before": str(cutoff), "deleted": removed}
    ctx.progress(
        f"maintenance: retention before {cutoff}: "
        + (", ".join(f"{t} -{n:,}" for t, n in removed.items()) or "nothing to delete")
    )

    if m.optimize:
        start = day - timedelta(days=cfg.batch.late_days)
        compacted: dict[str, dict[str, int]] = {}
        for name, column in (("bronze", "event_date"), ("quarantine", "quarantine_date")):
            if name not in tables:
                continue
            metrics = first_row(
                DeltaTable.forPath(spark, tables[name])
                .optimize()
                .where(date_between(column, start, day))
                .executeCompaction()
                .select("metrics.numFilesAdded", "metrics.numFilesRemoved")
            )
            compacted[name] = {
                "files_removed": int(metrics["numFilesRemoved"] or 0),
                "files_added": int(metrics["numFilesAdded"] or 0),
            }
        out["optimize"] = compacted
        ctx.progress(
            "maintenance: OPTIMIZE "
            + ", ".join(
                f"{t}: {c['files_removed']} -> {c['files_added']} files"
                for t, c in compacted.items()
            )
        )

    started = time.monotonic()
    hours = vacuum_tables(spark, m.vacuum_retention, tables, ctx.progress)
    out["vacuum"] = {"tables": len(tables), "retention_hours": hours}
    ctx.progress(
        f"maintenance: VACUUM of {len(tables)} tables (retention {hours:g} h) in "
        f"{time.monotonic() - started:.1f} s"
    )
    return out


STAGE = Stage("maintenance", run_maintenance)
