"""Batch benchmark: the nightly run over synthetic histories of growing size.

    .venv/bin/python benchmarks/batch.py [--sizes 1M,3M,10M] [--days 30] [--items 20000]

What it does, on the configured stack (``attune stack up``; ``ATTUNE__*`` overrides apply):

1. generates, in Spark (no Python loops over events), a realistic history of each size straight
   into a bronze Delta table shaped exactly like the speed layer's, under
   ``var/bench/batch/<size>/lake`` (written once: a size that is already there is reused):
   sessions of a power-law population of users (a few users make most sessions), power-law item
   popularity, view -> cart -> checkout -> purchase funnels on each session's focus item,
   impressions and clicks carrying a recommendation id of an A/B experiment, ratings,
   dismissals, profile updates with traits, 2 % of users without personalization consent,
   2 % of events arriving 1-3 days late, 0.3 % client retries (duplicates) and a few bots;
2. publishes the catalog (``--items`` items with titles, years, genres, prices) to its own
   catalog topic, ``attune.catalog.bench``;
3. backfills silver over the whole history once (``--stage silver --from <first day>``, timed
   and reported as "backfill", not part of the nightly run);
4. times **the nightly run** for the last day: every stage (silver over the late window, gold
   over all history, views and corrections written to Redis under their own key prefix,
   maintenance), per stage, in wall seconds and in CPU seconds (driver, Spark JVM and Python
   workers: on a machine shared with other work, wall time follows the others' load), and the
   peak RSS over the nightly run of the driver and of the Spark JVM with its Python workers
   (``benchmarks/memory.py``: the sampled peak of the tree's summed RSS, and each process's
   VmHWM).

It prints a table, the growth exponent of the nightly run's time against the number of events
(log-log slope between the smallest and the largest size: 1.0 is linear, less is better than
linear) and writes ``benchmarks/results/batch.json``. Targets: the exponent is at most 1, and
10M events finish within 10 minutes on this machine.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from pathlib import Path
from typing import TYPE_CHECKING, Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))  # memory.py, also when imported as benchmarks.batch

from memory import PeakMemory, ProcessGroup, format_peaks  # noqa: E402
from memory import descendants as _descendants  # noqa: E402

from attune.config import AttuneConfig, load_config  # noqa: E402

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

RESULTS = ROOT / "benchmarks" / "results" / "batch.json"
TARGET_SECONDS_10M = 600
END = date(2013, 3, 31)
GENRES = [
    "Action",
    "Adventure",
    "Animation",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Family",
    "Fantasy",
    "History",
    "Horror",
    "Music",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Sport",
    "Thriller",
    "War",
    "Western",
    "Biography",
]
# Event types and their cumulative share of session events.
MIX = [
    ("item_view", 0.50),
    ("impression", 0.65),
    ("click", 0.71),
    ("rec_click", 0.75),
    ("add_to_cart", 0.82),
    ("remove_from_cart", 0.83),
    ("checkout", 0.86),
    ("purchase", 0.89),
    ("search", 0.91),
    ("dwell", 0.93),
    ("rating", 0.96),
    ("dismiss", 0.975),
    ("not_interested", 0.98),
    ("page_view", 0.995),
    ("profile_update", 1.0),
]
MEAN_SESSION = 9.5  # events per session: 1 + floor(Exp(mean 9)), see _sessions


def _epoch_ms(d: date) -> int:
    return int(datetime.combine(d, dtime(0), tzinfo=UTC).timestamp() * 1000)


def parse_size(text: str) -> int:
    t = text.strip().upper()
    mult = {"K": 1_000, "M": 1_000_000}.get(t[-1:], 1)
    try:
        return int(float(t[:-1] if t[-1:] in "KM" else t) * mult)
    except ValueError:
        raise SystemExit(f"--sizes: {text!r} is not a size; write e.g. 1M,3M,10M or 500K") from None


def label(n: int) -> str:
    return f"{n // 1_000_000}M" if n % 1_000_000 == 0 else f"{n // 1000}K"


# ----------------------------------------------------------------------------------------
# Generation (all in Spark)


def _sessions(
    spark: SparkSession, n_events: int, days: int, n_users: int, n_items: int
) -> DataFrame:
    from pyspark.sql import functions as F

    n_sessions = max(1, int(n_events / MEAN_SESSION))
    parts = max(4, n_events // 250_000)
    start_ms = _epoch_ms(END - timedelta(days=days - 1))
    span_ms = days * 86_400_000
    s = spark.range(0, n_sessions, numPartitions=parts).withColumnRenamed("id", "session")
    return s.select(
        "session",
        # power law: a few users have most sessions, a few items most views
        F.floor(F.pow(F.rand(11), 2.5) * n_users).cast("long").alias("u"),
        F.least(F.lit(60), 1 + F.floor(-F.log(1 - F.rand(12)) * 9)).cast("int").alias("len"),
        (F.lit(start_ms) + F.floor(F.rand(13) * span_ms)).cast("long").alias("start_ms"),
        F.floor(F.pow(F.rand(14), 3.0) * n_items).cast("long").alias("focus"),
        F.when(F.rand(15) < 0.5, "A").otherwise("B").alias("variant"),
        F.element_at(
            F.array(*map(F.lit, ["mobile", "desktop", "tv"])),
            (F.floor(F.rand(16) * 3) + 1).cast("int"),
        ).alias("device"),
        (F.rand(17) < 0.8).alias("has_session_id"),
    )


def generate_bronze(
    spark: SparkSession, n_events: int, days: int, n_users: int, n_items: int
) -> DataFrame:
    """A bronze-shaped DataFrame of about ``n_events`` events (see the module docstring)."""
    from pyspark.sql import functions as F

    from attune.lake import bronze_schema

    def item_id(expr: Any) -> Any:
        return F.format_string("it%06d", expr)

    def pick_item(seed: int) -> Any:
        return F.floor(F.pow(F.rand(seed), 3.0) * n_items).cast("long")

    ev = _sessions(spark, n_events, days, n_users, n_items).select(
        "*", F.explode(F.sequence(F.lit(0), F.col("len") - 1)).alias("k")
    )
    r = F.rand(21)
    etype = F.lit(MIX[-1][0])
    for name, upto in reversed(MIX[:-1]):
        etype = F.when(r < upto, name).otherwise(etype)
    ev = ev.withColumn("type", etype).withColumn(
        "ts_ms", F.col("start_ms") + F.col("k") * 40_000 + F.floor(F.rand(22) * 20_000).cast("long")
    )
    ev = ev.withColumn("item", pick_item(23))
    funnel = F.col("type").isin("add_to_cart", "remove_from_cart", "checkout", "purchase")
    main_item = F.when(funnel, F.col("focus")).otherwise(F.col("item"))
    price = (F.lit(5.0) + (main_item % 50)).cast("double")
    rec_id = F.format_string("exp1:%s:%d-%d", "variant", "session", "k")

    def one(item_expr: Any, with_price: bool = False, position: Any = None) -> Any:
        return F.struct(
            item_id(item_expr).alias("item_id"),
            F.lit(None).cast("long").alias("quantity"),
            (price if with_price else F.lit(None).cast("double")).alias("price"),
            (position if position is not None else F.lit(None).cast("long")).alias("position"),
            F.lit(None).cast("string").alias("category"),
            F.lit(None).cast("string").alias("team"),
            F.lit(None).cast("double").alias("propensity"),
        )

    shown = F.array(*[one(pick_item(30 + p), position=F.lit(p).cast("long")) for p in range(4)])
    items = (
        F.when(
            F.col("type").isin("page_view", "search", "profile_update"),
            F.array().cast(
                "array<struct<item_id:string,quantity:bigint,price:double,position:bigint,"
                "category:string,team:string,propensity:double>>"
            ),
        )
        .when(F.col("type") == "impression", shown)
        .otherwise(F.array(one(main_item, with_price=True)))
    )
    late = F.rand(24) < 0.02
    received_ms = (
        F.col("ts_ms") + 1000 + F.when(late, F.floor(1 + F.rand(25) * 3) * 86_400_000).otherwise(0)
    )
    personal = F.coalesce((F.xxhash64("u") % 50) != 0, F.lit(True))  # NOT NULL, as in bronze
    user = F.format_string("u%07d", "u")
    out = ev.select(
        F.format_string("b%d-%d", "session", "k").alias("event_id"),
        "type",
        F.when(F.col("has_session_id"), F.format_string("s%d", "session")).alias("session_id"),
        F.timestamp_millis("ts_ms").alias("timestamp"),
        items.alias("items"),
        F.struct(
            F.lit("home_carousel").alias("placement"),
            F.lit(None).cast("string").alias("page"),
            F.col("device").alias("device"),
            F.lit("en-GB").alias("locale"),
            F.lit(None).cast("string").alias("referrer"),
        ).alias("context"),
        F.when(F.col("type").isin("impression", "rec_click"), rec_id).alias("recommendation_id"),
        F.when(F.col("type") == "search", F.format_string("q%d", "item")).alias("query"),
        F.when(F.col("type") == "rating", F.floor(F.rand(26) * 11).cast("double")).alias("rating"),
        F.when(F.col("type") == "dwell", F.floor(F.rand(27) * 60_000).cast("long")).alias(
            "dwell_ms"
        ),
        F.when(F.col("type") == "purchase", F.format_string("o%d-%d", "session", "k")).alias(
            "order_id"
        ),
        F.when(F.col("type") == "purchase", price).alias("revenue"),
        F.when(F.col("type") == "purchase", F.lit("EUR")).alias("currency"),
        F.lit(None).cast("string").alias("reason"),
        F.when(
            F.col("type") == "profile_update",
            F.create_map(
                F.lit("plan"),
                F.when(F.rand(28) < 0.2, "pro").otherwise("free"),
                F.lit("city"),
                F.format_string("city%d", F.col("u") % 100),
            ),
        ).alias("traits"),
        F.lit(1).cast("long").alias("schema_version"),
        user.alias("user_id"),
        F.lit(None).cast("string").alias("anonymous_id"),
        F.struct(
            F.lit(True).alias("analytics"),
            personal.alias("personalization"),
            F.lit(False).alias("marketing"),
        ).alias("consent"),
        F.timestamp_millis(received_ms).alias("received_at"),
        F.lit("bench").alias("source"),
        "u",
    )
    # 0.3 % client retries of an event 10 minutes later
    retries = out.sample(fraction=0.003, seed=29).withColumn(
        "received_at", F.col("received_at") + F.expr("INTERVAL 10 MINUTES")
    )
    # bots: max(1, N / 1M) users, 300 item views in 2 minutes every day
    n_bots = max(1, n_events // 1_000_000)
    bots = (
        spark.range(0, n_bots * days * 300)
        .select(
            F.floor(F.col("id") / (days * 300)).cast("long").alias("b"),
            (F.floor(F.col("id") / 300) % days).cast("long").alias("d"),
            (F.col("id") % 300).alias("j"),
        )
        .select(
            F.format_string("bot%d-%d-%d", "b", "d", "j").alias("event_id"),
            F.lit("item_view").alias("type"),
            F.timestamp_millis(
                F.lit(_epoch_ms(END - timedelta(days=days - 1)) + 3_600_000)
                + F.col("d") * 86_400_000
                + F.col("j") * 400
            ).alias("ts"),
            F.format_string("bot%03d", "b").alias("user_id"),
            pick_item(31).alias("item"),
        )
    )
    bot_rows = bots.select(
        "event_id",
        "type",
        F.lit(None).cast("string").alias("session_id"),
        F.col("ts").alias("timestamp"),
        F.array(
            F.struct(
                item_id(F.col("item")).alias("item_id"),
                F.lit(None).cast("long").alias("quantity"),
                F.lit(None).cast("double").alias("price"),
                F.lit(None).cast("long").alias("position"),
                F.lit(None).cast("string").alias("category"),
                F.lit(None).cast("string").alias("team"),
                F.lit(None).cast("double").alias("propensity"),
            )
        ).alias("items"),
        *[
            F.lit(None).alias(c)
            for c in (
                "context",
                "recommendation_id",
                "query",
                "rating",
                "dwell_ms",
                "order_id",
                "revenue",
                "currency",
                "reason",
                "traits",
            )
        ],
        F.lit(1).cast("long").alias("schema_version"),
        "user_id",
        F.lit(None).cast("string").alias("anonymous_id"),
        F.struct(
            F.lit(True).alias("analytics"),
            F.lit(True).alias("personalization"),
            F.lit(False).alias("marketing"),
        ).alias("consent"),
        (F.col("ts") + F.expr("INTERVAL 1 SECOND")).alias("received_at"),
        F.lit("bench").alias("source"),
        F.lit(0).cast("long").alias("u"),
    )
    rows = out.unionByName(retries).unionByName(bot_rows)
    rows = rows.select(
        "*",
        F.to_date("timestamp").alias("event_date"),
        F.pmod(F.xxhash64("user_id"), F.lit(6)).cast("int").alias("kafka_partition"),
        F.monotonically_increasing_id().alias("kafka_offset"),
        F.col("received_at").alias("kafka_timestamp"),
    )
    schema = bronze_schema()
    return rows.select(*[F.col(f.name).cast(f.dataType).alias(f.name) for f in schema.fields])


def catalog_records(n_items: int) -> list[tuple[str, bytes]]:
    import orjson

    out = []
    for i in range(n_items):
        genres = [GENRES[(i * 7) % 20]] + ([GENRES[(i * 13 + 3) % 20]] if i % 3 else [])
        item = {
            "item_id": f"it{i:06d}",
            "title": f"Item {i} {GENRES[i % 20].lower()} story",
            "year": 1950 + i % 70,
            "genres": sorted(set(genres)),
            "price": 5.0 + i % 50,
        }
        out.append((str(item["item_id"]), orjson.dumps(item, option=orjson.OPT_SORT_KEYS)))
    return out


def ensure_catalog(cfg: AttuneConfig, n_items: int, marker: Path) -> None:
    """Create the benchmark's catalog topic and publish the items once."""
    from kafka import KafkaProducer
    from kafka.admin import KafkaAdminClient, NewTopic

    topic = cfg.kafka.topic("catalog").name
    if marker.exists() and json.loads(marker.read_text()).get("items") == n_items:
        return
    admin = KafkaAdminClient(bootstrap_servers=cfg.kafka.bootstrap_servers)
    try:
        if topic not in admin.list_topics():
            admin.create_topics(
                [NewTopic(topic, 3, 1, topic_configs={"cleanup.policy": "compact"})]
            )
    finally:
        admin.close()
    producer = KafkaProducer(
        bootstrap_servers=cfg.kafka.bootstrap_servers, acks="all", linger_ms=20
    )
    try:
        for key, value in catalog_records(n_items):
            producer.send(topic, key=key.encode(), value=value)
        producer.flush(timeout=120)
    finally:
        producer.close()
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"items": n_items, "topic": topic}))
    print(f"catalog: {n_items:,} items published to {topic}", flush=True)


# ----------------------------------------------------------------------------------------
# The run


def bench_config(base: AttuneConfig, size: int) -> AttuneConfig:
    lake = base.paths.resolve(f"bench/batch/{label(size)}/lake")
    topics = dict(base.kafka.topics)
    topics["catalog"] = topics["catalog"].model_copy(update={"name": "attune.catalog.bench"})
    return base.model_copy(
        update={
            "lake": base.lake.model_copy(update={"root": str(lake)}),
            "kafka": base.kafka.model_copy(update={"topics": topics}),
            "speed": base.speed.model_copy(
                update={
                    "online_store": base.speed.online_store.model_copy(
                        update={"key_prefix": f"bench{label(size)}"}
                    )
                }
            ),
        }
    )


def clear_redis(cfg: AttuneConfig) -> int:
    import redis

    client = redis.Redis(host=cfg.redis.host, port=cfg.redis.port, db=cfg.redis.db)
    n = 0
    try:
        batch = []
        for key in client.scan_iter(match=f"{cfg.speed.online_store.key_prefix}:*", count=5000):
            batch.append(key)
            if len(batch) >= 5000:
                n += client.delete(*batch)
                batch = []
        if batch:
            n += client.delete(*batch)
    finally:
        client.close()
    return n


def run_size(base: AttuneConfig, size: int, days: int, n_items: int) -> dict[str, Any]:
    from attune.spark_session import build_spark_session
    from spark.job import STAGES, batch_spark_conf, run_batch, use_this_python_for_workers
    from spark.tables import Lake, is_table

    cfg = bench_config(base, size)
    lake = Lake.from_config(cfg)
    ensure_catalog(cfg, n_items, base.paths.resolve("bench/batch/catalog.json"))
    use_this_python_for_workers()
    spark = build_spark_session(cfg, "attune-batch-bench", batch_spark_conf(cfg))
    use_this_python_for_workers(spark)
    result: dict[str, Any] = {"size": size, "label": label(size)}
    marker = Path(lake.bronze) / "_generated.json"
    params = {"size": size, "days": days, "items": n_items, "users": max(1000, size // 50)}
    if not (marker.exists() and json.loads(marker.read_text()) == params):
        started = time.monotonic()
        print(f"[{label(size)}] generating ~{size:,} events into {lake.bronze} ...", flush=True)
        from attune.lake import bronze_schema
        from speed_layer.bronze import ensure_table

        ensure_table(spark, lake.bronze, bronze_schema(), "event_date", "benchmark bronze")
        df = generate_bronze(spark, size, days, params["users"], n_items)
        (
            df.repartition("event_date")
            .write.format("delta")
            .mode("overwrite")
            .partitionBy("event_date")
            .save(lake.bronze)
        )
        marker.write_text(json.dumps(params))
        print(f"[{label(size)}] generated in {time.monotonic() - started:.0f} s", flush=True)
        for stale in ("silver", "gold", "quality", "privacy"):  # derived from an older bronze
            import shutil

            shutil.rmtree(Path(cfg.lake_root) / stale, ignore_errors=True)
    events = spark.read.format("delta").load(lake.bronze).count()
    result["events"] = events
    first = END - timedelta(days=days - 1)
    if not is_table(spark, lake.silver_events):
        started = time.monotonic()
        run_batch(cfg, END, ["silver"], since=first, spark=spark, say=_say(size))
        result["backfill_silver_s"] = round(time.monotonic() - started, 1)
    clear_redis(cfg)
    print(f"[{label(size)}] nightly run for {END} over {events:,} bronze events", flush=True)
    # One stage at a time (exactly what one run does, stage after stage), so each stage's CPU
    # time can be read too: on a machine shared with other work, wall time depends on the
    # others' load, CPU time much less.
    result["stages_s"], result["stages_cpu_s"], result["details"] = {}, {}, {}
    jvm = spark.sparkContext._gateway.proc.pid  # type: ignore[union-attr]
    memory = PeakMemory(
        [
            ProcessGroup("driver", lambda: [os.getpid()], tree=False, reset_hwm=True),
            ProcessGroup("Spark JVM + Python workers", lambda: [jvm], reset_hwm=True),
        ]
    ).start()
    for stage in STAGES:
        cpu0, load0 = cpu_seconds(spark), os.getloadavg()[0]
        report = run_batch(cfg, END, [stage], spark=spark, say=_say(size))
        result["stages_s"][stage] = round(report.seconds, 1)
        result["stages_cpu_s"][stage] = round(cpu_seconds(spark) - cpu0, 1)
        result["details"][stage] = {
            **report.as_dict()["stages"][stage],
            "load_avg_1m": [round(load0, 1), round(os.getloadavg()[0], 1)],
        }
    result["peak_memory"] = memory.stop()  # over the nightly run's stages
    result["nightly_s"] = round(sum(result["stages_s"].values()), 1)
    result["nightly_cpu_s"] = round(sum(result["stages_cpu_s"].values()), 1)
    result["redis_keys_cleared"] = clear_redis(cfg)
    spark.stop()
    return result


def _proc_cpu(pid: int) -> float:
    """user + system CPU seconds of a process (and of its children it has waited for)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    tick = os.sysconf("SC_CLK_TCK")
    return sum(int(fields[i]) for i in (11, 12, 13, 14)) / tick


def cpu_seconds(spark: SparkSession) -> float:
    """CPU seconds so far of this process, the Spark JVM and the Python workers under it."""
    jvm = spark.sparkContext._gateway.proc.pid  # type: ignore[union-attr]
    pids = [os.getpid(), jvm, *_descendants(jvm)]
    return sum(_proc_cpu(p) for p in pids)


def _say(size: int) -> Any:
    def say(message: str) -> None:
        print(f"[{label(size)}] {message}", flush=True)

    return say


def slope(points: list[tuple[int, float]]) -> float | None:
    """Log-log slope between the smallest and the largest size (1.0 = linear growth)."""
    if len(points) < 2:
        return None
    (n1, t1), (n2, t2) = min(points), max(points)
    if n1 == n2 or t1 <= 0 or t2 <= 0:
        return None
    return math.log(t2 / t1) / math.log(n2 / n1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1M,3M,10M", help="comma-separated event counts")
    parser.add_argument("--days", type=int, default=30, help="days of history")
    parser.add_argument("--items", type=int, default=20_000, help="catalog size")
    args = parser.parse_args(argv)
    sizes = sorted(parse_size(s) for s in args.sizes.split(",") if s.strip())
    base = load_config(None)
    results = [run_size(base, n, args.days, args.items) for n in sizes]

    stages = ["silver", "gold", "views", "maintenance"]
    print()
    header = f"{'events':>12} {'backfill':>9} " + " ".join(f"{s:>11}" for s in stages)
    print("wall seconds (CPU seconds of the driver, JVM and Python workers)")
    print(header + f" {'nightly':>15} {'us/event':>9}")
    for r in results:
        per = r["nightly_s"] / r["events"] * 1e6
        backfill = r.get("backfill_silver_s")
        print(
            f"{r['events']:>12,} {backfill if backfill is not None else '-':>9} "
            + " ".join(f"{r['stages_s'][s]:>5.0f} ({r['stages_cpu_s'][s]:>4.0f})" for s in stages)
            + f" {r['nightly_s']:>7.0f} ({r['nightly_cpu_s']:>5.0f}) {per:>9.1f}"
        )
    for r in results:
        print(f"{r['events']:>12,} {format_peaks(r['peak_memory'])}")
    growth = slope([(r["events"], r["nightly_s"]) for r in results])
    cpu_growth = slope([(r["events"], r["nightly_cpu_s"]) for r in results])
    stage_growth = {s: slope([(r["events"], r["stages_s"][s]) for r in results]) for s in stages}
    stage_cpu_growth = {
        s: slope([(r["events"], r["stages_cpu_s"][s]) for r in results]) for s in stages
    }
    ten = next((r for r in results if r["size"] >= 10_000_000), None)
    print()
    if growth is not None and cpu_growth is not None:
        print(
            f"growth exponent of the nightly run (log-log slope, 1.0 = linear): wall "
            f"{growth:.2f}, CPU {cpu_growth:.2f} (target <= 1.0)"
        )
        print(
            "per stage (wall / CPU): "
            + ", ".join(
                f"{s} {stage_growth[s]:.2f} / {stage_cpu_growth[s]:.2f}"
                for s in stages
                if stage_growth[s] is not None and stage_cpu_growth[s] is not None
            )
        )
    if ten is not None:
        ok = ten["nightly_s"] <= TARGET_SECONDS_10M
        verdict = "met" if ok else "NOT met"
        print(f"10M events: {ten['nightly_s']:.0f} s (target <= {TARGET_SECONDS_10M} s): {verdict}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "machine": {
                    "cpus": os.cpu_count(),
                    "python": platform.python_version(),
                    "load_avg_at_end": os.getloadavg(),
                },
                "days": args.days,
                "items": args.items,
                "results": results,
                "growth_exponent": growth,
                "growth_exponent_cpu": cpu_growth,
                "stage_growth_exponents": stage_growth,
                "stage_growth_exponents_cpu": stage_cpu_growth,
            },
            indent=2,
            default=str,
        )
    )
    print(f"written {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
