"""Attribution and the user-level experiment table on hand-made events; every expected value
is worked out by hand in the comments."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from spark.attribution import (
    PRE_PERIOD_TYPES,
    AttributionParams,
    experiment_users,
    experiments_predicate,
    exposed_experiments,
    exposures,
    has_teams,
    interleaving_impressions,
)
from spark.silver import cleanse_events
from tests.unit.spark.fixtures import at, bronze_frame, ev

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

PATTERN = r"^([^:]+):([^:]+):"
PARAMS = AttributionParams(pattern=PATTERN, window_ms=30 * 60 * 1000, cuped_days=14)


def _silver(spark: SparkSession, events: list[Any]) -> DataFrame:
    return cleanse_events(bronze_frame(spark, events), None, 10_000, 10_000).events


EVENTS = [
    # u1, before the experiment: two of its own events within 14 days before its first
    # exposure (03-05 10:00), one too old (02-10), an identify (profile: not counted), an
    # impression of no experiment (made by the system: not counted)
    ev("p1", "item_view", "u1", at(2, 9), ["i9"]),
    ev("p2", "page_view", "u1", at(5, 8), context={"page": "/"}),
    ev("p3", "item_view", "u1", at(10, 9, month=2), ["i9"]),
    ev("p4", "identify", "u1", at(3, 9)),
    ev("p5", "impression", "u1", at(4, 9), ["i8"], recommendation_id="none:default:r0"),
    # u1 is shown e1:A:r1 on 03-05 10:00 (on mobile), and again by the app at 10:05 (the same
    # recommendation: one exposure, shown at 10:00)
    ev("a1", "impression", "u1", at(5, 10), ["i1", "i2"], recommendation_id="e1:A:r1",
       context={"device": "mobile"}),
    ev("a1b", "impression", "u1", at(5, 10, 5), ["i1", "i2"], recommendation_id="e1:A:r1"),
    ev("a2", "rec_click", "u1", at(5, 10, 10), ["i1"], recommendation_id="e1:A:r1"),  # +10 min
    ev("a3", "dwell", "u1", at(5, 10, 15), ["i1"], recommendation_id="e1:A:r1", dwell_ms=4500),
    ev("a4", "add_to_cart", "u1", at(5, 10, 20), ["i1"], recommendation_id="e1:A:r1"),
    ev("a5", "purchase", "u1", at(5, 10, 25), [{"item_id": "i1", "price": 20.0}],
       recommendation_id="e1:A:r1", order_id="o1", revenue=20.0),
    # 40 minutes after the impression: outside the 30-minute window (the re-shown impression
    # at 10:05 does not extend it)
    ev("a6", "click", "u1", at(5, 10, 40), ["i2"], recommendation_id="e1:A:r1"),
    # a click without the recommendation id: not attributed
    ev("a7", "click", "u1", at(5, 10, 11), ["i2"]),
    # u1 again on 03-06 09:00: e1:A:r2; a click 1 minute *before* it (not attributed), a
    # dismissal and a not_interested after it (2 dismissals)
    ev("b0", "rec_click", "u1", at(6, 8, 59), ["i3"], recommendation_id="e1:A:r2"),
    ev("b1", "impression", "u1", at(6, 9), ["i3"], recommendation_id="e1:A:r2"),
    ev("b2", "dismiss", "u1", at(6, 9, 1), ["i3"], recommendation_id="e1:A:r2"),
    ev("b3", "not_interested", "u1", at(6, 9, 2), ["i3"], recommendation_id="e1:A:r2"),
    # u2: e1:B on 03-05 (desktop), exactly 30 minutes later a click (the window's edge counts)
    ev("c1", "impression", "u2", at(5, 11), ["i4"], recommendation_id="e1:B:r3",
       context={"device": "desktop"}),
    ev("c2", "rec_click", "u2", at(5, 11, 30), ["i4"], recommendation_id="e1:B:r3"),
    ev("c3", "purchase", "u2", at(5, 11, 31), ["i4"], recommendation_id="e1:B:r3",
       order_id="o2", revenue=9.0),  # 31 min: outside
    # u3: no experiment and the holdout: never in the table; e2 on 03-01 only
    ev("d1", "impression", "u3", at(5, 12), ["i1"], recommendation_id="none:default:r4"),
    ev("d2", "impression", "u3", at(5, 12), ["i1"], recommendation_id="holdout:holdout:r5"),
    ev("d3", "impression", "u3", at(1, 12), ["i1"], recommendation_id="e2:X:r6"),
]  # fmt: skip


def test_pre_period_counts_the_users_own_events() -> None:
    assert "impression" not in PRE_PERIOD_TYPES and "identify" not in PRE_PERIOD_TYPES
    assert "undo_feedback" not in PRE_PERIOD_TYPES
    assert {"item_view", "page_view", "rec_click", "purchase", "dismiss"} <= set(PRE_PERIOD_TYPES)


def test_experiments_predicate_quotes() -> None:
    assert experiments_predicate(["a", "b.c"]) == "experiment IN ('a', 'b.c')"
    assert experiments_predicate(["o'x"]) == "experiment IN ('o\\'x')"


def test_exposures_one_per_recommendation(spark: SparkSession) -> None:
    silver = _silver(spark, EVENTS)
    assert exposed_experiments(silver, PATTERN) == ["e1", "e2"]
    rows = exposures(silver, PATTERN).selectExpr(
        "recommendation_id", "user", "string(shown_at)", "device"
    )
    # r1 twice (a1, a1b) -> once, at 10:00 (session time zone: UTC); none/holdout are not
    # experiments
    assert sorted(map(tuple, rows.collect())) == [
        ("e1:A:r1", "u1", "2013-03-05 10:00:00", "mobile"),
        ("e1:A:r2", "u1", "2013-03-06 09:00:00", None),
        ("e1:B:r3", "u2", "2013-03-05 11:00:00", "desktop"),
        ("e2:X:r6", "u3", "2013-03-01 12:00:00", None),
    ]
    assert exposures(silver, PATTERN, only=["e2"]).count() == 1


def test_experiment_users(spark: SparkSession) -> None:
    from pyspark.sql import Row
    from pyspark.testing import assertDataFrameEqual

    segments = spark.createDataFrame(
        [
            ("u1", "loyal", at(3).date()),
            ("u1", "active", at(4).date()),  # the day before u1's first exposure: this one
            ("u2", "new", at(5).date()),  # the day of u2's first exposure: too late
        ],
        "user STRING, segment STRING, as_of_date DATE",
    )
    out = experiment_users(_silver(spark, EVENTS), PARAMS, segments, only=["e1"])
    d5, d6 = at(5).date(), at(6).date()
    first_u1, first_u2 = "2013-03-05 10:00:00", "2013-03-05 11:00:00"
    assertDataFrameEqual(
        out.withColumn("first_exposure", out["first_exposure"].cast("string")),
        [
            # u1 on 03-05: r1; a2 click, a3 dwell 4.5 s, a4 cart, a5 purchase of 20; a6 (40
            # min) and a7 (no id) not attributed. pre_events: p1 (03-02) + p2 (03-05 08:00)
            Row(experiment="e1", variant="A", user="u1", exposure_date=d5,
                first_exposure=first_u1, first_exposure_date=d5, exposures=1, clicks=1,
                carts=1, purchases=1, revenue=20.0, dwell_s=4.5, dismissals=0, pre_events=2,
                segment="active", device="mobile"),
            # u1 on 03-06: r2; b0 is before the impression; b2 + b3 = 2 dismissals
            Row(experiment="e1", variant="A", user="u1", exposure_date=d6,
                first_exposure=first_u1, first_exposure_date=d5, exposures=1, clicks=0,
                carts=0, purchases=0, revenue=0.0, dwell_s=0.0, dismissals=2, pre_events=2,
                segment="active", device="mobile"),
            # u2: c2 at +30 min counts, c3 at +31 min does not; nothing before; no snapshot
            # of 03-04
            Row(experiment="e1", variant="B", user="u2", exposure_date=d5,
                first_exposure=first_u2, first_exposure_date=d5, exposures=1, clicks=1,
                carts=0, purchases=0, revenue=0.0, dwell_s=0.0, dismissals=0, pre_events=0,
                segment=None, device="desktop"),
        ],
    )  # fmt: skip
    # without segments the column is there, empty
    plain = experiment_users(_silver(spark, EVENTS), PARAMS, None, only=["e2"]).collect()
    assert [(r["user"], r["segment"], r["exposures"]) for r in plain] == [("u3", None, 1)]


def test_interleaving_credits_the_team_of_the_clicked_item(spark: SparkSession) -> None:
    def team(item: str, t: str, pos: int) -> dict[str, Any]:
        return {"item_id": item, "team": t, "position": pos}

    rec, rec2 = "il:interleaved:r7", "il:interleaved:r8"
    events = [
        *EVENTS,  # e1's impressions carry no team: not interleaved
        ev("i1", "impression", "u5", at(5, 14),
           [team("i1", "a", 0), team("i2", "b", 1), team("i3", "a", 2), team("i4", "b", 3)],
           recommendation_id=rec),
        ev("i2", "rec_click", "u5", at(5, 14, 1), ["i2"], recommendation_id=rec),  # b
        ev("i3", "rec_click", "u5", at(5, 14, 2), ["i2"], recommendation_id=rec),  # i2 again
        ev("i4", "click", "u5", at(5, 14, 3), ["i1"], recommendation_id=rec),  # a
        ev("i5", "rec_click", "u5", at(5, 14, 4), ["i9"], recommendation_id=rec),  # not shown
        ev("i6", "rec_click", "u5", at(5, 14, 50), ["i3"], recommendation_id=rec),  # +50 min
        ev("i7", "add_to_cart", "u5", at(5, 14, 5), ["i4"], recommendation_id=rec),  # no click
        ev("j1", "impression", "u6", at(6, 15), [team("i1", "b", 0), team("i2", "a", 1)],
           recommendation_id=rec2),
    ]  # fmt: skip
    silver = _silver(spark, events)
    assert has_teams(silver)
    out = interleaving_impressions(silver, PARAMS)
    assert out is not None
    got = sorted(
        (r["recommendation_id"], r["user"], r["variant"], str(r["exposure_date"]), r["teams"],
         dict(r["team_clicks"]), r["clicks"])
        for r in out.collect()
    )  # fmt: skip
    assert got == [
        # u5: i2 (b) once however often clicked, i1 (a); i9 was not shown, i3 came too late
        (rec, "u5", "interleaved", "2013-03-05", ["a", "b"],
         {"a": 1, "b": 1}, 2),
        # u6: nothing clicked, both teams shown
        (rec2, "u6", "interleaved", "2013-03-06", ["a", "b"], {"a": 0, "b": 0}, 0),
    ]  # fmt: skip
