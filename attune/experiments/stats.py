"""The statistics of A/B experiments: pure functions over per-user arrays or their summaries.

The unit of analysis is the **user**: every metric is first reduced to one number (or, for ratio
metrics, one numerator and one denominator) per user, so users are the independent samples and
a heavy clicker cannot masquerade as many independent impressions.

What is here, in the order an analysis uses it:

* **Summaries.** :func:`mean_summary` (a per-user mean and its variance) and
  :func:`ratio_summary` (``sum(num) / sum(den)`` over users, e.g. clicks per exposure, whose
  variance comes from the *delta method*: a first-order Taylor expansion of the ratio around the
  means). Both give an :class:`Estimate`: a value and the variance of its sampling distribution.
* **Frequentist tests** of treatment against control, with intervals on the absolute lift
  (``treatment - control``) and on the relative lift (``treatment / control - 1``, its variance
  again by the delta method): :func:`welch_test` (means, unequal variances),
  :func:`two_proportion_test` (rates of users), :func:`ratio_test` (ratio metrics).
* **Variance reduction.** :func:`cuped` and :func:`cuped_ratio` subtract the part of a metric
  that the user's pre-experiment behaviour predicts (CUPED, Deng et al. 2013).
* **Bayesian** summaries: :func:`beta_binomial_bayes` and :func:`normal_bayes` give the chance
  that the treatment beats the control and the expected loss of shipping it.
* **Sequential inference**, so that looking at the results every day is safe:
  :func:`sequential_test` (alpha spending over the planned sample: repeated confidence intervals
  and an always-valid p-value, exact at the planned horizon) and :func:`msprt` (the mixture
  sequential probability ratio test, valid for ever but conservative over a finite horizon).
* **Health and multiplicity.** :func:`srm_test` (sample ratio mismatch), :func:`holm` and
  :func:`benjamini_hochberg` (adjusted p-values across metrics or arms).
* **Planning.** :func:`required_users_per_arm`, :func:`power_two_proportions` and
  :func:`required_users_per_arm_for_mean`.

Every result is a frozen dataclass. Intervals are two-sided at level ``1 - alpha``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import optimize, special
from scipy import stats as st

Spending = Literal["obrien_fleming", "pocock"]
"""Alpha-spending functions of :func:`sequential_test` (Lan and DeMets 1983)."""

FloatArray = NDArray[np.float64]


# ----------------------------------------------------------------------------------------
# Summaries


@dataclass(frozen=True)
class Estimate:
    """A point estimate with the variance of its sampling distribution (``se**2``).

    ``n`` is the number of users behind it (Welch's degrees of freedom need it).
    """

    value: float
    variance: float
    n: int

    @property
    def se(self) -> float:
        """The standard error: the standard deviation of the estimate over repeated samples."""
        return math.sqrt(self.variance)


@dataclass(frozen=True)
class Summary:
    """A per-user metric summarised: users ``n``, their ``mean`` and sample variance ``var``."""

    n: int
    mean: float
    var: float

    @property
    def estimate(self) -> Estimate:
        """The mean as an estimate: its variance is ``var / n``."""
        return Estimate(self.mean, self.var / self.n, self.n)


@dataclass(frozen=True)
class RatioSummary:
    """A ratio metric ``sum(num) / sum(den)`` over ``n`` users, with the moments the delta
    method needs: the means of numerator and denominator, their variances and covariance.

    The ratio of sums equals ``mean(num) / mean(den)``; over repeated samples of users its
    variance is, to first order (the delta method),
    ``(var_num - 2 R cov + R**2 var_den) / (n * mean_den**2)``.
    """

    n: int
    num_mean: float
    den_mean: float
    num_var: float
    den_var: float
    cov: float

    @property
    def ratio(self) -> float:
        """``sum(num) / sum(den)``."""
        return self.num_mean / self.den_mean

    @property
    def variance(self) -> float:
        """Delta-method variance of :attr:`ratio`."""
        r = self.ratio
        per_user = self.num_var - 2 * r * self.cov + r * r * self.den_var
        return max(per_user, 0.0) / (self.n * self.den_mean**2)

    @property
    def estimate(self) -> Estimate:
        """The ratio as an estimate with its delta-method variance."""
        return Estimate(self.ratio, self.variance, self.n)


def _array(x: ArrayLike, name: str) -> FloatArray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of per-user values, got shape {a.shape}")
    return a


def summary_from_sums(n: int, total: float, total_sq: float) -> Summary:
    """A :class:`Summary` from sufficient statistics (what a SQL or Spark aggregation gives):
    users, ``sum(x)`` and ``sum(x**2)``."""
    if n < 2:
        raise ValueError(f"a mean needs at least 2 users to estimate its variance, got {n}")
    mean = total / n
    return Summary(int(n), mean, max(total_sq - n * mean * mean, 0.0) / (n - 1))


def ratio_summary_from_sums(
    n: int, num: float, den: float, num_sq: float, den_sq: float, num_den: float
) -> RatioSummary:
    """A :class:`RatioSummary` from sufficient statistics over users: ``sum(num)``,
    ``sum(den)``, ``sum(num**2)``, ``sum(den**2)`` and ``sum(num * den)``."""
    if n < 2:
        raise ValueError(f"a ratio needs at least 2 users, got {n}")
    if den <= 0:
        raise ValueError("the denominator sums to 0 (no exposures): nothing to divide by")
    mn, md = num / n, den / n
    return RatioSummary(
        n=int(n),
        num_mean=mn,
        den_mean=md,
        num_var=max(num_sq - n * mn * mn, 0.0) / (n - 1),
        den_var=max(den_sq - n * md * md, 0.0) / (n - 1),
        cov=(num_den - n * mn * md) / (n - 1),
    )


def mean_summary(x: ArrayLike) -> Summary:
    """Users, mean and sample variance (``ddof=1``) of per-user values ``x`` (>= 2 users)."""
    a = _array(x, "x")
    if a.size < 2:
        raise ValueError(f"a mean needs at least 2 users to estimate its variance, got {a.size}")
    return Summary(int(a.size), float(a.mean()), float(a.var(ddof=1)))


def ratio_summary(num: ArrayLike, den: ArrayLike) -> RatioSummary:
    """Summarise a ratio metric from per-user numerators and denominators (e.g. clicks and
    exposures); see :class:`RatioSummary`."""
    n_, d_ = _array(num, "num"), _array(den, "den")
    if n_.shape != d_.shape:
        raise ValueError(f"num and den must have one value per user each, got {n_.size}, {d_.size}")
    if n_.size < 2:
        raise ValueError(f"a ratio needs at least 2 users, got {n_.size}")
    if d_.mean() <= 0:
        raise ValueError("the denominator sums to 0 (no exposures): nothing to divide by")
    cov = np.cov(n_, d_, ddof=1)
    return RatioSummary(
        n=int(n_.size),
        num_mean=float(n_.mean()),
        den_mean=float(d_.mean()),
        num_var=float(cov[0, 0]),
        den_var=float(cov[1, 1]),
        cov=float(cov[0, 1]),
    )


def _as_estimate(x: Estimate | Summary | RatioSummary) -> Estimate:
    return x if isinstance(x, Estimate) else x.estimate


# ----------------------------------------------------------------------------------------
# Frequentist comparisons


@dataclass(frozen=True)
class Comparison:
    """Treatment against control on one metric.

    ``abs_lift = treatment - control`` and ``rel_lift = treatment / control - 1``, each with a
    ``1 - alpha`` confidence interval. The relative interval applies the delta method to the
    *log* of the ratio of two independent estimates, ``se(log(t / c))**2 = var_t / t**2 +
    var_c / c**2`` (``rel_se``), and maps ``log(t / c) +- crit rel_se`` back: the interval is
    asymmetric, never below -100 %, and excludes 0 when the absolute one does far more
    consistently than the symmetric ``rel +- crit sqrt(var_t / c**2 + t**2 var_c / c**4)``,
    which is used (``rel_scale = "linear"``) only when an estimate is not positive.
    ``df`` is ``None`` for a normal (z) test.
    """

    control: float
    treatment: float
    abs_lift: float
    abs_ci: tuple[float, float]
    rel_lift: float
    rel_ci: tuple[float, float]
    p_value: float
    statistic: float
    se: float
    rel_se: float
    df: float | None
    alpha: float
    rel_scale: Literal["log", "linear"] = "log"

    @property
    def significant(self) -> bool:
        """The p-value is below ``alpha`` (the interval on the absolute lift excludes 0)."""
        return self.p_value < self.alpha

    def relative_interval(self, crit: float) -> tuple[float, float]:
        """The relative lift's interval for a critical value ``crit`` (e.g. a sequential
        boundary instead of ``z_{1-alpha/2}``)."""
        return _relative_interval(self.rel_lift, self.rel_se, self.rel_scale, crit)


_NORMAL = NormalDist()


def _norm_sf(x: float) -> float:
    # math.erfc instead of scipy.stats.norm.sf: 50x faster on scalars, the simulations call it
    return 0.5 * math.erfc(x / math.sqrt(2))


def _critical(alpha: float, df: float | None) -> float:
    _check_alpha(alpha)
    q = 1 - alpha / 2
    return _NORMAL.inv_cdf(q) if df is None else float(st.t.ppf(q, df))


def _check_alpha(alpha: float) -> None:
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}: e.g. 0.05 for 95 % intervals")


def _two_sided_p(stat: float, df: float | None) -> float:
    if math.isnan(stat):
        return 1.0
    s = abs(stat)
    return 2 * _norm_sf(s) if df is None else float(2 * st.t.sf(s, df))


def _relative(c: Estimate, t: Estimate) -> tuple[float, float, Literal["log", "linear"]]:
    if c.value == 0:
        return math.nan, math.nan, "linear"
    rel = t.value / c.value - 1
    if c.value > 0 and t.value > 0:
        return rel, math.sqrt(t.variance / t.value**2 + c.variance / c.value**2), "log"
    var = t.variance / c.value**2 + t.value**2 * c.variance / c.value**4
    return rel, math.sqrt(var), "linear"


def _relative_interval(
    rel: float, se: float, scale: Literal["log", "linear"], crit: float
) -> tuple[float, float]:
    if scale == "log":
        center = math.log1p(rel)
        return math.expm1(center - crit * se), math.expm1(center + crit * se)
    return rel - crit * se, rel + crit * se


def compare(
    control: Estimate | Summary | RatioSummary,
    treatment: Estimate | Summary | RatioSummary,
    alpha: float = 0.05,
    df: float | None = None,
) -> Comparison:
    """Compare two independent estimates with a z test (``df=None``) or a t test with ``df``
    degrees of freedom; see :class:`Comparison`."""
    c, t = _as_estimate(control), _as_estimate(treatment)
    crit = _critical(alpha, df)
    diff = t.value - c.value
    se = math.sqrt(c.variance + t.variance)
    stat = diff / se if se > 0 else (0.0 if diff == 0 else math.copysign(math.inf, diff))
    rel, rel_se, scale = _relative(c, t)
    return Comparison(
        control=c.value,
        treatment=t.value,
        abs_lift=diff,
        abs_ci=(diff - crit * se, diff + crit * se),
        rel_lift=rel,
        rel_ci=_relative_interval(rel, rel_se, scale, crit),
        p_value=_two_sided_p(stat, df),
        statistic=stat,
        se=se,
        rel_se=rel_se,
        df=df,
        alpha=alpha,
        rel_scale=scale,
    )


def welch_degrees_of_freedom(a: Summary, b: Summary) -> float:
    """Welch-Satterthwaite degrees of freedom of the difference of two means."""
    va, vb = a.var / a.n, b.var / b.n
    den = va**2 / (a.n - 1) + vb**2 / (b.n - 1)
    return (va + vb) ** 2 / den if den > 0 else math.inf


def welch_test(a: Summary, b: Summary, alpha: float = 0.05) -> Comparison:
    """Welch's t test of the means of ``b`` (treatment) and ``a`` (control), which does not
    assume equal variances; the relative interval uses the same t quantile."""
    df = welch_degrees_of_freedom(a, b)
    return compare(a, b, alpha, None if math.isinf(df) else df)


def ratio_test(a: RatioSummary, b: RatioSummary, alpha: float = 0.05) -> Comparison:
    """z test of two ratio metrics (``b`` treatment, ``a`` control) with delta-method variances."""
    return compare(a, b, alpha)


def two_proportion_test(x1: int, n1: int, x2: int, n2: int, alpha: float = 0.05) -> Comparison:
    """Two-proportion z test of ``x2 / n2`` (treatment) against ``x1 / n1`` (control).

    The p-value uses the pooled rate (the variance the null hypothesis of equal rates implies,
    as ``statsmodels.stats.proportion.proportions_ztest``); the intervals use each arm's own
    variance ``p (1 - p) / n`` (Wald), because they describe the lift, not the null.
    """
    if min(n1, n2) <= 0 or not (0 <= x1 <= n1 and 0 <= x2 <= n2):
        raise ValueError(f"need 0 <= x <= n and n > 0 per arm, got {x1}/{n1} and {x2}/{n2}")
    p1, p2 = x1 / n1, x2 / n2
    c = Estimate(p1, p1 * (1 - p1) / n1, n1)
    t = Estimate(p2, p2 * (1 - p2) / n2, n2)
    out = compare(c, t, alpha)
    pooled = (x1 + x2) / (n1 + n2)
    se0 = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    diff = p2 - p1
    stat = diff / se0 if se0 > 0 else 0.0
    return Comparison(
        control=out.control,
        treatment=out.treatment,
        abs_lift=out.abs_lift,
        abs_ci=out.abs_ci,
        rel_lift=out.rel_lift,
        rel_ci=out.rel_ci,
        p_value=_two_sided_p(stat, None),
        statistic=stat,
        se=out.se,
        rel_se=out.rel_se,
        df=None,
        alpha=alpha,
        rel_scale=out.rel_scale,
    )


# ----------------------------------------------------------------------------------------
# CUPED


@dataclass(frozen=True, eq=False)
class Cuped:
    """A metric adjusted with a pre-experiment covariate (CUPED).

    Each user's value ``y`` becomes ``y - theta * (x - mean(x))``, where ``x`` is the same user's
    behaviour before the experiment (it cannot depend on the treatment) and ``mean(x)`` is taken
    over all users of all arms, so every arm's mean stays unbiased while the part of ``y`` that
    ``x`` predicts leaves the variance. ``theta`` is the slope of ``y`` on ``x`` pooled within
    arms, which makes the adjusted difference of means equal the treatment coefficient of the
    regression ``y ~ arm + x`` (ANCOVA). ``variance_reduction`` is the share of the within-arm
    variance removed (the squared within-arm correlation of ``y`` and ``x``).
    """

    adjusted: tuple[FloatArray, ...]
    theta: float
    covariate_mean: float
    variance_reduction: float


def _pooled_slope(ys: Sequence[FloatArray], xs: Sequence[FloatArray]) -> tuple[float, float]:
    sxy = sxx = syy = 0.0
    for y, x in zip(ys, xs, strict=True):
        dy, dx = y - y.mean(), x - x.mean()
        sxy += float(dx @ dy)
        sxx += float(dx @ dx)
        syy += float(dy @ dy)
    if sxx <= 0:
        return 0.0, 0.0
    theta = sxy / sxx
    reduction = sxy * sxy / (sxx * syy) if syy > 0 else 0.0
    return theta, reduction


def _arms(values: Sequence[ArrayLike], name: str) -> list[FloatArray]:
    arms = [_array(v, name) for v in values]
    if not arms:
        raise ValueError(f"{name}: give one array per arm")
    return arms


def cuped(ys: Sequence[ArrayLike], xs: Sequence[ArrayLike]) -> Cuped:
    """CUPED over the arms of one experiment: ``ys[i]`` and ``xs[i]`` are the metric and the
    pre-period covariate of the users of arm ``i``; see :class:`Cuped`."""
    y_arms, x_arms = _arms(ys, "ys"), _arms(xs, "xs")
    if len(y_arms) != len(x_arms) or any(
        y.shape != x.shape for y, x in zip(y_arms, x_arms, strict=True)
    ):
        raise ValueError("ys and xs must hold one array per arm, with one value per user each")
    theta, reduction = _pooled_slope(y_arms, x_arms)
    x_mean = float(np.concatenate(x_arms).mean())
    adjusted = tuple(y - theta * (x - x_mean) for y, x in zip(y_arms, x_arms, strict=True))
    return Cuped(adjusted, theta, x_mean, reduction)


@dataclass(frozen=True)
class CupedRatio:
    """CUPED for ratio metrics: per arm, the adjusted ratio as an :class:`Estimate`.

    A ratio ``R = sum(num) / sum(den)`` is first *linearised*: user ``i`` contributes
    ``(num_i - R den_i) / mean(den)``, whose mean is 0 and whose variance over ``n`` is the
    delta-method variance of ``R``. CUPED then adjusts these contributions with the covariate
    (theta pooled within arms), and the adjusted ratio is ``R`` plus their adjusted mean.
    """

    estimates: tuple[Estimate, ...]
    theta: float
    variance_reduction: float


def cuped_ratio(
    nums: Sequence[ArrayLike], dens: Sequence[ArrayLike], xs: Sequence[ArrayLike]
) -> CupedRatio:
    """CUPED-adjusted ratio metric per arm; see :class:`CupedRatio`."""
    summaries = [ratio_summary(n, d) for n, d in zip(nums, dens, strict=True)]
    lin = [
        (_array(n, "nums") - s.ratio * _array(d, "dens")) / s.den_mean
        for n, d, s in zip(nums, dens, summaries, strict=True)
    ]
    adj = cuped(lin, xs)
    estimates = tuple(
        Estimate(s.ratio + float(a.mean()), float(a.var(ddof=1)) / a.size, s.n)
        for s, a in zip(summaries, adj.adjusted, strict=True)
    )
    return CupedRatio(estimates, adj.theta, adj.variance_reduction)


# ----------------------------------------------------------------------------------------
# Bayesian


@dataclass(frozen=True)
class Bayes:
    """Posterior comparison of treatment and control (higher is better).

    ``chance_to_beat`` is the posterior probability that the treatment's true value exceeds the
    control's; ``expected_loss`` is ``E[max(control - treatment, 0)]``, what shipping the
    treatment costs on average (in the metric's units) in the worlds where it is worse. ``ci``
    is the central ``1 - alpha`` credible interval of ``treatment - control``.
    """

    chance_to_beat: float
    expected_loss: float
    ci: tuple[float, float]


def beta_binomial_bayes(
    x1: int,
    n1: int,
    x2: int,
    n2: int,
    draws: int = 200_000,
    seed: int = 0,
    prior: tuple[float, float] = (1.0, 1.0),
    alpha: float = 0.05,
) -> Bayes:
    """Rates of users (control ``x1/n1``, treatment ``x2/n2``) with Beta(``prior``) priors:
    each posterior is Beta(a + x, b + n - x); the summaries are Monte-Carlo averages over
    ``draws`` joint draws from a generator seeded with ``seed`` (reproducible)."""
    if min(n1, n2) <= 0 or not (0 <= x1 <= n1 and 0 <= x2 <= n2):
        raise ValueError(f"need 0 <= x <= n and n > 0 per arm, got {x1}/{n1} and {x2}/{n2}")
    _check_alpha(alpha)
    a, b = prior
    rng = np.random.default_rng(seed)
    pc = rng.beta(a + x1, b + n1 - x1, size=draws)
    pt = rng.beta(a + x2, b + n2 - x2, size=draws)
    diff = pt - pc
    lo, hi = np.quantile(diff, [alpha / 2, 1 - alpha / 2])
    return Bayes(
        chance_to_beat=float((diff > 0).mean()),
        expected_loss=float(np.maximum(-diff, 0).mean()),
        ci=(float(lo), float(hi)),
    )


def normal_bayes(
    a: Estimate | Summary | RatioSummary,
    b: Estimate | Summary | RatioSummary,
    alpha: float = 0.05,
) -> Bayes:
    """Means (control ``a``, treatment ``b``) with flat priors: the posterior of the difference
    is normal, ``N(b - a, se_a**2 + se_b**2)``, so the summaries have closed forms:
    chance ``Phi(d / s)`` and loss ``s phi(d / s) - d Phi(-d / s)``."""
    _check_alpha(alpha)
    c, t = _as_estimate(a), _as_estimate(b)
    d = t.value - c.value
    s = math.sqrt(c.variance + t.variance)
    if s == 0:
        return Bayes(float(d > 0) + 0.5 * float(d == 0), max(-d, 0.0), (d, d))
    z = d / s
    crit = float(st.norm.ppf(1 - alpha / 2))
    return Bayes(
        chance_to_beat=float(st.norm.cdf(z)),
        expected_loss=float(s * st.norm.pdf(z) - d * st.norm.cdf(-z)),
        ci=(d - crit * s, d + crit * s),
    )


# ----------------------------------------------------------------------------------------
# Sequential inference: alpha spending (finite horizon) and the mixture SPRT (for ever)


def alpha_spent(
    t: ArrayLike, alpha: float = 0.05, spending: Spending = "obrien_fleming"
) -> FloatArray:
    """The share of ``alpha`` a design may have spent by information fraction ``t`` (the share
    of the planned sample seen so far, capped at 1).

    ``obrien_fleming``: ``alpha/2`` per side, spent as ``2 (1 - Phi(z_{1-alpha/4} / sqrt(t)))``,
    spends almost nothing early, so the final look keeps nearly a fixed-horizon test's power
    (its last boundary is close to 1.96 at alpha 0.05). ``pocock``:
    ``alpha log(1 + (e - 1) t)`` spends evenly, so early looks can stop sooner.
    """
    _check_alpha(alpha)
    tt = np.clip(np.asarray(t, dtype=np.float64), 0.0, 1.0)
    if spending == "obrien_fleming":
        # per side (alpha / 2 each), as gsDesign's sfLDOF and R's ldbounds spend
        z = st.norm.isf(alpha / 4)
        with np.errstate(divide="ignore"):
            out = 4 * st.norm.sf(z / np.sqrt(tt))
        return np.asarray(np.where(tt > 0, out, 0.0), dtype=np.float64)
    if spending == "pocock":
        return np.asarray(alpha * np.log1p((math.e - 1) * tt), dtype=np.float64)
    raise ValueError(f"unknown alpha spending {spending!r}: expected obrien_fleming or pocock")


@dataclass(frozen=True)
class Boundaries:
    """Two-sided group-sequential boundaries on the z scale, one per look.

    A look ``k`` rejects "no difference" when ``|z_k| >= z[k]``. The boundaries are found
    recursively so that the probability, under the null, of crossing first at look ``k`` is the
    alpha spent between look ``k - 1`` and look ``k``: however many looks are taken and
    whenever, the chance of ever crossing by the planned horizon is ``alpha``. ``inf`` means
    the look may spend nothing (its information did not grow, or the horizon was passed).
    """

    info_fractions: tuple[float, ...]
    z: tuple[float, ...]
    alpha_spent: tuple[float, ...]


_GRID_MIN, _GRID_MAX, _TAIL_SD = 101, 801, 10.0


def _info_fractions(info_fractions: ArrayLike) -> FloatArray:
    t = np.asarray(info_fractions, dtype=np.float64)
    if t.ndim != 1 or t.size == 0:
        raise ValueError("info_fractions must be a non-empty 1-D sequence, one per look")
    if t[0] <= 0 or np.any(np.diff(t) <= 0):
        raise ValueError(
            f"info fractions must be positive and increase from look to look, got {t.tolist()}: "
            "give each look's cumulative share of the planned sample"
        )
    return t


def _boundary_recursion(
    t: FloatArray, spent: FloatArray, z_obs: FloatArray | None = None
) -> tuple[FloatArray, bool]:
    """Boundaries for cumulative spending ``spent`` at fractions ``t`` (``t`` capped at 1).

    The score ``S_k = z_k sqrt(t_k)`` is a Brownian motion in ``t``; the density of ``S`` over
    the paths that have not crossed yet is carried on a grid (trapezoid rule) from look to look.
    With ``z_obs``, stops at the first look the observed path crosses and says so.
    """
    k_looks = t.size
    bounds = np.full(k_looks, np.inf)
    tc = np.minimum(t, 1.0)
    inc = np.diff(np.concatenate([[0.0], spent]))
    x: FloatArray | None = None
    q: FloatArray | None = None  # probability mass of each grid point (density * trapezoid weight)
    prev_t = 0.0
    for k in range(k_looks):
        sd_now = math.sqrt(tc[k])
        step = tc[k] - prev_t
        if step <= 0:
            # the horizon was passed before: nothing left to spend, the density stays
            if z_obs is not None and abs(z_obs[k]) >= bounds[k]:
                return bounds, True
            continue
        sigma = math.sqrt(step)
        if q is None:
            b = float(st.norm.isf(inc[k] / 2)) if inc[k] > 0 else math.inf
            c = b * sd_now
        else:
            assert x is not None
            c = _crossing_point(x, q, sigma, inc[k])
            b = c / sd_now
        bounds[k] = b
        if z_obs is not None and abs(z_obs[k]) >= b:
            return bounds, True
        # the density of S_k on the continuation region |S_k| < c, on a grid of spacing
        # sigma / 4 (the normal kernel is then integrated to ~1e-6 relative; 801 points at most)
        half = min(c, _TAIL_SD * sd_now)
        m = int(np.clip(math.ceil(8 * half / sigma) + 1, _GRID_MIN, _GRID_MAX)) | 1
        y = np.linspace(-half, half, m)
        if q is None:
            f = _phi(y / sd_now) / sd_now
        else:
            assert x is not None
            f = (_phi((y[:, None] - x[None, :]) / sigma) / sigma) @ q
        h = y[1] - y[0]
        weights = np.full(m, h)
        weights[0] = weights[-1] = h / 2
        x, q = y, f * weights
        prev_t = tc[k]
    return bounds, False


def _phi(z: FloatArray) -> FloatArray:
    out: FloatArray = np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    return out


def _logsumexp(a: FloatArray) -> float:
    top = float(a.max())
    return top + math.log(float(np.exp(a - top).sum()))


def _crossing_point(x: FloatArray, q: FloatArray, sigma: float, target: float) -> float:
    """The ``c`` at which the mass ``q`` at ``x`` moves beyond ``+-c`` with probability
    ``target`` after a normal step of sd ``sigma``."""
    if target <= 0:
        return math.inf
    logq = np.log(np.maximum(q, 1e-300))
    log_target = math.log(target)
    if log_target >= _logsumexp(logq):
        return 0.0

    def excess(c: float) -> float:
        # log P(|S_k| >= c, no earlier crossing) - log target, stable far in the tails
        up = logq + special.log_ndtr(-(c - x) / sigma)
        down = logq + special.log_ndtr(-(c + x) / sigma)
        return _logsumexp(np.concatenate([up, down])) - log_target

    hi = float(np.max(np.abs(x))) + sigma
    while excess(hi) > 0:
        hi *= 2
    return float(optimize.brentq(excess, 0.0, hi, xtol=1e-10))


def spending_boundaries(
    info_fractions: ArrayLike, alpha: float = 0.05, spending: Spending = "obrien_fleming"
) -> Boundaries:
    """Group-sequential boundaries for looks at ``info_fractions`` (Lan-DeMets alpha
    spending); see :class:`Boundaries` and :func:`alpha_spent`."""
    t = _info_fractions(info_fractions)
    spent = alpha_spent(t, alpha, spending)
    bounds, _ = _boundary_recursion(t, spent)
    return Boundaries(tuple(t.tolist()), tuple(bounds.tolist()), tuple(spent.tolist()))


@dataclass(frozen=True)
class Sequential:
    """Sequential inference on a difference after ``k`` cumulative looks.

    ``cs`` is the confidence sequence: at every look, the repeated confidence interval
    ``diff_k +- z[k] se_k`` intersected with the earlier ones; all of them hold *together* with
    probability ``1 - alpha``, so whatever look one stops at, its interval is valid.
    ``always_valid_p`` is the smallest ``alpha`` at which some look so far would have crossed
    its boundary; fed growing cumulative data it can only go down. ``rejected`` says whether a
    look crossed at the ``alpha`` asked (equivalently ``always_valid_p <= alpha``).
    """

    z: tuple[float, ...]
    boundaries: tuple[float, ...]
    cs: tuple[tuple[float, float], ...]
    always_valid_p: float
    rejected: bool
    alpha: float


_P_FLOOR = 1e-12


def _sequential_p(t: FloatArray, z: FloatArray, spending: Spending) -> float:
    def crosses(log_a: float) -> bool:
        a = math.exp(log_a)
        return _boundary_recursion(t, alpha_spent(t, min(a, 1 - 1e-12), spending), z)[1]

    lo, hi = math.log(_P_FLOOR), 0.0
    if crosses(lo):
        return _P_FLOOR
    # bisection in log alpha to a relative precision of 1e-4
    while hi - lo > 1e-4:
        mid = (lo + hi) / 2
        if crosses(mid):
            hi = mid
        else:
            lo = mid
    return min(1.0, math.exp(hi))


def sequential_test(
    diffs: ArrayLike,
    ses: ArrayLike,
    info_fractions: ArrayLike,
    alpha: float = 0.05,
    spending: Spending = "obrien_fleming",
) -> Sequential:
    """Group-sequential test of a difference observed at cumulative looks.

    ``diffs[k]`` and ``ses[k]`` are the estimated difference (treatment - control) and its
    standard error using all data up to look ``k``; ``info_fractions[k]`` is the share of the
    planned sample seen by then (e.g. users / planned users). Alpha is spent by information
    (:func:`alpha_spent`), so looking every day, or on any other schedule, keeps the chance of
    a false positive by the planned horizon at ``alpha``; looks past the horizon spend nothing
    more and keep the interval of the last look within it. See :class:`Sequential`.
    """
    t = _info_fractions(info_fractions)
    d, s = np.asarray(diffs, dtype=np.float64), np.asarray(ses, dtype=np.float64)
    if d.shape != t.shape or s.shape != t.shape:
        raise ValueError("diffs, ses and info_fractions need one value per look each")
    if np.any(s <= 0):
        raise ValueError("every look needs a positive standard error (at least 2 users per arm)")
    z = d / s
    bounds = spending_boundaries(t, alpha, spending)
    b = np.asarray(bounds.z)
    lo, hi = -math.inf, math.inf
    cs: list[tuple[float, float]] = []
    for k in range(t.size):
        if math.isfinite(b[k]):
            nlo, nhi = max(lo, d[k] - b[k] * s[k]), min(hi, d[k] + b[k] * s[k])
            # an empty intersection means the sequence already missed (probability <= alpha):
            # fall back to this look's own interval rather than report nothing
            lo, hi = (nlo, nhi) if nlo <= nhi else (d[k] - b[k] * s[k], d[k] + b[k] * s[k])
        cs.append((float(lo), float(hi)))
    rejected = bool(np.any(np.abs(z) >= b))
    p = _sequential_p(t, z, spending)
    return Sequential(
        z=tuple(z.tolist()),
        boundaries=bounds.z,
        cs=tuple(cs),
        always_valid_p=p,
        rejected=rejected,
        alpha=alpha,
    )


@dataclass(frozen=True)
class Msprt:
    """The mixture sequential probability ratio test of a difference, look by look.

    At each look the evidence is the likelihood ratio of "the difference is ``theta``" against
    "it is 0", averaged over ``theta ~ N(0, tau2)``: for an estimate ``d`` with variance ``V``,
    ``Lambda = sqrt(V / (V + tau2)) exp(d**2 tau2 / (2 V (V + tau2)))``. Under the null it is
    a martingale, so by Ville's inequality it ever exceeds ``1 / alpha`` with probability at
    most ``alpha``: ``always_valid_p = min(1, 1 / max Lambda so far)`` and the confidence
    sequence (the differences not yet rejected) are valid at any stopping time, with no
    horizon. The price is conservatism over a finite horizon.
    """

    always_valid_p: tuple[float, ...]
    cs: tuple[tuple[float, float], ...]
    log_lr: tuple[float, ...]
    tau2: float
    alpha: float


def msprt(diffs: ArrayLike, variances: ArrayLike, tau2: float, alpha: float = 0.05) -> Msprt:
    """mSPRT over cumulative looks (``diffs[k]`` and its ``variances[k]`` from all data up to
    look ``k``) with mixing variance ``tau2``; see :class:`Msprt` and :func:`msprt_tau2`."""
    _check_alpha(alpha)
    if tau2 <= 0:
        raise ValueError(f"tau2 must be > 0, got {tau2}: see msprt_tau2() for a choice")
    d = np.atleast_1d(np.asarray(diffs, dtype=np.float64))
    v = np.atleast_1d(np.asarray(variances, dtype=np.float64))
    if d.shape != v.shape or np.any(v <= 0):
        raise ValueError("diffs and variances need one value per look; variances must be > 0")
    log_lr = 0.5 * np.log(v / (v + tau2)) + d**2 * tau2 / (2 * v * (v + tau2))
    p = np.minimum(1.0, np.exp(-np.maximum.accumulate(log_lr)))
    radius = np.sqrt(v * (v + tau2) / tau2 * (2 * math.log(1 / alpha) + np.log((v + tau2) / v)))
    lo, hi = -math.inf, math.inf
    cs: list[tuple[float, float]] = []
    for dk, rk in zip(d, radius, strict=True):
        nlo, nhi = max(lo, dk - rk), min(hi, dk + rk)
        lo, hi = (nlo, nhi) if nlo <= nhi else (dk - rk, dk + rk)
        cs.append((float(lo), float(hi)))
    return Msprt(tuple(p.tolist()), tuple(cs), tuple(log_lr.tolist()), tau2, alpha)


def msprt_tau2(horizon_variance: float, alpha: float = 0.05) -> float:
    """The mixing variance that makes the mSPRT's rejection region at the planned horizon
    (where the difference's estimate has variance ``horizon_variance``) as small as possible:
    ``tau2 = r V`` with ``r`` minimising ``(1 + 1/r) (2 log(1/alpha) + log(1 + r))``."""
    _check_alpha(alpha)
    if horizon_variance <= 0:
        raise ValueError("horizon_variance must be > 0")
    k = 2 * math.log(1 / alpha)
    res = optimize.minimize_scalar(
        lambda lr: (1 + math.exp(-lr)) * (k + math.log1p(math.exp(lr))),
        bounds=(-5.0, 10.0),
        method="bounded",
    )
    return float(math.exp(res.x) * horizon_variance)


# ----------------------------------------------------------------------------------------
# Sample ratio mismatch and multiple testing


@dataclass(frozen=True)
class Srm:
    """Sample ratio mismatch: a chi-square goodness-of-fit test of the users per arm against
    the allocation weights. A tiny p-value means assignment or exposure logging is broken
    (users lost or duplicated in one arm), so no metric of the experiment can be trusted;
    ``flagged`` at ``p < threshold`` (0.001: a healthy experiment is flagged once in 1000)."""

    chi2: float
    p: float
    flagged: bool
    expected: Mapping[str, float]


SRM_THRESHOLD = 0.001


def srm_test(
    observed: Mapping[str, int], weights: Mapping[str, float], threshold: float = SRM_THRESHOLD
) -> Srm:
    """Chi-square test of ``observed`` users per arm against ``weights`` (relative shares);
    an arm with weight 0 must have no users. See :class:`Srm`."""
    if set(observed) != set(weights):
        raise ValueError(
            f"observed arms {sorted(observed)} differ from weighted arms {sorted(weights)}: "
            "give a weight for every arm"
        )
    total_w = sum(weights.values())
    if total_w <= 0 or any(w < 0 for w in weights.values()):
        raise ValueError("weights must be >= 0 with a positive sum")
    total = sum(observed.values())
    expected = {k: total * weights[k] / total_w for k in weights}
    if total == 0:
        return Srm(0.0, 1.0, False, expected)
    if any(observed[k] > 0 and expected[k] == 0 for k in weights):
        return Srm(math.inf, 0.0, True, expected)
    live = [k for k in weights if expected[k] > 0]
    if len(live) < 2:
        return Srm(0.0, 1.0, False, expected)
    chi2 = sum((observed[k] - expected[k]) ** 2 / expected[k] for k in live)
    p = float(st.chi2.sf(chi2, len(live) - 1))
    return Srm(float(chi2), p, p < threshold, expected)


def _pvalues(pvalues: Sequence[float]) -> FloatArray:
    p = np.asarray(pvalues, dtype=np.float64)
    if p.ndim != 1 or np.any((p < 0) | (p > 1)) or np.any(np.isnan(p)):
        raise ValueError(f"p-values must be a 1-D sequence of numbers in [0, 1], got {pvalues}")
    return p


def holm(pvalues: Sequence[float]) -> tuple[float, ...]:
    """Holm's step-down adjusted p-values (family-wise error rate): sorted ascending, the
    ``i``-th smallest (from 0) becomes ``max_{j <= i} min(1, (m - j) p_(j))``."""
    p = _pvalues(pvalues)
    m = p.size
    if m == 0:
        return ()
    order = np.argsort(p, kind="stable")
    adj = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = adj
    return tuple(out.tolist())


def benjamini_hochberg(pvalues: Sequence[float]) -> tuple[float, ...]:
    """Benjamini-Hochberg adjusted p-values (false discovery rate): sorted ascending, the
    ``i``-th smallest (from 1) becomes ``min_{j >= i} min(1, m p_(j) / j)``."""
    p = _pvalues(pvalues)
    m = p.size
    if m == 0:
        return ()
    order = np.argsort(p, kind="stable")
    scaled = p[order] * m / np.arange(1, m + 1)
    adj = np.minimum(1.0, np.minimum.accumulate(scaled[::-1])[::-1])
    out = np.empty(m)
    out[order] = adj
    return tuple(out.tolist())


# ----------------------------------------------------------------------------------------
# Planning


def _z_quantiles(alpha: float, power: float) -> tuple[float, float]:
    _check_alpha(alpha)
    if not 0 < power < 1:
        raise ValueError(f"power must be in (0, 1), got {power}: e.g. 0.8")
    return float(st.norm.isf(alpha / 2)), float(st.norm.ppf(power))


def _check_rates(p1: float, p2: float) -> None:
    if not (0 < p1 < 1 and 0 < p2 < 1):
        raise ValueError(
            f"baseline and lifted rates must be in (0, 1), got {p1:.4g} and {p2:.4g}: "
            "give a baseline rate (e.g. 0.05) and a relative lift (e.g. 0.05 for +5 %)"
        )


def required_users_per_arm(
    baseline_rate: float, relative_mde: float, alpha: float = 0.05, power: float = 0.8
) -> int:
    """Users per arm for the two-sided two-proportion z test (pooled variance under the null,
    each arm's own under the alternative) to detect ``baseline * (1 + relative_mde)``:
    ``n = (z_{1-a/2} sqrt(2 pbar qbar) + z_power sqrt(p1 q1 + p2 q2))**2 / (p2 - p1)**2``."""
    za, zb = _z_quantiles(alpha, power)
    p1 = baseline_rate
    p2 = baseline_rate * (1 + relative_mde)
    _check_rates(p1, p2)
    if relative_mde == 0:
        raise ValueError("relative_mde must not be 0: no sample detects a zero effect")
    pbar = (p1 + p2) / 2
    num = za * math.sqrt(2 * pbar * (1 - pbar)) + zb * math.sqrt(p1 * (1 - p1) + p2 * (1 - p2))
    return math.ceil((num / (p2 - p1)) ** 2)


def power_two_proportions(
    baseline_rate: float, relative_lift: float, n_per_arm: int, alpha: float = 0.05
) -> float:
    """Power of the two-sided two-proportion z test with ``n_per_arm`` users per arm when the
    true rates are ``baseline`` and ``baseline * (1 + relative_lift)`` (both tails counted)."""
    za = float(st.norm.isf(alpha / 2))
    p1 = baseline_rate
    p2 = baseline_rate * (1 + relative_lift)
    _check_rates(p1, p2)
    pbar = (p1 + p2) / 2
    se0 = math.sqrt(2 * pbar * (1 - pbar) / n_per_arm)
    se1 = math.sqrt((p1 * (1 - p1) + p2 * (1 - p2)) / n_per_arm)
    d = p2 - p1
    return float(st.norm.cdf((d - za * se0) / se1) + st.norm.cdf((-d - za * se0) / se1))


def required_users_per_arm_for_mean(
    mean: float, sd: float, relative_mde: float, alpha: float = 0.05, power: float = 0.8
) -> int:
    """Users per arm for a two-sided z test of means with per-user standard deviation ``sd``
    to detect ``mean * relative_mde``: ``n = 2 sd**2 (z_{1-a/2} + z_power)**2 / delta**2``."""
    za, zb = _z_quantiles(alpha, power)
    delta = mean * relative_mde
    if delta == 0 or sd <= 0:
        raise ValueError("need a non-zero mean * relative_mde and a positive sd")
    return math.ceil(2 * sd * sd * (za + zb) ** 2 / delta**2)
