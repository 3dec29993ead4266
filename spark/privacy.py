"""Erasure outside the nightly run: apply pending requests, VACUUM when due, verify.

:mod:`spark.erasure` records requests (``attune privacy erase``) and applies them to every
Delta table holding user rows (:data:`spark.erasure.ERASABLE`); the nightly run does it first
thing in its silver stage. These commands do the same on their own schedule (an hourly DAG), so
an erasure does not wait for the night, and check the result:

``attune privacy apply [--date D]``
    :func:`spark.erasure.active_requests` as of ``D`` (default: today, UTC) applied with
    :func:`spark.erasure.apply_erasures`: the same code, the same ``privacy/erasure_log``.
    Re-running it changes nothing new (a request already applied matches no row).

``attune privacy vacuum``
    A deleted row stays in the table's older files (time travel) until VACUUM removes files
    unreferenced for longer than the table's file retention. A table is *due* when one of its
    row-deleting commits (an erasure ``MERGE ... DELETE``, or a ``DELETE``: retention, a manual
    erasure) is older than the retention and no VACUUM has completed since that commit became
    removable (:func:`vacuum_decision`, a pure function of the table's Delta history). Only
    the due tables are vacuumed (:func:`spark.maintenance.vacuum_tables`, as the nightly
    maintenance does).

``attune privacy verify``
    For every *applied* request (one with a ``*`` row in the erasure log; a request made after
    the last apply is pending, not a failure) the rows the erasure should have removed are
    counted in every erasable table (:data:`LEFTOVER`), and the pseudonym's Redis keys with
    one SCAN of the user keys. The report goes to ``var/reports/privacy/``; any row left fails
    the command, naming the table and the count.

    What counts as left over: rows *received at or before the request* (events), or derived
    from such rows (the tables without a receive time are bounded by event time: a user who
    comes back after the request produces new data, which is kept). Redis keys of a pseudonym
    whose events reached bronze after its request are likewise new data (the user came back)
    and are reported, not failed. Rows still in old files before VACUUM are not counted: the
    current version of each table is what readers see; ``privacy vacuum`` reports the rest.

    The report then lists every store that can hold an erased user (Redis keys and erased
    markers, every Delta table, the models' vocabularies, the Kafka topics, logs, export
    documents, retraining runs) with its state (clean, pending, holds data) and the time by
    which it is clean: :mod:`spark.erasure_status` decides from the facts gathered here
    (:func:`observe_stores`). A store past its time that still holds data fails the command
    too (a VACUUM overdue, a served model no longer covered by the erased markers, a Kafka
    topic keeping records forever, a log or an export holding a pseudonym).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spark.command import batch_session, failed, setup_logging
from spark.erasure import APPLIED, ERASABLE, ErasureRequest
from spark.erasure_facts import (
    Commit,
    Verification,
    completed_vacuum,
    deletes_rows,
    duration_text,
)

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from attune.config import AttuneConfig
    from spark.tables import Lake

log = logging.getLogger(__name__)

DELTA_DEFAULT_RETENTION = timedelta(days=7)
"""Delta's ``delta.deletedFileRetentionDuration`` when a table does not set it."""
SPEED_LAYER_TABLES = ("bronze", "quarantine")
"""Tables whose file retention :func:`spark.maintenance.vacuum_tables` leaves as it is (a
metadata commit would fail the speed layer's concurrent appends)."""
HISTORY_FIRST_PAGE = 1000
HISTORY_MAX = 64_000
"""At most this many of a table's latest commits are read to decide whether it is due (a
streaming table commits every few seconds); beyond it the table is vacuumed to be safe."""

# What an erasure should have removed (t = the table, r = the request): the rows of
# spark.erasure.ERASABLE, bounded in time where ERASABLE is not, so that the new data of a
# user who came back after the request is not taken for a leftover.
LEFTOVER: dict[str, str] = {
    "bronze": ERASABLE["bronze"],
    "quarantine": ERASABLE["quarantine"],
    "silver_events": ERASABLE["silver_events"],
    "silver_users": (
        "(t.user = r.pseudonym OR array_contains(t.anonymous_ids, r.pseudonym)) "
        "AND t.first_seen <= r.requested_at"
    ),
    "silver_bot_days": "t.user = r.pseudonym AND t.event_date <= to_date(r.requested_at)",
    "gold_user_features": "t.user = r.pseudonym AND t.first_ms <= unix_millis(r.requested_at)",
    # a snapshot of a day before the request's day can only hold data from before it
    "gold_user_segments": "t.user = r.pseudonym AND t.as_of_date < to_date(r.requested_at)",
    "gold_training_examples": "t.user_id = r.pseudonym AND t.timestamp <= r.requested_at",
    "gold_experiment_users": "t.user = r.pseudonym AND t.first_exposure <= r.requested_at",
    "gold_experiment_teams": "t.user = r.pseudonym AND t.shown_at <= r.requested_at",
}
# Events of a pseudonym that reached bronze after its request: the user came back.
CAME_BACK = (
    "(t.user_id = r.pseudonym OR t.anonymous_id = r.pseudonym) AND t.received_at > r.requested_at"
)


# ----------------------------------------------------------------------------------------
# VACUUM: when is it due (pure)


@dataclass(frozen=True)
class VacuumDecision:
    """Whether a table needs a VACUUM now, and why.

    ``pending`` counts row-deleting commits whose files no VACUUM has removed yet; ``ripe`` those
    of them old enough for a VACUUM to remove (``due`` when there is one). ``waiting_until`` is
    when the next pending one becomes removable. ``need_more_history``: the commits read do not
    reach back far enough to rule out an older deletion (read more and decide again).
    """

    due: bool
    reason: str
    pending: int = 0
    ripe: int = 0
    waiting_until: datetime | None = None
    need_more_history: bool = False


def vacuum_decision(
    history: Iterable[Commit],
    retention: timedelta,
    now: datetime,
    *,
    complete: bool,
    can_read_more: bool = False,
) -> VacuumDecision:
    """Decide from ``history`` (any order) whether the table's VACUUM is due at ``now``.

    A VACUUM at time ``V`` removes the files a commit at ``T`` removed iff ``V >= T +
    retention``. A row-deleting commit is *pending* until such a VACUUM completed, and *ripe*
    once ``T + retention <= now``; the table is due when a commit is ripe.

    ``complete``: ``history`` holds every commit the table still has. If not, a deletion
    older than the oldest commit read (``T0``) is ruled out only by a VACUUM at or after
    ``T0 + retention``; without one the caller should read more (``can_read_more``), else the
    table is due, to be safe.
    """
    commits = sorted(history, key=lambda c: c.version)
    vacuums = [c.timestamp for c in commits if completed_vacuum(c)]
    pending = [
        c
        for c in commits
        if deletes_rows(c) and not any(v >= c.timestamp + retention for v in vacuums)
    ]
    ripe = [c for c in pending if c.timestamp + retention <= now]
    if ripe:
        oldest = ripe[0]
        return VacuumDecision(
            True,
            f"{len(ripe)} row-deleting commit(s) older than the file retention "
            f"({duration_text(retention)}) and not vacuumed since (the oldest: v{oldest.version} "
            f"{oldest.operation} at {oldest.timestamp.isoformat(timespec='seconds')})",
            len(pending),
            len(ripe),
        )
    if not complete:
        horizon = commits[0].timestamp + retention if commits else None
        if horizon is None or not any(v >= horizon for v in vacuums):
            if can_read_more:
                return VacuumDecision(
                    False, "more history needed", len(pending), need_more_history=True
                )
            return VacuumDecision(
                True,
                f"the {len(commits)} latest commits read cannot rule out an older deletion "
                "that no VACUUM removed yet: vacuuming to be safe",
                len(pending),
            )
    if pending:
        until = min(c.timestamp for c in pending) + retention
        return VacuumDecision(
            False,
            f"{len(pending)} row-deleting commit(s) younger than the file retention "
            f"({duration_text(retention)}): due at {until.isoformat(timespec='seconds')}",
            len(pending),
            waiting_until=until,
        )
    return VacuumDecision(False, "no deleted rows waiting for a VACUUM")


_INTERVAL_UNITS = {
    "microsecond": timedelta(microseconds=1),
    "millisecond": timedelta(milliseconds=1),
    "second": timedelta(seconds=1),
    "minute": timedelta(minutes=1),
    "hour": timedelta(hours=1),
    "day": timedelta(days=1),
    "week": timedelta(weeks=1),
}


def parse_interval(text: str) -> timedelta | None:
    """A Delta table-property interval (``"interval 7 days"``, ``"interval 604800 seconds"``,
    ``"1 week 2 days"``) as a duration; None when it is not one."""
    words = text.strip().lower().split()
    if words and words[0] == "interval":
        words = words[1:]
    if not words or len(words) % 2:
        return None
    total = timedelta(0)
    for number, unit in zip(words[::2], words[1::2], strict=True):
        step = _INTERVAL_UNITS.get(unit.removesuffix("s"))
        if step is None:
            return None
        try:
            total += float(number) * step
        except (ValueError, OverflowError):
            return None
    return total


def effective_retention(name: str, configured: timedelta, table_property: str | None) -> timedelta:
    """The file retention VACUUM will use on table ``name`` (see :mod:`spark.maintenance`):
    the configured one, which :func:`~spark.maintenance.vacuum_tables` sets as the table's
    property, except on the speed layer's tables, which keep their own property (Delta's 7 days
    when unset); a configured 0 applies everywhere (VACUUM's argument 0 wins)."""
    if configured <= timedelta(0) or name not in SPEED_LAYER_TABLES:
        return configured
    if table_property is None:
        return DELTA_DEFAULT_RETENTION
    parsed = parse_interval(table_property)
    if parsed is None:
        log.warning(
            "cannot read delta.deletedFileRetentionDuration %r of %s: assuming Delta's default",
            table_property,
            name,
        )
        return DELTA_DEFAULT_RETENTION
    return parsed


# ----------------------------------------------------------------------------------------
# Verification (pure)


def verification(
    checked_at: datetime,
    applied: Sequence[ErasureRequest],
    pending: int,
    table_counts: Mapping[str, Mapping[str, int] | None],
    redis_keys: Mapping[str, int] | None,
    came_back: Iterable[str],
) -> Verification:
    """Put the counts together into a :class:`Verification`.

    ``table_counts``: ``{table: {request_id: rows left}}`` (None: the table does not exist);
    ``redis_keys``: ``{pseudonym: keys}`` (None: Redis was not checked); ``came_back``: the
    pseudonyms with events received after their request, whose Redis keys are new data.
    Failures name the table, the count and the requests (never a pseudonym).
    """
    by_pseudonym: dict[str, list[str]] = {}
    for r in applied:
        by_pseudonym.setdefault(r.pseudonym, []).append(r.request_id)
    returned = set(came_back)
    failures: list[str] = []
    tables: dict[str, dict[str, Any]] = {}
    for name, counts in table_counts.items():
        if counts is None:
            tables[name] = {"exists": False}
            continue
        left = {rid: n for rid, n in counts.items() if n}
        tables[name] = {"exists": True, "rows_left": sum(left.values()), "requests": sorted(left)}
        if left:
            failures.append(
                f"{name} holds {sum(left.values())} row(s) of {len(left)} erased request(s) "
                f"({', '.join(sorted(left)[:5])}{', ...' if len(left) > 5 else ''})"
            )
    redis: dict[str, Any] = {"checked": redis_keys is not None}
    if redis_keys is not None:
        left_keys = {p: n for p, n in redis_keys.items() if n and p not in returned}
        back_keys = {p: n for p, n in redis_keys.items() if n and p in returned}
        request_ids = sorted({rid for p in left_keys for rid in by_pseudonym.get(p, [])})
        redis.update(
            keys_left=sum(left_keys.values()),
            requests=request_ids,
            came_back_users=len(back_keys),
            came_back_keys=sum(back_keys.values()),
        )
        if left_keys:
            failures.append(
                f"Redis holds {sum(left_keys.values())} key(s) of {len(left_keys)} erased "
                f"pseudonym(s) (request(s) {', '.join(request_ids[:5])}"
                f"{', ...' if len(request_ids) > 5 else ''})"
            )
    return Verification(
        checked_at=checked_at.isoformat(timespec="seconds"),
        requests_applied=len({r.request_id for r in applied}),
        requests_pending=pending,
        pseudonyms=len(by_pseudonym),
        tables=tables,
        redis=redis,
        failures=failures,
    )


def user_of_key(key: str, prefix: str) -> str | None:
    """The user of a per-user Redis key ``<prefix>:u:{<user>}:<name>`` (None for other keys)."""
    head = f"{prefix}:u:{{"
    if not key.startswith(head):
        return None
    end = key.rfind("}:")
    return key[len(head) : end] if end >= len(head) else None


# ----------------------------------------------------------------------------------------
# I/O: Spark, Delta, Redis


def applied_and_pending(
    spark: SparkSession, lake: Lake
) -> tuple[list[ErasureRequest], list[ErasureRequest]]:
    """Every recorded request, split into applied (``*`` row in the log) and not yet applied."""
    from spark.erasure import all_requests
    from spark.tables import is_table, read_table

    requests = all_requests(spark, lake)
    if requests is None:
        return [], []
    done: set[tuple[str, str]] = set()
    if is_table(spark, lake.erasure_log):
        done = {
            (r["request_id"], r["pseudonym"])
            for r in read_table(spark, lake.erasure_log)
            .where(f"table_name = '{APPLIED}'")
            .select("request_id", "pseudonym")
            .distinct()
            .collect()
        }
    applied: list[ErasureRequest] = []
    pending: list[ErasureRequest] = []
    for r in requests.collect():
        req = ErasureRequest(r["request_id"], r["pseudonym"], r["id_kind"], r["requested_at"])
        (applied if (req.request_id, req.pseudonym) in done else pending).append(req)
    return applied, pending


def _requests_frame(spark: SparkSession, requests: Sequence[ErasureRequest]) -> DataFrame:
    from spark.erasure import REQUESTS_DDL

    return spark.createDataFrame(
        [(r.request_id, r.pseudonym, r.id_kind, r.requested_at) for r in requests], REQUESTS_DDL
    )


def count_matches(
    spark: SparkSession, path: str, condition: str, requests: DataFrame, key: str
) -> dict[str, int]:
    """Rows of the table at ``path`` matching ``condition`` (t = table, r = request), per
    ``r.<key>``."""
    import uuid

    from spark.erasure import _sql_path

    view = f"_verify_{uuid.uuid4().hex[:8]}"
    requests.createOrReplaceTempView(view)
    try:
        rows = spark.sql(
            f"SELECT r.{key} AS k, count(*) AS n FROM {_sql_path(path)} AS t "
            f"JOIN {view} AS r ON {condition} GROUP BY r.{key}"
        ).collect()
    finally:
        spark.catalog.dropTempView(view)
    return {r["k"]: int(r["n"]) for r in rows}


def redis_user_keys(cfg: AttuneConfig, pseudonyms: set[str]) -> dict[str, int]:
    """``{pseudonym: keys}`` of ``pseudonyms`` in Redis: one SCAN of every per-user key (not one
    per pseudonym), plus the consent key of older versions."""
    from attune.keys import Keys, glob_escape
    from attune.redis_connect import connect

    keys = Keys.from_config(cfg)
    found: dict[str, int] = {}
    client = connect(cfg.redis)
    try:
        for raw in client.scan_iter(match=glob_escape(f"{keys.prefix}:u:") + "*", count=1000):
            user = user_of_key(raw.decode(errors="replace"), keys.prefix)
            if user in pseudonyms:
                found[user] = found.get(user, 0) + 1
        ordered = sorted(pseudonyms)
        pipe = client.pipeline(transaction=False)
        for p in ordered:
            pipe.exists(Keys.legacy_consent(p))
        for p, n in zip(ordered, pipe.execute(), strict=True):
            if n:
                found[p] = found.get(p, 0) + int(n)
    finally:
        client.close()
    return found


def verify_erasures(
    cfg: AttuneConfig,
    spark: SparkSession,
    now: datetime,
    *,
    check_redis: bool = True,
    check_kafka: bool = True,
) -> Verification:
    """Count what the applied erasures left in every erasable table and in Redis, and report
    every store that can hold an erased user with its state and the time by which it is clean
    (:mod:`spark.erasure_status`)."""
    from spark.erasure_status import add_stores
    from spark.tables import Lake, is_table

    lake = Lake.from_config(cfg)
    applied, pending = applied_and_pending(spark, lake)
    paths = lake.tables()
    counts: dict[str, dict[str, int] | None] = {}
    came_back: set[str] = set()
    if applied:
        requests = _requests_frame(spark, applied)
        for name, condition in LEFTOVER.items():
            if not is_table(spark, paths[name]):
                counts[name] = None
                continue
            counts[name] = count_matches(spark, paths[name], condition, requests, "request_id")
        if is_table(spark, lake.bronze):
            came_back = set(count_matches(spark, lake.bronze, CAME_BACK, requests, "pseudonym"))
    redis_keys = (
        redis_user_keys(cfg, {r.pseudonym for r in applied}) if check_redis and applied else None
    )
    result = verification(now, applied, len(pending), counts, redis_keys, came_back)
    observed = observe_stores(
        cfg, spark, now, applied, pending, counts, redis_keys, came_back, check_kafka=check_kafka
    )
    return add_stores(result, observed, now)


def _utc(t: datetime) -> datetime:
    """A time collected from Spark (naive, local time) as an aware UTC time."""
    return t.astimezone(UTC)


def observe_stores(
    cfg: AttuneConfig,
    spark: SparkSession,
    now: datetime,
    applied: Sequence[ErasureRequest],
    pending: Sequence[ErasureRequest],
    counts: Mapping[str, Mapping[str, int] | None],
    redis_keys: Mapping[str, int] | None,
    came_back: set[str],
    *,
    check_kafka: bool = True,
) -> Any:
    """Gather the facts :func:`spark.erasure_status.store_rows` decides on (all the I/O)."""
    from spark.erasure_status import Observed, TableFacts
    from spark.privacy_export import EXPERIMENT_TABLES
    from spark.tables import Lake, is_table

    requests = [*applied, *pending]
    requested = [_utc(r.requested_at) for r in requests]
    erased = {r.pseudonym for r in requests} - came_back
    lake = Lake.from_config(cfg)
    paths = lake.tables()
    configured = cfg.batch.maintenance.vacuum_retention
    tables: list[TableFacts] = []
    for name in LEFTOVER:
        path = paths[name]
        exists = counts[name] is not None if name in counts else is_table(spark, path)
        if not exists or not requests:
            tables.append(TableFacts(name, path, exists))
            continue
        retention = effective_retention(name, configured, table_retention_property(spark, path))
        unvacuumed, complete = table_deletes(spark, path, retention, min(requested))
        table_counts = counts.get(name) or {}
        tables.append(
            TableFacts(
                name, path, True, sum(table_counts.values()), retention, unvacuumed, complete
            )
        )
    left_keys = {p: n for p, n in (redis_keys or {}).items() if n and p not in came_back}
    came_back_keys = {p for p, n in (redis_keys or {}).items() if n and p in came_back}
    return Observed(
        requested=requested,
        pending=len(pending),
        redis_where=f"redis://{cfg.redis.host}:{cfg.redis.port}/{cfg.redis.db}",
        redis_keys_left=sum(left_keys.values()),
        redis_came_back=len(came_back_keys),
        markers=erased_markers(cfg, {r.pseudonym for r in requests}),
        marker_block=cfg.privacy.erased_model_block,
        tables=tables,
        experiment_tables=EXPERIMENT_TABLES,
        models=model_facts(cfg.paths.resolve(cfg.models.repository_dir), erased),
        topics=topic_facts(cfg, bool(requests) and check_kafka),
        files=file_facts(cfg, spark, erased),
    )


def table_deletes(
    spark: SparkSession, path: str, retention: timedelta, since: datetime
) -> tuple[tuple[datetime, ...], bool]:
    """:func:`spark.erasure_status.unvacuumed_deletes` over as much history as it needs."""
    from spark.erasure_status import unvacuumed_deletes

    limit = HISTORY_FIRST_PAGE
    while True:
        history = read_history(spark, path, limit)
        complete = len(history) < limit
        found, covered = unvacuumed_deletes(history, retention, since, complete=complete)
        if covered or limit >= HISTORY_MAX:
            return found, covered
        limit = min(limit * 4, HISTORY_MAX)


def erased_markers(cfg: AttuneConfig, pseudonyms: set[str]) -> dict[str, timedelta]:
    """``{pseudonym: remaining TTL}`` of the erased markers that exist (one without a TTL
    counts as a full ``privacy.erased_model_block``)."""
    from attune.keys import Keys
    from attune.redis_connect import connect

    if not pseudonyms:
        return {}
    keys = Keys.from_config(cfg)
    ordered = sorted(pseudonyms)
    client = connect(cfg.redis)
    try:
        pipe = client.pipeline(transaction=False)
        for p in ordered:
            pipe.pttl(keys.erased(p))
        ttls = pipe.execute()
    finally:
        client.close()
    found: dict[str, timedelta] = {}
    for p, ms in zip(ordered, ttls, strict=True):
        if int(ms) == -1:
            found[p] = cfg.privacy.erased_model_block
        elif int(ms) > 0:
            found[p] = timedelta(milliseconds=int(ms))
    return found


def model_facts(root: Path, pseudonyms: set[str]) -> list[Any]:
    """Every published model: the erased pseudonyms in each version's vocabulary
    (:func:`spark.privacy_export.versions_holding`, as ``privacy export`` reads them)."""
    from attune.model_repository import ModelRepository
    from spark.erasure_status import ModelFacts
    from spark.privacy_export import versions_holding

    repo = ModelRepository(root)
    names = repo.names()
    if not names:
        return [ModelFacts("repository", str(root), None, {})]
    served = {n: int(e["version"]) for n, e in repo.serving().items() if "version" in e}
    facts = []
    for name in names:
        found = versions_holding(repo, name, pseudonyms, missing_ok=True)
        held = {v: frozenset(p) for v, p in found.items()}
        facts.append(ModelFacts(name, str(root / name), served.get(name, max(held)), held))
    return facts


def topic_facts(cfg: AttuneConfig, ask_broker: bool, timeout_s: float = 5.0) -> list[Any]:
    """The topics holding user ids (:data:`spark.erasure_status.USER_TOPICS`): their
    configured retention and, when the broker answers, its ``retention.ms``, ``segment.ms``
    and each topic's oldest record (a ListOffsets by time: no record is read)."""
    from spark.erasure_status import USER_TOPICS, TopicFacts

    topics = {r: cfg.kafka.topics[r] for r in USER_TOPICS if r in cfg.kafka.topics}
    base = {r: TopicFacts(r, t.name, t.retention_ms) for r, t in topics.items()}
    if not ask_broker or not topics:
        return list(base.values())
    try:
        broker = broker_topics(cfg, [t.name for t in topics.values()], timeout_s)
    except Exception as exc:
        reason = f"{type(exc).__name__}: {str(exc)[:200]}"
        return [
            TopicFacts(r, t.name, t.configured_retention_ms, error=reason) for r, t in base.items()
        ]
    facts = []
    for role, t in base.items():
        seen = broker.get(t.name)
        if seen is None:  # no such topic: nothing in it
            facts.append(TopicFacts(role, t.name, t.configured_retention_ms, observed=True))
            continue
        retention, segment, oldest = seen
        facts.append(
            TopicFacts(role, t.name, t.configured_retention_ms, True, retention, segment, oldest)
        )
    return facts


def broker_topics(
    cfg: AttuneConfig, names: list[str], timeout_s: float
) -> dict[str, tuple[int | None, int | None, datetime | None]]:
    """``{topic: (retention.ms, segment.ms, oldest record time)}`` for the topics that exist."""
    from kafka import KafkaConsumer, TopicPartition
    from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient

    from attune.supervisor import port_open

    servers = cfg.kafka.bootstrap_servers
    addresses = [a.strip().rsplit(":", 1) for a in servers.split(",") if a.strip()]
    if not any(port_open(h, int(p)) for h, p in addresses):
        raise ConnectionError(f"nothing listens at {servers}")
    ms = int(timeout_s * 1000)
    admin = KafkaAdminClient(
        bootstrap_servers=servers,
        client_id="attune-privacy-verify",
        request_timeout_ms=ms,
    )
    try:
        present = [t["name"] for t in admin.describe_topics(names) if t.get("error_code", 0) == 0]
        if not present:
            return {}
        resources = [
            ConfigResource(ConfigResourceType.TOPIC, n, ["retention.ms", "segment.ms"])
            for n in present
        ]
        described = admin.describe_configs(resources, config_filter="all").get("topic", {})
    finally:
        admin.close()

    def number(config: Mapping[str, Any], key: str) -> int | None:
        value = (config.get(key) or {}).get("value")
        return None if value is None else int(value)

    consumer = KafkaConsumer(
        bootstrap_servers=servers,
        client_id="attune-privacy-verify",
        enable_auto_commit=False,
        request_timeout_ms=max(ms, 2000),
    )
    out: dict[str, tuple[int | None, int | None, datetime | None]] = {}
    try:
        for name in present:
            parts = consumer.partitions_for_topic(name) or set()
            firsts = consumer.offsets_for_times(
                {TopicPartition(name, p): 0 for p in parts}, timeout_ms=ms
            )
            stamps = [o.timestamp for o in firsts.values() if o is not None]
            oldest = datetime.fromtimestamp(min(stamps) / 1000, UTC) if stamps else None
            config = described.get(name, {})
            out[name] = (number(config, "retention.ms"), number(config, "segment.ms"), oldest)
    finally:
        consumer.close()
    return out


def file_facts(cfg: AttuneConfig, spark: SparkSession, pseudonyms: set[str]) -> list[Any]:
    """Logs, ``privacy export`` documents and retraining runs, searched for ``pseudonyms``."""
    from spark.erasure_status import FileFacts

    logs = [f for f in cfg.log_dir.rglob("*") if f.is_file()] if cfg.log_dir.is_dir() else []
    reports = cfg.paths.resolve("reports/privacy")
    exports = sorted(reports.glob("export-*.json")) if reports.is_dir() else []
    runs = cfg.paths.resolve(cfg.models.retrain.runs_dir)
    graphs = sorted(runs.glob("**/saved_model.pb")) if runs.is_dir() else []
    data = sorted(runs.glob("**/interactions.parquet")) if runs.is_dir() else []
    in_data = set(parquet_files_holding(spark, data, pseudonyms)) if pseudonyms else set()
    return [
        FileFacts(
            "files/logs",
            str(cfg.log_dir),
            len(logs),
            files_holding(logs, pseudonyms),
            fix="delete or redact those lines (no attune log should carry a user id: report it)",
        ),
        FileFacts(
            "files/privacy exports",
            str(reports),
            len(exports),
            files_holding(exports, pseudonyms),
            fix="delete the exports of erased users once delivered",
        ),
        FileFacts(
            "files/retraining runs",
            str(runs),
            len(graphs) + len(data),
            sorted(set(files_holding(graphs, pseudonyms)) | in_data),
            blocking=False,
            fix="a run folder keeps its training data and candidate models until deleted: "
            "delete the run folders made before the erasure",
        ),
    ]


def files_holding(files: Iterable[Path], pseudonyms: set[str]) -> list[str]:
    """The files whose bytes hold one of ``pseudonyms``."""
    import re

    if not pseudonyms:
        return []
    pattern = re.compile(b"|".join(re.escape(p.encode()) for p in sorted(pseudonyms)))
    found = []
    for f in files:
        try:
            if pattern.search(f.read_bytes()):
                found.append(str(f))
        except OSError:
            continue  # a log rolled away while searched
    return found


def parquet_files_holding(
    spark: SparkSession, files: Sequence[Path], pseudonyms: set[str]
) -> list[str]:
    """The Parquet files (training data: ``user_id``) with a row of ``pseudonyms``."""
    from pyspark.sql import functions as F

    if not files:
        return []
    rows = (
        spark.read.parquet(*[str(f) for f in files])
        .where(F.col("user_id").isin(sorted(pseudonyms)))
        .select(F.input_file_name().alias("f"))
        .distinct()
        .collect()
    )
    return sorted(str(r["f"]).removeprefix("file://") for r in rows)


def read_history(spark: SparkSession, path: str, limit: int) -> list[Commit]:
    """The latest ``limit`` commits of the table at ``path``."""
    from delta.tables import DeltaTable
    from pyspark.sql import functions as F

    rows = (
        DeltaTable.forPath(spark, path)
        .history(limit)
        .select(
            "version",
            F.unix_millis("timestamp").alias("ts_ms"),
            "operation",
            "operationParameters",
            "operationMetrics",
        )
        .collect()
    )
    return [
        Commit(
            int(r["version"]),
            datetime.fromtimestamp(r["ts_ms"] / 1000, UTC),
            str(r["operation"]),
            dict(r["operationParameters"] or {}),
            dict(r["operationMetrics"] or {}),
        )
        for r in rows
    ]


def table_retention_property(spark: SparkSession, path: str) -> str | None:
    from delta.tables import DeltaTable

    detail = DeltaTable.forPath(spark, path).detail().select("properties").first()
    props = (detail[0] if detail is not None else None) or {}
    value = props.get("delta.deletedFileRetentionDuration")
    return None if value is None else str(value)


def decide_table(
    spark: SparkSession, name: str, path: str, configured: timedelta, now: datetime
) -> tuple[VacuumDecision, timedelta]:
    """Read as much of the table's history as :func:`vacuum_decision` needs, and decide."""
    retention = effective_retention(name, configured, table_retention_property(spark, path))
    limit = HISTORY_FIRST_PAGE
    while True:
        history = read_history(spark, path, limit)
        decision = vacuum_decision(
            history,
            retention,
            now,
            complete=len(history) < limit,
            can_read_more=limit < HISTORY_MAX,
        )
        if not decision.need_more_history:
            return decision, retention
        limit = min(limit * 4, HISTORY_MAX)


def vacuum_when_due(
    cfg: AttuneConfig, spark: SparkSession, now: datetime, say: Callable[[str], None] = print
) -> dict[str, Any]:
    """Decide for every erasable table, VACUUM the due ones; returns the report."""
    from spark.maintenance import vacuum_tables
    from spark.tables import Lake, is_table

    configured = cfg.batch.maintenance.vacuum_retention
    paths = Lake.from_config(cfg).tables()
    tables: dict[str, Any] = {}
    due: dict[str, str] = {}
    for name in ERASABLE:
        path = paths[name]
        if not is_table(spark, path):
            continue
        decision, retention = decide_table(spark, name, path, configured, now)
        tables[name] = {
            "due": decision.due,
            "reason": decision.reason,
            "retention": duration_text(retention),
            "pending_commits": decision.pending,
            "waiting_until": decision.waiting_until.isoformat(timespec="seconds")
            if decision.waiting_until
            else None,
        }
        say(f"privacy vacuum: {name}: {'DUE' if decision.due else 'not due'}: {decision.reason}")
        if decision.due:
            due[name] = path
    if due:
        vacuum_tables(spark, configured, due, say)
    for name in due:
        tables[name]["vacuumed"] = True
    return {
        "checked_at": now.isoformat(timespec="seconds"),
        "vacuumed": list(due),
        "tables": tables,
    }


# ----------------------------------------------------------------------------------------
# CLI handlers


def _today() -> date:
    return datetime.now(UTC).date()  # the 'as of' when none is given: a fact, not logic


def cmd_apply(cfg: AttuneConfig, args: argparse.Namespace) -> int:
    """``attune privacy apply [--date D] [--json]``: apply the pending requests now."""
    from attune.config import ConfigError
    from spark.command import parse_date
    from spark.context import RunContext
    from spark.erasure import active_requests, apply_erasures
    from spark.tables import Lake, is_table

    setup_logging()
    as_of = parse_date(args.date) if args.date else _today()
    say: Callable[[str], None] = (lambda m: print(m, file=sys.stderr)) if args.json else print
    lake = Lake.from_config(cfg)
    try:
        with batch_session(cfg, "attune-privacy-apply") as spark:
            requests = active_requests(spark, cfg, lake, as_of)
            if requests and not is_table(spark, lake.bronze):
                result: dict[str, Any] = {"requests": len(requests), "deleted": {}}
                say(
                    f"no bronze table at {lake.bronze} yet: no Delta row to erase; the "
                    f"{len(requests)} request(s) stay pending until data arrives"
                )
            elif requests:
                ctx = RunContext(cfg, spark, lake, as_of, None, say)
                result = apply_erasures(ctx, requests)
            else:
                result = {"requests": 0, "deleted": {}}
    except ConfigError:
        raise
    except Exception as exc:
        return failed(
            "privacy apply",
            exc,
            "Safe to run again: a request counts as applied only once every table is done, "
            "and re-applying deletes only what is left. If it keeps failing, read the "
            "traceback above (another job writing the same table at the same time is the "
            "usual cause)",
        )
    report = {"as_of": as_of.isoformat(), **result}
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    elif not requests:
        print(f"privacy apply as of {as_of}: no pending erasure request")
    else:
        deleted = report.get("deleted") or {}
        rows = sum(int(n) for n in deleted.values()) if isinstance(deleted, dict) else 0
        print(
            f"privacy apply as of {as_of}: {report['requests']} pseudonym(s) applied, "
            f"{rows} row(s) deleted, {report.get('redis_keys', 0)} Redis key(s); logged in "
            f"{lake.erasure_log}"
        )
    return 0


def cmd_vacuum(cfg: AttuneConfig, args: argparse.Namespace) -> int:
    """``attune privacy vacuum [--json]``: VACUUM the erasable tables where it is due."""
    setup_logging()
    now = datetime.now(UTC)  # VACUUM compares file ages with the clock: so does its decision
    say: Callable[[str], None] = (lambda m: print(m, file=sys.stderr)) if args.json else print
    try:
        with batch_session(cfg, "attune-privacy-vacuum") as spark:
            report = vacuum_when_due(cfg, spark, now, say)
    except Exception as exc:
        return failed(
            "privacy vacuum",
            exc,
            "VACUUM is safe to repeat: run it again; if it keeps failing, read the traceback above",
        )
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    elif report["vacuumed"]:
        print(f"privacy vacuum: vacuumed {', '.join(report['vacuumed'])}")
    else:
        print(f"privacy vacuum: nothing due ({len(report['tables'])} table(s) checked)")
    return 0


def stores_table(stores: Sequence[Mapping[str, Any]]) -> str:
    """The store rows as a table: store, state, clean by (``deadline`` when the store must
    change by then), and why, indented below."""
    lines = [f"  {'STORE':<36} {'STATE':<11} CLEAN BY"]
    for row in stores:
        by = row["clean_by"] or (
            "next model"
            if row.get("deadline")
            else "not scheduled"
            if row["state"] == "holds data"
            else "unknown"
        )
        if row.get("deadline"):
            by += f" (before {row['deadline']})"
        lines.append(f"  {row['store']:<36} {row['state']:<11} {by}")
        lines.append(f"      {row['reason']}")
    return "\n".join(lines)


def write_report(cfg: AttuneConfig, result: Verification, now: datetime) -> Path:
    folder = cfg.paths.resolve("reports/privacy")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"verify-{now.strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(result.as_dict(), indent=2, sort_keys=True) + "\n")
    return path


def cmd_verify(cfg: AttuneConfig, args: argparse.Namespace) -> int:
    """``attune privacy verify [--json]``: 0 when no store holds an erased user's data that
    should be gone by now (stores still within their retention are ``pending``, with the time
    by which they are clean), else 1."""
    setup_logging()
    now = datetime.now(UTC)
    try:
        with batch_session(cfg, "attune-privacy-verify") as spark:
            result = verify_erasures(cfg, spark, now)
    except Exception as exc:
        return failed(
            "privacy verify",
            exc,
            "Nothing was verified: check that Redis answers (`attune stack status`) and run "
            "it again",
        )
    path = write_report(cfg, result, now)
    if args.json:
        print(json.dumps({**result.as_dict(), "report": str(path)}, indent=2))
    else:
        checked = [n for n, t in result.tables.items() if t.get("exists")]
        print(
            f"privacy verify: {result.requests_applied} applied request(s) "
            f"({result.pseudonyms} pseudonym(s)) checked in {len(checked)} table(s)"
            + (" and Redis" if result.redis.get("checked") else "")
            + f"; {result.requests_pending} pending; report {path}"
        )
        if result.redis.get("came_back_users"):
            print(
                f"  {result.redis['came_back_users']} erased user(s) came back after their "
                f"request: their {result.redis['came_back_keys']} Redis key(s) are new data"
            )
        print(stores_table(result.stores))
        print(
            "privacy verify: every store clean "
            + (
                "now"
                if result.all_clean_by == "now"
                else f"by {result.all_clean_by}"
                if result.all_clean_by
                else "by a time not known yet (see the stores above)"
            )
        )
    for warning in result.warnings:
        print(f"attune privacy verify: WARNING: {warning}", file=sys.stderr)
    if not result.ok:
        print(
            "attune privacy verify: FAILED: "
            + "; ".join(result.failures)
            + ". Run `attune privacy apply` and verify again; rows that keep coming back "
            "mean a writer that does not honour erasure requests",
            file=sys.stderr,
        )
        return 1
    if not args.json:
        print("privacy verify: OK, nothing of an erased user is left where it should be gone")
    return 0
