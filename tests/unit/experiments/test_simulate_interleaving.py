"""Interleaving finds the better ranker with fewer users than the A/B test (simulated)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from attune.experiments.simulate_interleaving import (
    World,
    ab_click_rates,
    build_world,
    calibrate_improved_share,
    compare_methods,
    interleaving_rejections,
    probit_fit_users,
    simulate_ab_users,
    users_for_power,
)

LIFT = 0.05


@pytest.fixture(scope="module")
def world():  # type: ignore[no-untyped-def]
    return calibrate_improved_share(build_world(seed=2008), LIFT)


def test_b_is_calibrated_to_the_lift(world) -> None:  # type: ignore[no-untyped-def]
    p_a, p_b = ab_click_rates(world)
    assert p_b / p_a == pytest.approx(1 + LIFT, rel=1e-9)
    assert 0 < world.improved_share < 1


def test_closed_form_click_rates_match_clicks_drawn_slot_by_slot(world) -> None:  # type: ignore[no-untyped-def]
    p_a, p_b = ab_click_rates(world)
    rng = np.random.default_rng(7)
    n = 200_000
    for ranker, p in (("a", p_a), ("b", p_b)):
        got = simulate_ab_users(world, n, rng, ranker).mean()
        assert abs(got - p) < 4 * math.sqrt(p * (1 - p) / n), ranker  # 4 standard errors


def test_hand_made_world_click_rate() -> None:
    # One request type, 1 slot (k = 1, examination 1), attractiveness 0.5; one user type with
    # theta 0.4 and 2 impressions: no click in one impression 1 - 0.4 * 0.5 = 0.8, in two
    # 0.64 -> click rate 0.36.
    w = World(
        attractiveness=np.array([[0.5]]),
        ranking_a=np.array([[0]]),
        ranking_improved=np.array([[0]]),
        theta=np.array([0.4]),
        theta_weights=np.array([1.0]),
        impressions_per_user=2,
    )
    assert ab_click_rates(w) == pytest.approx((0.36, 0.36))


def test_probit_fit_recovers_a_known_curve() -> None:
    # power(n) = Phi(-1.96 + 0.02 * sqrt(n)) reaches 0.8 where 0.02 sqrt(n) = 1.96 + 0.8416:
    # n = (2.8016 / 0.02)^2 = 19,622.
    pts = [(n, float(stats.norm.cdf(-1.96 + 0.02 * math.sqrt(n)))) for n in (4000, 9000, 16000)]
    assert probit_fit_users(pts, 0.8, 1000) == pytest.approx(19_622, rel=1e-3)
    search = users_for_power(lambda n: float(stats.norm.cdf(-1.96 + 0.02 * math.sqrt(n))), 1000)
    assert search.users == pytest.approx(19_622, rel=1e-3)
    assert search.bracket[0] < 19_622 <= search.bracket[1]


def test_interleaving_false_positive_rate(world) -> None:  # type: ignore[no-untyped-def]
    # B == A on every request: the t-test rejects in ~5 % of 1000 experiments (sd 0.7 points).
    rate = interleaving_rejections(world.with_share(0.0), users=400, sims=1000, seed=3)
    assert 0.03 <= rate <= 0.07


def test_interleaving_needs_fewer_users_than_ab(world) -> None:  # type: ignore[no-untyped-def]
    result = compare_methods(world, lift=LIFT, sims=300, ab_sims=2000, seed=12)
    print(
        f"\nusers for 80% power: A/B {result.ab.users:,.0f}, interleaving "
        f"{result.interleaving.users:,.0f}, ratio {result.ratio:.1f}"
    )
    # The simulated A/B test agrees with the textbook sample size: per arm
    # (z(.975) + z(.8))^2 * (p_a q_a + p_b q_b) / (p_b - p_a)^2, both arms twice that.
    p_a, p_b = result.click_rate_a, result.click_rate_b
    z = stats.norm.ppf(0.975) + stats.norm.ppf(0.8)
    textbook = 2 * z**2 * (p_a * (1 - p_a) + p_b * (1 - p_b)) / (p_b - p_a) ** 2
    assert result.ab.users == pytest.approx(textbook, rel=0.1)
    assert result.interleaving.users < result.ab.users
    assert result.ratio > 3  # measured 11 with these seeds
    for search in (result.ab, result.interleaving):
        # the evaluations found the crossing: one point below 80 %, one at or above
        assert any(p < 0.8 for _, p in search.evaluations)
        assert any(p >= 0.8 for _, p in search.evaluations)
