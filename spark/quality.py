"""Data-quality checks run on every batch run, and the report table they write.

Every check yields one row of ``quality/report`` (partitioned by ``run_date``): the stage, the
table, the check, the measured value, the threshold, whether it passed and a sentence saying
what was measured. A stage writes its rows as it goes (replacing that stage's rows of the same
run date, so a re-run leaves one set) and a failed check stops the run with a
:class:`DataQualityError` naming the check, the table and by how much it missed.

Checks (thresholds in ``batch.quality``):

``schema``            bronze has every column of :func:`attune.lake.bronze_schema`,
                      with the same type (value: columns missing or different; max 0)
``null_rate:<col>``   share of nulls in a bronze column on the logical date
                      (``max_null_rates``)
``duplicate_rate``    share of the date's bronze rows repeating an ``event_id``
``volume``            the date's bronze rows / the trailing ``volume_history_days`` average,
                      between ``volume_min_ratio`` and ``volume_max_ratio`` (skipped with less
                      than ``volume_min_history_days`` of history)
``bot_rate``          share of the window's deduplicated events dropped as bots
``silver_duplicates`` ``event_id`` repeated in silver after deduplication (max 0)
``malformed_catalog`` share of catalog records that do not parse
``training_nulls``    nulls in the training examples' required columns (max 0)
``training_rows``     training examples written (recorded, never fails)
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import TYPE_CHECKING, Any

from spark.context import CheckResult, RunContext, Stage, StageInputs, StageOutputs

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, Row

REPORT_DDL = (
    "run_date DATE, stage STRING, table_name STRING, check STRING, value DOUBLE, "
    "threshold DOUBLE, passed BOOLEAN, detail STRING"
)


class DataQualityError(RuntimeError):
    """A data-quality check failed; the message names the check, the table and the miss."""


def _rate_check(
    stage: str, table: str, check: str, bad: int, total: int, limit: float, what: str
) -> CheckResult:
    rate = bad / total if total else 0.0
    passed = rate <= limit
    if passed:
        detail = f"{what}: {bad:,} of {total:,} rows ({rate:.2%}), within the limit of {limit:.2%}"
    else:
        detail = (
            f"{what}: {bad:,} of {total:,} rows = {rate:.2%}, above the limit of {limit:.2%} "
            f"by {rate - limit:.2%} points"
        )
    return CheckResult(stage, table, check, rate, limit, passed, detail)


def record(ctx: RunContext, results: list[CheckResult]) -> None:
    """Add ``results`` to the run's checks; if any failed, write the report and stop the run."""
    ctx.checks.extend(results)
    failed = [r for r in results if not r.passed]
    if failed:
        flush(ctx, failed[0].stage)
        raise DataQualityError(
            "; ".join(r.failure() for r in failed)
            + f" (run {ctx.run_date}; all checks in {ctx.lake.quality_report})"
        )


def flush(ctx: RunContext, stage: str) -> None:
    """Write ``stage``'s checks of this run to the report (replacing that stage's rows of the
    same run date, so a re-run leaves one set)."""
    from spark.tables import write_table

    rows = [
        (
            ctx.run_date,
            r.stage,
            r.table,
            r.check,
            float(r.value),
            float(r.threshold),
            r.passed,
            r.detail,
        )
        for r in ctx.checks
        if r.stage == stage
    ]
    if not rows:
        return
    write_table(
        ctx.spark.createDataFrame(rows, REPORT_DDL),
        ctx.lake.quality_report,
        partition_by="run_date",
        replace_where=f"run_date = DATE'{ctx.run_date.isoformat()}' AND stage = '{stage}'",
    )


def schema_problems(actual: Any, expected: Any) -> list[str]:
    """Columns of ``expected`` (a StructType) missing from ``actual`` or of another type.

    Nullability is not compared (Delta relaxes it inside collections)."""
    from pyspark.sql import types as T

    def strip(dtype: T.DataType) -> str:
        if isinstance(dtype, T.StructType):
            return "struct<" + ",".join(f"{f.name}:{strip(f.dataType)}" for f in dtype.fields) + ">"
        if isinstance(dtype, T.ArrayType):
            return f"array<{strip(dtype.elementType)}>"
        if isinstance(dtype, T.MapType):
            return f"map<{strip(dtype.keyType)},{strip(dtype.valueType)}>"
        return dtype.simpleString()

    have = {f.name: f.dataType for f in actual.fields}
    problems = []
    for f in expected.fields:
        if f.name not in have:
            problems.append(f"column {f.name} is missing")
        elif strip(have[f.name]) != strip(f.dataType):
            problems.append(
                f"column {f.name} is {strip(have[f.name])}, expected {strip(f.dataType)}"
            )
    return problems


def check_bronze(ctx: RunContext, bronze: DataFrame) -> None:
    """Schema, null rates, duplicate rate and volume of bronze on the logical date."""
    from pyspark.sql import functions as F

    from attune.lake import bronze_schema
    from spark.tables import first_row

    q = ctx.cfg.batch.quality
    day = ctx.run_date
    table = ctx.lake.bronze
    stage = "quality"
    problems = schema_problems(bronze.schema, bronze_schema())
    results = [
        CheckResult(
            stage,
            table,
            "schema",
            float(len(problems)),
            0.0,
            not problems,
            "; ".join(problems) if problems else "every column of the event schema, as typed",
        )
    ]
    if problems:  # the other checks would fail on missing columns; report this one
        record(ctx, results)
    unknown = sorted(set(q.max_null_rates) - set(bronze.columns))
    if unknown:
        raise DataQualityError(
            f"batch.quality.max_null_rates names column(s) {', '.join(unknown)} that bronze "
            f"({table}) does not have; use some of: {', '.join(bronze.columns)}"
        )
    history_start = day - timedelta(days=q.volume_history_days)
    per_day = {
        r["event_date"]: int(r["count"])
        for r in bronze.where(
            (F.col("event_date") >= F.lit(history_start)) & (F.col("event_date") <= F.lit(day))
        )
        .groupBy("event_date")
        .count()
        .collect()
    }
    today = bronze.where(F.col("event_date") == F.lit(day))
    aggs = [F.count("*").alias("rows"), F.countDistinct("event_id").alias("distinct_ids")]
    aggs += [
        F.count(F.when(F.col(c).isNull(), 1)).alias(f"null_{c}") for c in sorted(q.max_null_rates)
    ]
    stats = first_row(today.agg(*aggs))
    total = int(stats["rows"])
    for col in sorted(q.max_null_rates):
        results.append(
            _rate_check(
                stage,
                table,
                f"null_rate:{col}",
                int(stats[f"null_{col}"]),
                total,
                q.max_null_rates[col],
                f"nulls in {col} on {day}",
            )
        )
    results.append(
        _rate_check(
            stage,
            table,
            "duplicate_rate",
            total - int(stats["distinct_ids"]),
            total,
            q.max_duplicate_rate,
            f"rows repeating an event_id on {day}",
        )
    )
    results.append(_volume_check(ctx, table, per_day, day, total))
    record(ctx, results)


def _volume_check(
    ctx: RunContext, table: str, per_day: dict[date, int], day: date, total: int
) -> CheckResult:
    q = ctx.cfg.batch.quality
    history = [n for d, n in per_day.items() if d < day]
    if len(history) < q.volume_min_history_days:
        return CheckResult(
            "silver",
            table,
            "volume",
            float(len(history)),
            float(q.volume_min_history_days),
            True,
            f"skipped: {len(history)} earlier day(s) with events in the last "
            f"{q.volume_history_days}, the check needs {q.volume_min_history_days}",
        )
    average = sum(history) / len(history)
    ratio = total / average
    low, high = q.volume_min_ratio, q.volume_max_ratio
    if ratio < low:
        return CheckResult(
            "silver",
            table,
            "volume",
            ratio,
            low,
            False,
            f"{total:,} events on {day} = {ratio:.2f} x the trailing average of {average:,.0f} "
            f"over {len(history)} day(s), below the minimum ratio {low} by {low - ratio:.2f}",
        )
    if ratio > high:
        return CheckResult(
            "silver",
            table,
            "volume",
            ratio,
            high,
            False,
            f"{total:,} events on {day} = {ratio:.2f} x the trailing average of {average:,.0f} "
            f"over {len(history)} day(s), above the maximum ratio {high} by {ratio - high:.2f}",
        )
    return CheckResult(
        "silver",
        table,
        "volume",
        ratio,
        high,
        True,
        f"{total:,} events on {day} = {ratio:.2f} x the trailing average of {average:,.0f}",
    )


def check_silver(
    ctx: RunContext, bronze_window: DataFrame, silver_window: DataFrame, bot_events: int
) -> dict[str, int]:
    """Bot rate and the absence of duplicates in what silver now holds for the window."""
    from pyspark.sql import functions as F

    from spark.tables import first_row

    q = ctx.cfg.batch.quality
    b = first_row(
        bronze_window.agg(F.count("*").alias("rows"), F.countDistinct("event_id").alias("unique"))
    )
    s = first_row(
        silver_window.agg(F.count("*").alias("rows"), F.countDistinct("event_id").alias("unique"))
    )
    rows, unique = int(s["rows"]), int(s["unique"])
    results = [
        _rate_check(
            "silver",
            ctx.lake.silver_events,
            "bot_rate",
            bot_events,
            int(b["unique"]),
            q.max_bot_rate,
            "deduplicated events dropped as bots in the window",
        ),
        CheckResult(
            "silver",
            ctx.lake.silver_events,
            "silver_duplicates",
            float(rows - unique),
            0.0,
            rows == unique,
            f"{rows - unique:,} repeated event_id(s) among {rows:,} rows after deduplication",
        ),
    ]
    record(ctx, results)
    return {
        "bronze_rows": int(b["rows"]),
        "duplicates_removed": int(b["rows"]) - int(b["unique"]),
        "bot_events_removed": bot_events,
        "rows": rows,
    }


def check_catalog(ctx: RunContext, records: int, malformed: int) -> None:
    record(
        ctx,
        [
            _rate_check(
                "silver",
                ctx.cfg.kafka.topic("catalog").name,
                "malformed_catalog",
                malformed,
                records,
                ctx.cfg.batch.quality.max_malformed_catalog_rate,
                "catalog records that do not parse",
            )
        ],
    )


def check_training_examples(ctx: RunContext, examples: DataFrame) -> Row:
    """The models' non-nullable columns are never null; there are rows when silver has any.

    Returns, from the same pass over the table, ``rows``, ``users`` and ``items`` (distinct
    counts by HyperLogLog++, exact for small counts, within about 1 % otherwise) and
    ``min_timestamp`` / ``max_timestamp`` for the training-set manifest.
    """
    from pyspark.sql import functions as F

    from attune.lake import INTERACTION_FIELDS
    from spark.tables import first_row

    required = [f.name for f in INTERACTION_FIELDS if not f.nullable]
    stats = first_row(
        examples.agg(
            *[F.count(F.when(F.col(c).isNull(), 1)).alias(f"null_{c}") for c in required],
            F.count("*").alias("rows"),
            F.approx_count_distinct("user_id", 0.01).alias("users"),
            F.approx_count_distinct("item_id", 0.01).alias("items"),
            F.min("timestamp").alias("min_timestamp"),
            F.max("timestamp").alias("max_timestamp"),
        )
    )
    bad = {c: int(stats[f"null_{c}"]) for c in required if stats[f"null_{c}"]}
    rows = int(stats["rows"])
    table = ctx.lake.gold_training_examples
    results = [
        CheckResult(
            "gold",
            table,
            "training_nulls",
            float(sum(bad.values())),
            0.0,
            not bad,
            ", ".join(f"{n:,} null {c}" for c, n in bad.items())
            if bad
            else f"no nulls in {', '.join(required)}",
        ),
        CheckResult("gold", table, "training_rows", float(rows), 1.0, True, f"{rows:,} rows"),
    ]
    record(ctx, results)
    return stats


# ----------------------------------------------------------------------------------------
# The stage


def run_quality_gate(ctx: RunContext, inputs: StageInputs) -> StageOutputs:
    """The gate before silver: bronze's schema, null rates, duplicates and volume on the date.

    A failed check raises :class:`DataQualityError` before anything is written downstream."""
    from spark.tables import read_table

    version = ctx.version_of(inputs["bronze"])
    check_bronze(ctx, read_table(ctx.spark, inputs["bronze"], version))
    flush(ctx, "quality")
    checks = [r for r in ctx.checks if r.stage == "quality"]
    ctx.progress(f"quality: {len(checks)} checks on bronze v{version} passed")
    return {"bronze_version": version, "checks": {r.check: round(r.value, 6) for r in checks}}


STAGE = Stage(
    "quality",
    run_quality_gate,
    needs=("bronze",),
    missing=(
        "no bronze table at {path}: start the speed layer (`attune speed start`) so events "
        "reach the lake, then run the batch"
    ),
)
