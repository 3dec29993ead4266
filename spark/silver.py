"""Silver: cleansed events, and the items and users dimension tables.

``silver/events`` holds the bronze events that count, partitioned by ``event_date``. For a
logical date ``D`` the stage re-derives the partitions ``D - batch.late_days`` .. ``D`` (or from
``--from``) from bronze as it is now, and replaces exactly those partitions:

* late data is merged: an event that happened on ``D - 2`` but reached bronze on ``D`` is in
  bronze's ``D - 2`` partition (bronze partitions by the event's own date), so it appears in
  silver when ``D`` is processed;
* duplicates are removed: one row per ``event_id`` (the first received; bronze deduplicates
  only within the speed layer's watermark, so a retry hours later is still there);
* bots are removed: a user with more than ``bots.max_events_per_day`` events on a day, or more
  than ``bots.max_events_per_minute`` in one clock minute, is a bot on that day; the day's events
  are dropped and the user-day recorded in ``silver/bot_days`` with the reason;
* erased users are removed (:mod:`spark.erasure`): every event of a pseudonym with an erasure
  request, received before the request.

``silver/items`` is the catalog topic read in batch mode (latest record per item; tombstones
delete). ``silver/users`` has one row per user (the pseudonymized user id, or the anonymous id
of visitors who never logged in) with activity, consent and the profile ``traits`` encrypted
with AES-256-GCM (:func:`encrypt_traits`).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from attune.events import spark_schema
from attune.features import clean_labels_column, clean_text_column, user_column
from spark.context import RunContext, Stage, StageInputs, StageOutputs, window_start

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

    from attune.config import AttuneConfig

log = logging.getLogger(__name__)

CATALOG_VALUE_DDL = (
    "item_id STRING, title STRING, year INT, genres ARRAY<STRING>, price DOUBLE, tags ARRAY<STRING>"
)
"""Fields read from a catalog record's JSON value; the topic holds ``{item_id, title, year,
genres}`` and may carry ``price`` and ``tags``; anything else is ignored."""

ITEMS_DDL = (
    "item_id STRING NOT NULL, title STRING, year INT, genres ARRAY<STRING>, price DOUBLE, "
    "tags ARRAY<STRING>"
)
BOT_DAYS_DDL = "user STRING, event_date DATE, events BIGINT, peak_per_minute BIGINT, reason STRING"
TRAITS_KEY_COLUMN = "_traits_key"
TRAITS_IV_COLUMN = "_traits_iv_key"


def silver_event_columns() -> list[str]:
    """``silver/events``' columns: the event schema's fields and ``event_date``."""
    return [*spark_schema().fieldNames(), "event_date"]


# ----------------------------------------------------------------------------------------
# Events


def deduplicate(events: DataFrame) -> DataFrame:
    """One row per ``event_id``: the first received (ties: Kafka partition, then offset)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    order = Window.partitionBy("event_id").orderBy(
        F.col("received_at").asc(),
        F.col("kafka_partition").asc_nulls_last(),
        F.col("kafka_offset").asc_nulls_last(),
    )
    return events.withColumn("_n", F.row_number().over(order)).where("_n = 1").drop("_n")


def bot_days(events: DataFrame, max_per_day: int, max_per_minute: int) -> DataFrame:
    """``user, event_date, events, peak_per_minute, reason`` of each user-day over the limits.

    A minute is a clock minute of event time. Events with neither a user nor an anonymous id
    (stored unlinked) cannot be attributed and are never flagged.
    """
    from pyspark.sql import functions as F

    per_minute = (
        events.select(
            user_column().alias("user"),
            "event_date",
            F.date_trunc("minute", "timestamp").alias("minute"),
        )
        .where(F.col("user").isNotNull())
        .groupBy("user", "event_date", "minute")
        .count()
    )
    per_day = per_minute.groupBy("user", "event_date").agg(
        F.sum("count").alias("events"), F.max("count").alias("peak_per_minute")
    )
    too_many = F.col("events") > max_per_day
    too_fast = F.col("peak_per_minute") > max_per_minute
    reason = F.concat_ws(
        "; ",
        F.when(too_many, F.format_string(f"%d events in a day > {max_per_day}", "events")),
        F.when(
            too_fast,
            F.format_string(f"%d events in one minute > {max_per_minute}", "peak_per_minute"),
        ),
    )
    return per_day.where(too_many | too_fast).select(
        "user", "event_date", "events", "peak_per_minute", reason.alias("reason")
    )


def without_bots(events: DataFrame, bots: DataFrame) -> DataFrame:
    from pyspark.sql import functions as F

    flagged = bots.select(F.col("user").alias("_bot"), F.col("event_date").alias("_bot_date"))
    return events.join(
        flagged,
        (user_column() == F.col("_bot")) & (F.col("event_date") == F.col("_bot_date")),
        "left_anti",
    )


def without_erased(events: DataFrame, erasures: DataFrame | None) -> DataFrame:
    """Drop events of erased pseudonyms received at or before their erasure request."""
    from pyspark.sql import functions as F

    if erasures is None:
        return events
    req = erasures.select(
        F.col("pseudonym").alias("_erased"), F.col("requested_at").alias("_requested_at")
    )
    by_user = (F.col("user_id") == F.col("_erased")) | (F.col("anonymous_id") == F.col("_erased"))
    return events.join(
        F.broadcast(req), by_user & (F.col("received_at") <= F.col("_requested_at")), "left_anti"
    )


@dataclass(frozen=True)
class CleansedEvents:
    events: DataFrame
    bot_days: DataFrame


def cleanse_events(
    bronze: DataFrame, erasures: DataFrame | None, max_per_day: int, max_per_minute: int
) -> CleansedEvents:
    """Bronze rows -> silver rows: deduplicated, erased users and bots removed."""
    unique = deduplicate(without_erased(bronze, erasures))
    bots = bot_days(unique, max_per_day, max_per_minute)
    events = without_bots(unique, bots).select(*silver_event_columns())
    return CleansedEvents(events, bots)


# ----------------------------------------------------------------------------------------
# Items dimension (catalog topic)


def read_catalog_topic(spark: SparkSession, cfg: AttuneConfig) -> DataFrame:
    """Every record of the catalog topic, from the beginning, read in batch mode."""
    from kafka import KafkaConsumer

    topic = cfg.kafka.topic("catalog").name
    consumer = KafkaConsumer(bootstrap_servers=cfg.kafka.bootstrap_servers, group_id=None)
    try:
        partitions = consumer.partitions_for_topic(topic)
    finally:
        consumer.close()
    if not partitions:
        raise RuntimeError(
            f"catalog topic {topic!r} does not exist on {cfg.kafka.bootstrap_servers}; create "
            "the declared topics with `attune stack up` (or `attune stack topics`)"
        )
    return (
        spark.read.format("kafka")
        .option("kafka.bootstrap.servers", cfg.kafka.bootstrap_servers)
        .option("subscribe", topic)
        .option("startingOffsets", "earliest")
        .option("endingOffsets", "latest")
        .load()
    )


@dataclass(frozen=True)
class Catalog:
    items: DataFrame
    records: int
    malformed: int
    source: DataFrame

    def release(self) -> None:
        self.source.unpersist()


def latest_items(records: DataFrame) -> tuple[DataFrame, DataFrame]:
    """Kafka records of the catalog topic -> (items, malformed records).

    The latest record per item wins (compaction may not have run yet); a tombstone (null value)
    deletes the item. A record is malformed when its value is not a JSON object with an
    ``item_id`` (or a key to take it from); malformed records are skipped, not fatal. The id,
    genres and tags are cleaned by the rules the models apply to item files
    (:func:`attune.features.clean_text`, :func:`attune.features.clean_labels`).
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    parsed = records.select(
        F.col("key").cast("string").alias("key"),
        F.col("value").cast("string").alias("value_text"),
        "partition",
        "offset",
        "timestamp",
    ).withColumn("v", F.from_json("value_text", CATALOG_VALUE_DDL))
    item_id = F.coalesce(clean_text_column("v.item_id"), F.col("key"))
    # json_object_keys is null unless the text is one valid JSON object
    is_object = F.json_object_keys("value_text").isNotNull()
    parsed = parsed.withColumn("item_id", item_id).withColumn(
        "malformed",
        F.col("value_text").isNotNull() & (~is_object | F.col("item_id").isNull()),
    )
    malformed = parsed.where("malformed")
    good = parsed.where(~F.col("malformed") & F.col("item_id").isNotNull())
    order = Window.partitionBy("item_id").orderBy(
        F.desc("timestamp"), F.desc("partition"), F.desc("offset")
    )
    latest = good.withColumn("_n", F.row_number().over(order)).where("_n = 1")

    items = latest.where(F.col("value_text").isNotNull()).select(
        "item_id",
        F.col("v.title").alias("title"),
        F.col("v.year").alias("year"),
        F.coalesce(clean_labels_column("v.genres"), F.array().cast("array<string>")).alias(
            "genres"
        ),
        F.col("v.price").alias("price"),
        F.coalesce(clean_labels_column("v.tags"), F.array().cast("array<string>")).alias("tags"),
    )
    return items, malformed


def load_catalog(spark: SparkSession, cfg: AttuneConfig) -> Catalog:
    """The latest items of the catalog topic, with the number of records and malformed ones."""

    records = read_catalog_topic(spark, cfg).cache()
    items, malformed = latest_items(records)
    n_records = records.count()
    n_malformed = malformed.count()
    return Catalog(items, n_records, n_malformed, records)


# ----------------------------------------------------------------------------------------
# Users dimension with encrypted traits


def with_traits_key(df: DataFrame, key: bytes) -> DataFrame:
    """Attach the AES key (and the key the IVs are derived from) as columns of a one-row,
    broadcast DataFrame, so the key never appears in an expression's text (column names,
    error messages, plan strings)."""
    from pyspark.sql import functions as F

    iv_key = hashlib.sha256(b"attune traits iv\x00" + key).hexdigest()
    keys = df.sparkSession.createDataFrame(
        [(key, iv_key)], f"{TRAITS_KEY_COLUMN} BINARY, {TRAITS_IV_COLUMN} STRING"
    )
    return df.crossJoin(F.broadcast(keys))


def encrypt_traits(plaintext: Column, aad: Column) -> Column:
    """AES-256-GCM of ``plaintext`` bound to ``aad`` (the user), in the JVM.

    Needs the key columns of :func:`with_traits_key`. The 96-bit IV is synthetic: the first 12
    bytes of a keyed SHA-256 of the user and the plaintext, so re-running the batch writes the
    same bytes (idempotent tables) while two different plaintexts never share an IV; the only
    thing it reveals is that a user's traits did not change. Output: IV || ciphertext || tag.
    """
    from pyspark.sql import functions as F

    iv = F.unhex(
        F.substring(
            F.sha2(F.concat_ws("\x00", F.col(TRAITS_IV_COLUMN), aad, plaintext), 256), 1, 24
        )
    )
    return F.aes_encrypt(
        plaintext, F.col(TRAITS_KEY_COLUMN), F.lit("GCM"), F.lit("DEFAULT"), iv, aad
    )


def decrypt_traits(users: DataFrame, key: bytes) -> DataFrame:
    """``users`` with a ``traits`` map decrypted from ``traits_encrypted`` (for authorized
    readers; a wrong key or a tampered row fails the query instead of returning garbage)."""
    from pyspark.sql import functions as F

    keyed = with_traits_key(users, key)
    plain = F.aes_decrypt(
        F.col("traits_encrypted"),
        F.col(TRAITS_KEY_COLUMN),
        F.lit("GCM"),
        F.lit("DEFAULT"),
        F.col("user"),
    ).cast("string")
    return keyed.withColumn("traits", F.from_json(plain, "map<string,string>")).drop(
        TRAITS_KEY_COLUMN, TRAITS_IV_COLUMN
    )


def users_dimension(events: DataFrame, key: bytes) -> DataFrame:
    """One row per user from their events.

    Columns: ``user``, ``is_anonymous`` (only ever seen by anonymous id), ``anonymous_ids``
    (anonymous ids seen together with the user id, e.g. on ``identify``), ``first_seen``,
    ``last_seen``, ``events``, ``purchases``, ``revenue``, ``last_device``, ``last_locale``,
    ``consent`` (of the latest event), ``traits_encrypted`` (the latest value of every trait
    from ``profile_update`` events, as JSON, encrypted) and ``traits_updated_at``.
    """
    from pyspark.sql import functions as F

    ev = events.withColumn("user", user_column()).where(F.col("user").isNotNull())
    latest = F.max_by(
        F.struct(
            F.col("context.device").alias("device"),
            F.col("context.locale").alias("locale"),
            F.col("consent").alias("consent"),
        ),
        F.struct("timestamp", "received_at", "event_id"),
    )
    activity = ev.groupBy("user").agg(
        F.min(F.col("user_id").isNull()).alias("is_anonymous"),
        F.array_sort(
            F.collect_set(F.when(F.col("user_id").isNotNull(), F.col("anonymous_id")))
        ).alias("anonymous_ids"),
        F.min("timestamp").alias("first_seen"),
        F.max("timestamp").alias("last_seen"),
        F.count("*").alias("events"),
        F.count(F.when(F.col("type") == "purchase", 1)).alias("purchases"),
        F.sum(F.when(F.col("type") == "purchase", F.col("revenue"))).alias("revenue"),
        latest.alias("_latest"),
    )
    traits = (
        ev.where(F.col("traits").isNotNull())
        .select("user", "timestamp", "event_id", F.explode("traits").alias("k", "v"))
        .groupBy("user", "k")
        .agg(
            F.max_by("v", F.struct("timestamp", "event_id")).alias("v"),
            F.max("timestamp").alias("_at"),
        )
        .groupBy("user")
        .agg(
            F.to_json(F.map_from_entries(F.array_sort(F.collect_list(F.struct("k", "v"))))).alias(
                "_traits_json"
            ),
            F.max("_at").alias("traits_updated_at"),
        )
    )
    joined = with_traits_key(activity.join(traits, "user", "left"), key)
    return joined.select(
        "user",
        "is_anonymous",
        "anonymous_ids",
        "first_seen",
        "last_seen",
        "events",
        "purchases",
        F.coalesce("revenue", F.lit(0.0)).alias("revenue"),
        F.col("_latest.device").alias("last_device"),
        F.col("_latest.locale").alias("last_locale"),
        F.col("_latest.consent").alias("consent"),
        encrypt_traits(F.col("_traits_json"), F.col("user")).alias("traits_encrypted"),
        "traits_updated_at",
    )


# ----------------------------------------------------------------------------------------
# The stage


def run_silver(ctx: RunContext, inputs: StageInputs) -> StageOutputs:
    """Erasures, then the date window of silver/events, then items and users."""
    from pyspark.sql import functions as F

    from attune.lake import add_missing_columns
    from attune.secrets import profile_key
    from spark import erasure, quality
    from spark.tables import date_between, first_row, is_table, read_table, write_table

    spark, cfg, lake, day = ctx.spark, ctx.cfg, ctx.lake, ctx.run_date
    out: StageOutputs = {}

    requests = erasure.active_requests(spark, cfg, lake, day)
    out["erasure"] = erasure.apply_erasures(ctx, requests)

    start = window_start(day, cfg.batch.late_days, ctx.since)
    bronze_version = ctx.version_of(inputs["bronze"])
    bronze = read_table(spark, inputs["bronze"], bronze_version)

    window = bronze.where(date_between("event_date", start, day))
    all_requests = erasure.all_requests(spark, lake)
    cleansed = cleanse_events(
        window,
        all_requests,
        cfg.batch.bots.max_events_per_day,
        cfg.batch.bots.max_events_per_minute,
    )
    bots = cleansed.bot_days.cache()
    bot_rows = first_row(bots.agg(F.count("*"), F.sum("events")))
    ctx.progress(f"silver: {bot_rows[0] or 0} bot user-day(s) in {start}..{day}")
    where = date_between("event_date", start, day)
    write_table(bots, lake.silver_bot_days, partition_by="event_date", replace_where=where)
    if is_table(spark, lake.silver_events):  # fields the event schema gained since (Item.team)
        add_missing_columns(spark, lake.silver_events, cleansed.events.schema)
    events_version = write_table(
        cleansed.events,
        lake.silver_events,
        partition_by="event_date",
        replace_where=where,
        metadata={"run_date": day, "bronze_version": bronze_version, "from": start},
    ).version
    bots.unpersist()
    silver = read_table(spark, lake.silver_events, events_version)
    counts = quality.check_silver(ctx, window, silver.where(where), int(bot_rows[1] or 0))
    out["events"] = {"from": str(start), "to": str(day), "version": events_version, **counts}
    ctx.progress(f"silver: events {start}..{day}: {counts['rows']:,} rows (v{events_version})")

    catalog = load_catalog(spark, cfg)
    quality.check_catalog(ctx, catalog.records, catalog.malformed)
    items = write_table(catalog.items, lake.silver_items)
    catalog.release()
    out["items"] = {
        "items": items.rows,
        "records": catalog.records,
        "malformed": catalog.malformed,
        "version": items.version,
    }
    ctx.progress(f"silver: items: {items.rows:,} from {catalog.records:,} catalog records")

    history = read_table(spark, lake.silver_events, events_version).where(
        F.col("event_date") <= F.lit(day)
    )
    users = users_dimension(history, profile_key(cfg))
    written = write_table(users, lake.silver_users)
    out["users"] = {"users": written.rows, "version": written.version}
    ctx.progress(f"silver: users dimension: {written.rows:,} users (v{written.version})")
    quality.flush(ctx, "silver")
    return out


STAGE = Stage(
    "silver",
    run_silver,
    needs=("bronze",),
    missing=(
        "no bronze table at {path}: start the speed layer (`attune speed start`) so events "
        "reach the lake, then run the batch"
    ),
)
