"""The slate Thompson-sampling action distribution against probabilities worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from attune.bandits.slate import thompson_slate_distribution, zozotown_bts_prior

# Three items with draws X1 ~ Beta(1,1), X2 ~ Beta(2,1), X3 ~ Beta(1,2):
# densities f1 = 1, f2 = 2x, f3 = 2(1-x); CDFs F1 = x, F2 = x^2, F3 = 2x - x^2.
# P(i is largest) = int_0^1 f_i(x) prod_{j != i} F_j(x) dx:
#   item 1: int x^2 (2x - x^2) = 1/2 - 1/5 = 3/10
#   item 2: int 2x * x (2x - x^2) = 1 - 2/5 = 3/5
#   item 3: int 2(1-x) x * x^2 = 2 (1/4 - 1/5) = 1/10
# P(i is smallest) = int f_i prod_{j != i} (1 - F_j):
#   item 1: int (1 - x^2)(1 - x)^2 = int (1-x)^3 (1+x) = 3/10   (u = 1-x: int u^3 (2-u) = 1/2 - 1/5)
#   item 2: int 2x (1 - x)(1 - x)^2 = 2 B(2, 4) = 2 * 1! 3! / 5! = 1/10
#   item 3: int 2(1-x)(1-x)(1-x^2) = 2 int (1-x)^3 (1+x) = 3/5
# middle = 1 - largest - smallest: item 1: 2/5, item 2: 3/10, item 3: 3/10.
ALPHA = [1.0, 2.0, 1.0]
BETA = [1.0, 1.0, 2.0]
EXPECTED = np.array(
    [
        [0.3, 0.4, 0.3],
        [0.6, 0.3, 0.1],
        [0.1, 0.3, 0.6],
    ]
)
# Monte Carlo standard error with 200,000 slates is at most sqrt(0.25 / 200000) = 0.0011.
TOL = 0.006


def test_three_items_three_positions() -> None:
    dist = thompson_slate_distribution(ALPHA, BETA, 3, n_sim=200_000, seed=3)
    np.testing.assert_allclose(dist, EXPECTED, atol=TOL)


def test_slate_shorter_than_the_catalogue_keeps_the_top_positions() -> None:
    dist = thompson_slate_distribution(ALPHA, BETA, 2, n_sim=200_000, seed=4)
    np.testing.assert_allclose(dist, EXPECTED[:, :2], atol=TOL)
    np.testing.assert_allclose(dist.sum(axis=0), [1.0, 1.0])  # every position shows one item


def test_two_items_one_slot() -> None:
    # Beta(1,1) vs Beta(2,1): P(X2 > X1) = int 2x * x dx = 2/3.
    dist = thompson_slate_distribution([1.0, 2.0], [1.0, 1.0], 1, n_sim=200_000, seed=5)
    np.testing.assert_allclose(dist[:, 0], [1 / 3, 2 / 3], atol=TOL)


def test_seeded_and_chunking_does_not_matter() -> None:
    a = thompson_slate_distribution(ALPHA, BETA, 3, n_sim=5_000, seed=9, chunk=1_000)
    b = thompson_slate_distribution(ALPHA, BETA, 3, n_sim=5_000, seed=9, chunk=1_000)
    np.testing.assert_array_equal(a, b)
    # An item never takes two positions of one slate: each row sums to at most 1.
    assert np.all(a.sum(axis=1) <= 1.0 + 1e-12)


def test_zozotown_prior_has_80_items_and_names_its_source() -> None:
    prior = zozotown_bts_prior()
    assert prior.alpha.shape == prior.beta.shape == (80,)
    assert "obp" in prior.source and "prior_bts.yaml" in prior.source
    # Item 0 in obp's prior_bts.yaml (campaign all): alpha 47.0.
    assert prior.alpha[0] == 47.0


@pytest.mark.parametrize(
    ("alpha", "beta", "len_list"),
    [([1.0, 0.0], [1.0, 1.0], 1), ([1.0], [1.0, 1.0], 1), ([1.0], [1.0], 2)],
)
def test_bad_parameters(alpha: list[float], beta: list[float], len_list: int) -> None:
    with pytest.raises(ValueError):
        thompson_slate_distribution(alpha, beta, len_list, n_sim=10)
