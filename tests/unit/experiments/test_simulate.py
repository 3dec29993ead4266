"""The A/B simulator: its users behave as its model says (checked against exact values)."""

from __future__ import annotations

import numpy as np
import pytest

from attune.experiments import simulate as sim

MODEL = sim.UserModel()


def test_click_rate_is_exact() -> None:
    # 2M simulated users: SE of a share near 0.344 is sqrt(0.344 * 0.656 / 2e6) = 0.00034; 4 SE
    rng = np.random.default_rng(1)
    a, b = MODEL.beta
    p = rng.beta(a, b, 2_000_000)
    clicks = rng.binomial(1 + rng.poisson(MODEL.mean_exposures - 1, p.size), p)
    assert (clicks > 0).mean() == pytest.approx(MODEL.click_rate(), abs=0.0014)
    # by hand for a model without heterogeneity in exposures: one exposure each, so the click
    # rate is the mean click probability, ctr
    one = sim.UserModel(ctr=0.2, mean_exposures=1.0)
    assert one.click_rate() == pytest.approx(0.2, abs=1e-9)


def test_multiplier_gives_the_asked_click_rate_lift() -> None:
    m = MODEL.multiplier_for_click_rate_lift(0.05)
    assert MODEL.click_rate(m) / MODEL.click_rate() == pytest.approx(1.05, abs=1e-9)
    # a user who may click several times needs a larger per-click lift to become a clicker
    assert m > 1.05


def test_looks_are_cumulative_with_exact_fixed_splits() -> None:
    looks = sim.simulate_looks(MODEL, 3, 10, 4, shares=(0.3, 0.7), split="fixed", seed=2)
    assert looks.users.shape == (3, 4, 2)
    # 10 users a day split 3 / 7, cumulated over days
    np.testing.assert_array_equal(looks.users[0, :, 0], [3, 6, 9, 12])
    np.testing.assert_array_equal(looks.users[0, :, 1], [7, 14, 21, 28])
    assert (np.diff(looks.clicks, axis=1) >= 0).all()
    assert (looks.clickers <= looks.users).all()
    assert (looks.exposures >= looks.users).all()  # at least one exposure each


def test_random_split_is_fair_and_chunks_do_not_matter() -> None:
    a = sim.simulate_looks(MODEL, 40, 1000, 2, seed=3, chunk_users=5_000)
    share = a.users[:, -1, 0].sum() / a.users[:, -1].sum()
    # 80,000 users: SE of a share of 0.5 is 0.0018; 4 SE
    assert share == pytest.approx(0.5, abs=0.007)


def test_simulate_ab_gives_cumulative_per_user_data() -> None:
    out = sim.simulate_ab(MODEL, 400, 3, {"control": 1, "treatment": 1}, {"treatment": 1.5}, seed=4)
    assert len(out.days) == 3
    for k, day in enumerate(out.days):
        assert sum(v.users for v in day.values()) == 400 * (k + 1)
    last = out.days[-1]
    c, t = last["control"], last["treatment"]
    assert t.clicks.sum() / t.exposures.sum() > c.clicks.sum() / c.exposures.sum()
    # the pre-period covariate predicts clicks (both follow the user's propensity)
    assert c.pre_period is not None
    assert np.corrcoef(c.pre_period, c.clicks)[0, 1] > 0.2
    assert (c.purchases <= c.carts).all() and (c.carts <= c.clicks).all()
