"""The off-policy estimators on inputs small enough to work out by hand, and the bootstrap."""

from __future__ import annotations

import numpy as np
import pytest

from attune.bandits import ope

# Three rounds, two actions.
REWARD = np.array([1.0, 0.0, 1.0])
ACTION = np.array([0, 1, 1])
PSCORE = np.array([0.5, 0.5, 0.25])
PI_E = np.array([[0.8, 0.2], [0.8, 0.2], [0.4, 0.6]])
PI_E_LOGGED = np.array([0.8, 0.2, 0.6])  # PI_E[i, ACTION[i]]
Q_HAT = np.array([[0.5, 0.1], [0.5, 0.1], [0.2, 0.7]])
# Weights w = pi_e_logged / pscore = [0.8/0.5, 0.2/0.5, 0.6/0.25] = [1.6, 0.4, 2.4].


def test_ipw_by_hand() -> None:
    # (1.6 * 1 + 0.4 * 0 + 2.4 * 1) / 3 = 4.0 / 3
    assert ope.ipw(REWARD, PSCORE, PI_E_LOGGED) == pytest.approx(4.0 / 3)


def test_snipw_by_hand() -> None:
    # sum(w r) / sum(w) = 4.0 / (1.6 + 0.4 + 2.4) = 4.0 / 4.4
    assert ope.snipw(REWARD, PSCORE, PI_E_LOGGED) == pytest.approx(4.0 / 4.4)


def test_direct_method_by_hand() -> None:
    # rows: 0.8*0.5 + 0.2*0.1 = 0.42; 0.42; 0.4*0.2 + 0.6*0.7 = 0.50 -> (0.42+0.42+0.50)/3
    assert ope.direct_method(PI_E, Q_HAT) == pytest.approx(1.34 / 3)


def test_doubly_robust_by_hand() -> None:
    # DM terms 0.42, 0.42, 0.50 (above); corrections w * (r - q_hat[i, a_i]):
    # 1.6 * (1 - 0.5) = 0.8, 0.4 * (0 - 0.1) = -0.04, 2.4 * (1 - 0.7) = 0.72
    # -> (1.34 + 1.48) / 3 = 2.82 / 3 = 0.94
    assert ope.doubly_robust(REWARD, PSCORE, ACTION, PI_E, Q_HAT) == pytest.approx(0.94)


def test_dr_with_a_perfect_model_is_the_dm_and_with_a_zero_model_is_ipw() -> None:
    # q_hat = 0 everywhere: DM = 0 and DR's correction is IPW's sum.
    zero = np.zeros_like(Q_HAT)
    assert ope.doubly_robust(REWARD, PSCORE, ACTION, PI_E, zero) == pytest.approx(4.0 / 3)
    # q_hat equal to the observed rewards on the logged actions: the correction vanishes.
    exact = Q_HAT.copy()
    exact[np.arange(3), ACTION] = REWARD
    assert ope.doubly_robust(REWARD, PSCORE, ACTION, PI_E, exact) == pytest.approx(
        ope.direct_method(PI_E, exact)
    )


def test_evaluate_reports_the_four_in_order_with_their_values() -> None:
    results = ope.evaluate(REWARD, PSCORE, ACTION, PI_E, Q_HAT, n_resamples=50, seed=1)
    assert [r.estimator for r in results] == list(ope.ESTIMATORS)
    values = {r.estimator: r.value for r in results}
    assert values == pytest.approx({"dm": 1.34 / 3, "ipw": 4.0 / 3, "snipw": 4.0 / 4.4, "dr": 0.94})
    for r in results:
        assert r.low <= r.high


def test_relative_error() -> None:
    res = ope.EstimateResult("ipw", 0.0046, 0.0, 1.0)
    # |0.0046 - 0.0040| / 0.0040 = 0.15
    assert res.relative_error(0.004) == pytest.approx(0.15)


@pytest.mark.parametrize(
    ("pscore", "message"),
    [(np.array([0.5, 0.0, 0.25]), "pscore must be in"), (np.array([0.5, 0.5]), "2 rounds")],
)
def test_bad_inputs_say_what_is_wrong(pscore: np.ndarray, message: str) -> None:
    with pytest.raises(ope.OPEInputError, match=message):
        ope.ipw(REWARD, pscore, PI_E_LOGGED)


def test_pi_e_rows_must_be_distributions() -> None:
    with pytest.raises(ope.OPEInputError, match="probability distribution"):
        ope.direct_method(PI_E * 0.5, Q_HAT)


def test_bootstrap_is_seeded() -> None:
    terms = [ope.ipw_terms(REWARD, PSCORE, PI_E_LOGGED)]
    a = ope.bootstrap_intervals(terms, n_resamples=100, seed=7)
    b = ope.bootstrap_intervals(terms, n_resamples=100, seed=7)
    assert a == b


def test_bootstrap_interval_of_a_constant_is_that_constant() -> None:
    # Every resample of identical terms has the same mean: the interval is a point.
    terms = [ope.RoundTerms("dm", np.full(50, 0.3))]
    iv = ope.bootstrap_intervals(terms, n_resamples=200, seed=0)["dm"]
    assert iv.low == pytest.approx(0.3) and iv.high == pytest.approx(0.3)


def test_bootstrap_covers_the_true_value_about_95_percent_of_the_time() -> None:
    # Uniform logging over two actions with click rates 0.3 and 0.6; pi_e = (0.2, 0.8), so
    # the true value is 0.2 * 0.3 + 0.8 * 0.6 = 0.54. 500 data sets of 400 rounds.
    rng = np.random.default_rng(123)
    rates, pi_e, truth = np.array([0.3, 0.6]), np.array([0.2, 0.8]), 0.54
    covered = 0
    trials = 500
    for t in range(trials):
        action = rng.integers(0, 2, 400)
        reward = (rng.random(400) < rates[action]).astype(float)
        terms = [
            ope.ipw_terms(reward, np.full(400, 0.5), pi_e[action]),
            ope.snipw_terms(reward, np.full(400, 0.5), pi_e[action]),
        ]
        ivs = ope.bootstrap_intervals(terms, n_resamples=300, seed=t)
        covered += ivs["ipw"].low <= truth <= ivs["ipw"].high
    # 95 % intervals: covered ~ Binomial(500, 0.95), sd 0.0097; the bounds are 3 sd away.
    assert 0.92 <= covered / trials <= 0.98


def test_progress_reporter_is_silent_for_short_steps() -> None:
    lines: list[str] = []
    report = ope.rate_reporter("x", lines.append, min_seconds=60.0)
    for i in range(1, 11):
        report(i, 10)
    assert lines == []
    loud = ope.rate_reporter("sim", lines.append, min_seconds=0.0)
    loud(10, 10)
    # the whole work done: the closing line says so instead of an ETA
    assert len(lines) == 1 and lines[0].startswith("sim: 10/10, ") and "done in 0 s" in lines[0]
