"""Where the batch layer's Delta tables live, and the few ways it writes them.

Every table sits under the lake root (``cfg.lake_root``). Bronze and quarantine belong to the
speed layer (``speed.bronze_table``, ``speed.quarantine_table``); the items dimension is written
where the speed layer looks for a Delta catalog (``speed.catalog_table``); the rest are named
here:

=============================  ===============  ==============================================
table                          partitioned by   content
=============================  ===============  ==============================================
``silver/events``              ``event_date``   cleansed events: deduplicated, bots and
                                                erased users removed, late data merged
``silver/items``               -                items dimension from the catalog topic
``silver/users``               -                users dimension; ``traits`` AES-GCM encrypted
``silver/bot_days``            ``event_date``   users filtered out as bots, per day, and why
``gold/user_features``         -                the online features recomputed from all history
``gold/items``                 -                items with content and popularity features
``gold/training_examples``     ``event_date``   one row per user-item interaction (models)
``gold/training_sets``         -                which Delta versions each training set read
``gold/item_cooccurrence``     ``kind``         "seen in a session with" / "bought with"
``gold/trending``              -                top items per trending window, as of the date
``gold/user_segments``         ``as_of_date``   each user's RFM segment, one snapshot a day
``gold/popular_by_segment``    -                most engaged items per segment
``gold/experiment_metrics``    ``event_date``   impressions / clicks / purchases per variant
``gold/experiment_users``      ``experiment``   per variant, user and exposure day: exposures
                                                and what they led to (attribution), CUPED
                                                covariate, segment
``gold/experiment_teams``      ``experiment``   per interleaved list: clicks credited per team
``gold/experiment_results``    ``report_date``  per experiment, variant and metric: lifts,
                                                intervals, verdict (``attune experiments report``)
``quality/report``             ``run_date``     every data-quality check of every run
``quality/drift``              ``as_of_date``   Redis features vs the batch recomputation
``privacy/erasure_requests``   -                pseudonymized users to erase, and when asked
``privacy/erasure_log``        -                what each run erased, per request and table
=============================  ===============  ==============================================

Writes are transactions over the logical date: a whole-table overwrite, a partition overwrite
(``replaceWhere``) or a MERGE; never a blind append, so re-running a date gives the same tables.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from datetime import date
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, Row, SparkSession

    from attune.config import AttuneConfig


@dataclass(frozen=True)
class Lake:
    """Absolute locations of every table the batch layer reads or writes."""

    bronze: str
    quarantine: str
    silver_events: str
    silver_items: str
    silver_users: str
    silver_bot_days: str
    gold_user_features: str
    gold_items: str
    gold_training_examples: str
    gold_training_sets: str
    gold_item_cooccurrence: str
    gold_trending: str
    gold_user_segments: str
    gold_popular_by_segment: str
    gold_experiment_metrics: str
    gold_experiment_users: str
    gold_experiment_teams: str
    gold_experiment_results: str
    quality_report: str
    quality_drift: str
    erasure_requests: str
    erasure_log: str

    @classmethod
    def from_config(cls, cfg: AttuneConfig) -> Lake:
        root = cfg.lake_root.rstrip("/")

        def at(name: str) -> str:
            return f"{root}/{name}"

        return cls(
            bronze=at(cfg.speed.bronze_table),
            quarantine=at(cfg.speed.quarantine_table),
            silver_events=at("silver/events"),
            silver_items=at(cfg.speed.catalog_table),
            silver_users=at("silver/users"),
            silver_bot_days=at("silver/bot_days"),
            gold_user_features=at("gold/user_features"),
            gold_items=at("gold/items"),
            gold_training_examples=at("gold/training_examples"),
            gold_training_sets=at("gold/training_sets"),
            gold_item_cooccurrence=at("gold/item_cooccurrence"),
            gold_trending=at("gold/trending"),
            gold_user_segments=at("gold/user_segments"),
            gold_popular_by_segment=at("gold/popular_by_segment"),
            gold_experiment_metrics=at("gold/experiment_metrics"),
            gold_experiment_users=at("gold/experiment_users"),
            gold_experiment_teams=at("gold/experiment_teams"),
            gold_experiment_results=at("gold/experiment_results"),
            quality_report=at("quality/report"),
            quality_drift=at("quality/drift"),
            erasure_requests=at("privacy/erasure_requests"),
            erasure_log=at("privacy/erasure_log"),
        )

    def tables(self) -> dict[str, str]:
        """``{field name: path}`` of every table."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class Written:
    """What :func:`write_table` committed."""

    version: int
    rows: int


def first_row(df: DataFrame) -> Row:
    """The first row of ``df`` (an aggregate always has one)."""
    row = df.first()
    if row is None:
        raise RuntimeError("expected a row, got an empty result")
    return row


def is_table(spark: SparkSession, path: str) -> bool:
    from delta.tables import DeltaTable

    return bool(DeltaTable.isDeltaTable(spark, path))


def table_version(spark: SparkSession, path: str) -> int | None:
    """The latest version of the Delta table at ``path`` (None when there is no table)."""
    from delta.tables import DeltaTable

    if not is_table(spark, path):
        return None
    return int(first_row(DeltaTable.forPath(spark, path).history(1).select("version"))[0])


def read_table(spark: SparkSession, path: str, version: int | None = None) -> DataFrame:
    reader = spark.read.format("delta")
    if version is not None:
        reader = reader.option("versionAsOf", version)
    return reader.load(path)


def sql_date(d: date) -> str:
    return f"DATE'{d.isoformat()}'"


def date_between(column: str, start: date, end: date) -> str:
    """A SQL predicate ``start <= column <= end`` (for ``replaceWhere`` and filters)."""
    return f"{column} >= {sql_date(start)} AND {column} <= {sql_date(end)}"


def write_table(
    df: DataFrame,
    path: str,
    *,
    partition_by: str | None = None,
    replace_where: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> Written:
    """Overwrite the table (or, with ``replace_where``, exactly the rows it selects) with ``df``.

    ``metadata`` goes into the commit's ``userMetadata`` (visible in ``DESCRIBE HISTORY``).
    Returns the version written and how many rows it wrote (from the commit's metrics).
    """
    spark = df.sparkSession
    writer = df.write.format("delta").mode("overwrite")
    if partition_by:
        writer = writer.partitionBy(partition_by)
    if replace_where:
        writer = writer.option("replaceWhere", replace_where)
    if metadata is not None:
        writer = writer.option("userMetadata", json.dumps(metadata, sort_keys=True, default=str))
    writer.save(path)
    from delta.tables import DeltaTable

    last = first_row(
        DeltaTable.forPath(spark, path).history(1).select("version", "operationMetrics")
    )
    metrics = last["operationMetrics"] or {}
    return Written(int(last["version"]), int(metrics.get("numOutputRows", 0) or 0))


def ensure_empty_table(spark: SparkSession, path: str, ddl: str, partition_by: str | None) -> None:
    """Create an empty Delta table with ``ddl`` columns at ``path`` unless one exists."""
    from delta.tables import DeltaTable
    from pyspark.sql.types import StructType

    schema = StructType.fromDDL(ddl)
    assert isinstance(schema, StructType)
    builder = DeltaTable.createIfNotExists(spark).location(path).addColumns(schema)
    if partition_by:
        builder = builder.partitionedBy(partition_by)
    builder.execute()
