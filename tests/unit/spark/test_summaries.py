"""The notebooks' summaries; every expected value is worked out by hand in a comment."""

from __future__ import annotations

from datetime import date
from typing import TYPE_CHECKING

import pytest

from spark.experiments import ExperimentResult, Totals, VariantResult
from spark.summaries import (
    compare_ctr,
    compare_report,
    events_per_day,
    long_tail,
    newcombe_interval,
    top_share,
    wilson_interval,
)

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

D1, D2 = date(2013, 3, 4), date(2013, 3, 5)


# ----------------------------------------------------------------------------------------
# Intervals (no Spark)


def test_wilson_interval_by_hand() -> None:
    # z = 2 keeps the arithmetic short: z² = 4.
    # 5 of 10: p = 0.5; center = (0.5 + 4/20) / (1 + 4/10) = 0.7 / 1.4 = 0.5;
    # margin = 2·sqrt(0.25/10 + 4/400) / 1.4 = 2·sqrt(0.035) / 1.4 = 0.267261
    low, high = wilson_interval(5, 10, z=2) or (None, None)
    assert low == pytest.approx(0.232739, abs=1e-6)
    assert high == pytest.approx(0.767261, abs=1e-6)
    # 0 of 10: center = 0.2 / 1.4 = 1/7, margin = 2·sqrt(4/400) / 1.4 = 1/7 -> [0, 2/7]
    assert wilson_interval(0, 10, z=2) == pytest.approx((0.0, 2 / 7))
    # 10 of 10: the mirror image -> [5/7, 1]
    assert wilson_interval(10, 10, z=2) == pytest.approx((5 / 7, 1.0))


def test_wilson_interval_defaults_to_95_percent() -> None:
    # 0 of n: the upper bound is z² / (n + z²); z = 1.959964, z² = 3.841459 -> 3.841459 / 99.841459
    assert wilson_interval(0, 96) == pytest.approx((0.0, 0.038476), abs=1e-6)


def test_wilson_interval_edge_cases() -> None:
    assert wilson_interval(0, 0) is None
    with pytest.raises(ValueError, match="successes <= trials"):
        wilson_interval(3, 2)
    with pytest.raises(ValueError, match="negative"):
        wilson_interval(-1, 2)


def test_newcombe_interval_by_hand() -> None:
    # 10 of 10 vs 5 of 10, z = 2: d = 1 - 0.5 = 0.5; Wilson intervals [5/7, 1] and
    # [0.232739, 0.767261] (above).
    # low  = 0.5 - sqrt((1 - 5/7)² + (0.767261 - 0.5)²) = 0.5 - sqrt(0.081633 + 0.071429)
    #      = 0.5 - 0.391230 = 0.108770
    # high = 0.5 + sqrt((1 - 1)² + (0.5 - 0.232739)²) = 0.5 + 0.267261 = 0.767261
    low, high = newcombe_interval(10, 10, 5, 10, z=2) or (None, None)
    assert low == pytest.approx(0.108770, abs=1e-6)
    assert high == pytest.approx(0.767261, abs=1e-6)
    assert newcombe_interval(1, 2, 0, 0) is None


def test_compare_ctr_against_the_baseline() -> None:
    totals = [
        {"experiment": "e", "variant": "treat", "impressions": 10, "clicks": 10},
        {"experiment": "e", "variant": "control", "impressions": 10, "clicks": 5},
        # no 'control': the first variant alphabetically ('a') is the baseline
        {"experiment": "other", "variant": "b", "impressions": 4, "clicks": 6},
        {"experiment": "other", "variant": "a", "impressions": 0, "clicks": 0},
    ]
    rows = [r.as_dict() for r in compare_ctr(totals, z=2)]
    assert [(r["experiment"], r["variant"], r["baseline"]) for r in rows] == [
        ("e", "control", "control"),
        ("e", "treat", "control"),
        ("other", "a", "a"),
        ("other", "b", "a"),
    ]
    control, treat, a, b = rows
    # control: 5/10, its Wilson interval (above); it is its own baseline: difference 0
    assert control["ctr"] == 0.5
    assert (control["ctr_low"], control["ctr_high"]) == pytest.approx((0.232739, 0.767261), 1e-5)
    assert (control["difference"], control["relative_lift"]) == (0.0, 0.0)
    assert control["difference_low"] is None
    # treat: 10/10, [5/7, 1]; +0.5 over control, Newcombe [0.108770, 0.767261]; lift 0.5/0.5
    assert treat["ctr"] == 1.0
    assert (treat["ctr_low"], treat["ctr_high"]) == pytest.approx((5 / 7, 1.0))
    assert treat["difference"] == 0.5
    assert (treat["difference_low"], treat["difference_high"]) == pytest.approx(
        (0.108770, 0.767261), abs=1e-6
    )
    assert treat["relative_lift"] == 1.0
    # a: no impressions, no rate; b: 6 clicks on 4 impressions is a rate but no proportion
    assert (a["ctr"], a["ctr_low"], a["difference"]) == (None, None, None)
    assert (b["ctr"], b["ctr_low"], b["ctr_high"]) == (1.5, None, None)
    assert (b["difference"], b["difference_low"], b["relative_lift"]) == (None, None, None)


def test_compare_report_reads_the_scope_asked_for() -> None:
    results = [
        ExperimentResult(
            "e",
            D1,
            [
                VariantResult(
                    "control", Totals(impressions=4, clicks=0), Totals(impressions=10, clicks=5)
                ),
                VariantResult(
                    "treat", Totals(impressions=4, clicks=4), Totals(impressions=10, clicks=10)
                ),
            ],
        )
    ]
    # cumulative: 5/10 and 10/10, as in test_compare_ctr_against_the_baseline (z = 2)
    cumulative = [r.as_dict() for r in compare_report(results, z=2)]
    assert [(r["variant"], r["impressions"], r["clicks"]) for r in cumulative] == [
        ("control", 10, 5),
        ("treat", 10, 10),
    ]
    assert (cumulative[1]["difference_low"], cumulative[1]["difference_high"]) == pytest.approx(
        (0.108770, 0.767261), abs=1e-6
    )
    # the day: 0/4 and 4/4; difference 1 (relative lift undefined: the baseline's CTR is 0)
    day = [r.as_dict() for r in compare_report(results, z=2, scope="day")]
    assert [(r["variant"], r["ctr"], r["difference"], r["relative_lift"]) for r in day] == [
        ("control", 0.0, 0.0, None),
        ("treat", 1.0, 1.0, None),
    ]


# ----------------------------------------------------------------------------------------
# Spark summaries


def test_events_per_day(spark: SparkSession) -> None:
    from pyspark.testing import assertDataFrameEqual

    events = spark.createDataFrame(
        [(D1, "item_view"), (D1, "item_view"), (D1, "click"), (D2, "item_view")],
        "event_date DATE, type STRING",
    )
    assertDataFrameEqual(
        events_per_day(events),
        [(D1, "click", 1), (D1, "item_view", 2), (D2, "item_view", 1)],
        checkRowOrder=True,
    )
    examples = events.withColumnRenamed("type", "event_type")
    assert events_per_day(examples, by="event_type").columns == [
        "event_date",
        "event_type",
        "events",
    ]


def test_long_tail_counts_rows_and_ranks_ties_by_value(spark: SparkSession) -> None:
    from pyspark.testing import assertDataFrameEqual

    rows = [("a",)] * 3 + [("c",)] * 2 + [("b",), ("d",)]
    tail = long_tail(spark.createDataFrame(rows, "item_id STRING"), "item_id")
    # 7 rows over 4 items: a 3, c 2, b 1, d 1 (b before d: same count, ordered by value);
    # rank_share = rank / 4; cumulative: 3/7, 5/7, 6/7, 7/7
    assertDataFrameEqual(
        tail,
        [
            (1, "a", 3, 0.25, 3 / 7),
            (2, "c", 2, 0.5, 5 / 7),
            (3, "b", 1, 0.75, 6 / 7),
            (4, "d", 1, 1.0, 1.0),
        ],
        checkRowOrder=True,
    )
    # the top half of the items (a, c) hold 5 of the 7 rows; the top 10% is at least a
    assert top_share(tail, 0.5) == pytest.approx(5 / 7)
    assert top_share(tail, 0.1) == pytest.approx(3 / 7)
    with pytest.raises(ValueError, match="in \\(0, 1\\]"):
        top_share(tail, 0)


def test_long_tail_of_a_count_column(spark: SparkSession) -> None:
    from pyspark.testing import assertDataFrameEqual

    users = spark.createDataFrame([("u2", 3), ("u1", 5)], "user STRING, events INT")
    # 8 events: u1 5 (5/8), then u2 (8/8)
    assertDataFrameEqual(
        long_tail(users, "user", count="events"),
        [(1, "u1", 5, 0.5, 5 / 8), (2, "u2", 3, 1.0, 1.0)],
        checkRowOrder=True,
    )
