"""Precomputed recommendations (the views' key names: tests/unit/test_keys.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from spark.views import recommendations

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


def test_recommendations_sum_neighbour_scores_and_skip_seen_items(spark: SparkSession) -> None:
    from pyspark.testing import assertDataFrameEqual

    features = spark.createDataFrame(
        [("u1", ["a", "b"], ["x"]), ("u2", ["z"], [])],
        "user STRING, recent_items ARRAY<STRING>, dismissed_items ARRAY<STRING>",
    )
    similar = spark.createDataFrame(
        [("a", "c", 0.5), ("a", "b", 0.9), ("a", "x", 0.8), ("b", "c", 0.4), ("b", "d", 0.3)],
        "item_id STRING, other_item_id STRING, score DOUBLE",
    )
    # seeds of u1: a (rank 1, weight 1), b (rank 2, weight 1/2)
    # c = 1 * 0.5 + 0.5 * 0.4 = 0.7; d = 0.5 * 0.3 = 0.15; b was seen, x dismissed
    # u2's only item has no neighbours: no recommendations
    assertDataFrameEqual(
        recommendations(features, similar, seed_items=10, k=20),
        [("u1", 1, "c", 0.7), ("u1", 2, "d", 0.15)],
    )
    # k = 1 keeps the best only; seed_items = 1 uses a alone (c = 0.5)
    assertDataFrameEqual(
        recommendations(features, similar, seed_items=1, k=1), [("u1", 1, "c", 0.5)]
    )
