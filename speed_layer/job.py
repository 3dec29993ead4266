"""The speed layer's streaming queries and the process that runs them.

Two queries read the events topic independently (each with its own checkpoint):

``bronze``
    parse -> deduplicate by ``event_id`` within ``speed.dedup_watermark`` -> Delta bronze and
    quarantine, exactly once (:mod:`speed_layer.bronze`). Micro-batches every
    ``speed.bronze_interval``; Delta is not a real-time-mode sink.
``online``
    parse -> valid, personalizable events -> the row-level feature functions
    (:mod:`attune.features`) -> the Redis write script (:mod:`attune.online_store`), which
    is idempotent per interaction. Stateless in Spark, so it can run in micro-batches
    (``speed.trigger: microbatch``, back to back by default) or in Spark 4.1's real-time mode
    (``speed.trigger: realtime``), where the rows reach Redis through a Python ``foreach``
    writer or the JVM writer of :mod:`speed_layer.jvm_writer` (``speed.realtime_writer``);
    ``docs/speed_layer.md`` has the measured comparison.

:func:`run_speed_layer` runs them in the foreground until SIGTERM / Ctrl-C and keeps
``var/run/speed-status.json`` up to date for ``attune speed status``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from attune.bandits.feedback import BanditFeedback
from attune.features import FeatureParams, online_rows
from attune.online_store import (
    ApplyStats,
    OnlineStore,
    OnlineStoreWriter,
    add_elapsed_ms,
    add_timings,
    has_legacy_aggregates,
    migrate_aggregate_keys,
)
from speed_layer.bronze import BronzeBatchWriter, ensure_tables
from speed_layer.catalog import Catalog, CatalogRefresher, NewItemVectors
from speed_layer.parsing import parse_records, valid_events

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.streaming import StreamingQuery

    from attune.config import AttuneConfig, RedisConfig

log = logging.getLogger(__name__)

QUERIES = ("bronze", "online")
ROCKSDB_PROVIDER = "org.apache.spark.sql.execution.streaming.state.RocksDBStateStoreProvider"


@dataclass(frozen=True)
class SpeedPaths:
    checkpoint_root: Path
    bronze: str
    quarantine: str
    status_file: Path
    pid_file: Path
    log_file: Path

    def checkpoint(self, query: str) -> Path:
        return self.checkpoint_root / query


def speed_paths(cfg: AttuneConfig) -> SpeedPaths:
    lake = cfg.lake_root.rstrip("/")
    return SpeedPaths(
        checkpoint_root=cfg.paths.resolve(cfg.speed.checkpoint_dir),
        bronze=f"{lake}/{cfg.speed.bronze_table}",
        quarantine=f"{lake}/{cfg.speed.quarantine_table}",
        status_file=cfg.run_dir / "speed-status.json",
        pid_file=cfg.run_dir / "speed.pid",
        log_file=cfg.log_dir / "speed.log",
    )


def online_checkpoint_name(cfg: AttuneConfig) -> str:
    """Real-time mode keeps its own checkpoint: the two triggers do not share offset logs."""
    return "online" if cfg.speed.trigger == "microbatch" else "online-realtime"


def _ms(td: timedelta) -> int:
    return round(td.total_seconds() * 1000)


def speed_spark_conf(cfg: AttuneConfig) -> dict[str, str]:
    """Session settings of the speed layer (on top of ``cfg.spark``)."""
    conf = {
        "spark.sql.shuffle.partitions": str(cfg.speed.shuffle_partitions),
        "spark.sql.streaming.stateStore.providerClass": ROCKSDB_PROVIDER,
        "spark.sql.streaming.stateStore.rocksdb.changelogCheckpointing.enabled": "true",
        # Each query gets its own scheduler pool, so a bronze batch's Delta commit does not
        # queue the online query's tasks behind it.
        "spark.scheduler.mode": "FAIR",
    }
    # Spark matches a stopped query's error message against a regular expression that recurses
    # once per character (StreamExecution.isInterruptionException); a Python foreachBatch
    # interrupted by stop() has a long message, which overflows the default 1 MB thread stack.
    java_opts = cfg.spark.conf.get("spark.driver.extraJavaOptions", "")
    if "-Xss" not in java_opts:
        conf["spark.driver.extraJavaOptions"] = f"{java_opts} -Xss16m".strip()
    rt_ms = _ms(cfg.speed.realtime_batch_duration)
    if rt_ms < 5000:
        # Spark refuses real-time batches shorter than this (5 s by default).
        conf["spark.sql.streaming.realTimeMode.minBatchDuration"] = str(rt_ms)
    conf.update(cfg.speed.spark_conf)
    return conf


def build_speed_session(cfg: AttuneConfig) -> SparkSession:
    from attune.spark_session import build_spark_session

    # Python workers (real-time mode's foreach writer) must run this interpreter, which has
    # attune's dependencies, not whatever `python3` is first on the PATH; PySpark reads only
    # the environment variable for that.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    return build_spark_session(cfg, "attune-speed", speed_spark_conf(cfg))


def read_events(spark: SparkSession, cfg: AttuneConfig, max_offsets: int | None) -> DataFrame:
    """The events topic as a streaming DataFrame (Kafka source columns)."""
    reader = (
        spark.readStream.format("kafka")
        .option("kafka.bootstrap.servers", cfg.kafka.bootstrap_servers)
        .option("subscribe", cfg.kafka.topic("events").name)
        .option("startingOffsets", cfg.speed.starting_offsets)
        # Retention may delete records a stopped query never read: report it, keep going.
        .option("failOnDataLoss", "false")
    )
    if max_offsets:
        reader = reader.option("maxOffsetsPerTrigger", str(max_offsets))
    return reader.load()


# ----------------------------------------------------------------------------------------
# Status shared with `attune speed status`


class StatusBoard:
    """The process's view of its queries, written atomically to ``speed-status.json``."""

    def __init__(self, path: Path, info: dict[str, Any]) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._data: dict[str, Any] = {
            "pid": os.getpid(),
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "state": "starting",
            **info,
            "queries": {},
        }
        self._write()

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._data, indent=1, default=str))
        os.replace(tmp, self.path)

    def set_state(self, state: str, **extra: Any) -> None:
        with self._lock:
            self._data["state"] = state
            self._data.update(extra)
            self._write()

    def update_query(self, name: str, **fields: Any) -> None:
        with self._lock:
            self._data["queries"].setdefault(name, {}).update(fields)
            self._write()

    def name_of_query_id(self, query_id: str) -> str | None:
        with self._lock:
            for name, q in self._data["queries"].items():
                if q.get("id") == query_id:
                    return str(name)
        return None

    def query_name_for(self, query_name: str | None) -> str | None:
        if query_name and query_name.startswith("attune-speed-"):
            return query_name[len("attune-speed-") :]
        return None


def _progress_listener(board: StatusBoard) -> Any:
    from pyspark.sql.streaming import StreamingQueryListener

    class ProgressListener(StreamingQueryListener):
        """Copies each query's latest progress into the status board."""

        def onQueryStarted(self, event: Any) -> None:
            name = board.query_name_for(event.name)
            if name:
                board.update_query(
                    name, id=str(event.id), run_id=str(event.runId), active=True, exception=None
                )

        def onQueryProgress(self, event: Any) -> None:
            name = board.query_name_for(event.progress.name)
            if name:
                board.update_query(name, progress=json.loads(event.progress.json))

        def onQueryIdle(self, event: Any) -> None:
            pass

        def onQueryTerminated(self, event: Any) -> None:
            name = board.name_of_query_id(str(event.id))
            if name:
                board.update_query(name, active=False, exception=event.exception)

    return ProgressListener()


# ----------------------------------------------------------------------------------------
# The online query


def _redis_client(cfg: AttuneConfig) -> Any:
    from attune.redis_connect import connect

    return connect(cfg.redis)


class OnlineBatchWriter:
    """``foreachBatch`` of the online query: one micro-batch of feature rows -> Redis."""

    def __init__(
        self,
        writer: OnlineStoreWriter,
        catalog: Catalog,
        board: StatusBoard | None,
        redis_wait_s: float = 0.0,
        sleep: Callable[[float], None] = time.sleep,
        bandits: BanditFeedback | None = None,
    ) -> None:
        self.writer = writer
        self.step_ms: dict[str, float] = {}
        """Cumulative wall time per step of the batches (``spark``, the writer's steps:
        :attr:`attune.online_store.ApplyStats.timings_ms`, ``trending``, ``bandits``), for
        ``attune speed status`` and ``benchmarks/freshness.py``."""
        self.catalog = catalog
        self.board = board
        self.redis_wait_s = redis_wait_s
        self._sleep = sleep
        self.bandits = bandits
        self.totals = {"batches": 0, "rows": 0, "applied": 0, "duplicates": 0, "too_late": 0}
        self.bandit_totals = {"applied": 0, "duplicates": 0, "too_late": 0}

    def __call__(self, rows_df: DataFrame, batch_id: int) -> None:
        start = time.perf_counter()
        try:
            self.catalog.refresh_if_due()
        except Exception:  # an unreachable catalog must not stop the features
            log.exception("refreshing the catalog failed; using the mirror as it is")
        rows = rows_df.collect()
        collected = time.perf_counter()
        stats = self.write(
            [(r["user"], r["ts_ms"], r["iid"], r["payload"]) for r in rows], batch_id
        )
        done = time.perf_counter()
        log.debug(
            "online batch %d: %d rows, spark %.0f ms, redis %.0f ms",
            batch_id,
            len(rows),
            (collected - start) * 1000,
            (done - collected) * 1000,
        )
        self.totals["batches"] += 1
        self.totals["rows"] += len(rows)
        self.totals["applied"] += stats.applied
        self.totals["duplicates"] += stats.duplicates
        self.totals["too_late"] += stats.too_late
        add_timings(self.step_ms, {"spark": (collected - start) * 1000, **stats.timings_ms})
        if self.board is not None:
            self.board.update_query(
                "online",
                writer={
                    **self.totals,
                    **({"bandits": self.bandit_totals} if self.bandits is not None else {}),
                    "catalog_items": len(self.catalog.items),
                    "catalog_malformed": self.catalog.malformed,
                    "last_batch_id": batch_id,
                    "last_spark_ms": round((collected - start) * 1000, 1),
                    "last_redis_ms": round((done - collected) * 1000, 1),
                    "last_step_ms": {k: round(v, 1) for k, v in stats.timings_ms.items()},
                    "step_ms_total": {k: round(v, 1) for k, v in self.step_ms.items()},
                },
            )

    def write(self, rows: list[tuple[str, int, str, str]], batch_id: int) -> ApplyStats:
        """Apply ``rows``, waiting out a Redis outage of up to ``redis_wait_s``.

        While Redis is unreachable (a restart, a failover) the batch retries instead of failing:
        the write script is idempotent per interaction, so a retry after a connection lost
        halfway changes nothing that was already applied, and the batch's Kafka offsets are
        committed only after this returns, so nothing is skipped. Failing at once would stop
        the query; its restart needs Redis too (the catalog mirror) and counts against the
        supervisor's restart limit, so an outage of a few seconds would end the speed layer.
        """
        import redis

        deadline = time.monotonic() + self.redis_wait_s
        delay, retried = 0.1, False
        while True:
            try:
                stats = self.writer.apply(rows)
                began = time.perf_counter()
                if stats.applied or retried:  # a failed try may have applied some rows
                    self.writer.refresh_trending()
                add_elapsed_ms(stats.timings_ms, "trending", began)
                began = time.perf_counter()
                if self.bandits is not None:  # idempotent per event too
                    counted = self.bandits.apply(rows)
                    self.bandit_totals["applied"] += counted.applied
                    self.bandit_totals["duplicates"] += counted.duplicates
                    self.bandit_totals["too_late"] += counted.too_late
                add_elapsed_ms(stats.timings_ms, "bandits", began)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise
                if not retried:
                    log.warning(
                        "online batch %d: Redis is unreachable (%s); retrying for up to %.0f s "
                        "(speed.redis_outage_wait)",
                        batch_id,
                        exc,
                        left,
                    )
                retried = True
                self._sleep(min(delay, left))
                delay = min(delay * 2, 1.0)
                continue
            if retried:
                log.warning("online batch %d: Redis is back; batch written", batch_id)
            return stats


class RealTimeRedisWriter:
    """``foreach`` writer for real-time mode: applies rows to Redis in small groups.

    Pickled to the Python workers, so it holds only settings (``redis``, the config's section)
    and connects on ``open``.
    Rows are applied every ``flush_rows`` rows and when the epoch closes: in Spark 4.1.1 the
    Python foreach writer gets an epoch's rows together at its end anyway (see
    docs/speed_layer.md), and one script call per row could not keep up.
    """

    def __init__(
        self,
        redis: RedisConfig,
        store: OnlineStore,
        flush_rows: int = 500,
        cfg: AttuneConfig | None = None,
    ) -> None:
        self.redis, self.store = redis, store
        self.flush_rows = flush_rows
        self.cfg = cfg  # for the bandits' feedback (None: no bandits)
        self._writer: OnlineStoreWriter | None = None
        self._bandits: BanditFeedback | None = None
        self._rows: list[tuple[str, int, str, str]] = []

    def open(self, partition_id: int, epoch_id: int) -> bool:
        from attune.redis_connect import connect

        client = connect(self.redis)
        self._writer = OnlineStoreWriter(client, self.store)
        self._bandits = None if self.cfg is None else BanditFeedback.from_config(self.cfg, client)
        self._rows = []
        return True

    def process(self, row: Any) -> None:
        self._rows.append((row["user"], row["ts_ms"], row["iid"], row["payload"]))
        if len(self._rows) >= self.flush_rows:
            self._flush()

    def _flush(self) -> None:
        assert self._writer is not None
        if self._rows:
            if self._writer.apply(self._rows).applied:
                self._writer.refresh_trending()
            if self._bandits is not None:
                self._bandits.apply(self._rows)
            self._rows = []

    def close(self, error: BaseException | None) -> None:
        if self._writer is not None:
            if error is None:
                self._flush()
            self._writer.redis.close()
            self._writer = None


@dataclass
class OnlineQuery:
    """The running online query and what runs beside it in this process."""

    query: StreamingQuery
    catalog: Catalog
    refresher: CatalogRefresher | None = None
    vectors: NewItemVectors | None = None

    def stop(self) -> None:
        stop_query(self.query)
        self.close()

    def close(self) -> None:
        if self.vectors is not None:
            self.vectors.stop()
        if self.refresher is not None:
            self.refresher.stop()
        self.catalog.close()


def online_row_stream(spark: SparkSession, cfg: AttuneConfig) -> DataFrame:
    """The online query's streaming DataFrame: feature rows of valid, personalizable events."""
    realtime = cfg.speed.trigger == "realtime"
    raw = read_events(spark, cfg, None if realtime else cfg.speed.online_max_offsets)
    events = valid_events(parse_records(raw, cfg.speed.max_future_skew, explain=False))
    return online_rows(events, FeatureParams.from_config(cfg))


def start_online(
    spark: SparkSession, cfg: AttuneConfig, paths: SpeedPaths, board: StatusBoard | None = None
) -> OnlineQuery:
    """Start the online query with the configured trigger, and the catalog mirror beside it."""
    store = OnlineStore.from_config(cfg)
    writer = OnlineStoreWriter(_redis_client(cfg), store)
    catalog = Catalog(cfg, spark, on_change=writer.write_item_metadata)
    catalog.refresh()  # the mirror is complete before the first event is applied
    log.info("catalog: %d items mirrored to Redis", len(catalog.items))
    if has_legacy_aggregates(writer.redis, store.keys):
        moved = migrate_aggregate_keys(writer.redis, store.keys)
        log.info("moved %d aggregate keys of an earlier version to their {agg} names", moved)
    vectors = None
    if cfg.speed.new_item_vectors:
        # its own reader of the catalog (a Kafka consumer serves one thread), which mirrors
        # the metadata too: new items get titles and genres in Redis without waiting for events
        own = Catalog(
            cfg, spark, on_change=OnlineStoreWriter(_redis_client(cfg), store).write_item_metadata
        )
        vectors = NewItemVectors(cfg, own, _redis_client(cfg))
        vectors.start()

    spark.sparkContext.setLocalProperty("spark.scheduler.pool", "online")
    checkpoint = paths.checkpoint(online_checkpoint_name(cfg))
    rows = online_row_stream(spark, cfg)
    name = "attune-speed-online"
    if cfg.speed.trigger == "microbatch":
        query = (
            rows.writeStream.queryName(name)
            .foreachBatch(
                OnlineBatchWriter(
                    writer,
                    catalog,
                    board,
                    cfg.speed.redis_outage_wait.total_seconds(),
                    bandits=BanditFeedback.from_config(cfg, writer.redis),
                )
            )
            .option("checkpointLocation", str(checkpoint))
            .trigger(processingTime=f"{_ms(cfg.speed.online_interval)} milliseconds")
            .start()
        )
        return OnlineQuery(query, catalog, vectors=vectors)

    _check_realtime_slots(spark, cfg)
    if cfg.speed.realtime_writer == "jvm":
        from speed_layer.jvm_writer import start_jvm_writer, writer_spec

        bandits = BanditFeedback.from_config(cfg, writer.redis) is not None
        jquery = start_jvm_writer(
            spark,
            rows,
            writer_spec(cfg, store, bandits=bandits),
            name,
            str(checkpoint),
            _ms(cfg.speed.realtime_batch_duration),
            str(cfg.paths.resolve(cfg.spark.jars_dir)),
        )
        refresher = CatalogRefresher(catalog)
        refresher.start()
        return OnlineQuery(jquery, catalog, refresher, vectors)
    stream_writer = (
        rows.writeStream.queryName(name)
        .foreach(RealTimeRedisWriter(cfg.redis, store, cfg=cfg))
        .outputMode("update")
        .option("checkpointLocation", str(checkpoint))
    )
    # PySpark 4.1.1 has no `trigger(realTime=...)` keyword yet (the JVM API has had
    # Trigger.RealTime since 4.1.0), so the trigger is set on the JVM writer directly.
    jvm = spark.sparkContext._jvm
    assert jvm is not None
    trigger = jvm.org.apache.spark.sql.streaming.Trigger.RealTime(
        _ms(cfg.speed.realtime_batch_duration)
    )
    stream_writer._jwrite = stream_writer._jwrite.trigger(trigger)
    refresher = CatalogRefresher(catalog)
    refresher.start()
    return OnlineQuery(stream_writer.start(), catalog, refresher, vectors)


def _check_realtime_slots(spark: SparkSession, cfg: AttuneConfig) -> None:
    """Real-time mode runs one long-lived task per topic partition; make sure they all fit."""
    partitions = cfg.kafka.topic("events").partitions
    slots = spark.sparkContext.defaultParallelism
    if slots < partitions + 1:
        raise RuntimeError(
            f"real-time mode needs a task slot for each of the events topic's {partitions} "
            f"partitions plus one for the rest, but the Spark master {cfg.spark.master!r} offers "
            f"{slots}; set spark.master to local[{partitions + 2}] (threads, not cores) or "
            "use speed.trigger: microbatch"
        )


# ----------------------------------------------------------------------------------------
# The bronze query


def start_bronze(
    spark: SparkSession, cfg: AttuneConfig, paths: SpeedPaths, board: StatusBoard | None = None
) -> StreamingQuery:
    """Start the bronze query (creates the Delta tables first if they do not exist)."""
    from pyspark.sql import functions as F

    spark.sparkContext.setLocalProperty("spark.scheduler.pool", "bronze")
    ensure_tables(spark, paths.bronze, paths.quarantine)
    checkpoint = paths.checkpoint("bronze")
    parsed = parse_records(
        read_events(spark, cfg, cfg.speed.bronze_max_offsets), cfg.speed.max_future_skew
    )
    # Invalid records get a key of their own (their Kafka coordinates): never deduplicated.
    keyed = parsed.withColumn(
        "dedup_key",
        F.when(F.col("reason").isNull(), F.col("event.event_id")).otherwise(
            F.concat_ws(":", F.lit("kafka"), "kafka_partition", "kafka_offset")
        ),
    )
    watermark = f"{int(cfg.speed.dedup_watermark.total_seconds())} seconds"
    deduped = keyed.withWatermark("kafka_timestamp", watermark).dropDuplicatesWithinWatermark(
        ["dedup_key"]
    )

    def on_batch(counts: dict[str, int]) -> None:
        if board is not None:
            board.update_query("bronze", writer=counts)

    writer = BronzeBatchWriter(
        paths.bronze, paths.quarantine, checkpoint, cfg.speed.no_personalization_consent, on_batch
    )
    return (
        deduped.drop("dedup_key")
        .writeStream.queryName("attune-speed-bronze")
        .foreachBatch(writer)
        .option("checkpointLocation", str(checkpoint))
        .trigger(processingTime=f"{_ms(cfg.speed.bronze_interval)} milliseconds")
        .start()
    )


# ----------------------------------------------------------------------------------------
# The process


def stop_query(query: StreamingQuery, timeout_s: float = 10.0) -> None:
    """Stop ``query``, between two batches when one ends within ``timeout_s``.

    ``stop()`` interrupts a running batch; waiting for a gap avoids aborting a Delta commit or
    a Redis write halfway (both would be redone after a restart, but a clean stop is cheaper).
    """
    deadline = time.monotonic() + timeout_s
    try:
        while query.isActive and time.monotonic() < deadline:
            if not query.status.get("isTriggerActive"):
                break
            time.sleep(0.02)
        query.stop()
    except Exception:
        log.exception("stopping %s", query.name)


def parse_query_names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in QUERIES]
    if unknown or not names:
        raise ValueError(
            f"unknown speed-layer queries {unknown or text!r}: expected a comma-separated "
            f"subset of {', '.join(QUERIES)}"
        )
    return names


class _Supervisor:
    """Starts the queries and restarts one that fails, a few times, from its checkpoint.

    A restart resumes exactly where the checkpoint says, so it is always safe. It is also
    needed: in Spark 4.1.1 the first batch a Kafka query re-runs after a crash ends with a
    NullPointerException in ``KafkaMicroBatchStream.metrics`` (progress reporting, after the
    batch was committed; SPARK-55271 / SPARK-57438), and a restart gets past it.
    """

    MAX_RESTARTS = 5
    WINDOW_S = 600.0

    def __init__(
        self, spark: SparkSession, cfg: AttuneConfig, paths: SpeedPaths, board: StatusBoard
    ) -> None:
        self.spark, self.cfg, self.paths, self.board = spark, cfg, paths, board
        self.queries: dict[str, StreamingQuery] = {}
        self.online: OnlineQuery | None = None
        self.restarts: dict[str, list[float]] = {}

    def start(self, name: str) -> None:
        if name == "bronze":
            self.queries[name] = start_bronze(self.spark, self.cfg, self.paths, self.board)
        else:
            self.online = start_online(self.spark, self.cfg, self.paths, self.board)
            self.queries[name] = self.online.query

    def check(self) -> bool:
        """Restart failed queries; False when one failed too often (the process should end)."""
        for name, query in list(self.queries.items()):
            if query.isActive:
                continue
            error = query.exception()
            log.error("query %s stopped: %s", query.name, error)
            now = time.monotonic()
            recent = [t for t in self.restarts.get(name, []) if now - t < self.WINDOW_S]
            if len(recent) >= self.MAX_RESTARTS:
                log.error(
                    "query %s failed %d times in %.0f s; giving up",
                    query.name,
                    len(recent) + 1,
                    self.WINDOW_S,
                )
                return False
            self.restarts[name] = [*recent, now]
            if name == "online" and self.online is not None:
                self.online.close()
            log.warning("restarting query %s from its checkpoint", query.name)
            self.board.update_query(name, restarts=len(recent) + 1, last_error=str(error))
            self.start(name)
        return True

    def stop_all(self) -> None:
        for query in self.queries.values():
            stop_query(query)
        if self.online is not None:
            self.online.close()


def run_speed_layer(
    cfg: AttuneConfig,
    queries: list[str],
    stop: threading.Event | None = None,
    spark: SparkSession | None = None,
) -> int:
    """Run ``queries`` until ``stop`` is set (or SIGTERM / SIGINT); 0 on a clean stop."""
    stop = stop or threading.Event()
    paths = speed_paths(cfg)
    own_session = spark is None
    board = StatusBoard(
        paths.status_file,
        {
            "trigger": cfg.speed.trigger,
            "queries_requested": queries,
            "topic": cfg.kafka.topic("events").name,
            "checkpoints": {
                "bronze": str(paths.checkpoint("bronze")),
                "online": str(paths.checkpoint(online_checkpoint_name(cfg))),
            },
            "bronze_table": paths.bronze,
            "quarantine_table": paths.quarantine,
        },
    )
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    session = spark or build_speed_session(cfg)
    listener = _progress_listener(board)
    session.streams.addListener(listener)
    supervisor = _Supervisor(session, cfg, paths, board)
    exit_code = 0
    try:
        for name in queries:
            supervisor.start(name)
        board.set_state("running")
        log.info(
            "speed layer running: %s (trigger %s); status in %s",
            ", ".join(queries),
            cfg.speed.trigger,
            paths.status_file,
        )
        while not stop.is_set():
            if not supervisor.check():
                exit_code = 1
                break
            stop.wait(0.5)
    except Exception as exc:
        log.exception("speed layer failed")
        board.set_state("failed", error=f"{type(exc).__name__}: {exc}")
        exit_code = 1
    finally:
        supervisor.stop_all()
        session.streams.removeListener(listener)
        if own_session:
            session.stop()
        board.set_state("stopped" if exit_code == 0 else "failed")
    return exit_code
