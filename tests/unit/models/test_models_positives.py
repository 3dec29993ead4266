"""Which interactions are relevant by default: hand-made CSV files of each kind of feedback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.data import DataError, choose_positives, load_csv, positive_mask


def _csv(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# Five ratings on a 1-5 star scale, columns named as a shop would (mapped with --columns).
STARS = """customer,sku,stars,ts
a,p1,5,1700000000
a,p2,1,1700000100
b,p1,3,1700000200
b,p3,2,1700000300
c,p2,4,1700000400
"""

# Clicks and purchases, no rating column at all.
EVENTS = """user_id,item_id,timestamp,event_type
a,p1,2024-01-01T10:00:00Z,click
a,p2,2024-01-01T10:01:00Z,purchase
b,p1,2024-01-01T10:02:00Z,item_view
b,p3,2024-01-01T10:03:00Z,impression
"""

# MovieTweetings-like 0-10 ratings.
TEN = """user_id,item_id,rating,timestamp
a,m1,0,1
a,m2,7,2
b,m1,10,3
b,m2,6,4
"""


def test_small_scale_every_rating_is_relevant(tmp_path: Path) -> None:
    data = load_csv(
        _csv(tmp_path, "stars.csv", STARS),
        columns={"user_id": "customer", "item_id": "sku", "rating": "stars", "timestamp": "ts"},
    )
    rule = choose_positives(data.interactions, None)
    # ratings 1..5: top 5 <= 5, a small scale -> threshold = the smallest rating, 1
    assert (rule.threshold, rule.source, rule.feedback) == (1.0, "auto", "explicit")
    assert (rule.rating_min, rule.rating_max) == (1.0, 5.0)
    assert "every rating is relevant" in rule.reason
    # all five rows are relevant, including the 1-star one
    assert positive_mask(data.interactions, rule.threshold).tolist() == [True] * 5


def test_small_scale_threshold_given_is_kept(tmp_path: Path) -> None:
    data = load_csv(
        _csv(tmp_path, "stars.csv", STARS),
        columns={"user_id": "customer", "item_id": "sku", "rating": "stars", "timestamp": "ts"},
    )
    rule = choose_positives(data.interactions, 4.0)
    assert (rule.threshold, rule.source) == (4.0, "option")
    assert "--positive-threshold" in rule.reason
    # in time order the stars are 5, 1, 3, 2, 4: relevant are the 5 and the 4
    assert positive_mask(data.interactions, rule.threshold).tolist() == [
        True,
        False,
        False,
        False,
        True,
    ]


def test_threshold_above_every_rating_says_how_to_fix(tmp_path: Path) -> None:
    data = load_csv(
        _csv(tmp_path, "stars.csv", STARS),
        columns={"user_id": "customer", "item_id": "sku", "rating": "stars", "timestamp": "ts"},
    )
    with pytest.raises(DataError, match="between 1 and 5"):
        choose_positives(data.interactions, 7.0, "config")


def test_implicit_events_every_interaction_is_relevant(tmp_path: Path) -> None:
    data = load_csv(_csv(tmp_path, "events.csv", EVENTS))
    rule = choose_positives(data.interactions, None)
    assert (rule.source, rule.feedback, rule.rating_min, rule.rating_max) == (
        "auto",
        "implicit",
        None,
        None,
    )
    assert "every interaction event is relevant" in rule.reason
    # click, purchase, item_view are interactions; the impression is not
    assert positive_mask(data.interactions, rule.threshold).tolist() == [True, True, True, False]


def test_implicit_events_ignore_a_configured_threshold(tmp_path: Path) -> None:
    data = load_csv(_csv(tmp_path, "events.csv", EVENTS))
    rule = choose_positives(data.interactions, 7.0, "config")
    assert rule.feedback == "implicit"
    assert "applies to ratings only" in rule.reason
    assert positive_mask(data.interactions, rule.threshold).tolist() == [True, True, True, False]


def test_wide_scale_keeps_the_movietweetings_convention(tmp_path: Path) -> None:
    data = load_csv(_csv(tmp_path, "ten.csv", TEN))
    rule = choose_positives(data.interactions, None)
    # top 10 > 5: 0.7 x 10 = 7
    assert (rule.threshold, rule.feedback) == (7.0, "explicit")
    # ratings in time order 0, 7, 10, 6: relevant are 7 and 10
    assert positive_mask(data.interactions, rule.threshold).tolist() == [False, True, True, False]


def test_binary_label_one_is_relevant(tmp_path: Path) -> None:
    text = "user_id,item_id,rating,timestamp\na,x,1,1\na,y,0,2\nb,x,1,3\n"
    data = load_csv(_csv(tmp_path, "likes.csv", text))
    rule = choose_positives(data.interactions, None)
    assert rule.threshold == 1.0
    assert positive_mask(data.interactions, rule.threshold).tolist() == [True, False, True]


def test_mixed_feedback_rates_rated_pairs_and_counts_the_rest(tmp_path: Path) -> None:
    text = (
        "user_id,item_id,rating,timestamp,event_type\n"
        "a,x,2,1,rating\n"
        "a,y,,2,click\n"
        "b,x,5,3,rating\n"
    )
    data = load_csv(_csv(tmp_path, "mixed.csv", text))
    rule = choose_positives(data.interactions, None)
    # ratings 2 and 5 (top 5: small scale) -> threshold 2; the click counts as implicit
    assert (rule.threshold, rule.feedback) == (2.0, "mixed")
    assert "events without a rating" in rule.reason
    assert np.asarray(positive_mask(data.interactions, rule.threshold)).tolist() == [
        True,
        True,
        True,
    ]


def test_movietweetings_mini_keeps_seven(mini_dir: Path) -> None:
    data = load_csv(mini_dir / "ratings.csv")
    rule = choose_positives(data.interactions, None)
    # the mini subset's ratings run 1..10 (checked with sort | uniq on the file): 0.7 x 10 = 7
    assert (rule.threshold, rule.rating_min, rule.rating_max) == (7.0, 1.0, 10.0)
