"""The store report of ``attune privacy verify`` (:mod:`spark.erasure_status`): hand-made
facts in, one row per store out, every time worked out by hand in a comment."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from spark.erasure_status import (
    CLEAN,
    HOLDS,
    PENDING,
    FileFacts,
    ModelFacts,
    Observed,
    TableFacts,
    TopicFacts,
    add_stores,
    clean_by_all,
    model_row,
    store_rows,
    table_row,
    topic_row,
    unvacuumed_deletes,
)
from spark.privacy import Commit, Verification

NOW = datetime(2026, 3, 20, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)
WEEK = timedelta(days=7)


def at(day: int, hour: int = 12) -> datetime:
    return datetime(2026, 3, day, hour, 0, tzinfo=UTC)


def merge_delete(version: int, when: datetime) -> Commit:
    return Commit(version, when, "MERGE", {}, {"numTargetRowsDeleted": "2"})


def vacuum_end(version: int, when: datetime) -> Commit:
    return Commit(version, when, "VACUUM END", {"status": "COMPLETED"})


def write(version: int, when: datetime) -> Commit:
    return Commit(version, when, "WRITE", {}, {"numOutputRows": "5"})


# ----------------------------------------------------------------------------------------
# Delta: deleted rows wait in older files until VACUUM


def test_unvacuumed_deletes_since_the_first_request() -> None:
    history = [
        merge_delete(1, at(2)),  # before the request (03-05): not an erasure's
        write(2, at(6)),
        merge_delete(3, at(10)),  # vacuumable from 03-17 (+7 d)
        vacuum_end(4, at(16)),  # too early for v3 (03-16 < 03-17)
        merge_delete(5, at(18)),
    ]
    found, covered = unvacuumed_deletes(history, WEEK, at(5), complete=True)
    assert found == (at(10), at(18)) and covered
    # a VACUUM on 03-17 12:00 or later covers v3 (03-10 + 7 d), not v5
    found, _ = unvacuumed_deletes([*history, vacuum_end(6, at(19))], WEEK, at(5), complete=True)
    assert found == (at(18),)


def test_partial_history_must_reach_back_to_the_first_request() -> None:
    recent = [write(100, at(15)), merge_delete(101, at(16))]
    # oldest commit read 03-15 is after the request 03-05: cannot rule out older deletions
    assert unvacuumed_deletes(recent, WEEK, at(5), complete=False) == ((at(16),), False)
    # a VACUUM at 03-22 >= 03-15 + 7 d would have removed anything older
    assert unvacuumed_deletes([*recent, vacuum_end(102, at(22))], WEEK, at(5), complete=False)[1]
    # the commits read reach back to 03-04, before the request
    assert unvacuumed_deletes([write(99, at(4)), *recent], WEEK, at(5), complete=False)[1]


def test_table_clean_by_is_the_last_deletion_plus_the_file_retention() -> None:
    t = TableFacts("bronze", "/lake/bronze", True, 0, WEEK, (at(15), at(17, 6)))
    row = table_row(t, "delta", 0, NOW)
    # 03-17 06:00 + 7 d = 03-24 06:00, after NOW (03-20 12:00)
    assert (row.state, row.clean_by) == (PENDING, at(24, 6))
    assert row.as_dict()["clean_by"] == "2026-03-24T06:00:00+00:00"
    assert "file retention 7 d" in row.reason and not row.failed


def test_a_vacuum_overdue_fails_and_says_how_to_fix() -> None:
    t = TableFacts("gold_user_features", "/g", True, 0, DAY, (at(18),))
    row = table_row(t, "delta", 0, NOW)
    # 03-18 12:00 + 1 d = 03-19 12:00, before NOW: the files should be gone
    assert (row.state, row.clean_by, row.failed) == (HOLDS, at(19), True)
    assert "run `attune privacy vacuum`" in row.reason


def test_rows_left_pending_requests_and_clean_tables() -> None:
    left = table_row(TableFacts("silver_events", "/s", True, 3), "delta", 0, NOW)
    assert (left.state, left.clean_by, left.failed) == (HOLDS, None, True)
    assert left.reason.startswith("3 row(s) of applied erasures")
    waiting = table_row(TableFacts("silver_events", "/s", True), "delta", 2, NOW)
    assert (waiting.state, waiting.clean_by) == (PENDING, None)
    assert "2 request(s) not applied yet" in waiting.reason
    clean = table_row(TableFacts("silver_events", "/s", True), "delta", 0, NOW)
    assert clean.as_dict()["clean_by"] == "now" and clean.state == CLEAN
    assert table_row(TableFacts("x", "/x", False), "delta", 5, NOW).reason == "no table"
    partial = TableFacts("bronze", "/b", True, history_complete=False)
    assert table_row(partial, "delta", 0, NOW).state == PENDING


# ----------------------------------------------------------------------------------------
# Models: the served version changes before the erased markers expire


def test_served_model_is_pending_until_the_next_model_before_the_markers_expire() -> None:
    m = ModelFacts("retrieval", "/m/retrieval", 2, {1: frozenset({"p1"}), 2: frozenset({"p1"})})
    row = model_row(m, {"p1": timedelta(days=10), "p2": DAY}, NOW)
    # p1's marker has 10 days left: deadline 03-30 12:00; no time is known for the next model
    assert (row.state, row.clean_by, row.deadline) == (PENDING, None, at(30))
    assert "versions v1 (not served) too" in row.reason and not row.failed
    assert row.details == {"versions_holding": {"1": 1, "2": 1}}


def test_served_model_without_the_marker_fails() -> None:
    m = ModelFacts("ranking", "/m/ranking", 3, {3: frozenset({"p1", "p2"})})
    row = model_row(m, {"p2": DAY}, NOW)  # p1's marker expired
    assert (row.state, row.failed) == (HOLDS, True)
    assert row.reason.startswith("the served version 3 holds 1 erased id(s) whose erased marker")


def test_old_versions_hold_data_without_failing() -> None:
    m = ModelFacts("retrieval", "/m", 3, {1: frozenset({"p1"}), 2: frozenset(), 3: frozenset()})
    row = model_row(m, {"p1": timedelta(hours=6)}, NOW)
    # a rollback to v1 is covered until NOW + 6 h = 03-20 18:00
    assert (row.state, row.blocking, row.clean_by) == (HOLDS, False, None)
    assert "versions v1 (not served) hold 1 erased id(s)" in row.reason
    assert "until 2026-03-20T18:00:00+00:00" in row.reason
    clean = model_row(ModelFacts("r", "/m", 3, {3: frozenset()}), {}, NOW)
    assert clean.state == CLEAN and "versions v3" in clean.reason
    assert model_row(ModelFacts("repository", "/m", None, {}), {}, NOW).reason == (
        "no published model"
    )


# ----------------------------------------------------------------------------------------
# Kafka: a record goes with its segment


def test_kafka_clean_by_is_request_plus_segment_plus_retention() -> None:
    t = TopicFacts("events", "attune.events", 7 * 86_400_000)  # broker not asked
    row = topic_row(t, [at(10), at(14, 6)], NOW)
    # latest request 03-14 06:00 + segment.ms 7 d (Kafka's default) + retention 7 d
    # = 03-28 06:00
    assert (row.state, row.clean_by) == (PENDING, at(28, 6))
    assert row.details == {
        "retention_ms": 604_800_000,
        "retention_from": "config",
        "configured_retention_ms": 604_800_000,
        "segment_ms": 604_800_000,
    }
    assert "broker not reachable" in row.reason


def test_kafka_uses_the_brokers_settings_and_its_oldest_record() -> None:
    t = TopicFacts(
        "dead_letter",
        "attune.events.dead-letter",
        30 * 86_400_000,
        observed=True,
        broker_retention_ms=2 * 86_400_000,  # 2 d on the broker, not the configured 30 d
        segment_ms=3_600_000,  # 1 h
        oldest_record=at(18),
    )
    row = topic_row(t, [at(15), at(19)], NOW)
    # the 03-15 request's records are gone (oldest record 03-18 is younger); the 03-19 one's:
    # 03-19 12:00 + 1 h + 2 d = 03-21 13:00
    assert (row.state, row.clean_by) == (PENDING, datetime(2026, 3, 21, 13, tzinfo=UTC))
    assert "records from before 1 request(s)" in row.reason
    assert "`attune stack up` applies it" in row.reason  # 2 d on the broker, 30 d configured
    younger = topic_row(t, [at(15)], NOW)
    assert younger.state == CLEAN and "younger than every request" in younger.reason
    empty = TopicFacts("events", "e", 1, observed=True)
    assert topic_row(empty, [at(15)], NOW).reason == "the topic is empty"


def test_kafka_past_its_bound_or_kept_forever() -> None:
    past = TopicFacts("events", "e", 86_400_000, True, 86_400_000, 3_600_000, at(1))
    row = topic_row(past, [at(10)], NOW)
    # 03-10 12:00 + 1 h + 1 d = 03-11 13:00, long past, yet a record from 03-01 is there
    assert (row.state, row.failed) == (HOLDS, True)
    assert row.clean_by == datetime(2026, 3, 11, 13, tzinfo=UTC)
    unobserved = TopicFacts("events", "e", 86_400_000)
    # 03-10 + 7 d + 1 d = 03-18, past: clean by retention, not observed
    assert topic_row(unobserved, [at(10)], NOW).state == CLEAN
    forever = TopicFacts("events", "e", -1)
    kept = topic_row(forever, [at(10)], NOW)
    assert (kept.state, kept.clean_by, kept.failed) == (HOLDS, None, True)
    assert "kafka.topics.events.retention_ms" in kept.reason
    assert topic_row(forever, [], NOW).state == CLEAN  # no request, nothing to erase


# ----------------------------------------------------------------------------------------
# The whole report


def observed(**changes: Any) -> Observed:
    base: dict[str, Any] = {
        "requested": [at(15)],
        "pending": 0,
        "redis_where": "redis://h:1/0",
        "redis_keys_left": 0,
        "redis_came_back": 0,
        "markers": {"p1": timedelta(days=25)},
        "marker_block": timedelta(days=30),
        "tables": [
            TableFacts("bronze", "/b", True, 0, WEEK, (at(16),)),
            TableFacts("gold_experiment_users", "/e", True),
        ],
        "experiment_tables": ("gold_experiment_users",),
        "models": [ModelFacts("retrieval", "/m", 1, {1: frozenset()})],
        "topics": [TopicFacts("events", "attune.events", 86_400_000)],
        "files": [FileFacts("files/logs", "/log", 4)],
    }
    return Observed(**{**base, **changes})


def test_every_store_in_order_and_when_all_are_clean() -> None:
    rows = store_rows(observed(), NOW)
    assert [(r.store, r.state) for r in rows] == [
        ("redis/user keys", CLEAN),
        ("redis/erased markers", PENDING),
        ("delta/bronze", PENDING),
        ("experiments/gold_experiment_users", CLEAN),
        ("models/retrieval", CLEAN),
        ("kafka/events", PENDING),
        ("files/logs", CLEAN),
    ]
    by = {r.store: r.clean_by for r in rows}
    # marker: NOW + 25 d = 04-14 12:00; bronze: 03-16 + 7 d = 03-23 12:00;
    # events: 03-15 + 7 d (segment) + 1 d = 03-23 12:00
    assert by["redis/erased markers"] == datetime(2026, 4, 14, 12, tzinfo=UTC)
    assert by["delta/bronze"] == at(23) and by["kafka/events"] == at(23)
    assert clean_by_all(rows) == (datetime(2026, 4, 14, 12, tzinfo=UTC), True)


def test_add_stores_fails_what_is_left_and_warns_about_copies() -> None:
    o = observed(
        redis_keys_left=2,
        tables=[TableFacts("bronze", "/b", True, 1), TableFacts("quarantine", "/q", True)],
        files=[
            FileFacts("files/logs", "/log", 4, ["/log/api.log"]),
            FileFacts("files/retraining runs", "/runs", 2, ["/runs/1/x.pb"], blocking=False),
        ],
    )
    before = Verification("t", 1, 0, 1, {}, {}, ["bronze holds 1 row(s)", "Redis holds 2 key(s)"])
    result = add_stores(before, o, NOW)
    # the rows left and the Redis keys are named once (by the counts), the log is new
    assert result.failures == [
        "bronze holds 1 row(s)",
        "Redis holds 2 key(s)",
        "files/logs: 1 of 4 file(s) hold erased pseudonyms (/log/api.log): delete them",
    ]
    assert result.warnings == [
        "files/retraining runs: 1 of 2 file(s) hold erased pseudonyms (/runs/1/x.pb): delete them"
    ]
    assert result.all_clean_by is None  # a store holds data: no time known
    assert [s["store"] for s in result.stores][:3] == [
        "redis/user keys",
        "redis/erased markers",
        "delta/bronze",
    ]


def test_nothing_requested_everything_clean_now() -> None:
    o = observed(requested=[], markers={}, tables=[TableFacts("bronze", "/b", True)])
    result = add_stores(Verification("t", 0, 0, 0, {}, {}, []), o, NOW)
    assert result.ok and result.all_clean_by == "now" and result.warnings == []
    assert {s["clean_by"] for s in result.stores} == {"now"}
