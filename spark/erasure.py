"""The right to erasure: requests, and how the batch applies them to every table it owns.

``attune privacy erase --user ID`` (or ``--anonymous-id ID``) pseudonymizes the id with the
collector's key (:mod:`attune.secrets`), records a request in ``privacy/erasure_requests``
(``request_id, pseudonym, id_kind, requested_at``) and deletes the user's Redis keys at once
(every key under the user's prefix: online features, batch views, API feedback, consent). Only
the pseudonym is stored; the raw id never is.

The next batch run applies the request (:func:`apply_erasures`, first step of the silver
stage):

1. anonymous ids seen together with an erased user id in bronze (the visitor's history before
   logging in) are added to the request as ``id_kind = linked``, and their Redis keys deleted;
2. every row of those pseudonyms *received at or before the request* is deleted (Delta
   ``DELETE`` through ``MERGE``) from bronze events, bronze quarantine (by record key or a
   mention in the raw text), ``silver/events``, ``silver/users``, ``silver/bot_days``,
   ``gold/user_features``, ``gold/user_segments``, ``gold/training_examples``,
   ``gold/experiment_users`` and ``gold/experiment_teams`` (rebuilt only for the experiments with
   traffic, so a finished experiment's rows are deleted here); the other gold tables hold no
   user ids (aggregates only) and are rebuilt from silver every run;
3. what was deleted where is appended to ``privacy/erasure_log`` (``request_id, pseudonym,
   run_date, table_name, rows_deleted``); the row with ``table_name = '*'`` marks the request
   as applied.

A request stays *active* (re-applied each run) until it has been applied once and is older than
``batch.erasure_recheck`` (default 14 days: the events topic's retention plus its segment time,
the longest a record stays in Kafka; :mod:`spark.erasure_status`): an event the user sent
before asking can still be in Kafka and reach bronze late, and is deleted when it does. Events
received after the request are new data and are kept. Deleted rows stay in older Delta versions
(time travel) until VACUUM removes their files after ``batch.maintenance.vacuum_retention``: an
erasure is physically complete one retention period after the run that applied it.
"""

from __future__ import annotations

import argparse
import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from typing import TYPE_CHECKING

from attune.progress import progress_lines

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from attune.config import AttuneConfig
    from spark.context import RunContext
    from spark.tables import Lake

log = logging.getLogger(__name__)

REQUESTS_DDL = "request_id STRING, pseudonym STRING, id_kind STRING, requested_at TIMESTAMP"
LOG_DDL = (
    "request_id STRING, pseudonym STRING, run_date DATE, table_name STRING, rows_deleted BIGINT"
)
APPLIED = "*"


@dataclass(frozen=True)
class ErasureRequest:
    request_id: str
    pseudonym: str
    id_kind: str
    requested_at: datetime


def _sql_path(path: str) -> str:
    return "delta.`" + path.replace("`", "``") + "`"


# Each table the batch owns that holds user ids: its field in Lake and the match condition
# (t = the table, r = the request). Time-bounded where the rows carry a receive time.
_EVENTS = (
    "(t.user_id = r.pseudonym OR t.anonymous_id = r.pseudonym) AND t.received_at <= r.requested_at"
)
ERASABLE: dict[str, str] = {
    "bronze": _EVENTS,
    "quarantine": (
        "(t.kafka_key = r.pseudonym OR instr(t.value_text, r.pseudonym) > 0) "
        "AND t.kafka_timestamp <= r.requested_at"
    ),
    "silver_events": _EVENTS,
    "silver_users": "t.user = r.pseudonym OR array_contains(t.anonymous_ids, r.pseudonym)",
    "silver_bot_days": "t.user = r.pseudonym",
    "gold_user_features": "t.user = r.pseudonym",
    "gold_user_segments": "t.user = r.pseudonym",
    "gold_training_examples": "t.user_id = r.pseudonym",
    "gold_experiment_users": "t.user = r.pseudonym",
    "gold_experiment_teams": "t.user = r.pseudonym",
}


def all_requests(spark: SparkSession, lake: Lake) -> DataFrame | None:
    """Every erasure request ever made (None when there is none)."""
    from spark.tables import is_table, read_table

    if not is_table(spark, lake.erasure_requests):
        return None
    df = read_table(spark, lake.erasure_requests)
    return df if df.limit(1).count() else None


def active_requests(
    spark: SparkSession, cfg: AttuneConfig, lake: Lake, run_date: date
) -> list[ErasureRequest]:
    """Requests not yet applied, or made within ``batch.erasure_recheck`` before the end of
    the run date (or after it: a backfill of an old date applies today's requests too)."""
    from pyspark.sql import functions as F

    from spark.tables import is_table, read_table

    requests = all_requests(spark, lake)
    if requests is None:
        return []
    end = datetime.combine(run_date, time(23, 59, 59, 999999), tzinfo=UTC)
    recheck_from = end - cfg.batch.erasure_recheck
    applied = (
        read_table(spark, lake.erasure_log)
        .where(F.col("table_name") == APPLIED)
        .select("request_id", "pseudonym")
        .distinct()
        if is_table(spark, lake.erasure_log)
        else None
    )
    req = requests
    if applied is not None:
        req = req.join(
            applied.withColumn("_done", F.lit(True)), ["request_id", "pseudonym"], "left"
        )
    else:
        req = req.withColumn("_done", F.lit(None).cast("boolean"))
    rows = req.where(F.col("_done").isNull() | (F.col("requested_at") >= F.lit(recheck_from)))
    return [
        ErasureRequest(r["request_id"], r["pseudonym"], r["id_kind"], r["requested_at"])
        for r in rows.collect()
    ]


def record_requests(spark: SparkSession, lake: Lake, requests: Iterable[ErasureRequest]) -> int:
    """Insert requests (idempotent: a (request_id, pseudonym) already there is kept)."""
    from delta.tables import DeltaTable

    from spark.tables import ensure_empty_table

    rows = [(r.request_id, r.pseudonym, r.id_kind, r.requested_at) for r in requests]
    if not rows:
        return 0
    ensure_empty_table(spark, lake.erasure_requests, REQUESTS_DDL, None)
    source = spark.createDataFrame(rows, REQUESTS_DDL)
    (
        DeltaTable.forPath(spark, lake.erasure_requests)
        .alias("t")
        .merge(source.alias("s"), "t.request_id = s.request_id AND t.pseudonym = s.pseudonym")
        .whenNotMatchedInsertAll()
        .execute()
    )
    return len(rows)


def linked_requests(bronze: DataFrame, requests: list[ErasureRequest]) -> list[ErasureRequest]:
    """Anonymous ids seen on the same events as an erased user id, as ``linked`` requests."""
    from pyspark.sql import functions as F

    users = [r for r in requests if r.id_kind == "user"]
    if not users:
        return []
    req = bronze.sparkSession.createDataFrame(
        [(r.request_id, r.pseudonym, r.requested_at) for r in users],
        "request_id STRING, pseudonym STRING, requested_at TIMESTAMP",
    )
    pairs = (
        bronze.where(F.col("anonymous_id").isNotNull() & F.col("user_id").isNotNull())
        .join(F.broadcast(req), F.col("user_id") == F.col("pseudonym"))
        .where(F.col("received_at") <= F.col("requested_at"))
        .select("request_id", "anonymous_id", "requested_at")
        .distinct()
        .collect()
    )
    known = {(r.request_id, r.pseudonym) for r in requests}
    return [
        ErasureRequest(p["request_id"], p["anonymous_id"], "linked", p["requested_at"])
        for p in pairs
        if (p["request_id"], p["anonymous_id"]) not in known
    ]


def delete_rows(
    spark: SparkSession, path: str, condition: str, requests: DataFrame
) -> dict[tuple[str, str], int]:
    """Delete the rows of ``path`` matching any request.

    Returns the rows deleted per ``(request_id, pseudonym)`` (counted just before the delete,
    in the same run; a row matching two requests counts for both).
    """
    view = f"_erasure_{uuid.uuid4().hex[:8]}"
    requests.createOrReplaceTempView(view)
    table = _sql_path(path)
    try:
        counts = {
            (r["request_id"], r["pseudonym"]): int(r["n"])
            for r in spark.sql(
                f"SELECT r.request_id, r.pseudonym, count(*) AS n FROM {table} AS t "
                f"JOIN {view} AS r ON {condition} GROUP BY r.request_id, r.pseudonym"
            ).collect()
        }
        if counts:
            spark.sql(
                f"MERGE INTO {table} AS t USING {view} AS r ON {condition} WHEN MATCHED THEN DELETE"
            ).collect()
    finally:
        spark.catalog.dropTempView(view)
    return counts


def delete_redis_keys(cfg: AttuneConfig, pseudonyms: Iterable[str]) -> int:
    """Delete every Redis key of ``pseudonyms`` (online features, batch views, API feedback,
    consent: :func:`attune.online_store.delete_user`) and mark them erased for
    ``privacy.erased_model_block`` (:func:`attune.online_store.mark_erased`: the API stops
    sending their ids to the served models at once; counted from the latest call, so the batch
    run that deletes their rows restarts it); returns how many keys were deleted."""
    import time

    from attune.online_store import OnlineStore, delete_user, mark_erased
    from attune.redis_connect import connect

    pseudonyms = list(pseudonyms)
    store = OnlineStore.from_config(cfg)
    client = connect(cfg.redis)
    try:
        deleted = sum(delete_user(client, p, store) for p in pseudonyms)
        ttl_s = int(cfg.privacy.erased_model_block.total_seconds())
        mark_erased(client, pseudonyms, store.keys, int(time.time() * 1000), ttl_s)
        return deleted
    finally:
        client.close()


def apply_erasures(ctx: RunContext, requests: list[ErasureRequest]) -> dict[str, object]:
    """Apply ``requests`` (see the module docstring); returns ``{table: rows deleted}``."""
    from delta.tables import DeltaTable

    from spark.tables import ensure_empty_table, is_table, read_table

    spark, lake = ctx.spark, ctx.lake
    if not requests:
        return {}
    linked = linked_requests(read_table(spark, lake.bronze), requests)
    if linked:
        record_requests(spark, lake, linked)
        requests = [*requests, *linked]
    source = spark.createDataFrame(
        [(r.request_id, r.pseudonym, r.id_kind, r.requested_at) for r in requests], REQUESTS_DDL
    )
    paths = lake.tables()
    deleted: dict[str, int] = {}
    log_rows: list[tuple[str, str, date, str, int]] = []
    # one Delta DELETE per table, seconds each: rate and ETA of the tables
    tables = progress_lines(ERASABLE.items(), "erasure", unit="tables", say=ctx.progress)
    for name, condition in tables:
        path = paths[name]
        if not is_table(spark, path):
            continue
        counts = delete_rows(spark, path, condition, source)
        deleted[name] = sum(counts.values())
        log_rows += [(rid, p, ctx.run_date, name, n) for (rid, p), n in counts.items()]
    redis_keys = 0
    if ctx.cfg.batch.views.write_redis:
        redis_keys = delete_redis_keys(ctx.cfg, [r.pseudonym for r in requests])
    per_request: dict[tuple[str, str], int] = {}
    for rid, p, _, _, n in log_rows:
        per_request[(rid, p)] = per_request.get((rid, p), 0) + n
    log_rows += [
        (
            r.request_id,
            r.pseudonym,
            ctx.run_date,
            APPLIED,
            per_request.get((r.request_id, r.pseudonym), 0),
        )
        for r in requests
    ]
    ensure_empty_table(spark, lake.erasure_log, LOG_DDL, None)
    (
        DeltaTable.forPath(spark, lake.erasure_log)
        .alias("t")
        .merge(
            spark.createDataFrame(log_rows, LOG_DDL).alias("s"),
            "t.request_id = s.request_id AND t.pseudonym = s.pseudonym "
            "AND t.run_date = s.run_date AND t.table_name = s.table_name",
        )
        .whenMatchedUpdate(set={"rows_deleted": "t.rows_deleted + s.rows_deleted"})
        .whenNotMatchedInsertAll()
        .execute()
    )
    ctx.progress(
        f"erasure: {len(requests)} pseudonym(s) of {len({r.request_id for r in requests})} "
        f"request(s): "
        + ", ".join(f"{t} -{n}" for t, n in deleted.items() if n)
        + f"; {redis_keys} Redis key(s)"
    )
    return {"requests": len(requests), "deleted": deleted, "redis_keys": redis_keys}


# ----------------------------------------------------------------------------------------
# attune privacy erase


def cmd_erase(cfg: AttuneConfig, args: argparse.Namespace) -> int:
    """Record an erasure request and delete the user's Redis keys now."""
    from attune.config import ConfigError
    from attune.secrets import Pseudonymizer, pseudonym_key
    from attune.spark_session import build_spark_session
    from spark.tables import Lake, is_table, read_table

    ids = [("user", u) for u in args.user or []] + [
        ("anonymous", a) for a in args.anonymous_id or []
    ]
    if not ids:
        raise ConfigError("say whom to erase: --user ID and/or --anonymous-id ID")
    pseudonymize = Pseudonymizer(pseudonym_key(cfg))
    request_id = uuid.uuid4().hex
    requested_at = datetime.now(UTC)  # when the request was made: a fact, not business logic
    requests = [ErasureRequest(request_id, pseudonymize(v), kind, requested_at) for kind, v in ids]
    lake = Lake.from_config(cfg)
    from pyspark.sql import SparkSession

    owned = SparkSession.getActiveSession() is None  # stop only a session this command made
    spark = build_spark_session(cfg, "attune-privacy-erase")
    try:
        record_requests(spark, lake, requests)
        pseudonyms = [r.pseudonym for r in requests]
        if is_table(spark, lake.silver_users):
            from pyspark.sql import functions as F

            rows = (
                read_table(spark, lake.silver_users)
                .where(F.col("user").isin(pseudonyms))
                .select(F.explode("anonymous_ids"))
                .collect()
            )
            pseudonyms += [r[0] for r in rows]
        keys = delete_redis_keys(cfg, pseudonyms)
    finally:
        if owned:
            spark.stop()
    print(
        f"erasure request {request_id} recorded in {lake.erasure_requests} for "
        f"{len(requests)} id(s); {keys} Redis key(s) deleted now "
        f"({len(pseudonyms) - len(requests)} linked anonymous id(s)); the next "
        "`attune batch run` deletes their rows from every Delta table (privacy/erasure_log)."
    )
    return 0
