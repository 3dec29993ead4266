"""Raw model features: recent-item sequences, point-in-time popularity, time features."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models.features import last_items, recent_item_sequences
from tests.unit.models.conftest import frame


def _rows() -> pd.DataFrame:
    # user a: x (t1), y (t2), x again (t3), an impression of w (t4), z (t5); user b: y (t2.5)
    df = frame(
        [
            ("a", "x", 8.0, 1),
            ("a", "y", 8.0, 2),
            ("b", "y", 5.0, 3),
            ("a", "x", 9.0, 4),
            ("a", "w", None, 5),
            ("a", "z", 8.0, 6),
        ]
    )
    df.loc[df["item_id"] == "w", "event_type"] = "impression"
    return df


def test_sequences_are_distinct_most_recent_first_and_exclude_the_row() -> None:
    seq = recent_item_sequences(_rows(), 2)
    # before each row (impressions never enter a sequence; x moves to the front when seen
    # again; the row's own item is not in its sequence):
    assert seq.tolist() == [
        ["", ""],  # a@1: nothing yet
        ["x", ""],  # a@2
        ["", ""],  # b@3: b has no history
        ["y", "x"],  # a@4
        ["x", "y"],  # a@5 (impression of w)
        ["x", "y"],  # a@6
    ]


def test_last_items_is_what_the_online_store_would_hold() -> None:
    out = last_items(_rows(), np.array(["a", "b", "nobody"], dtype=object), 2)
    assert out.tolist() == [["z", "x"], ["y", ""], ["", ""]]


def test_decayed_counts_by_hand() -> None:
    from models.encoders import decayed_counts

    day = 86_400
    events_items = np.array([0, 0, 1])
    events_times = np.array([0, day, 5 * day])
    queries_items = np.array([0, 0, 1, 2])
    queries_times = np.array([2 * day, day, 5 * day, 3 * day])
    got = decayed_counts(events_items, events_times, queries_items, queries_times, 1.0, 3)
    # item 0 at day 2: 0.5^2 + 0.5^1 = 0.75; at day 1 only the day-0 event is strictly before:
    # 0.5; item 1 at the time of its only event: 0; item 2 has no events: 0.
    assert got == pytest.approx([0.75, 0.5, 0.0, 0.0])


def test_hour_and_weekday() -> None:
    from models.encoders import hour_and_weekday

    # 1970-01-01 00:00 UTC was a Thursday (Monday = 0 -> 3);
    # 1362062307 = 2013-02-28 14:38:27 UTC, also a Thursday.
    hour, weekday = hour_and_weekday(np.array([0, 1362062307], dtype=np.int64))
    assert hour.numpy().tolist() == [0, 14]
    assert weekday.numpy().tolist() == [3, 3]


def test_recent_times_are_the_latest_interaction_strictly_before_each_row() -> None:
    from models.features import recent_item_history

    items, times = recent_item_history(_rows(), 2)
    assert items.tolist() == recent_item_sequences(_rows(), 2).tolist()
    # the rows' times are 1..6 s; each slot holds the time of that item's latest interaction
    # before the row (x seen at 1 then at 4: 4 from a@5 on; the impression at 5 never counts;
    # a row's own time never appears in its features):
    assert times.dtype == np.int64
    assert times.tolist() == [
        [0, 0],  # a@1: padding
        [1, 0],  # a@2: x@1
        [0, 0],  # b@3
        [2, 1],  # a@4: y@2, x@1
        [4, 2],  # a@5: x@4, y@2
        [4, 2],  # a@6: x@4, y@2 (w was an impression)
    ]


def test_last_history_times_line_up_with_the_items() -> None:
    from models.features import last_history

    users = np.array(["a", "b", "nobody"], dtype=object)
    items, times = last_history(_rows(), users, 2)
    # a: z@6, x@4 (x's latest); b: y@3; nobody: padding
    assert items.tolist() == [["z", "x"], ["y", ""], ["", ""]]
    assert times.tolist() == [[6, 4], [3, 0], [0, 0]]


def test_query_features_carry_recent_times() -> None:
    from models.features import QUERY_FEATURES, example_query_features

    feats = example_query_features(_rows(), 2)
    assert set(feats) == set(QUERY_FEATURES)
    assert feats["recent_times"].tolist()[3] == [2, 1]  # a@4, as above
    assert feats["request_time"].tolist() == [1, 2, 3, 4, 5, 6]
