"""Calibration of a list to the user's genre mix (``api.rules.calibration``), on hand-made lists
whose every choice is worked out in the comments, and the served pipeline's offline tastes."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from attune.config import RulesConfig
from attune.rules import Candidate, Exclusions, apply_rules, calibrate
from models.pipeline import genre_tastes

CATS = {"a": ["Action"], "b": ["Action"], "c": ["Drama"], "d": ["Drama"], "n": []}


def cats(item: str) -> list[str]:
    return CATS.get(item, [])


def ranked(*pairs: tuple[str, float | None]) -> list[Candidate]:
    return [Candidate(i, s, "retrieval") for i, s in pairs]


def ids(cands: list[Candidate]) -> list[str]:
    return [c.item_id for c in cands]


ABC = ranked(("a", 1.0), ("b", 0.9), ("c", 0.5))
EVEN = {"Action": 1.0, "Drama": 1.0}

# p = (0.5, 0.5). Relevance over the window: a 1, b (0.9 - 0.5) / 0.5 = 0.8, c 0.
# A one-genre list q = (1, 0) smoothed: (0.995, 0.005), so
# KL = 0.5 ln(0.5 / 0.995) + 0.5 ln(0.5 / 0.005) = -0.34407 + 2.30259 = 1.95852;
# a balanced list (0.5, 0.5): KL 0.
KL_ONE = 0.5 * math.log(0.5 / 0.995) + 0.5 * math.log(0.5 / 0.005)


def test_the_hand_worked_kl() -> None:
    assert math.isclose(KL_ONE, 1.95852, abs_tol=1e-5)


def test_first_place_goes_to_the_best_when_every_item_is_as_far_from_the_mix() -> None:
    # step 1: every single-genre list has KL_ONE, so the best relevance wins: a
    for w in (0.1, 0.5, 0.9):
        assert ids(calibrate(ABC, 1, EVEN, cats, w, depth=10))[0] == "a"


def test_second_place_turns_to_the_missing_genre_above_the_hand_worked_weight() -> None:
    # step 2 after a: b gives (1 - w) 0.8 - w KL_ONE, c gives (1 - w) 0 - w 0 = 0;
    # b wins while w < 0.8 / (0.8 + KL_ONE) = 0.29001
    crossover = 0.8 / (0.8 + KL_ONE)
    assert math.isclose(crossover, 0.29001, abs_tol=1e-5)
    assert ids(calibrate(ABC, 2, EVEN, cats, 0.25, depth=10)) == ["a", "b", "c"]
    assert ids(calibrate(ABC, 2, EVEN, cats, 0.35, depth=10)) == ["a", "c", "b"]


def test_users_with_other_tastes_get_other_lists_from_the_same_ranking() -> None:
    items = ranked(("a", 4.0), ("b", 3.0), ("c", 2.0), ("d", 1.0))
    rules = RulesConfig(max_per_category=0, calibration=0.5)
    action = apply_rules(items, 2, Exclusions(), cats, rules, tastes={"Action": 1.0})
    drama = apply_rules(items, 2, Exclusions(), cats, rules, tastes={"Drama": 3.0})
    # relevance a 1, b 2/3, c 1/3, d 0. The Action fan: a then b (both fit the mix exactly
    # and lead in relevance). The Drama fan, step 1: a 0.5 * 1 - 0.5 ln(1 / 0.01) = -1.80,
    # b 0.333 - 1.151 = -0.82, c 0.5 / 3 - 0 = 0.167, d 0 -> c; step 2 (q_Drama 1/2 with an
    # Action item, smoothed 0.505): a 0.5 - 0.5 ln(1 / 0.505) = 0.158, b 0.333 - 0.342 =
    # -0.008, d 0 - 0 = 0 -> a
    assert ids(action) == ["a", "b"]
    assert ids(drama) == ["c", "a"]


def test_off_without_weight_or_positive_tastes_and_only_within_the_depth() -> None:
    items = ranked(("a", 4.0), ("b", 3.0), ("c", 2.0), ("d", 1.0))
    assert calibrate(items, 4, {"Drama": 1.0}, cats, 0.0, depth=10) == items
    assert calibrate(items, 4, {"Drama": -1.0}, cats, 0.9, depth=10) == items
    no_rules = RulesConfig(max_per_category=0)
    assert ids(apply_rules(items, 4, Exclusions(), cats, no_rules, tastes={"Drama": 1.0})) == [
        "a",
        "b",
        "c",
        "d",
    ]
    # depth 2: only a and b may move (the Drama fan has no Drama item among them), c and d
    # follow in their order
    assert ids(calibrate(items, 4, {"Drama": 1.0}, cats, 0.9, depth=2)) == ["a", "b", "c", "d"]


def test_an_item_without_genres_and_an_unscored_item_count_as_no_mix_and_no_relevance() -> None:
    items = ranked(("n", 5.0), ("a", 4.0), ("c", None))
    # relevance: n 1, a 0 (the lowest score), c 0 (no score). The Drama fan, w 0.5:
    # step 1: n 0.5 - 0.5 ln(1 / 0.01) = -1.80 (no genre: q_Drama 0, smoothed 0.01);
    #         a 0 - 0.5 ln(1 / 0.01) = -2.30; c 0 - 0 = 0 -> c
    # step 2: with c in, either item makes q_Drama 1 / 2 (smoothed 0.505, KL 0.683):
    #         n 0.5 - 0.342 = 0.158, a 0 - 0.342 -> n
    assert ids(calibrate(items, 2, {"Drama": 1.0}, cats, 0.5, depth=10)) == ["c", "n", "a"]


def test_offline_tastes_decay_and_weigh_like_the_online_store() -> None:
    day = 86_400
    interactions = pd.DataFrame(
        {
            "user_id": ["u", "u", "u", "v"],
            "item_id": ["x", "y", "z", "z"],
            "event_type": ["rating", "rating", "item_view", "item_view"],
            "rating": [10.0, 4.0, np.nan, np.nan],
            "timestamp": pd.to_datetime([0, 7 * day, 7 * day, 0], unit="s", utc=True),
        }
    )
    genres = {"x": ("Action", "Drama"), "y": ("Comedy",), "z": ("Action",)}
    weights = {"rating": 2.0, "item_view": 1.0}
    tastes = genre_tastes(
        interactions, np.array(["u", "v", "w"]), genres.__getitem__, weights, 5.0, 7.0 * day
    )
    # u: the 10 weighs 2 (10 - 5) / 5 = 2, a half-life before u's latest: 1 to Action and to
    # Drama; the 4 weighs 2 (4 - 5) / 5 = -0.4 to Comedy; the view 1 to Action
    assert tastes[0] == {"Action": 2.0, "Drama": 1.0, "Comedy": -0.4}
    assert tastes[1] == {"Action": 1.0}
    assert tastes[2] == {}
