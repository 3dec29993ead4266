"""Hand-made events for the batch layer's tests, written to bronze the way the stream does."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from attune.events import ResolvedConsent, StoredEvent, spark_schema

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

CONSENT = ResolvedConsent(analytics=True, personalization=True, marketing=False)
NO_PERSONALIZATION = ResolvedConsent(analytics=True, personalization=False, marketing=False)


def at(day: int, hour: int = 12, minute: int = 0, second: int = 0, month: int = 3) -> datetime:
    return datetime(2013, month, day, hour, minute, second, tzinfo=UTC)


def ev(
    event_id: str,
    etype: str,
    user: str | None,
    ts: datetime,
    items: list[str] | list[dict[str, Any]] | None = None,
    *,
    received: datetime | None = None,
    anonymous: str | None = None,
    consent: ResolvedConsent = CONSENT,
    **fields: Any,
) -> StoredEvent:
    """A stored event; ``items`` as ids or item dicts; received 1 s after it happened."""
    item_list = [{"item_id": i} if isinstance(i, str) else i for i in items or []]
    return StoredEvent.model_validate(
        {
            "event_id": event_id,
            "type": etype,
            "timestamp": ts,
            "items": item_list,
            "user_id": user,
            "anonymous_id": anonymous,
            "consent": consent,
            "received_at": received or ts + timedelta(seconds=1),
            "source": "tests",
            **fields,
        }
    )


def bronze_frame(
    spark: SparkSession, events: list[StoredEvent], first_offset: int = 0
) -> DataFrame:
    """Bronze rows of ``events``: parsed from their canonical JSON like the stream parses them,
    with ``event_date`` and Kafka coordinates (partition 0, consecutive offsets)."""
    from pyspark.sql import functions as F

    from attune.lake import bronze_schema

    raw = spark.createDataFrame(
        [(e.to_json().decode(), first_offset + n) for n, e in enumerate(events)],
        "v STRING, kafka_offset BIGINT",
    )
    parsed = raw.select(F.from_json("v", spark_schema()).alias("e"), "kafka_offset").select(
        "e.*",
        F.to_date("e.timestamp").alias("event_date"),
        F.lit(0).alias("kafka_partition"),
        "kafka_offset",
        F.col("e.received_at").alias("kafka_timestamp"),
    )
    schema = bronze_schema()
    return spark.createDataFrame(parsed.select(*schema.fieldNames()).rdd, schema)


def write_bronze(
    spark: SparkSession, path: str, events: list[StoredEvent], first_offset: int = 0
) -> None:
    """Append ``events`` to the bronze table at ``path`` (created as the speed layer does)."""
    from attune.lake import bronze_schema
    from speed_layer.bronze import ensure_table

    ensure_table(spark, path, bronze_schema(), "event_date", "test bronze")
    bronze_frame(spark, events, first_offset).write.format("delta").mode("append").save(path)
