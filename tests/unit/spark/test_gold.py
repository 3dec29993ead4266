"""Gold's pure functions on hand-made events; every expected value is worked out by hand."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from attune.config import AttuneConfig, CooccurrenceConfig, SegmentsConfig
from attune.features import FeatureParams, feature_rows, stream_rows
from spark.gold import (
    CACHED_ROW_COLUMNS,
    end_of_day_ms,
    experiment_metrics,
    item_cooccurrence,
    popular_by_segment,
    training_examples,
    user_features,
    user_segments,
)
from spark.silver import cleanse_events
from tests.unit.spark.fixtures import NO_PERSONALIZATION, at, bronze_frame, ev

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

PARAMS = FeatureParams.from_config(AttuneConfig())


def _silver(spark: SparkSession, events: list) -> DataFrame:  # type: ignore[type-arg]
    return cleanse_events(bronze_frame(spark, events), None, 10_000, 10_000).events


def test_training_examples_follow_consent_and_use_yesterdays_segment(spark: SparkSession) -> None:
    from pyspark.sql import Row
    from pyspark.testing import assertDataFrameEqual

    events = [
        ev(
            "t1",
            "item_view",
            "u1",
            at(3, 10),
            ["i1"],
            context={"device": "mobile", "placement": "home"},
        ),
        ev(
            "t2",
            "impression",
            "u1",
            at(3, 11),
            [{"item_id": "i2", "position": 0}, {"item_id": "i3", "position": 1}],
            recommendation_id="exp:A:r",
        ),
        ev("t3", "page_view", "u1", at(3, 12), context={"page": "/"}),  # no item: not an example
        ev("t4", "rating", "u2", at(4, 9), ["i1"], rating=8.0),
        ev("t5", "item_view", "u3", at(3, 9), ["i1"]),
        # u3 withdraws personalization consent: t5 (before) is forgotten, t7 (after) counts
        ev("t6", "consent_update", "u3", at(3, 10), consent=NO_PERSONALIZATION),
        ev("t7", "item_view", "u3", at(4, 9), ["i2"]),
        ev("t8", "item_view", "u4", at(4, 9), ["i1"], consent=NO_PERSONALIZATION),  # not usable
    ]
    segments = spark.createDataFrame(
        [
            ("u1", "active", at(2).date()),
            ("u2", "loyal", at(3).date()),
            ("u2", "new", at(4).date()),
        ],
        "user STRING, segment STRING, as_of_date DATE",
    )
    out = training_examples(_silver(spark, events), segments).drop("timestamp", "session_id")
    d3, d4 = at(3).date(), at(4).date()

    def row(user, item, etype, eid, d, idx, seg, **kw):  # type: ignore[no-untyped-def]
        base = dict(rating=None, device=None, placement=None, position=None, recommendation_id=None)
        base.update(kw)
        return Row(
            user_id=user,
            item_id=item,
            event_type=etype,
            rating=base["rating"],
            device=base["device"],
            placement=base["placement"],
            segment=seg,
            event_id=eid,
            event_date=d,
            user_event_index=idx,
            position=base["position"],
            recommendation_id=base["recommendation_id"],
        )

    assertDataFrameEqual(
        out,
        [
            # u1's events on the 3rd get the snapshot of the 2nd
            row("u1", "i1", "item_view", "t1", d3, 1, "active", device="mobile", placement="home"),
            row(
                "u1",
                "i2",
                "impression",
                "t2",
                d3,
                2,
                "active",
                position=0,
                recommendation_id="exp:A:r",
            ),
            row(
                "u1",
                "i3",
                "impression",
                "t2",
                d3,
                3,
                "active",
                position=1,
                recommendation_id="exp:A:r",
            ),
            # u2's rating on the 4th gets the snapshot of the 3rd (loyal), not the 4th's (new)
            row("u2", "i1", "rating", "t4", d4, 1, "loyal", rating=8.0),
            row("u3", "i2", "item_view", "t7", d4, 1, None),
        ],
    )


def _views(user: str, session: str | None, items: list[str], hour: int, etype: str = "item_view"):  # type: ignore[no-untyped-def]
    extra = {"order_id": "o"} if etype == "purchase" else {}
    return [
        ev(
            f"{user}-{session}-{etype}-{n}",
            etype,
            user,
            at(3, hour, n),
            [item],
            session_id=session,
            **extra,
        )
        for n, item in enumerate(items)
    ]


def test_item_cooccurrence_by_session_by_purchase_and_by_user(spark: SparkSession) -> None:
    from pyspark.sql import Row
    from pyspark.testing import assertDataFrameEqual

    events = [
        *_views("u1", "s1", ["A", "B", "C"], 9),
        *_views("u1", "s1", ["A", "B"], 10, "purchase"),
        *_views("u2", "s2", ["A", "B"], 9),
        *_views("u2", "s2", ["A", "B"], 10, "purchase"),
        *_views("u3", "s3", ["B", "C"], 9),
        # no session id: 14:00 and 14:01 fall in one 30-minute block of u1
        *_views("u1", None, ["D", "E"], 14),
    ]
    rows = stream_rows(_silver(spark, events), PARAMS)
    params = CooccurrenceConfig(min_count=2, top_k=20, user_knn=True)
    out = item_cooccurrence(rows, params, PARAMS.session_gap_ms)
    # sessions: s1 {A,B,C}, s2 {A,B}, s3 {B,C}, u1's block {D,E}
    # pair counts: AB 2, BC 2, AC 1, DE 1 -> min_count 2 keeps AB and BC (both directions)
    # support: A 2, B 3, C 2 -> cosine AB = BC = 2 / sqrt(2 * 3)
    s = 2 / math.sqrt(6)
    # purchases per user: u1 {A,B}, u2 {A,B} -> AB 2, support A 2, B 2 -> cosine 2 / 2 = 1
    # engaged per user (kind user): u1 {A,B,C,D,E}, u2 {A,B}, u3 {B,C}: AB 2, BC 2, the other
    # pairs 1; support A 2, B 3, C 2 -> shrunk cosine 2 / (sqrt(6) + 200) (user_shrinkage 200)
    u = 2 / (math.sqrt(6) + 200)
    assertDataFrameEqual(
        out,
        [
            Row(kind="session", item_id="A", rank=1, other_item_id="B", count=2, score=s),
            Row(kind="session", item_id="B", rank=1, other_item_id="A", count=2, score=s),
            Row(kind="session", item_id="B", rank=2, other_item_id="C", count=2, score=s),
            Row(kind="session", item_id="C", rank=1, other_item_id="B", count=2, score=s),
            Row(kind="bought", item_id="A", rank=1, other_item_id="B", count=2, score=1.0),
            Row(kind="bought", item_id="B", rank=1, other_item_id="A", count=2, score=1.0),
            Row(kind="user", item_id="A", rank=1, other_item_id="B", count=2, score=u),
            Row(kind="user", item_id="B", rank=1, other_item_id="A", count=2, score=u),
            Row(kind="user", item_id="B", rank=2, other_item_id="C", count=2, score=u),
            Row(kind="user", item_id="C", rank=1, other_item_id="B", count=2, score=u),
        ],
    )


def test_item_knn_is_left_out_unless_configured(spark: SparkSession) -> None:
    events = [*_views("u1", "s1", ["A", "B"], 9), *_views("u2", "s2", ["A", "B"], 9)]
    rows = stream_rows(_silver(spark, events), PARAMS)
    out = item_cooccurrence(rows, CooccurrenceConfig(min_count=2), PARAMS.session_gap_ms)
    # the sessions give AB twice (kind session, both directions); no purchase, no kind user
    assert sorted((r.kind, r.item_id) for r in out.collect()) == [
        ("session", "A"),
        ("session", "B"),
    ]


def test_user_segments_rfm_rules(spark: SparkSession) -> None:
    from pyspark.sql import Row
    from pyspark.testing import assertDataFrameEqual

    def buy(eid: str, user: str, day: int, month: int, revenue: float):  # type: ignore[no-untyped-def]
        return ev(eid, "purchase", user, at(day, month=month), ["i"], order_id=eid, revenue=revenue)

    def view(eid: str, user: str, day: int, month: int):  # type: ignore[no-untyped-def]
        return ev(eid, "item_view", user, at(day, month=month), ["i"])

    events = [
        view("c0", "c", 1, 1),
        buy("c1", "c", 20, 3, 10.0),
        buy("c2", "c", 21, 3, 10.0),
        buy("c3", "c", 22, 3, 10.0),
        buy("l1", "l", 1, 2, 5.0),
        buy("l2", "l", 25, 3, 7.0),
        view("n1", "n", 28, 3),
        buy("r1", "r", 15, 1, 3.0),
        view("r2", "r", 20, 1),
        view("a1", "a", 1, 3),
        view("a2", "a", 10, 3),
        view("d1", "d", 5, 1),
        view("x1", "x", 2, 4),  # after the as-of time: not seen yet
        # w withdrew personalization consent after its only event: no segment
        view("w1", "w", 30, 3),
        ev("w2", "consent_update", "w", at(31), consent=NO_PERSONALIZATION),
    ]
    as_of = end_of_day_ms(at(31).date())  # 2013-03-31 23:59:59.999
    out = user_segments(_silver(spark, events), SegmentsConfig(), as_of)
    # events at noon; recency = whole days from the last event to 03-31 23:59:59.999,
    # age = whole days from the first; the "last 30 days" start after 03-01 23:59:59.999
    assertDataFrameEqual(
        out,
        [
            # 3 purchases in the last 30 days -> champion; first seen 01-01: 30+28+31 = 89 days
            Row(user="c", segment="champion", recency_days=9, frequency=3, purchases=3,
                recent_purchases=3, monetary=30.0, age_days=89),
            # 2 purchases, seen 6 days ago -> loyal
            Row(user="l", segment="loyal", recency_days=6, frequency=1, purchases=2,
                recent_purchases=1, monetary=12.0, age_days=58),
            Row(user="n", segment="new", recency_days=3, frequency=1, purchases=0,
                recent_purchases=0, monetary=0.0, age_days=3),
            # bought, last seen 01-20 (11 + 28 + 31 = 70 days) -> at risk
            Row(user="r", segment="at_risk", recency_days=70, frequency=0, purchases=1,
                recent_purchases=0, monetary=3.0, age_days=75),
            # 03-01 noon is outside the 30 days, 03-10 inside -> frequency 1; age 30 -> not new
            Row(user="a", segment="active", recency_days=21, frequency=1, purchases=0,
                recent_purchases=0, monetary=0.0, age_days=30),
            Row(user="d", segment="dormant", recency_days=85, frequency=0, purchases=0,
                recent_purchases=0, monetary=0.0, age_days=85),
        ],
    )  # fmt: skip


def test_experiment_metrics_per_variant(spark: SparkSession) -> None:
    from pyspark.sql import Row
    from pyspark.testing import assertDataFrameEqual

    def e(eid, etype, user, items, rec, **kw):  # type: ignore[no-untyped-def]
        return ev(eid, etype, user, at(5), items, recommendation_id=rec, **kw)

    events = [
        e("imp1", "impression", "u1", ["i1", "i2"], "e1:A:r1"),
        e("imp2", "impression", "u2", ["i1"], "e1:A:r2"),
        e("imp3", "impression", "u1", ["i3"], "e1:B:r3"),
        e("clk1", "rec_click", "u1", ["i1"], "e1:A:r1"),
        e("clk2", "click", "u2", ["i1"], "e1:A:r2"),
        e("cart1", "add_to_cart", "u2", ["i1"], "e1:A:r2"),
        e("buy1", "purchase", "u2", ["i1"], "e1:A:r2", order_id="o1", revenue=30.0),
        e("buy2", "purchase", "u3", ["i3"], "legacy-id", order_id="o2", revenue=5.0),
        ev("view", "item_view", "u1", at(5), ["i1"]),  # no recommendation id: not counted
    ]
    out = experiment_metrics(_silver(spark, events), r"^([^:]+):([^:]+):")
    d = at(5).date()
    assertDataFrameEqual(
        out,
        [
            # A: imp1 (2 items) + imp2 (1): 2 impressions, 3 items, 2 ids; clk1 + clk2 = 2
            # clicks; u1 and u2; ctr 2 / 2, conversion 1 / 2
            Row(event_date=d, experiment="e1", variant="A", impressions=2, items_shown=3,
                recommendations=2, clicks=2, add_to_carts=1, purchases=1, revenue=30.0,
                users=2, ctr=1.0, conversion_rate=0.5),
            Row(event_date=d, experiment="e1", variant="B", impressions=1, items_shown=1,
                recommendations=1, clicks=0, add_to_carts=0, purchases=0, revenue=0.0,
                users=1, ctr=0.0, conversion_rate=0.0),
            # an id that does not match the pattern counts under none/none; no impressions
            Row(event_date=d, experiment="none", variant="none", impressions=0, items_shown=0,
                recommendations=0, clicks=0, add_to_carts=0, purchases=1, revenue=5.0,
                users=1, ctr=None, conversion_rate=None),
        ],
    )  # fmt: skip


def test_popular_by_segment_and_overall(spark: SparkSession) -> None:
    from pyspark.testing import assertDataFrameEqual

    events = [
        ev("o", "item_view", "u1", at(1), ["i9"]),  # before `since`: not counted
        ev("a1", "item_view", "u1", at(3), ["i1"]),
        ev("a2", "item_view", "u1", at(3, 13), ["i1"]),
        ev("a3", "item_view", "u1", at(3, 14), ["i2"]),
        ev("b1", "item_view", "u2", at(3), ["i2"]),
        ev("c1", "item_view", "u3", at(3), ["i3"]),  # u3 has no segment: only in "all"
    ]
    rows = stream_rows(_silver(spark, events), PARAMS)
    segments = spark.createDataFrame([("u1", "a"), ("u2", "b")], "user STRING, segment STRING")
    since, as_of = end_of_day_ms(at(2).date()), end_of_day_ms(at(3).date())
    out = popular_by_segment(rows, segments, since, as_of, k=2)
    # a: i1 x2, i2 x1; b: i2 x1; all: i1 2, i2 2, i3 1 -> top 2, ties by id
    assertDataFrameEqual(
        out,
        [
            ("a", 1, "i1", 2),
            ("a", 2, "i2", 1),
            ("b", 1, "i2", 1),
            ("all", 1, "i1", 2),
            ("all", 2, "i2", 2),
        ],
    )


def test_user_features_assemble_the_speed_layer_aggregations(spark: SparkSession) -> None:
    from pyspark.sql import Row
    from pyspark.testing import assertDataFrameEqual

    day1, day8 = at(1), at(8)
    events = [
        ev("f1", "item_view", "u1", day1, ["i1"]),
        ev("f2", "rating", "u1", day8, ["i2"], rating=10.0),
        ev("f3", "dismiss", "u1", day8, ["i3"]),
    ]
    catalog = spark.createDataFrame(
        [("i1", ["Drama"]), ("i2", ["Drama"]), ("i3", ["Comedy"])],
        "item_id STRING, genres ARRAY<STRING>",
    )
    segments = spark.createDataFrame([("u1", "new")], "user STRING, segment STRING")
    rows = feature_rows(_silver(spark, events), catalog, PARAMS)
    out = user_features(rows, PARAMS, segments)
    t1 = int(day1.timestamp() * 1000)
    t8 = int(day8.timestamp() * 1000)
    # affinities as of u1's last event (day 8, 7 days = one half-life after day 1):
    # Drama = item_view 1.0 * 0.5 + rating 2.0 * (10 - 5) / 5 = 2.5; Comedy = dismiss -2.0
    # the latest session (30-minute gap) holds the two day-8 events and is named t<start ms>
    assertDataFrameEqual(
        out,
        [
            Row(
                user="u1",
                events=3,
                first_ms=t1,
                last_ms=t8,
                recent_items=["i2", "i1"],
                recent_types=["rating", "item_view"],
                affinities={"Drama": 2.5, "Comedy": -2.0},
                counters={"item_view": 1, "rating": 1, "dismiss": 1},
                session=Row(session_id=f"t{t8}", start_ms=t8, last_ms=t8, events=2),
                dismissed_items=["i3"],
                impressions_by_genre={},
                engagements_by_genre={"Drama": 1},
                ignored_genres=[],
                segment="new",
            )
        ],
    )


def test_user_features_honour_undos_which_are_no_examples(spark: SparkSession) -> None:
    from datetime import timedelta

    from pyspark.sql import Row
    from pyspark.testing import assertDataFrameEqual

    day1, day8 = at(1), at(8)
    events = [
        ev("g1", "item_view", "u1", day1, ["i1"]),
        ev("g2", "dismiss", "u1", day8, ["i3"]),
        ev("g3", "not_interested", "u1", day8, ["i4"]),
        # the user takes the dismissal of i3 back a minute later
        ev("g4", "undo_feedback", "u1", day8 + timedelta(minutes=1), ["i3"], reason="dismiss"),
    ]
    catalog = spark.createDataFrame(
        [("i1", ["Drama"]), ("i3", ["Comedy"]), ("i4", ["Horror"])],
        "item_id STRING, genres ARRAY<STRING>",
    )
    silver = _silver(spark, events)
    # The columns gold caches are enough (the run selects them before aggregating).
    rows = feature_rows(silver, catalog, PARAMS).select(*CACHED_ROW_COLUMNS)
    out = user_features(rows, PARAMS, None)
    t1 = int(day1.timestamp() * 1000)
    t8 = int(day8.timestamp() * 1000)
    # i3 was dismissed at t8 and undone at t8 + 1 min: only i4 is dismissed. The undo is no
    # event of the user's activity (events 3, last at t8, no counter, not in the session) and
    # weighs nothing; the dismissal's weight stays (Comedy -2, Horror -3); Drama: the view of
    # day 1, one half-life (7 days) before t8: 0.5.
    assertDataFrameEqual(
        out,
        [
            Row(
                user="u1",
                events=3,
                first_ms=t1,
                last_ms=t8,
                recent_items=["i1"],
                recent_types=["item_view"],
                affinities={"Comedy": -2.0, "Drama": 0.5, "Horror": -3.0},
                counters={"dismiss": 1, "item_view": 1, "not_interested": 1},
                session=Row(session_id=f"t{t8}", start_ms=t8, last_ms=t8, events=2),
                dismissed_items=["i4"],
                impressions_by_genre={},
                engagements_by_genre={"Drama": 1},
                ignored_genres=[],
                segment=None,
            )
        ],
    )
    # Models never see the undo.
    examples = training_examples(silver, None)
    assert sorted(r["event_type"] for r in examples.collect()) == [
        "dismiss",
        "item_view",
        "not_interested",
    ]
