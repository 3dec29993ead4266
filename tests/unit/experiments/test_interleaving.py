"""Team-draft interleaving: the merge, the credit rule and the preference test."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from scipy import stats

from attune.experiments.interleaving import (
    TIE,
    UserTally,
    analyse_impressions,
    analyse_tallies,
    coin,
    credit_clicks,
    impression_winner,
    outcomes_from_credit,
    preference_t_tests,
    preference_test,
    team_draft,
    team_draft_with_coins,
    user_shares,
)

A = ["m1", "m2", "m3", "m4"]
B = ["m3", "m1", "m5", "m6"]

# ----------------------------------------------------------------------------------------
# Coins


def test_coins_are_the_bits_of_sha256() -> None:
    # `printf 'team-draft:r1:0' | sha256sum` starts with 7e: 0111 1110, least significant bit
    # first -> rounds 0..7 get 0 1 1 1 1 1 1 0.
    assert [coin("r1", r) for r in range(8)] == [0, 1, 1, 1, 1, 1, 1, 0]
    # `printf 'team-draft:s2:0' | sha256sum` starts with c5: 1100 0101 -> 1 0 1 0 0 0 1 1.
    assert [coin("s2", r) for r in range(8)] == [1, 0, 1, 0, 0, 0, 1, 1]
    # An int seed is its decimal text: `printf 'team-draft:7:0' | sha256sum` starts with 5e.
    assert [coin(7, r) for r in range(4)] == [0, 1, 1, 1]
    # Round 256 is bit 0 of the next block (`printf 'team-draft:r1:1' | sha256sum`).
    assert coin("r1", 256) in (0, 1)
    with pytest.raises(ValueError, match="round_index"):
        coin("r1", -1)


# ----------------------------------------------------------------------------------------
# The merge, worked by hand


def test_team_draft_seed_r1() -> None:
    # Coins of r1: 0 1 1 ... (above).
    # round 0, coin 0: a first -> m1 (a); b's best new is m3 -> m3 (b)
    # round 1, coin 1: b first -> m3, m1 taken -> m5 (b); a: m1 taken -> m2 (a)
    # round 2, coin 1: b first -> m6 (b); a: m3 taken -> m4 (a); 6 items = k
    assert team_draft(A, B, 6, "r1") == [
        ("m1", "a"),
        ("m3", "b"),
        ("m5", "b"),
        ("m2", "a"),
        ("m6", "b"),
        ("m4", "a"),
    ]


def test_team_draft_seed_s2_and_team_names() -> None:
    # Coins of s2: 1 0 1 ...
    # round 0, coin 1: b first -> m3 (b); a -> m1 (a)
    # round 1, coin 0: a first -> m2 (a); b: m3, m1 taken -> m5 (b)
    # round 2, coin 1: b first -> m6 (b); a: m3 taken -> m4 (a)
    got = team_draft(A, B, 6, "s2", teams=("control", "ranker2"))
    assert got == [
        ("m3", "ranker2"),
        ("m1", "control"),
        ("m2", "control"),
        ("m5", "ranker2"),
        ("m6", "ranker2"),
        ("m4", "control"),
    ]


def test_an_item_both_want_goes_to_the_team_whose_turn_it_is() -> None:
    # Both rank x first. Coin 0: a picks x, b's x is taken so b takes z. Coin 1: the reverse.
    assert team_draft_with_coins(["x", "y"], ["x", "z"], 2, [0]) == [("x", "a"), ("z", "b")]
    assert team_draft_with_coins(["x", "y"], ["x", "z"], 2, [1]) == [("x", "b"), ("y", "a")]


def test_identical_rankings_split_by_the_coins() -> None:
    # Coins 0, 1: round 0 a then b, round 1 b then a; each takes the next item of the list.
    got = team_draft_with_coins(["p", "q", "r", "s"], ["p", "q", "r", "s"], 4, [0, 1])
    assert got == [("p", "a"), ("q", "b"), ("r", "b"), ("s", "a")]


def test_the_list_ends_when_one_ranker_has_nothing_new() -> None:
    # a has one item: round 0 (coin 0) a -> m1, b -> m2; then a has nothing new: stop at 2.
    assert team_draft_with_coins(["m1"], ["m2", "m3", "m4"], 4, [0, 0]) == [
        ("m1", "a"),
        ("m2", "b"),
    ]
    # a's only item is b's first too: a takes it (coin 0), b takes m3; a is exhausted.
    assert team_draft_with_coins(["m2"], ["m2", "m3"], 4, [0, 0]) == [("m2", "a"), ("m3", "b")]
    assert team_draft(["m1"], [], 3, "r1") == []
    assert team_draft(A, B, 0, "r1") == []


def test_repeated_items_within_a_ranking_count_once() -> None:
    assert team_draft_with_coins(["m1", "m1", "m2"], ["m3", "m3"], 4, [0, 0]) == [
        ("m1", "a"),
        ("m3", "b"),
    ]


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="k must be"):
        team_draft(A, B, -1, "r1")
    with pytest.raises(ValueError, match="different names"):
        team_draft(A, B, 2, "r1", teams=("x", "x"))


def test_the_same_seed_gives_the_same_list() -> None:
    rid = "ranking_v1:interleaved:0123456789abcdefghij"
    assert team_draft(A, B, 6, rid) == team_draft(list(A), list(B), 6, rid)


# ----------------------------------------------------------------------------------------
# Properties, over many random rankings and seeds


def _random_rankings(rng: random.Random) -> tuple[list[str], list[str], int]:
    pool = [f"i{n}" for n in range(rng.randint(0, 30))]
    a = rng.sample(pool, rng.randint(0, len(pool)))
    b = rng.sample(pool, rng.randint(0, len(pool)))
    # a few repeats within one ranking, which must count once
    if a and rng.random() < 0.3:
        a.insert(rng.randrange(len(a) + 1), rng.choice(a))
    return a, b, rng.randint(0, 25)


def test_properties_of_the_merge() -> None:
    rng = random.Random(20081026)
    for case in range(2000):
        a, b, k = _random_rankings(rng)
        seed = f"case{case}"
        got = team_draft(a, b, k, seed)
        items = [i for i, _ in got]
        assert len(items) == len(set(items)), (a, b, k, seed)  # no duplicates
        assert len(got) <= k
        for n in range(len(got) + 1):  # every prefix is balanced
            prefix = [t for _, t in got[:n]]
            assert abs(prefix.count("a") - prefix.count("b")) <= 1, (a, b, k, seed)
        for item, team in got:  # every item comes from the ranker of its team
            assert item in (a if team == "a" else b)
        # each team's items appear in its ranker's order
        for team, ranking in (("a", a), ("b", b)):
            mine = [i for i, t in got if t == team]
            assert mine == sorted(mine, key=ranking.index)
        # with k distinct items from each ranker, the list is full
        if len(set(a)) >= k and len(set(b)) >= k:
            assert len(got) == k
        assert team_draft(a, b, k, seed) == got  # deterministic


def test_the_coins_are_fair() -> None:
    # 4000 seeds, round 0: the first team should pick first about half the time
    # (binomial sd = sqrt(4000 / 4) = 31.6; 5 sd = 158).
    firsts = sum(coin(f"rec{n}", 0) == 0 for n in range(4000))
    assert abs(firsts - 2000) < 158


# ----------------------------------------------------------------------------------------
# Credit


SHOWN = [("m1", "a"), ("m3", "b"), ("m5", "b"), ("m2", "a")]


def test_credit_rule() -> None:
    # m3 and m5 are b's (m3 clicked twice: counts once); m9 was not shown: ignored.
    assert credit_clicks(SHOWN, ["m3", "m5", "m3", "m9"]) == {"a": 0, "b": 2}
    assert impression_winner(SHOWN, ["m3", "m5", "m3", "m9"]) == "b"
    assert impression_winner(SHOWN, ["m1"]) == "a"
    assert impression_winner(SHOWN, ["m1", "m3"]) == TIE
    assert impression_winner(SHOWN, []) is None
    assert impression_winner(SHOWN, ["m9"]) is None
    with pytest.raises(ValueError, match="team"):
        credit_clicks([("m1", "c")], ["m1"])


def test_vectorized_outcomes_and_shares() -> None:
    assert outcomes_from_credit([0, 2, 1, 0], [1, 1, 1, 0]).tolist() == [1, -1, 0, 0]
    got = user_shares([1, 0, 0, 2], [3, 2, 0, 2])
    # 3/4, 2/2, no decided impression, 2/4
    assert got[0] == 0.75 and got[1] == 1.0 and math.isnan(got[2]) and got[3] == 0.5


def test_tallies_per_user() -> None:
    impressions = [
        ("u1", SHOWN, ["m3"]),  # b
        ("u1", SHOWN, ["m1", "m3"]),  # tie
        ("u1", SHOWN, []),  # undecided
        ("u2", SHOWN, ["m2"]),  # a
    ]
    result = analyse_impressions(impressions)
    assert result.impressions == 4 and result.users == 2
    assert result.wins == {"a": 1, "b": 1} and result.ties == 1 and result.undecided == 1
    # u1 decided 1 impression (b): 1.0; u2 decided 1 (a): 0.0. Mean 0.5, but both users are at
    # the extremes: sd = sqrt(((0.5)^2 + (0.5)^2) / 1) = 0.707, se = 0.5, t = 0 -> p = 1.
    assert result.test.preference == 0.5
    assert result.test.p_value == pytest.approx(1.0)
    assert result.test.prefer_first == 1 and result.test.prefer_second == 1


# ----------------------------------------------------------------------------------------
# The test


def test_preference_test_worked_example() -> None:
    # Shares 1, 1, 0.5, 0 (and one user without a decided impression, NaN: left out).
    # mean = 2.5 / 4 = 0.625; deviations .375 .375 -.125 -.625, squares sum to .6875;
    # var = .6875 / 3 = .229167; se = sqrt(.229167 / 4) = .239357; t = .125 / .239357 = .52223
    # with 3 df; t(0.975, 3) = 3.182446 (tables) -> half width .76174.
    got = preference_test([1.0, 1.0, 0.5, 0.0, math.nan])
    assert got.users == 4 and got.test == "t"
    assert got.preference == pytest.approx(0.625)
    assert got.ci == pytest.approx((0.625 - 0.76174, 0.625 + 0.76174), abs=1e-4)
    ref = stats.ttest_1samp([1.0, 1.0, 0.5, 0.0], 0.5)
    assert got.p_value == pytest.approx(ref.pvalue, rel=1e-9)
    # Sign test: 2 users prefer b, 1 prefers a (the 0.5 is dropped); outcomes 0..3 of
    # Binomial(3, .5) have probabilities 1/8 3/8 3/8 1/8, all <= P(2) = 3/8 -> p = 1.
    assert (got.prefer_first, got.prefer_second) == (1, 2)
    assert got.sign_p_value == pytest.approx(1.0)


def test_sign_test_when_the_t_test_is_undefined() -> None:
    # Five users, all at 1.0: sd = 0, no t-test. Sign test: 5 of 5 -> 2 * (1/2)^5 = 0.0625.
    got = preference_test([1.0] * 5)
    assert got.test == "sign" and got.p_value == pytest.approx(0.0625)
    assert got.preference == 1.0 and got.ci == (1.0, 1.0)
    # One user: undefined too.
    one = preference_test([0.0])
    assert one.test == "sign" and one.p_value == pytest.approx(1.0) and one.users == 1
    # No user with a decided impression.
    none = preference_test([math.nan])
    assert none.users == 0 and math.isnan(none.preference) and math.isnan(none.p_value)


def test_t_tests_agree_with_scipy_row_by_row() -> None:
    rng = np.random.default_rng(5)
    shares = rng.choice([0.0, 0.25, 0.5, 2 / 3, 1.0], size=(20, 50))
    shares[rng.random(shares.shape) < 0.3] = np.nan
    mean, low, high, p, n = preference_t_tests(shares)
    for row in range(20):
        x = shares[row][~np.isnan(shares[row])]
        ref = stats.ttest_1samp(x, 0.5)
        assert p[row] == pytest.approx(ref.pvalue, rel=1e-9)
        assert mean[row] == pytest.approx(x.mean())
        ci = ref.confidence_interval(0.95)
        assert (low[row], high[row]) == pytest.approx((ci.low, ci.high), rel=1e-9)
        assert n[row] == x.size


def test_result_json() -> None:
    tallies = [UserTally(3, 0, 3, 0)] * 4 + [UserTally(2, 1, 1, 0), UserTally(1, 0, 0, 1)]
    result = analyse_tallies(tallies, teams=("control", "new"))
    out = result.to_json()
    # 4 users at 1.0, one at 0.5, one without a decided impression (left out): 5 users.
    assert out["rankers"] == ["control", "new"]
    assert out["impressions"] == 15 and out["users"] == 6 and out["decided_users"] == 5
    assert out["wins"] == {"control": 1, "new": 13} and out["ties"] == 1
    assert out["undecided"] == 0
    assert out["preference"] == pytest.approx(4.5 / 5) and out["preference_of"] == "new"
    assert out["test"] == "t" and out["sign_test"]["prefer"] == {"control": 0, "new": 4}
    # mean .9, deviations .1 x4 and -.4: sum of squares .2, var .05, se = .1, t = 4, 4 df:
    # p = 2 * P(T4 > 4) = .0161 (tables: P(T4 > 3.747) = .01, P(T4 > 4.604) = .005).
    assert 0.01 < out["p_value"] < 0.02
    assert out["significant"] is True and out["winner"] == "new"
