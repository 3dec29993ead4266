"""``attune privacy apply | vacuum | verify`` without Spark: when VACUUM is due (hand-made Delta
history), retention intervals, what verification reports, Redis key names, the CLI's wiring."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from attune.cli import build_parser
from spark.erasure import ERASABLE, ErasureRequest
from spark.privacy import (
    LEFTOVER,
    Commit,
    deletes_rows,
    effective_retention,
    parse_interval,
    user_of_key,
    vacuum_decision,
    verification,
)

NOW = datetime(2026, 3, 20, 12, 0, tzinfo=UTC)
WEEK = timedelta(days=7)


def at(day: int, hour: int = 12) -> datetime:
    return datetime(2026, 3, day, hour, 0, tzinfo=UTC)


def write(version: int, when: datetime) -> Commit:
    return Commit(version, when, "WRITE", {"mode": "Overwrite"}, {"numOutputRows": "10"})


def erasure(version: int, when: datetime, deleted: int = 2) -> Commit:
    """An erasure's MERGE ... WHEN MATCHED THEN DELETE, as DESCRIBE HISTORY shows it."""
    return Commit(
        version,
        when,
        "MERGE",
        {"matchedPredicates": '[{"actionType":"delete"}]'},
        {"numTargetRowsDeleted": str(deleted), "numTargetFilesRemoved": "1"},
    )


def vacuum_end(version: int, when: datetime, status: str = "COMPLETED") -> Commit:
    return Commit(version, when, "VACUUM END", {"status": status}, {"numDeletedFiles": "1"})


def test_which_commits_delete_rows() -> None:
    assert deletes_rows(erasure(1, at(1)))
    assert not deletes_rows(erasure(1, at(1), deleted=0))  # matched nothing
    assert deletes_rows(Commit(2, at(1), "DELETE", {}, {"numDeletedRows": "5"}))
    # a partition-aligned DELETE (retention) removes whole files and may not count rows
    assert deletes_rows(Commit(3, at(1), "DELETE", {}, {"numRemovedFiles": "2"}))
    assert not deletes_rows(Commit(4, at(1), "DELETE", {}, {"numDeletedRows": "0"}))
    assert not deletes_rows(write(5, at(1)))
    assert not deletes_rows(Commit(6, at(1), "OPTIMIZE", {}, {"numRemovedFiles": "9"}))


def test_nothing_deleted_nothing_due() -> None:
    d = vacuum_decision([write(0, at(1)), write(1, at(2))], WEEK, NOW, complete=True)
    assert not d.due and d.reason == "no deleted rows waiting for a VACUUM"


def test_erasure_older_than_the_retention_and_never_vacuumed_is_due() -> None:
    # erased on 03-10 12:00; + 7 days = 03-17 12:00 <= now (03-20): its files may go
    d = vacuum_decision([write(0, at(1)), erasure(1, at(10))], WEEK, NOW, complete=True)
    assert d.due and (d.pending, d.ripe) == (1, 1)
    assert "v1 MERGE at 2026-03-10T12:00:00+00:00" in d.reason
    assert "file retention (7 d)" in d.reason


def test_a_vacuum_after_the_retention_covers_the_erasure() -> None:
    # VACUUM on 03-18 >= 03-17 (erasure + 7 days): it removed the erased rows' files
    history = [write(0, at(1)), erasure(1, at(10)), vacuum_end(2, at(18))]
    d = vacuum_decision(history, WEEK, NOW, complete=True)
    assert not d.due and d.pending == 0


def test_a_vacuum_before_the_files_were_removable_does_not_count() -> None:
    # VACUUM on 03-15 < 03-17: the files removed on 03-10 were 5 days old, kept; due again
    history = [erasure(1, at(10)), vacuum_end(2, at(15))]
    assert vacuum_decision(history, WEEK, NOW, complete=True).due


def test_a_failed_vacuum_does_not_count() -> None:
    history = [erasure(1, at(10)), vacuum_end(2, at(18), status="FAILED")]
    assert vacuum_decision(history, WEEK, NOW, complete=True).due


def test_a_young_erasure_waits_and_says_until_when() -> None:
    # erased 03-16 12:00: removable from 03-23 12:00, after now
    d = vacuum_decision([erasure(1, at(16))], WEEK, NOW, complete=True)
    assert not d.due and d.pending == 1 and d.ripe == 0
    assert d.waiting_until == at(23)
    assert "due at 2026-03-23T12:00:00+00:00" in d.reason


def test_zero_retention_is_due_at_once() -> None:
    # retention 0 (the tests' lakes): an erasure a second ago can be vacuumed now
    d = vacuum_decision([erasure(1, NOW - timedelta(seconds=1))], timedelta(0), NOW, complete=True)
    assert d.due


def test_history_order_does_not_matter() -> None:
    history = [vacuum_end(2, at(18)), erasure(1, at(10)), erasure(3, at(19))]
    d = vacuum_decision(history, WEEK, NOW, complete=True)
    # v1 is covered by the VACUUM of 03-18; v3 (03-19) waits until 03-26
    assert not d.due and d.pending == 1 and d.waiting_until == at(26)


def test_partial_history_asks_for_more_or_vacuums_to_be_safe() -> None:
    # the 2 latest commits only (a streaming table): an older erasure could hide before 03-19
    recent = [write(10, at(19)), write(11, at(20))]
    more = vacuum_decision(recent, WEEK, NOW, complete=False, can_read_more=True)
    assert more.need_more_history and not more.due
    safe = vacuum_decision(recent, WEEK, NOW, complete=False, can_read_more=False)
    assert safe.due and "vacuuming to be safe" in safe.reason
    # a VACUUM at 03-19 >= oldest read (03-01) + 7 days covers anything before 03-01
    covered = [write(10, at(1)), vacuum_end(11, at(19)), write(12, at(20))]
    d = vacuum_decision(covered, WEEK, NOW, complete=False, can_read_more=True)
    assert not d.need_more_history and not d.due


def test_a_ripe_erasure_is_due_even_in_partial_history() -> None:
    d = vacuum_decision([erasure(5, at(10))], WEEK, NOW, complete=False, can_read_more=True)
    assert d.due and not d.need_more_history


def test_parse_interval() -> None:
    assert parse_interval("interval 604800 seconds") == WEEK
    assert parse_interval("interval 1 weeks") == WEEK
    assert parse_interval("7 days") == WEEK
    assert parse_interval("INTERVAL 1 day 12 hours") == timedelta(hours=36)
    assert parse_interval("interval 0 seconds") == timedelta(0)
    assert parse_interval("forever") is None
    assert parse_interval("interval 3 fortnights") is None
    assert parse_interval("interval seven days") is None


def test_effective_retention() -> None:
    day = timedelta(days=1)
    # the batch's tables get the configured retention as their property before VACUUM
    assert effective_retention("silver_events", day, "interval 604800 seconds") == day
    # the speed layer's keep theirs: Delta's 7 days when unset
    assert effective_retention("bronze", day, None) == WEEK
    assert effective_retention("quarantine", day, "interval 2 days") == 2 * day
    assert effective_retention("bronze", day, "nonsense") == WEEK
    # VACUUM's argument 0 wins everywhere
    assert effective_retention("bronze", timedelta(0), "interval 7 days") == timedelta(0)


def test_every_erasable_table_is_verified() -> None:
    assert set(LEFTOVER) == set(ERASABLE)


def test_user_of_key() -> None:
    assert user_of_key("att:u:{abc}:recent", "att") == "abc"
    assert user_of_key("att:u:{abc}:msg:welcome", "att") == "abc"
    assert user_of_key("att:i:{i1}:stats", "att") is None
    assert user_of_key("other:u:{abc}:recent", "att") is None
    assert user_of_key("att:u:{abc", "att") is None


REQUESTED = datetime(2026, 3, 1, tzinfo=UTC)
ALICE = ErasureRequest("r1", "p-alice", "user", REQUESTED)
ALICE_ANON = ErasureRequest("r1", "p-anon", "linked", REQUESTED)
BOB = ErasureRequest("r2", "p-bob", "user", REQUESTED)


def test_verification_names_table_count_and_request() -> None:
    result = verification(
        NOW,
        [ALICE, ALICE_ANON, BOB],
        pending=1,
        table_counts={"bronze": {"r1": 3}, "silver_events": {}, "gold_user_features": None},
        # alice's 2 keys are left over; bob came back after his request: his 4 are new data
        redis_keys={"p-alice": 2, "p-bob": 4},
        came_back=["p-bob"],
    )
    assert not result.ok
    assert result.failures == [
        "bronze holds 3 row(s) of 1 erased request(s) (r1)",
        "Redis holds 2 key(s) of 1 erased pseudonym(s) (request(s) r1)",
    ]
    assert (result.requests_applied, result.requests_pending, result.pseudonyms) == (2, 1, 3)
    assert result.tables["bronze"] == {"exists": True, "rows_left": 3, "requests": ["r1"]}
    assert result.tables["silver_events"] == {"exists": True, "rows_left": 0, "requests": []}
    assert result.tables["gold_user_features"] == {"exists": False}
    assert result.redis == {
        "checked": True,
        "keys_left": 2,
        "requests": ["r1"],
        "came_back_users": 1,
        "came_back_keys": 4,
    }
    as_dict = result.as_dict()
    assert as_dict["ok"] is False and as_dict["checked_at"] == "2026-03-20T12:00:00+00:00"
    assert "p-alice" not in str(as_dict)  # the report names requests, never pseudonyms


def test_verification_of_a_clean_lake() -> None:
    result = verification(NOW, [ALICE], 0, {"bronze": {"r1": 0}}, None, [])
    assert result.ok and result.failures == [] and result.redis == {"checked": False}


def test_cli_wires_the_privacy_commands() -> None:
    parse = build_parser().parse_args
    apply = parse(["privacy", "apply", "--date", "2026-03-20", "--json"])
    assert (apply.date, apply.json) == ("2026-03-20", True)
    assert parse(["privacy", "apply"]).date is None
    assert parse(["privacy", "vacuum"]).json is False
    assert parse(["privacy", "verify", "--json"]).json is True
    with pytest.raises(SystemExit):
        parse(["privacy", "vacuum", "--date", "2026-03-20"])
