"""Incremental gold/training_examples: the same table as a full recompute, night after night.

Two lakes receive the same bronze events and run the same nights (the silver stage's event
window and erasures, the gold stage's segment snapshot and training examples), one with
``batch.gold.incremental`` on and one with it off; the tables must be equal row for row. The
second night brings what a window-only rewrite gets wrong unless handled: a late event before
one already in the window, a new user, a consent withdrawal in the window (it drops the user's
older examples), a bot day that removes a withdrawal the first night had applied, and an
erasure re-applied (it deletes every example of the user, silver keeps the events received
after the request).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from attune.config import AttuneConfig
from attune.events import StoredEvent
from spark.context import RunContext, window_start
from spark.erasure import (
    ErasureRequest,
    active_requests,
    all_requests,
    apply_erasures,
    record_requests,
)
from spark.gold import (
    Commit,
    ExamplesPlan,
    Source,
    end_of_day_ms,
    rewrite_start,
    training_set_manifest,
    user_segments,
    write_segment_snapshot,
    write_training_examples,
)
from spark.silver import cleanse_events
from spark.tables import Lake, date_between, read_table, write_table
from tests.unit.spark.fixtures import NO_PERSONALIZATION, at, ev, write_bronze

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

D = {n: at(n).date() for n in range(1, 8)}


def _config(root: Path, incremental: bool) -> AttuneConfig:
    return AttuneConfig.model_validate(
        {
            "lake": {"root": str(root)},
            "batch": {
                "late_days": 2,
                "bots": {"max_events_per_day": 5},
                "views": {"write_redis": False},
                "gold": {"incremental": incremental},
            },
        }
    )


def _night(spark: SparkSession, cfg: AttuneConfig, day: date, since: date | None) -> ExamplesPlan:
    """One nightly run, as far as the training examples go: the silver stage's erasures and
    event window (spark.silver.run_silver), then the gold stage's segment snapshot and
    training examples (spark.gold.run_gold)."""
    from pyspark.sql import functions as F

    lake = Lake.from_config(cfg)
    ctx = RunContext(cfg, spark, lake, day, since=since, say=lambda m: None)
    apply_erasures(ctx, active_requests(spark, cfg, lake, day))
    start = window_start(day, cfg.batch.late_days, since)
    where = date_between("event_date", start, day)
    cleansed = cleanse_events(
        read_table(spark, lake.bronze).where(where),
        all_requests(spark, lake),
        cfg.batch.bots.max_events_per_day,
        cfg.batch.bots.max_events_per_minute,
    )
    write_table(
        cleansed.bot_days, lake.silver_bot_days, partition_by="event_date", replace_where=where
    )
    write_table(
        cleansed.events,
        lake.silver_events,
        partition_by="event_date",
        replace_where=where,
        metadata={"run_date": day, "bronze_version": None, "from": start},
    )
    versions = {"silver_events": ctx.version_of(lake.silver_events), "silver_items": None}
    events = read_table(spark, lake.silver_events, versions["silver_events"]).where(
        F.col("event_date") <= F.lit(day)
    )
    seg_version = write_segment_snapshot(
        ctx, user_segments(events, cfg.batch.segments, end_of_day_ms(day))
    )
    seg_history = read_table(spark, lake.gold_user_segments, seg_version).where(
        F.col("as_of_date") < F.lit(day)
    )
    manifest = training_set_manifest(ctx, versions, seg_version)
    _, plan = write_training_examples(ctx, events, seg_history, manifest, start)
    return plan


def _receive(events: list[StoredEvent], when: Any) -> list[StoredEvent]:
    """The events as received late, at ``when``."""
    return [e.model_copy(update={"received_at": when}) for e in events]


FIRST_NIGHT = [
    # u1: 3 examples before the second night's window (the 1st and 2nd)
    ev("a1", "item_view", "u1", at(1, 10), ["i1"]),
    ev("a2", "impression", "u1", at(2, 10), ["i2", "i3"], recommendation_id="e:A:1"),
    ev("a3", "item_view", "u1", at(4, 12), ["i3"]),
    # u2 withdraws consent on the second night (a late event dated the 5th)
    ev("b1", "item_view", "u2", at(1, 11), ["i1"]),
    ev("b2", "click", "u2", at(2, 11), ["i2"]),
    ev("b3", "item_view", "u2", at(5, 9), ["i3"]),
    # u3: 2 examples before the window, one more on the 6th
    ev("c1", "purchase", "u3", at(2, 12), ["i4"], revenue=9.0, order_id="o1"),
    ev("c2", "item_view", "u3", at(3, 12), ["i1"]),
    # u5 asked for erasure on the 3rd at 13:00 and came back: c5b and c5c stay
    ev("c5a", "item_view", "u5", at(3, 10), ["i1"]),
    ev("c5b", "item_view", "u5", at(3, 14), ["i2"]),
    ev("c5c", "item_view", "u5", at(5, 9), ["i3"]),
    # u6 withdrew consent on the 5th: the first night forgets the 1st and 2nd...
    ev("d1", "item_view", "u6", at(1, 9), ["i1"]),
    ev("d2", "item_view", "u6", at(2, 9), ["i2"]),
    ev("d3", "item_view", "u6", at(5, 8), ["i3"]),
    ev("d4", "consent_update", "u6", at(5, 10), consent=NO_PERSONALIZATION),
    # u7 browsed as visitor a7, logged in; a7 asks for erasure before the second night
    ev("e1", "item_view", "u7", at(2, 9), ["i1"], anonymous="a7"),
    ev("e2", "item_view", "u7", at(3, 9), ["i2"]),
]
SECOND_NIGHT = [
    # late, before a3 (same day): a3's index moves up by one
    *_receive([ev("a4", "item_view", "u1", at(4, 9), ["i4"])], at(6, 1)),
    ev("a5", "item_view", "u1", at(6, 10), ["i2"]),
    *_receive([ev("b4", "consent_update", "u2", at(5, 18), consent=NO_PERSONALIZATION)], at(6, 1)),
    ev("c3", "item_view", "u3", at(6, 12), ["i2"]),
    ev("n1", "item_view", "u4", at(6, 9), ["i1"]),  # a new user
    ev("n2", "add_to_cart", "u4", at(6, 10), ["i1"]),
    # ...until 4 late events make the 5th a bot day of u6 (6 events > 5): d4 is dropped
    *_receive(
        [ev(f"d{n}", "page_view", "u6", at(5, 11, n), context={"page": "/"}) for n in (5, 6, 7, 8)],
        at(6, 2),
    ),
]


def _lake(spark: SparkSession, root: Path, incremental: bool) -> tuple[list[ExamplesPlan], Lake]:
    cfg = _config(root, incremental)
    lake = Lake.from_config(cfg)
    write_bronze(spark, lake.bronze, FIRST_NIGHT)
    record_requests(spark, lake, [ErasureRequest("r1", "u5", "user", at(3, 13))])
    plans = [_night(spark, cfg, D[5], since=D[1])]
    write_bronze(spark, lake.bronze, SECOND_NIGHT, first_offset=len(FIRST_NIGHT))
    record_requests(spark, lake, [ErasureRequest("r2", "a7", "anonymous", at(6, 0, 30))])
    plans.append(_night(spark, cfg, D[6], since=None))
    return plans, lake


@pytest.mark.slow
@pytest.mark.timeout(600)  # four nightly runs over two lakes: 2.5 min on an idle machine
def test_incremental_training_examples_equal_a_full_recompute(
    spark: SparkSession, tmp_path: Path
) -> None:
    from pyspark.sql import functions as F
    from pyspark.testing import assertDataFrameEqual

    (first, second), inc_lake = _lake(spark, tmp_path / "incremental", incremental=True)
    (_, full_plan), full_lake = _lake(spark, tmp_path / "full", incremental=False)

    assert first == ExamplesPlan(None, "first run: no table yet")
    assert full_plan == ExamplesPlan(None, "batch.gold.incremental is off")
    # window 4th..6th; u2 withdrew consent in it, u6 has a bot day in it, u5 was erased again,
    # a7 erased (and u7, whose event e1 carried a7)
    assert replace(second, base_version=None) == ExamplesPlan(
        D[4], users=("a7", "u2", "u5", "u6", "u7")
    )

    inc = read_table(spark, inc_lake.gold_training_examples)
    full = read_table(spark, full_lake.gold_training_examples)
    assert full.count() == 16  # the oracle is not empty (the 16 rows worked out below)
    assertDataFrameEqual(inc, full)

    index = {
        r["event_id"] + "/" + r["item_id"]: r["user_event_index"]
        for r in inc.select("event_id", "item_id", "user_event_index").collect()
    }
    # Worked by hand. u1: a1 (1), a2 x2 (2, 3) before the window; then a4 (4), a3 (5), a5 (6).
    # u2: b4 withdraws consent on the 5th, so b1, b2 (older partitions) and b3 go; nothing
    # after it is an example. u3: c1, c2 before the window, c3 = 3. u4 (new): n1 = 1, n2 = 2.
    # u5: c5a erased; c5b (3rd, before the window, deleted by the re-applied erasure) = 1,
    # c5c = 2. u6: the 5th is a bot day, so d4 no longer forgets d1, d2: d1 = 1, d2 = 2.
    # u7: e1 erased with a7 (in an older partition), so e2 = 1.
    assert index == {
        "a1/i1": 1,
        "a2/i2": 2,
        "a2/i3": 3,
        "a4/i4": 4,
        "a3/i3": 5,
        "a5/i2": 6,
        "c1/i4": 1,
        "c2/i1": 2,
        "c3/i2": 3,
        "n1/i1": 1,
        "n2/i1": 2,
        "c5b/i2": 1,
        "c5c/i3": 2,
        "d1/i1": 1,
        "d2/i2": 2,
        "e2/i2": 1,
    }
    # segments: the events of the 6th take the snapshot of the 5th (u3: a purchase, new)
    seg = inc.where(F.col("event_id") == "c3").select("segment").first()
    assert seg is not None and seg[0] == "new"


def _commit(version: int, op: str = "WRITE", **meta: Any) -> Commit:
    return Commit(version, op, meta or None)


def _manifest(as_of: date, silver: int = 5, segments: int = 2) -> dict[str, Any]:
    return {
        "training_set": {
            "as_of_date": as_of.isoformat(),
            "silver_events_version": silver,
            "user_segments_version": segments,
        }
    }


def _sources(
    silver: list[Commit], now: int = 6, segments: list[Commit] | None = None
) -> list[Source]:
    segs = segments if segments is not None else [_commit(3, as_of_date=D[6].isoformat())]
    return [
        Source("silver/events", "silver_events_version", silver, now, "from"),
        Source("gold/user_segments", "user_segments_version", segs, 3, "as_of_date", 1),
    ]


def _first(found: tuple[date, Any] | str) -> date | str:
    return found if isinstance(found, str) else found[0]


def test_rewrite_start_reads_what_changed_since_the_last_gold_run() -> None:
    last = [_commit(7, **_manifest(D[5]))]
    tonight = [_commit(6, **{"from": D[4].isoformat()})]
    # the usual night: the late window, and the last run's manifest
    assert rewrite_start(D[6], D[4], last, _sources(tonight)) == (
        D[4],
        _manifest(D[5])["training_set"],
    )
    # erasures, compaction and a retention DELETE that deleted nothing are fine
    after = [*last, _commit(8, "MERGE"), _commit(9, "OPTIMIZE"), Commit(10, "DELETE", None, 0)]
    assert _first(rewrite_start(D[6], D[4], after, _sources(tonight))) == D[4]
    # a silver backfill from the 1st since the last run: rewrite from the 1st
    backfill = [_commit(6, **{"from": D[1].isoformat()}), _commit(7, **{"from": D[4].isoformat()})]
    assert _first(rewrite_start(D[6], D[4], last, _sources(backfill, now=7))) == D[1]
    # gold skipped nights: the table ends on the 2nd, so rewrite from the 3rd
    skipped = [_commit(7, **_manifest(D[2]))]
    assert _first(rewrite_start(D[6], D[4], skipped, _sources(tonight))) == D[3]
    # a snapshot of the 2nd rewritten since: the events of the 3rd change segment
    segs = [_commit(3, as_of_date=D[2].isoformat())]
    assert _first(rewrite_start(D[6], D[4], last, _sources(tonight, segments=segs))) == D[3]


def test_rewrite_start_says_why_only_a_full_recompute_will_do() -> None:
    last = [_commit(7, **_manifest(D[5]))]
    tonight = [_commit(6, **{"from": D[4].isoformat()})]
    assert rewrite_start(D[6], D[4], [_commit(0)], _sources(tonight)) == (
        "no gold run's manifest in the table's history"
    )
    assert rewrite_start(D[6], D[4], [*last, _commit(8, "WRITE")], _sources(tonight)) == (
        "the table was changed outside the gold stage (v8: WRITE)"
    )
    assert rewrite_start(D[4], D[2], last, _sources(tonight)) == (
        "the table was last built for 2013-03-05, after 2013-03-04: a rerun of an earlier date"
    )
    assert rewrite_start(D[6], D[4], last, _sources([], now=6)) == (
        "the history of silver/events no longer reaches v6"
    )
    assert rewrite_start(D[6], D[4], last, _sources([_commit(6, "WRITE")])) == (
        "silver/events v6 (WRITE) is no batch stage's write"
    )
    assert rewrite_start(D[6], D[4], last, _sources(tonight, now=4)) == (
        "silver/events v4 does not follow the v5 the table was built on"
    )
    # retention deleted old events: every user with older events is renumbered from 1
    cut = [Commit(6, "DELETE", None, 12), _commit(7, **{"from": D[4].isoformat()})]
    assert rewrite_start(D[6], D[4], last, _sources(cut, now=7)) == (
        "silver/events v6: the retention policy deleted 12 rows, so user_event_index counts "
        "from later events"
    )
    assert rewrite_start(D[6], D[4], [*last, Commit(8, "DELETE", None, 3)], _sources(tonight)) == (
        "gold/training_examples v8: the retention policy deleted 3 rows, so user_event_index "
        "counts from later events"
    )


def test_the_incremental_path_is_opt_in_with_an_environment_override() -> None:
    from attune.config import load_config

    assert AttuneConfig().batch.gold.incremental is False  # until measured at 10M
    cfg = load_config(environ={"ATTUNE__BATCH__GOLD__INCREMENTAL": "true"})
    assert cfg.batch.gold.incremental is True
