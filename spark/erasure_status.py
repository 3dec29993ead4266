"""Where erased users' data still is, and by when each store is clean: the store report of
``attune privacy verify``.

An erasure (:mod:`spark.erasure`) is not one delete: every store that can hold a user loses
the user on its own clock. This module turns what the command observed (:class:`Observed`)
and the configuration into one row per store (:func:`store_rows`, pure: no clock, no I/O), so
the report states, for every store, whether it is clean and the time by which it is:

``clean``
    Holds nothing of the erased users (``clean_by`` is ``"now"``).
``pending``
    Still holds some, and a scheduled mechanism removes it by ``clean_by`` (a retention, a TTL;
    ``None`` when the time depends on something not scheduled, such as the next model).
``holds data``
    Holds some and nothing scheduled removes it. ``blocking`` rows fail ``privacy verify``
    (exit 1, with the fix); the others (copies the model repository keeps for rollback) are
    reported as warnings.

The stores and their clocks:

Redis, the user's keys (``P:u:{u}:*``: features, recent items, consent, precomputed
recommendations, ...)
    Deleted at once by ``privacy erase`` and again by every apply: clean, or a failure.
Redis, the erased marker (``P:erased:{u}``)
    Holds the pseudonym on purpose: the API keeps the user's id away from the served models
    while it exists. Clean when it expires: ``privacy.erased_model_block`` after the latest
    erase or apply (its remaining TTL is read).
Delta tables (bronze, silver, gold; the experiment tables apart)
    The apply deletes the rows from the current version; older versions keep them in their
    files (time travel) until VACUUM removes files unreferenced for longer than the table's
    file retention (``batch.maintenance.vacuum_retention``; the speed layer's tables keep
    their own, Delta's 7 days by default: :func:`spark.privacy.effective_retention`). Clean by
    the last row-deleting commit since the first request + that retention, at the first
    ``privacy vacuum`` (the hourly DAG) from then.
Models (every published version in ``models.repository_dir``)
    The user's id is in a version's vocabulary when they were in its training data. The
    served version is clean when a model trained after the erasure is served; until then the
    erased marker keeps the id from it, so the served model must change before the marker
    expires (a failure otherwise). Versions not served stay for rollback until deleted:
    ``holds data``, not blocking.
Kafka topics (events, dead letter)
    Records are not deleted one by one: a topic drops a whole log segment once its newest
    record is older than ``retention.ms``, and a segment takes records for up to
    ``segment.ms`` before it rolls. A record written at ``t`` is gone by ``t + segment.ms +
    retention.ms`` (plus the broker's retention check, every 5 minutes). The user's last
    record before the request is at or before the request (its exact time is not kept once
    bronze is erased), so clean by ``requested_at + segment.ms + retention.ms``; earlier when
    the topic's oldest record is already younger than the request (read from the broker).
    ``retention.ms = -1`` keeps records forever: a failure.
Files (logs, export documents, retraining runs)
    Searched for the erased pseudonyms. Logs and ``privacy export`` documents are deleted by
    hand (a failure until then); retraining runs keep a copy of the training data (not
    blocking, like old model versions).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from spark.erasure_facts import Commit, Verification, completed_vacuum, deletes_rows, duration_text

CLEAN = "clean"
PENDING = "pending"
HOLDS = "holds data"
KAFKA_DEFAULT_SEGMENT = timedelta(days=7)
"""Kafka's ``log.roll.hours`` (168) when a topic sets no ``segment.ms``."""
USER_TOPICS = ("events", "dead_letter")
"""The ``kafka.topics`` roles whose records carry user ids (the catalog's do not)."""


@dataclass(frozen=True)
class StoreRow:
    """One store in the report: ``clean_by`` is when it is (or was to be) clean; None when
    unknown or never; ``deadline``: when the store must have changed (models: when the
    erased marker that covers them expires)."""

    store: str
    where: str
    state: str
    clean_by: datetime | None
    reason: str
    blocking: bool = True
    deadline: datetime | None = None
    details: Mapping[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return self.state == HOLDS and self.blocking

    def as_dict(self) -> dict[str, Any]:
        return {
            "store": self.store,
            "where": self.where,
            "state": self.state,
            "clean_by": "now" if self.state == CLEAN else _iso(self.clean_by),
            "reason": self.reason,
            "blocking": self.blocking,
            "deadline": _iso(self.deadline),
            **({"details": dict(self.details)} if self.details else {}),
        }


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.isoformat(timespec="seconds")


# ----------------------------------------------------------------------------------------
# Facts, as observed by the command


@dataclass(frozen=True)
class TableFacts:
    """A Delta table: ``rows_left`` in its current version (applied requests only);
    ``unvacuumed``: times of its row-deleting commits since the first request that no VACUUM
    removed yet (:func:`unvacuumed_deletes`); ``history_complete``: the commits read reach
    back to the first request."""

    name: str
    path: str
    exists: bool
    rows_left: int = 0
    retention: timedelta = timedelta(days=7)
    unvacuumed: tuple[datetime, ...] = ()
    history_complete: bool = True


@dataclass(frozen=True)
class ModelFacts:
    """A model: ``versions``: ``{version: erased pseudonyms in its vocabulary}`` (those who came
    back after their request excluded: their new data may be in a newer model)."""

    name: str
    where: str
    served: int | None
    versions: Mapping[int, frozenset[str]]


@dataclass(frozen=True)
class TopicFacts:
    """A Kafka topic: the configured retention, and what the broker said when it answered
    (``observed``): its ``retention.ms`` and ``segment.ms``, and its oldest record's time
    (None: empty)."""

    role: str
    name: str
    configured_retention_ms: int
    observed: bool = False
    broker_retention_ms: int | None = None
    segment_ms: int | None = None
    oldest_record: datetime | None = None
    error: str | None = None


@dataclass(frozen=True)
class FileFacts:
    """Files searched for the erased pseudonyms: ``found`` those holding one."""

    store: str
    where: str
    searched: int
    found: Sequence[str] = ()
    blocking: bool = True
    fix: str = "delete them"


@dataclass(frozen=True)
class Observed:
    """Everything :func:`store_rows` needs. ``requested``: the times of every request
    (applied or not); ``pending``: requests not applied yet; ``markers``: ``{pseudonym:
    remaining TTL}`` of the erased markers that exist; ``redis_keys_left``: keys of erased
    pseudonyms that did not come back."""

    requested: Sequence[datetime]
    pending: int
    redis_where: str
    redis_keys_left: int
    redis_came_back: int
    markers: Mapping[str, timedelta]
    marker_block: timedelta
    tables: Sequence[TableFacts]
    experiment_tables: Sequence[str]
    models: Sequence[ModelFacts]
    topics: Sequence[TopicFacts]
    files: Sequence[FileFacts] = ()


# ----------------------------------------------------------------------------------------
# The rule (pure)


def unvacuumed_deletes(
    history: Iterable[Commit], retention: timedelta, since: datetime, *, complete: bool
) -> tuple[tuple[datetime, ...], bool]:
    """Times of the row-deleting commits at or after ``since`` whose files no VACUUM removed
    yet (a VACUUM at ``V`` removes a commit's files at ``T`` iff ``V >= T + retention``), and
    whether ``history`` tells it all: ``complete``, or it reaches back to ``since``, or a
    VACUUM ``retention`` after its oldest commit removed anything older."""
    commits = sorted(history, key=lambda c: c.version)
    vacuums = [c.timestamp for c in commits if completed_vacuum(c)]
    pending = tuple(
        c.timestamp
        for c in commits
        if c.timestamp >= since
        and deletes_rows(c)
        and not any(v >= c.timestamp + retention for v in vacuums)
    )
    covered = (
        complete
        or not commits
        or commits[0].timestamp <= since
        or any(v >= commits[0].timestamp + retention for v in vacuums)
    )
    return pending, covered


def redis_rows(o: Observed, now: datetime) -> list[StoreRow]:
    where = o.redis_where
    came_back = (
        f"; {o.redis_came_back} erased user(s) came back after their request: their keys are "
        "new data"
        if o.redis_came_back
        else ""
    )
    if o.redis_keys_left:
        keys = StoreRow(
            "redis/user keys",
            where,
            HOLDS,
            None,
            f"{o.redis_keys_left} key(s) of erased users (features, consent, recommendations "
            "under P:u:{u}:*): run `attune privacy apply`, which deletes them again" + came_back,
        )
    else:
        keys = StoreRow(
            "redis/user keys",
            where,
            CLEAN,
            None,
            "no key of an erased user (features, consent, recommendations under P:u:{u}:*)"
            + came_back,
        )
    if o.markers:
        until = now + max(o.markers.values())
        marker = StoreRow(
            "redis/erased markers",
            where,
            PENDING,
            until,
            f"{len(o.markers)} P:erased:{{u}} marker(s) keep the pseudonym on purpose: the "
            "API keeps those ids away from the served models until they expire "
            f"(privacy.erased_model_block = {duration_text(o.marker_block)} after the latest "
            "erase or apply)",
            blocking=False,
        )
    else:
        marker = StoreRow(
            "redis/erased markers", where, CLEAN, None, "no erased marker left (all expired)"
        )
    return [keys, marker]


def table_row(t: TableFacts, group: str, pending_requests: int, now: datetime) -> StoreRow:
    store = f"{group}/{t.name}"
    if not t.exists:
        return StoreRow(store, t.path, CLEAN, None, "no table")
    retention = f"file retention {duration_text(t.retention)}"
    if t.rows_left:
        return StoreRow(
            store,
            t.path,
            HOLDS,
            None,
            f"{t.rows_left} row(s) of applied erasures in the current version: run "
            "`attune privacy apply`",
        )
    if pending_requests:
        return StoreRow(
            store,
            t.path,
            PENDING,
            None,
            f"{pending_requests} request(s) not applied yet: the next `attune privacy apply` "
            f"(hourly) deletes their rows, VACUUM their files {retention} later",
        )
    if not t.history_complete:
        return StoreRow(
            store,
            t.path,
            PENDING,
            None,
            "the commits read do not reach back to the first request: deleted rows may wait "
            "in older files; `attune privacy vacuum` vacuums such a table to be safe",
        )
    if t.unvacuumed:
        by = max(t.unvacuumed) + t.retention
        if by > now:
            return StoreRow(
                store,
                t.path,
                PENDING,
                by,
                f"{len(t.unvacuumed)} row-deleting commit(s) keep the deleted rows in older "
                f"files (time travel) until VACUUM removes them, {retention} after the last "
                "(batch.maintenance.vacuum_retention): at the first `attune privacy vacuum` "
                "from then",
                details={"unvacuumed_commits": len(t.unvacuumed)},
            )
        return StoreRow(
            store,
            t.path,
            HOLDS,
            by,
            f"VACUUM overdue: {len(t.unvacuumed)} row-deleting commit(s) older than the "
            f"{retention} still have their files: run `attune privacy vacuum`",
            details={"unvacuumed_commits": len(t.unvacuumed)},
        )
    return StoreRow(store, t.path, CLEAN, None, "no row left, no deleted row in older files")


def model_row(m: ModelFacts, markers: Mapping[str, timedelta], now: datetime) -> StoreRow:
    store = f"models/{m.name}"
    holding = {v: ids for v, ids in sorted(m.versions.items()) if ids}
    if not m.versions:
        return StoreRow(store, m.where, CLEAN, None, "no published model")
    if not holding:
        return StoreRow(
            store,
            m.where,
            CLEAN,
            None,
            f"no erased id in the vocabulary of versions {_versions(m.versions)}",
        )
    served_ids = holding.get(m.served, frozenset()) if m.served is not None else frozenset()
    others = {v: ids for v, ids in holding.items() if v != m.served}
    details = {"versions_holding": {str(v): len(ids) for v, ids in holding.items()}}
    if served_ids:
        unblocked = [p for p in served_ids if p not in markers]
        if unblocked:
            return StoreRow(
                store,
                m.where,
                HOLDS,
                None,
                f"the served version {m.served} holds {len(unblocked)} erased id(s) whose "
                "erased marker expired: their id embeddings are in use; train and promote a "
                "new model (`attune models retrain`)",
                details=details,
            )
        deadline = now + min(markers[p] for p in served_ids)
        return StoreRow(
            store,
            m.where,
            PENDING,
            None,
            f"the served version {m.served} holds {len(served_ids)} erased id(s), kept from it "
            "by their erased markers: clean when a model trained after the erasure is served "
            "(`attune models retrain`), which must happen before the deadline"
            + (f"; versions {_versions(others)} (not served) too" if others else ""),
            blocking=False,
            deadline=deadline,
            details=details,
        )
    covered = [now + markers[p] for ids in others.values() for p in ids if p in markers]
    return StoreRow(
        store,
        m.where,
        HOLDS,
        None,
        f"versions {_versions(others)} (not served) hold "
        f"{len(frozenset().union(*others.values()))} erased id(s): kept for rollback until "
        f"deleted from the repository; a rollback to them is covered by the erased markers "
        + (f"until {_iso(max(covered))}" if covered else "no more"),
        blocking=False,
        details=details,
    )


def _versions(versions: Iterable[int]) -> str:
    return ", ".join(f"v{v}" for v in sorted(versions)) or "(none)"


def topic_row(t: TopicFacts, requested: Sequence[datetime], now: datetime) -> StoreRow:
    store = f"kafka/{t.role}"
    retention_ms = (
        t.broker_retention_ms if t.broker_retention_ms is not None else (t.configured_retention_ms)
    )
    segment = (
        timedelta(milliseconds=t.segment_ms) if t.segment_ms is not None else KAFKA_DEFAULT_SEGMENT
    )
    details: dict[str, Any] = {
        "retention_ms": retention_ms,
        "retention_from": "broker" if t.broker_retention_ms is not None else "config",
        "configured_retention_ms": t.configured_retention_ms,
        "segment_ms": int(segment.total_seconds() * 1000),
    }
    seen = "" if t.observed else f" (broker not reachable: {t.error or 'no answer'})"
    if t.broker_retention_ms is not None and t.broker_retention_ms != t.configured_retention_ms:
        seen += (
            f"; the broker's retention.ms {t.broker_retention_ms} is not the configured "
            f"{t.configured_retention_ms} (kafka.topics.{t.role}.retention_ms): "
            "`attune stack up` applies it"
        )
    if t.oldest_record is not None:
        details["oldest_record"] = _iso(t.oldest_record)
    if not requested:
        return StoreRow(store, t.name, CLEAN, None, "no erasure request" + seen, details=details)
    if t.observed and t.oldest_record is None:
        return StoreRow(store, t.name, CLEAN, None, "the topic is empty" + seen, details=details)
    relevant = [
        r for r in requested if not t.observed or (t.oldest_record and t.oldest_record <= r)
    ]
    if not relevant:
        return StoreRow(
            store,
            t.name,
            CLEAN,
            None,
            f"its oldest record ({_iso(t.oldest_record)}) is younger than every request" + seen,
            details=details,
        )
    if retention_ms < 0:
        return StoreRow(
            store,
            t.name,
            HOLDS,
            None,
            f"retention.ms = {retention_ms} keeps every record, the erased users' too: set "
            f"kafka.topics.{t.role}.retention_ms and run `attune stack up`" + seen,
            details=details,
        )
    retention = timedelta(milliseconds=retention_ms)
    by = max(relevant) + segment + retention
    why = (
        f"records from before {len(relevant)} request(s) are dropped with their log segment: "
        f"request + segment.ms ({duration_text(segment)}) + "
        f"retention.ms ({duration_text(retention)})"
    )
    if by > now:
        return StoreRow(store, t.name, PENDING, by, why + seen, details=details)
    if t.observed:
        return StoreRow(
            store,
            t.name,
            HOLDS,
            by,
            f"{why}, but its oldest record ({_iso(t.oldest_record)}) is from before a request "
            "past that time: check the topic's retention.ms and segment.ms on the broker",
            details=details,
        )
    return StoreRow(store, t.name, CLEAN, None, f"{why}: past" + seen, details=details)


def file_row(f: FileFacts) -> StoreRow:
    if not f.found:
        return StoreRow(
            f.store, f.where, CLEAN, None, f"no erased pseudonym in {f.searched} file(s)"
        )
    shown = ", ".join(sorted(f.found)[:5]) + (", ..." if len(f.found) > 5 else "")
    return StoreRow(
        f.store,
        f.where,
        HOLDS,
        None,
        f"{len(f.found)} of {f.searched} file(s) hold erased pseudonyms ({shown}): {f.fix}",
        blocking=f.blocking,
        details={"files": sorted(f.found)},
    )


def store_rows(o: Observed, now: datetime) -> list[StoreRow]:
    """One row per store (see the module docstring), in a fixed order: Redis, Delta,
    experiments, models, Kafka, files."""
    rows = redis_rows(o, now)
    experiments = set(o.experiment_tables)
    rows += [table_row(t, "delta", o.pending, now) for t in o.tables if t.name not in experiments]
    rows += [table_row(t, "experiments", o.pending, now) for t in o.tables if t.name in experiments]
    rows += [model_row(m, o.markers, now) for m in o.models]
    rows += [topic_row(t, o.requested, now) for t in o.topics]
    rows += [file_row(f) for f in o.files]
    return rows


def clean_by_all(rows: Sequence[StoreRow]) -> tuple[datetime | None, bool]:
    """When every store is clean: the latest ``clean_by``, and whether that is known (False
    when a store holds data or waits for an unscheduled event)."""
    times = [r.clean_by for r in rows if r.state == PENDING and r.clean_by is not None]
    known = all(r.state == CLEAN or (r.state == PENDING and r.clean_by) for r in rows)
    return (max(times) if times else None), known


def add_stores(result: Verification, observed: Observed, now: datetime) -> Verification:
    """``result`` with the store rows of ``observed``: each failed row a failure (but for the
    rows left in tables and the Redis keys, which ``result`` already names), each non-blocking
    row holding data a warning, and when every store is clean."""
    rows = store_rows(observed, now)
    counted = {"redis/user keys"} | {
        f"{g}/{t.name}" for t in observed.tables if t.rows_left for g in ("delta", "experiments")
    }
    by, known = clean_by_all(rows)
    return replace(
        result,
        stores=[r.as_dict() for r in rows],
        failures=[
            *result.failures,
            *(f"{r.store}: {r.reason}" for r in rows if r.failed and r.store not in counted),
        ],
        warnings=[f"{r.store}: {r.reason}" for r in rows if r.state == HOLDS and not r.blocking],
        all_clean_by=("now" if not by else _iso(by)) if known else None,
    )
