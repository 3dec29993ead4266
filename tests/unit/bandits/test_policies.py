"""The bandit policies on hand-worked cases: Beta win probabilities, the exploration floor,
LinUCB's exact propensities, and the pure state updates."""

from __future__ import annotations

import numpy as np
import pytest

from attune.bandits.policies import (
    ArmCounts,
    BetaState,
    FeatureLayout,
    LinearState,
    LinUCBParams,
    Observation,
    ThompsonParams,
    beta_win_probabilities,
    linucb_decide,
    linucb_propensities,
    linucb_scores,
    sample_decision,
    thompson_decide,
    thompson_propensities,
    update_beta,
    update_linear,
    with_floor,
)

# -- Beta win probabilities ---------------------------------------------------------------


def test_beta_2_1_beats_uniform_two_times_in_three() -> None:
    # P(t1 > t2), t1 ~ Beta(2, 1) (density 2x), t2 ~ Beta(1, 1) (CDF x):
    # integral_0^1 2x * x dx = 2/3
    q = beta_win_probabilities([2, 1], [1, 1])
    assert q == pytest.approx([2 / 3, 1 / 3], abs=1e-6)


def test_beta_1_2_against_2_1() -> None:
    # t1 ~ Beta(1, 2) (density 2(1 - x)), t2 ~ Beta(2, 1) (CDF x^2):
    # integral 2(1 - x) x^2 dx = 2 (1/3 - 1/4) = 1/6
    q = beta_win_probabilities([1, 2], [2, 1])
    assert q == pytest.approx([1 / 6, 5 / 6], abs=1e-6)


def test_identical_arms_are_equally_likely_to_win() -> None:
    # symmetry: 4 arms with the same posterior win 1/4 each, however peaked
    assert beta_win_probabilities([1] * 4, [1] * 4) == pytest.approx([0.25] * 4, abs=1e-9)
    q = beta_win_probabilities([201] * 4, [9801] * 4)
    assert q == pytest.approx([0.25] * 4, abs=1e-9)


def test_beta_win_probabilities_against_scipy() -> None:
    # Reference: scipy's exact Beta CDF (the regularized incomplete beta) and density, on
    # 20,001 points across each arm's mean +- 15 sd (trapezoid error ~1e-8 at that spacing),
    # not the code's 512-point grid with CDFs summed from the density.
    special = pytest.importorskip("scipy.special")
    rng = np.random.default_rng(7)
    for trial in range(8):
        k = int(rng.integers(2, 6))
        n = rng.integers(0, 100_000 if trial % 2 else 60, size=k)
        c = rng.binomial(n, rng.uniform(0.01, 0.1, size=k))
        a, b = (1.0 + c)[:, None], (1.0 + n - c)[:, None]
        mean = a / (a + b)
        sd = np.sqrt(a * b / ((a + b) ** 2 * (a + b + 1)))
        lo, hi = np.clip(mean - 15 * sd, 0, 1), np.clip(mean + 15 * sd, 0, 1)
        x = np.unique(np.concatenate([np.linspace(lo[i, 0], hi[i, 0], 20_001) for i in range(k)]))
        with np.errstate(divide="ignore", invalid="ignore"):
            log_pdf = special.xlogy(a - 1, x) + special.xlog1py(b - 1, -x) - special.betaln(a, b)
        pdf = np.exp(log_pdf)
        cdf = special.betainc(a, b, x[None, :])
        ref = [
            np.trapezoid(pdf[i] * np.prod(np.delete(cdf, i, axis=0), axis=0), x) for i in range(k)
        ]
        q = beta_win_probabilities(a[:, 0], b[:, 0])
        assert q == pytest.approx(ref, abs=1e-4), (a, b)


def test_beta_parameters_below_one_are_refused_with_the_fix() -> None:
    with pytest.raises(ValueError, match="use alpha=1, beta=1"):
        ThompsonParams(alpha=0.5, beta=0.5)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        ThompsonParams(epsilon=1.5)


# -- Thompson sampling with the floor -----------------------------------------------------


def test_thompson_propensities_of_the_hand_worked_case_with_a_floor() -> None:
    # arm a: 1 impression, 1 click -> Beta(2, 1); arm b: nothing -> Beta(1, 1); q = (2/3, 1/3)
    # epsilon 0.3, K = 2: 0.15 + 0.7 q = (0.15 + 0.46667, 0.15 + 0.23333)
    state = BetaState(("a", "b"), (1, 0), (1, 0))
    p = thompson_propensities(state, ThompsonParams(epsilon=0.3))
    assert p == pytest.approx([0.61667, 0.38333], abs=1e-5)


@pytest.mark.parametrize("epsilon", [0.0, 0.05, 0.2])
def test_floor_holds_and_propensities_sum_to_one(epsilon: float) -> None:
    rng = np.random.default_rng(3)
    arms = tuple("abcdef")
    params = ThompsonParams(epsilon=epsilon)
    for _ in range(30):
        n = rng.integers(0, 50_000, size=6)
        c = rng.binomial(n, rng.uniform(0.0, 0.2, size=6))
        p = thompson_propensities(BetaState(arms, tuple(n), tuple(c)), params)
        assert p.sum() == pytest.approx(1.0, abs=1e-12)
        assert np.all(p >= epsilon / 6 - 1e-15)
    # a state where one arm has certainly won: the others get exactly the floor
    won = BetaState(arms, (100_000,) * 6, (30_000, 10, 10, 10, 10, 10))
    p = thompson_propensities(won, ThompsonParams(epsilon=0.06))
    assert p[1:] == pytest.approx([0.01] * 5, abs=1e-12)  # 0.06 / 6
    assert p[0] == pytest.approx(0.95, abs=1e-12)  # 0.94 + 0.01


def test_decisions_follow_their_propensities_and_the_seed() -> None:
    state = BetaState(("a", "b", "c"), (40, 40, 40), (4, 2, 1))
    params = ThompsonParams(epsilon=0.1)
    first = [thompson_decide(state, params, np.random.default_rng(11)) for _ in range(3)]
    assert len({(d.action, d.propensity) for d in first}) == 1  # same seed, same decision
    # thompson_decide = one uniform draw against thompson_propensities
    p = thompson_propensities(state, params)
    again = sample_decision(state.arms, p, np.random.default_rng(11))
    assert (again.action, again.propensity) == (first[0].action, first[0].propensity)
    rng = np.random.default_rng(5)
    decisions = [sample_decision(state.arms, p, rng) for _ in range(20_000)]
    share = np.bincount([d.index for d in decisions], minlength=3) / len(decisions)
    # 20,000 draws: standard error <= 0.5 / sqrt(20000) = 0.0035; 0.015 is > 4 of them
    assert share == pytest.approx(p, abs=0.015)
    for d in decisions[:50]:
        assert d.propensity == d.propensities[d.index] and d.action == d.arms[d.index]


def test_sample_decision_never_picks_a_zero_probability_arm() -> None:
    rng = np.random.default_rng(0)
    picks = {
        sample_decision(("a", "b", "c"), np.array([0.0, 1.0, 0.0]), rng).action for _ in range(200)
    }
    assert picks == {"b"}
    with pytest.raises(ValueError, match="not a probability vector"):
        with_floor([0.0, 0.0], 0.1)


def test_update_beta_is_pure_and_ignores_unknown_arms() -> None:
    state = BetaState(("a", "b"), (10, 5), (1, 0))
    new = update_beta(state, {"a": ArmCounts(3, 2), "zzz": ArmCounts(100, 100)})
    assert (new.impressions, new.clicks) == ((13, 5), (3, 0))
    assert (state.impressions, state.clicks) == ((10, 5), (1, 0))
    # configured arms decide: a stored arm no longer configured is dropped, a new one is zero
    assert BetaState.from_counts(["b", "new"], new.counts()).counts() == {
        "b": ArmCounts(5, 0),
        "new": ArmCounts(0, 0),
    }


# -- LinUCB --------------------------------------------------------------------------------


def test_feature_layout() -> None:
    layout = FeatureLayout(segments=("s1", "s2"), numeric=("recency",))
    assert layout.names == ("bias", "segment=s1", "segment=s2", "recency")
    assert layout.vector("s2", {"recency": 0.5}).tolist() == [1.0, 0.0, 1.0, 0.5]
    assert layout.vector("other").tolist() == [1.0, 0.0, 0.0, 0.0]  # unknown: the bias alone
    assert layout.vector(None).tolist() == [1.0, 0.0, 0.0, 0.0]


def _bias_only_state() -> LinearState:
    # one feature (the bias, x = [1]); arm a: 4 impressions, 2 clicks; arm b: nothing
    obs = [Observation("a", np.array([1.0]), 1, 1 if i < 2 else 0) for i in range(4)]
    return update_linear(LinearState.empty(("a", "b"), ("bias",)), obs)


def test_linucb_scores_by_hand() -> None:
    state = _bias_only_state()
    x = np.array([1.0])
    # ridge 1: arm a: A = 1 + 4 = 5, b = 2 -> theta = 0.4, width sqrt(1/5) = 0.44721
    #          arm b: A = 1, b = 0 -> theta = 0, width 1
    assert linucb_scores(state, x, LinUCBParams(alpha=0.0)) == pytest.approx([0.4, 0.0])
    # alpha 0.5: a = 0.4 + 0.22361 = 0.62361 beats b = 0.5
    assert linucb_scores(state, x, LinUCBParams(alpha=0.5)) == pytest.approx(
        [0.62361, 0.5], abs=1e-5
    )
    # exact propensities, epsilon 0.1, K = 2: winner 1 - 0.1 + 0.05 = 0.95, loser 0.05
    p = linucb_propensities(state, x, LinUCBParams(alpha=0.5, epsilon=0.1))
    assert p == pytest.approx([0.95, 0.05], abs=1e-15)
    # alpha 1: a = 0.4 + 0.44721 = 0.84721 < b = 1: the unexplored arm wins
    p = linucb_propensities(state, x, LinUCBParams(alpha=1.0, epsilon=0.1))
    assert p == pytest.approx([0.05, 0.95], abs=1e-15)


def test_linucb_ties_share_the_greedy_mass_and_the_floor_holds() -> None:
    layout = FeatureLayout(segments=("s1", "s2"))
    empty = LinearState.empty(("a", "b", "c"), layout.names)
    # nothing seen: every arm ties -> uniform, whatever epsilon
    p = linucb_propensities(empty, layout.vector("s1"), LinUCBParams(epsilon=0.3))
    assert p == pytest.approx([1 / 3] * 3, abs=1e-15)
    rng = np.random.default_rng(2)
    state = update_linear(
        empty,
        [
            Observation(
                str(rng.choice(["a", "b", "c"])),
                layout.vector(str(rng.choice(["s1", "s2"]))),
                1,
                int(rng.random() < 0.3),
            )
            for _ in range(300)
        ],
    )
    for seg in ("s1", "s2", None):
        p = linucb_propensities(state, layout.vector(seg), LinUCBParams(epsilon=0.09))
        assert p.sum() == pytest.approx(1.0, abs=1e-15)
        assert np.all(p >= 0.03 - 1e-15)  # 0.09 / 3
        d = linucb_decide(state, layout.vector(seg), LinUCBParams(epsilon=0.09), rng)
        assert d.propensity in (pytest.approx(0.03), pytest.approx(0.94))  # 0.91 + 0.03


def test_update_linear_sums_by_hand_and_impressions_and_clicks_commute() -> None:
    names = ("bias", "segment=s1", "segment=s2")
    x1, x2 = np.array([1.0, 1.0, 0.0]), np.array([1.0, 0.0, 1.0])
    empty = LinearState.empty(("a", "b"), names)
    together = update_linear(empty, [Observation("a", x1, 1, 1), Observation("a", x2, 1, 0)])
    # xx = x1 x1' + x2 x2' = [[1,1,0],[1,1,0],[0,0,0]] + [[1,0,1],[0,0,0],[1,0,1]]
    assert together.xx[0].tolist() == [[2, 1, 1], [1, 1, 0], [1, 0, 1]]
    assert together.xr[0].tolist() == [1, 1, 0]  # one click, with x1
    assert (together.impressions, together.clicks) == ((2, 0), (1, 0))
    assert not together.xx[1].any() and not empty.xx.any()  # pure: empty unchanged
    # the click arriving after (or before) its impression gives the same state
    apart = update_linear(
        empty,
        [Observation("a", x1, 0, 1), Observation("a", x2, 1, 0), Observation("a", x1, 1, 0)],
    )
    assert np.array_equal(apart.xx, together.xx) and np.array_equal(apart.xr, together.xr)
    with pytest.raises(ValueError, match="3 features"):
        update_linear(empty, [Observation("a", np.array([1.0, 2.0]))])
