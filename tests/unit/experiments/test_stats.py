"""The analysis library against worked examples (arithmetic in the comments) and against
scipy / statsmodels as independent references."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import statsmodels.api as sm
from scipy import integrate
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import NormalIndPower
from statsmodels.stats.proportion import (
    confint_proportions_2indep,
    power_proportions_2indep,
    proportion_effectsize,
    proportions_ztest,
    samplesize_proportions_2indep_onetail,
)
from statsmodels.stats.weightstats import CompareMeans, DescrStatsW, ttest_ind

from attune.experiments import stats as S

# ----------------------------------------------------------------------------------------
# Summaries


def test_mean_summary_worked() -> None:
    # [1, 2, 3, 4]: mean 2.5; squared deviations 2.25 + 0.25 + 0.25 + 2.25 = 5, / (4 - 1)
    s = S.mean_summary([1, 2, 3, 4])
    assert (s.n, s.mean) == (4, 2.5)
    assert s.var == pytest.approx(5 / 3)
    assert s.estimate.variance == pytest.approx(5 / 12)  # var / n
    assert S.summary_from_sums(4, 10, 30) == pytest.approx(s)  # sum 10, sum of squares 30


def test_mean_summary_needs_two_users() -> None:
    with pytest.raises(ValueError, match="at least 2 users"):
        S.mean_summary([1.0])


NUM = [1, 0, 2, 1]
DEN = [2, 1, 3, 2]


def test_ratio_summary_delta_method_worked() -> None:
    # sums 4 / 8 -> R = 0.5; means 1 and 2; deviations of num 0 -1 1 0, of den 0 -1 1 0:
    # var_num = var_den = cov = 2 / 3.
    # delta: (var_num - 2 R cov + R^2 var_den) / (n mean_den^2)
    #      = (2/3 - 2/3 + 1/4 * 2/3) / (4 * 4) = (1/6) / 16 = 1/96
    r = S.ratio_summary(NUM, DEN)
    assert r.ratio == 0.5
    assert (r.num_var, r.den_var, r.cov) == pytest.approx((2 / 3, 2 / 3, 2 / 3))
    assert r.variance == pytest.approx(1 / 96)
    # the same from sums: num 4, den 8, num^2 1+0+4+1 = 6, den^2 4+1+9+4 = 18, num*den 2+0+6+2 = 10
    assert S.ratio_summary_from_sums(4, 4, 8, 6, 18, 10) == pytest.approx(r)


def test_ratio_delta_method_matches_the_sampling_variance() -> None:
    # Users with heterogeneous click probabilities; the ratio of sums is recomputed on 4000
    # independent samples of 500 users. The delta-method variance (from one sample) must match
    # the empirical variance of the 4000 ratios: the relative standard error of a variance
    # estimated from R draws is about sqrt(2 / R) = 2.2 %; the delta variance of one sample of
    # 500 users is itself noisy by a few %, so allow 12 % (about 4 combined SE).
    rng = np.random.default_rng(7)
    reps, n = 4000, 500
    p = rng.beta(1, 9, size=(reps, n))
    den = 1 + rng.poisson(4, size=(reps, n))
    num = rng.binomial(den, p)
    ratios = num.sum(axis=1) / den.sum(axis=1)
    delta = np.mean([S.ratio_summary(num[i], den[i]).variance for i in range(200)])
    assert delta == pytest.approx(ratios.var(ddof=1), rel=0.12)


# ----------------------------------------------------------------------------------------
# Frequentist comparisons

A = [1.0, 2.0, 3.0, 4.0]
B = [2.0, 4.0, 6.0, 8.0, 10.0]


def test_welch_worked_example() -> None:
    # A: mean 2.5, var 5/3, var of mean 5/12 = 0.416667; B: mean 6, var 10, var of mean 2.
    # se = sqrt(29/12) = 1.5545632, t = 3.5 / 1.5545632 = 2.251436
    # df = 2.416667^2 / (0.416667^2 / 3 + 2^2 / 4) = 5.840278 / 1.057870 = 5.520788
    # relative: 6 / 2.5 - 1 = 1.4; on the log scale se^2 = 2 / 36 + 0.416667 / 6.25
    # = 0.055556 + 0.066667 = 0.122222 (se 0.349603), centre log 2.4 = 0.875469
    c = S.welch_test(S.mean_summary(A), S.mean_summary(B))
    assert c.abs_lift == 3.5
    assert c.statistic == pytest.approx(2.251436, abs=1e-6)
    assert c.df == pytest.approx(5.520788, abs=1e-6)
    assert c.rel_lift == pytest.approx(1.4)
    assert c.rel_se == pytest.approx(0.349603, abs=1e-6)
    crit = sps.t.ppf(0.975, c.df)
    lo, hi = math.exp(0.875469 - crit * 0.349603) - 1, math.exp(0.875469 + crit * 0.349603) - 1
    assert c.rel_ci == pytest.approx((lo, hi), abs=1e-5)


def test_welch_matches_statsmodels_and_scipy() -> None:
    rng = np.random.default_rng(3)
    a = rng.gamma(2.0, 3.0, size=300)
    b = rng.gamma(2.2, 3.5, size=450)
    c = S.welch_test(S.mean_summary(a), S.mean_summary(b), alpha=0.1)
    t, p, df = ttest_ind(b, a, usevar="unequal")
    assert (c.statistic, c.p_value, c.df) == pytest.approx((t, p, df), rel=1e-9)
    ci = CompareMeans(DescrStatsW(b), DescrStatsW(a)).tconfint_diff(alpha=0.1, usevar="unequal")
    assert c.abs_ci == pytest.approx(ci, rel=1e-9)
    assert c.p_value == pytest.approx(sps.ttest_ind(b, a, equal_var=False).pvalue, rel=1e-9)


def test_two_proportion_worked_example() -> None:
    # control 100/1000 = 0.10, treatment 130/1000 = 0.13, lift 0.03.
    # pooled 230/2000 = 0.115: se0 = sqrt(0.115 * 0.885 * 2/1000) = 0.01426710, z = 2.102741,
    # p = 2 (1 - Phi(2.102741)) = 0.035488.
    # Wald: se = sqrt(0.1*0.9/1000 + 0.13*0.87/1000) = sqrt(0.0002031) = 0.0142513,
    # CI 0.03 +- 1.959964 * 0.0142513 = (0.002068, 0.057932).
    # relative 0.3, on the log scale: se^2 = 0.0001131 / 0.0169 + 0.00009 / 0.01 = 0.0156923
    # (se 0.1252689); log 1.3 = 0.2623643 +- 1.959964 * 0.1252689 = 0.2455226
    # -> exp(0.0168417) - 1 = 0.016984, exp(0.5078869) - 1 = 0.661776. (The symmetric delta
    # interval 0.3 +- 1.96 * 0.162850 = (-0.0192, 0.6192) would include 0 although the test
    # rejects: the log scale keeps the two consistent.)
    c = S.two_proportion_test(100, 1000, 130, 1000)
    assert c.abs_lift == pytest.approx(0.03)
    assert c.statistic == pytest.approx(2.102741, abs=1e-6)
    assert c.p_value == pytest.approx(0.035488, abs=1e-6)
    assert c.abs_ci == pytest.approx((0.002068, 0.057932), abs=1e-6)
    assert c.rel_lift == pytest.approx(0.3)
    assert c.rel_ci == pytest.approx((0.016984, 0.661776), abs=1e-6)
    assert c.significant


@pytest.mark.parametrize(("x1", "n1", "x2", "n2"), [(50, 2000, 71, 2100), (900, 1000, 870, 950)])
def test_two_proportion_matches_statsmodels(x1: int, n1: int, x2: int, n2: int) -> None:
    c = S.two_proportion_test(x1, n1, x2, n2)
    z, p = proportions_ztest([x2, x1], [n2, n1])
    assert (c.statistic, c.p_value) == pytest.approx((z, p), rel=1e-9)
    ci = confint_proportions_2indep(x2, n2, x1, n1, method="wald", compare="diff")
    assert c.abs_ci == pytest.approx(ci, rel=1e-9)


def test_ratio_test_worked_example() -> None:
    # control R = 0.5 with variance 1/96 (above); treatment num = den: R = 1 and its delta
    # variance (2/3 - 2*2/3 + 2/3) / 16 = 0. z = 0.5 / sqrt(1/96): z^2 = 0.25 * 96 = 24.
    # relative: 1 / 0.5 - 1 = 1; log scale se^2 = 0 / 1 + (1/96) / 0.25 = 1/24 (se 0.204124):
    # log 2 = 0.693147 +- 0.400076 -> (e^0.293071 - 1, e^1.093223 - 1) = (0.340538, 1.983876)
    c = S.ratio_test(S.ratio_summary(NUM, DEN), S.ratio_summary(DEN, DEN))
    assert c.statistic == pytest.approx(math.sqrt(24))
    assert c.p_value == pytest.approx(2 * sps.norm.sf(math.sqrt(24)))
    assert c.rel_lift == pytest.approx(1.0)
    assert c.rel_se == pytest.approx(math.sqrt(1 / 24))
    assert c.rel_ci == pytest.approx((0.340538, 1.983876), abs=1e-5)
    assert c.df is None


# ----------------------------------------------------------------------------------------
# CUPED


def test_cuped_worked_example() -> None:
    # arm A: y 1 2 3, x 0 1 2; arm B: y 3 5 4, x 1 3 2. Within-arm deviations: A dy = dx =
    # (-1, 0, 1); B dy = dx = (-1, 1, 0): sxy = 2 + 2, sxx = 2 + 2 -> theta = 1, and y is
    # fully explained (reduction 1). Pooled mean of x = 9 / 6 = 1.5:
    # A: y - (x - 1.5) = 2.5 2.5 2.5; B: 3.5 3.5 3.5. Difference 1 = raw 2 - theta * (2 - 1).
    out = S.cuped([[1, 2, 3], [3, 5, 4]], [[0, 1, 2], [1, 3, 2]])
    assert out.theta == 1.0
    assert out.covariate_mean == 1.5
    assert out.variance_reduction == 1.0
    np.testing.assert_allclose(out.adjusted[0], [2.5, 2.5, 2.5])
    np.testing.assert_allclose(out.adjusted[1], [3.5, 3.5, 3.5])


def test_cuped_equals_ancova_with_statsmodels() -> None:
    # the adjusted difference of means is the treatment coefficient of OLS y ~ 1 + arm + x
    rng = np.random.default_rng(11)
    x0, x1 = rng.poisson(5, 400).astype(float), rng.poisson(5, 500).astype(float)
    y0 = 2 + 0.8 * x0 + rng.normal(0, 1, 400)
    y1 = 2.3 + 0.8 * x1 + rng.normal(0, 1, 500)
    out = S.cuped([y0, y1], [x0, x1])
    arm = np.r_[np.zeros(400), np.ones(500)]
    fit = sm.OLS(np.r_[y0, y1], sm.add_constant(np.c_[arm, np.r_[x0, x1]])).fit()
    assert out.adjusted[1].mean() - out.adjusted[0].mean() == pytest.approx(fit.params[1])
    assert out.theta == pytest.approx(fit.params[2])
    # and the variance drops by the squared within-arm correlation
    raw = np.r_[y0 - y0.mean(), y1 - y1.mean()].var()
    adj = np.r_[out.adjusted[0] - out.adjusted[0].mean(), out.adjusted[1] - out.adjusted[1].mean()]
    assert 1 - adj.var() / raw == pytest.approx(out.variance_reduction)
    assert out.variance_reduction > 0.5


def test_cuped_ratio_reduces_to_cuped_of_means_when_den_is_one() -> None:
    rng = np.random.default_rng(5)
    ys = [rng.normal(1, 1, 50), rng.normal(1.2, 1, 60)]
    xs = [y + rng.normal(0, 0.5, y.size) for y in ys]
    ratio = S.cuped_ratio(ys, [np.ones(50), np.ones(60)], xs)
    means = S.cuped(ys, xs)
    for est, adj in zip(ratio.estimates, means.adjusted, strict=True):
        assert est.value == pytest.approx(adj.mean())
        assert est.variance == pytest.approx(adj.var(ddof=1) / adj.size)
    assert ratio.theta == pytest.approx(means.theta)


def test_cuped_without_covariate_variance_changes_nothing() -> None:
    out = S.cuped([[1, 2, 3], [2, 3, 4]], [[5, 5, 5], [5, 5, 5]])
    assert out.theta == 0.0
    np.testing.assert_array_equal(out.adjusted[1], [2, 3, 4])


# ----------------------------------------------------------------------------------------
# Bayesian


def test_beta_binomial_worked_example() -> None:
    # uniform priors; control 0/1 -> Beta(1, 2) (density 2(1-p)), treatment 1/1 -> Beta(2, 1)
    # (density 2p). P(pt > pc) = int 2p (1 - (1-p)^2) dp = int (4p^2 - 2p^3) dp = 4/3 - 1/2
    # = 5/6. Loss: int_{pc > pt} (pc - pt) 2(1-pc) 2pt: inner over pt < pc gives pc^3 / 3,
    # then int pc^3/3 * 2(1 - pc) dpc = (2/3)(1/4 - 1/5) = 1/30.
    # 400k draws: SE of the chance sqrt(5/36 / 4e5) = 0.0006, of the loss < 0.0002; 4 SE.
    b = S.beta_binomial_bayes(0, 1, 1, 1, draws=400_000, seed=1)
    assert b.chance_to_beat == pytest.approx(5 / 6, abs=0.0024)
    assert b.expected_loss == pytest.approx(1 / 30, abs=0.0008)
    assert b == S.beta_binomial_bayes(0, 1, 1, 1, draws=400_000, seed=1)  # seeded


def test_beta_binomial_matches_numerical_integration() -> None:
    x1, n1, x2, n2 = 120, 1000, 145, 1000
    pc, pt = sps.beta(1 + x1, 1 + n1 - x1), sps.beta(1 + x2, 1 + n2 - x2)
    chance, _ = integrate.quad(lambda p: pc.pdf(p) * pt.sf(p), 0, 1, points=[0.12, 0.145])
    b = S.beta_binomial_bayes(x1, n1, x2, n2, draws=400_000, seed=2)
    # SE sqrt(chance (1 - chance) / 4e5) ~ 0.0003; 4 SE
    assert b.chance_to_beat == pytest.approx(chance, abs=0.0013)


def test_normal_bayes_worked_example() -> None:
    # d = 1, s = sqrt(1 + 3) = 2: chance Phi(0.5) = 0.691462;
    # loss = s phi(0.5) - d Phi(-0.5) = 2 * 0.352065 - 0.308538 = 0.395593
    b = S.normal_bayes(S.Estimate(0.0, 1.0, 10), S.Estimate(1.0, 3.0, 10))
    assert b.chance_to_beat == pytest.approx(0.691462, abs=1e-6)
    assert b.expected_loss == pytest.approx(0.395593, abs=1e-6)
    assert b.ci == pytest.approx((1 - 1.959964 * 2, 1 + 1.959964 * 2), abs=1e-5)


# ----------------------------------------------------------------------------------------
# Sequential inference


def test_one_look_at_the_horizon_is_the_fixed_test() -> None:
    # all of alpha is spent at t = 1: the boundary is z_{0.975} and the always-valid p-value
    # is the ordinary two-sided p-value: z = 2.5 -> 2 (1 - Phi(2.5)) = 0.012419
    b = S.spending_boundaries([1.0])
    assert b.z[0] == pytest.approx(1.959964, abs=1e-6)
    seq = S.sequential_test([2.5], [1.0], [1.0])
    assert seq.always_valid_p == pytest.approx(0.012419, rel=1e-3)
    assert seq.cs[0] == pytest.approx((2.5 - 1.959964, 2.5 + 1.959964), abs=1e-6)


def test_lan_demets_boundaries_match_published_values() -> None:
    # Five equally spaced looks, two-sided alpha 0.05 (Jennison & Turnbull 2000; R ldbounds).
    # First O'Brien-Fleming look by hand: spent 4 (1 - Phi(z_{0.9875} / sqrt(0.2))) =
    # 4 (1 - Phi(2.241403 / 0.447214 = 5.011935)) = 1.0777e-6 -> Phi^-1(1 - 5.389e-7) = 4.8769.
    t = [0.2, 0.4, 0.6, 0.8, 1.0]
    obf = S.spending_boundaries(t, 0.05, "obrien_fleming")
    assert obf.z == pytest.approx((4.8769, 3.3569, 2.6803, 2.2898, 2.0310), abs=2e-4)
    poc = S.spending_boundaries(t, 0.05, "pocock")
    assert poc.z == pytest.approx((2.4380, 2.4268, 2.4101, 2.3966, 2.3859), abs=2e-4)
    assert obf.alpha_spent[-1] == pytest.approx(0.05)


@pytest.mark.parametrize("spending", ["obrien_fleming", "pocock"])
def test_boundaries_spend_alpha_exactly_by_monte_carlo(spending: S.Spending) -> None:
    # 14 unequal looks; 200k Brownian paths. SE of a crossing probability near 0.05 is
    # sqrt(0.05 * 0.95 / 2e5) = 0.00049: 4 SE = 0.002.
    t = np.array([0.05, 0.1, 0.2, 0.25, 0.3, 0.4, 0.45, 0.5, 0.6, 0.7, 0.75, 0.85, 0.95, 1.0])
    b = np.array(S.spending_boundaries(t, 0.05, spending).z)
    rng = np.random.default_rng(13)
    steps = rng.standard_normal((200_000, t.size)) * np.sqrt(np.diff(np.r_[0, t]))
    z = np.cumsum(steps, axis=1) / np.sqrt(t)
    crossed = np.abs(z) >= b
    assert crossed.any(axis=1).mean() == pytest.approx(0.05, abs=0.002)
    first_half = crossed[:, :8].any(axis=1).mean()
    assert first_half == pytest.approx(S.alpha_spent(0.5, 0.05, spending), abs=0.002)


def test_always_valid_p_is_monotone_and_consistent_with_the_boundaries() -> None:
    rng = np.random.default_rng(17)
    t = np.arange(1, 11) / 10
    # a drifting difference observed at ten cumulative looks (se shrinks as 1 / sqrt(t))
    ses = 0.1 / np.sqrt(t)
    diffs = 0.12 * np.ones(10) + rng.normal(0, 1, 10) * ses
    ps = [S.sequential_test(diffs[:k], ses[:k], t[:k]).always_valid_p for k in range(1, 11)]
    assert all(b <= a * (1 + 1e-3) for a, b in itertools.pairwise(ps))
    full = S.sequential_test(diffs, ses, t)
    assert full.rejected == (full.always_valid_p <= 0.05)
    # the confidence sequence only shrinks
    widths = [hi - lo for lo, hi in full.cs]
    assert all(b <= a for a, b in itertools.pairwise(widths))


def test_looks_past_the_horizon_spend_nothing() -> None:
    seq = S.sequential_test([0.1, 0.2, 0.3], [0.1, 0.07, 0.06], [0.5, 1.0, 1.5])
    assert math.isinf(seq.boundaries[2])
    assert seq.cs[2] == seq.cs[1]


def test_sequential_input_errors() -> None:
    with pytest.raises(ValueError, match="increase from look to look"):
        S.sequential_test([0.1, 0.2], [0.1, 0.1], [0.5, 0.5])
    with pytest.raises(ValueError, match="positive standard error"):
        S.sequential_test([0.1], [0.0], [1.0])


def test_msprt_worked_example() -> None:
    # V = 1, tau2 = 1, d = 2: Lambda = sqrt(1/2) exp(4 * 1 / (2 * 1 * 2)) = 0.707107 e
    # = 1.922116, p = 1 / Lambda = 0.520260. CS radius sqrt(V (V + tau2) / tau2
    # (2 ln 20 + ln 2)) = sqrt(2 * (5.991465 + 0.693147)) = sqrt(13.369224) = 3.656395.
    m = S.msprt([2.0], [1.0], tau2=1.0)
    assert m.always_valid_p[0] == pytest.approx(0.520260, abs=1e-6)
    assert m.cs[0] == pytest.approx((2 - 3.656395, 2 + 3.656395), abs=1e-6)


def test_msprt_p_is_monotone_over_cumulative_looks() -> None:
    rng = np.random.default_rng(19)
    n = np.arange(1, 31) * 100
    # a null random walk: cumulative mean difference of per-user values with sd 1 per arm
    sums = np.cumsum(rng.normal(0, math.sqrt(2), size=(30, 100)).sum(axis=1))
    diffs, variances = sums / n, 2 / n
    m = S.msprt(diffs, variances, tau2=S.msprt_tau2(variances[-1]))
    assert all(b <= a for a, b in zip(m.always_valid_p, m.always_valid_p[1:], strict=False))
    lows, highs = zip(*m.cs, strict=True)
    assert all(b >= a for a, b in itertools.pairwise(lows))
    assert all(b <= a for a, b in itertools.pairwise(highs))


def test_msprt_tau2_minimises_the_horizon_boundary() -> None:
    # the squared z needed at the horizon, (1 + 1/r)(2 ln 20 + ln(1 + r)), is smallest at r*
    tau2 = S.msprt_tau2(1.0)

    def needed(r: float) -> float:
        return (1 + 1 / r) * (2 * math.log(20) + math.log1p(r))

    assert needed(tau2) < min(needed(tau2 * 0.8), needed(tau2 * 1.25))
    assert 5 < tau2 < 15  # r = 5 needs 9.34, r = 10 needs 9.23, r = 20 needs 9.44 (by hand)


# ----------------------------------------------------------------------------------------
# SRM and multiple testing


def test_srm_worked_examples() -> None:
    # 5100 / 4900 against 50/50: expected 5000 each, chi2 = 2 * 100^2 / 5000 = 4, p = 0.0455
    ok = S.srm_test({"control": 5100, "treatment": 4900}, {"control": 1, "treatment": 1})
    assert ok.chi2 == pytest.approx(4.0)
    assert ok.p == pytest.approx(0.0455, abs=1e-4)
    assert not ok.flagged
    # 5300 / 4700: chi2 = 2 * 300^2 / 5000 = 36, p = 2.0e-9 < 0.001
    bad = S.srm_test({"control": 5300, "treatment": 4700}, {"control": 1, "treatment": 1})
    assert bad.chi2 == pytest.approx(36.0)
    assert bad.flagged


def test_srm_matches_scipy_chisquare() -> None:
    observed = {"a": 2050, "b": 980, "c": 1003}
    weights = {"a": 2.0, "b": 1.0, "c": 1.0}
    srm = S.srm_test(observed, weights)
    total = sum(observed.values())
    ref = sps.chisquare([2050, 980, 1003], [total / 2, total / 4, total / 4])
    assert (srm.chi2, srm.p) == pytest.approx((ref.statistic, ref.pvalue), rel=1e-12)


def test_srm_flags_users_in_a_zero_weight_arm() -> None:
    srm = S.srm_test({"a": 10, "b": 3}, {"a": 1.0, "b": 0.0})
    assert srm.flagged and srm.p == 0.0


def test_holm_and_bh_worked() -> None:
    p = [0.01, 0.04, 0.03, 0.005]
    # Holm: sorted 0.005 0.01 0.03 0.04 times 4 3 2 1 = 0.02 0.03 0.06 0.04, running max
    # 0.02 0.03 0.06 0.06, back in input order:
    assert S.holm(p) == pytest.approx((0.03, 0.06, 0.06, 0.02))
    # BH: sorted times 4 / rank: 0.02 0.02 0.04 0.04, running min from the top: unchanged
    assert S.benjamini_hochberg(p) == pytest.approx((0.02, 0.04, 0.04, 0.02))


def test_holm_and_bh_match_statsmodels() -> None:
    rng = np.random.default_rng(23)
    p = np.r_[rng.uniform(0, 0.05, 6), rng.uniform(0, 1, 14), [0.02, 0.02]]
    assert S.holm(p) == pytest.approx(tuple(multipletests(p, method="holm")[1]), rel=1e-12)
    bh = multipletests(p, method="fdr_bh")[1]
    assert S.benjamini_hochberg(p) == pytest.approx(tuple(bh), rel=1e-12)


# ----------------------------------------------------------------------------------------
# Planning


def test_required_users_worked_example() -> None:
    # p1 0.10, p2 0.11; z_{0.975} = 1.959964, z_{0.8} = 0.841621.
    # pbar 0.105: sqrt(2 * 0.105 * 0.895) = 0.433532; sqrt(0.09 + 0.0979) = 0.433474.
    # (1.959964 * 0.433532 + 0.841621 * 0.433474)^2 / 0.01^2 = 1.214529^2 / 1e-4 = 14750.8
    assert S.required_users_per_arm(0.10, 0.10) == 14751
    assert S.power_two_proportions(0.10, 0.10, 14751) == pytest.approx(0.8, abs=1e-3)


@pytest.mark.parametrize(("base", "mde"), [(0.05, 0.1), (0.3442, 0.05), (0.6, -0.04)])
def test_planning_matches_statsmodels(base: float, mde: float) -> None:
    p2 = base * (1 + mde)
    n = S.required_users_per_arm(base, mde)
    # statsmodels' formula (pooled variance under the null) ignores the far tail, as we do
    ref = samplesize_proportions_2indep_onetail(diff=p2 - base, prop2=base, power=0.8)
    assert n == math.ceil(ref)
    power = S.power_two_proportions(base, mde, n)
    ref_power = power_proportions_2indep(p2 - base, base, n, return_results=False)
    assert power == pytest.approx(ref_power, rel=1e-9)
    # Cohen's arcsine approximation agrees to about 1 %
    h = proportion_effectsize(p2, base)
    approx = NormalIndPower().solve_power(effect_size=h, alpha=0.05, power=0.8)
    assert n == pytest.approx(approx, rel=0.01)


def test_required_users_for_a_mean() -> None:
    # mean 10, sd 5, +10 %: delta 1; 2 * 25 * (1.959964 + 0.841621)^2 / 1 = 392.44 -> 393
    assert S.required_users_per_arm_for_mean(10, 5, 0.1) == 393
    ref = NormalIndPower().solve_power(effect_size=1 / 5, alpha=0.05, power=0.8)
    assert ref == pytest.approx(392.44, abs=0.01)


def test_planning_errors_say_what_to_give() -> None:
    with pytest.raises(ValueError, match="baseline rate"):
        S.required_users_per_arm(0.9, 0.2)
    with pytest.raises(ValueError, match="alpha"):
        S.required_users_per_arm(0.1, 0.1, alpha=5)


def test_relative_interval_falls_back_to_the_linear_scale_at_zero() -> None:
    # treatment 0/100: no log of 0; linear delta: var = 0 / 0.01 + 0 = 0 -> (-1, -1)
    c = S.two_proportion_test(10, 100, 0, 100)
    assert c.rel_scale == "linear"
    assert c.rel_ci == pytest.approx((-1.0, -1.0))
    # and a log-scale comparison widens with the critical value, around the same lift
    d = S.two_proportion_test(100, 1000, 130, 1000)
    assert d.relative_interval(1.959964) == pytest.approx(d.rel_ci)
    lo, hi = d.relative_interval(3.0)
    assert lo < d.rel_ci[0] < 0.3 < d.rel_ci[1] < hi
