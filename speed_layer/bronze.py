"""The bronze query's tables: every valid event, and the quarantine of everything else.

Bronze (``<lake>/<speed.bronze_table>``) holds each accepted event once, with the columns of
:func:`attune.events.spark_schema` plus ``event_date`` (the UTC date of the event's own
``timestamp``: a late event lands in the partition of the day it happened) and its Kafka
coordinates: :func:`attune.lake.bronze_schema`, the contract the batch layer reads. Quarantine
(``<lake>/<speed.quarantine_table>``) holds every record that could not be used, raw, with the
reason, partitioned by the day it arrived.

Exactly once: the query deduplicates by ``event_id`` within ``speed.dedup_watermark`` (of Kafka
time, so an event is never dropped for being late by its own clock) and writes each micro-batch
with Delta's idempotent-write options ``txnAppId`` (the query's id, stable across restarts from
its checkpoint) and ``txnVersion`` (the batch id). After a crash Spark re-runs the last planned
batch with the same records; Delta skips a table that already committed that version, so no row
is lost or written twice, even when the crash fell between the two tables' writes.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from attune.lake import add_missing_columns, bronze_schema

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.types import StructType

log = logging.getLogger(__name__)

ConsentPolicy = Literal["store", "store_unlinked", "drop"]

QUARANTINE_DDL = (
    "kafka_topic STRING, kafka_partition INT, kafka_offset BIGINT, kafka_timestamp TIMESTAMP, "
    "kafka_key STRING, value_text STRING, reason STRING NOT NULL, quarantine_date DATE NOT NULL"
)
UNLINKED_COLUMNS = ("user_id", "anonymous_id", "session_id")
"""Set to null for events without personalization consent under ``store_unlinked``."""


def quarantine_schema() -> StructType:
    from pyspark.sql.types import StructType

    schema = StructType.fromDDL(QUARANTINE_DDL)
    assert isinstance(schema, StructType)
    return schema


def bronze_rows(parsed: DataFrame, policy: ConsentPolicy) -> DataFrame:
    """Valid parsed records as bronze rows, with ``policy`` applied to unconsented events."""
    from pyspark.sql import functions as F

    rows = parsed.where(F.col("reason").isNull()).select(
        "event.*",
        F.to_date("event.timestamp").alias("event_date"),
        "kafka_partition",
        "kafka_offset",
        "kafka_timestamp",
    )
    consented = F.col("consent.personalization")
    if policy == "drop":
        rows = rows.where(consented)
    elif policy == "store_unlinked":
        for name in UNLINKED_COLUMNS:
            rows = rows.withColumn(name, F.when(consented, F.col(name)))
    return rows.select(*bronze_schema().fieldNames())


def quarantine_rows(parsed: DataFrame) -> DataFrame:
    from pyspark.sql import functions as F

    return parsed.where(F.col("reason").isNotNull()).select(
        "kafka_topic",
        "kafka_partition",
        "kafka_offset",
        "kafka_timestamp",
        "kafka_key",
        "value_text",
        "reason",
        F.to_date("kafka_timestamp").alias("quarantine_date"),
    )


def ensure_table(
    spark: SparkSession, path: str, schema: StructType, partition_by: str, comment: str
) -> None:
    """Create the Delta table at ``path`` if there is none (idempotent); add to an existing one
    the columns ``schema`` gained since (:func:`attune.lake.add_missing_columns`)."""
    from delta.tables import DeltaTable

    (
        DeltaTable.createIfNotExists(spark)
        .location(path)
        .addColumns(schema)
        .partitionedBy(partition_by)
        .comment(comment)
        .execute()
    )
    added = add_missing_columns(spark, path, schema)
    if added:
        log.info("%s: added column(s) %s", path, ", ".join(added))


def ensure_tables(spark: SparkSession, bronze_path: str, quarantine_path: str) -> None:
    ensure_table(
        spark,
        bronze_path,
        bronze_schema(),
        "event_date",
        "attune bronze events: every accepted event once (speed layer)",
    )
    ensure_table(
        spark,
        quarantine_path,
        quarantine_schema(),
        "quarantine_date",
        "attune quarantine: events-topic records that could not be used, with the reason",
    )


def checkpoint_query_id(checkpoint: Path) -> str:
    """The query id Spark keeps in ``<checkpoint>/metadata`` (stable across restarts)."""
    meta = checkpoint / "metadata"
    try:
        return str(json.loads(meta.read_text().splitlines()[0])["id"])
    except (OSError, ValueError, KeyError, IndexError) as exc:
        raise RuntimeError(f"cannot read the query id from {meta}: {exc}") from exc


class BronzeBatchWriter:
    """``foreachBatch`` function writing one micro-batch to bronze and quarantine, idempotently."""

    def __init__(
        self,
        bronze_path: str,
        quarantine_path: str,
        checkpoint: Path,
        policy: ConsentPolicy,
        on_batch: Callable[[dict[str, int]], None] | None = None,
    ) -> None:
        self.bronze_path = bronze_path
        self.quarantine_path = quarantine_path
        self.checkpoint = checkpoint
        self.policy = policy
        self.on_batch = on_batch
        self._app_id: str | None = None

    @property
    def app_id(self) -> str:
        if self._app_id is None:
            self._app_id = "attune-speed-bronze-" + checkpoint_query_id(self.checkpoint)
        return self._app_id

    def _append(self, df: DataFrame, path: str, batch_id: int, partition_by: str) -> None:
        # One file per date partition and batch: a replay of old data spans many dates, and
        # every task writing its own file into every date made commits crawl.
        (
            df.repartition(partition_by)
            .write.format("delta")
            .mode("append")
            .option("txnAppId", self.app_id)
            .option("txnVersion", batch_id)
            .partitionBy(partition_by)
            .save(path)
        )

    def __call__(self, df: DataFrame, batch_id: int) -> None:
        from pyspark.sql import functions as F

        df.persist()
        try:
            counts = {
                ("valid" if r["ok"] else "quarantined"): int(r["n"])
                for r in df.groupBy(F.col("reason").isNull().alias("ok"))
                .agg(F.count("*").alias("n"))
                .collect()
            }
            if counts.get("valid"):
                self._append(bronze_rows(df, self.policy), self.bronze_path, batch_id, "event_date")
            if counts.get("quarantined"):
                self._append(quarantine_rows(df), self.quarantine_path, batch_id, "quarantine_date")
                log.warning(
                    "batch %d: %d record(s) quarantined in %s",
                    batch_id,
                    counts["quarantined"],
                    self.quarantine_path,
                )
        finally:
            df.unpersist()
        if self.on_batch is not None:
            self.on_batch({"batch_id": batch_id, **counts})
