"""Off-policy evaluation: how would another policy have done, estimated from logged data.

A logging (*behaviour*) policy ``pi_b`` showed action ``a_i`` in round ``i`` (context ``x_i``)
with probability ``p_i = pi_b(a_i | x_i)``, the *propensity*, and observed reward ``r_i`` (a
click: 0 or 1). The *policy value* of an evaluation policy ``pi_e`` is the mean reward it would
get, ``V(pi_e) = E_x[ sum_a pi_e(a|x) q(x, a) ]`` with ``q(x, a) = E[r | x, a]``. The estimators
here differ in how they trade bias for variance:

* :func:`ipw` (inverse propensity weighting): reweight each logged reward by how much more (or
  less) often ``pi_e`` would have chosen the logged action, ``w_i = pi_e(a_i|x_i) / p_i``.
* :func:`snipw` (self-normalized IPW): divide by the sum of the weights instead of ``n``.
* :func:`direct_method` (DM): average a reward model's predictions under ``pi_e``.
* :func:`doubly_robust` (DR): the DM plus an IPW correction of the model's residuals.

The reward model ``q_hat`` of DM and DR must be *cross-fitted* (each round's prediction comes
from a model that did not see that round, :func:`attune.bandits.reward_model.cross_fit`);
otherwise the model's over-fit to a round's own reward leaks into DR's correction term and
cancels it.

Arrays, per round ``i = 0..n-1`` (``A`` actions):

``reward`` (n,)        the observed reward ``r_i``
``pscore`` (n,)        the logged propensity ``p_i`` of the logged action, in (0, 1]
``action`` (n,)        the logged action ``a_i``, an integer in ``[0, A)``
``pi_e_logged`` (n,)   the evaluation policy's probability of the logged action
``pi_e`` (n, A)        the evaluation policy's whole distribution in round ``i`` (rows sum to 1)
``q_hat`` (n, A)       the reward model's prediction for every action in round ``i``

Intervals come from :func:`bootstrap_intervals`: a percentile bootstrap over rounds, seeded.
Every estimator is a mean of per-round terms (or, for SNIPW, a ratio of two means), so one set
of resampled round indices serves all four and keeps them paired.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

FloatArray = NDArray[np.float64]

ESTIMATORS = ("dm", "ipw", "snipw", "dr")
"""The estimators :func:`evaluate` reports, in the order it reports them."""

Progress = Callable[[int, int], None]
"""``progress(done, total)``: called while a long computation runs (CLI progress lines)."""


class OPEInputError(ValueError):
    """The arrays handed to an estimator are inconsistent; the message says which and how."""


# ----------------------------------------------------------------------------------------
# Validation


def _vec(name: str, values: ArrayLike, n: int | None = None) -> FloatArray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise OPEInputError(f"{name} must be one value per round (1-D), got shape {arr.shape}")
    if n is not None and arr.shape[0] != n:
        raise OPEInputError(f"{name} has {arr.shape[0]} rounds, expected {n} like reward")
    if not np.all(np.isfinite(arr)):
        raise OPEInputError(f"{name} holds NaN or infinite values; drop or fix those rounds")
    return arr


def _weights(
    reward: ArrayLike, pscore: ArrayLike, pi_e_logged: ArrayLike
) -> tuple[FloatArray, FloatArray]:
    r = _vec("reward", reward)
    p = _vec("pscore", pscore, r.shape[0])
    pe = _vec("pi_e_logged", pi_e_logged, r.shape[0])
    if r.shape[0] == 0:
        raise OPEInputError("no rounds: the logs are empty")
    if np.any(p <= 0) or np.any(p > 1):
        raise OPEInputError(
            "pscore must be in (0, 1]: a logged action needs a positive logged probability "
            "(rounds with propensity 0 cannot be reweighted; drop them)"
        )
    if np.any(pe < 0) or np.any(pe > 1):
        raise OPEInputError("pi_e_logged must be probabilities in [0, 1]")
    return r, pe / p


def _matrices(
    pi_e: ArrayLike, q_hat: ArrayLike, n: int | None = None
) -> tuple[FloatArray, FloatArray]:
    pe = np.asarray(pi_e, dtype=np.float64)
    q = np.asarray(q_hat, dtype=np.float64)
    if pe.ndim != 2 or q.shape != pe.shape:
        raise OPEInputError(
            f"pi_e and q_hat must both be (rounds, actions); got {pe.shape} and {q.shape}"
        )
    if n is not None and pe.shape[0] != n:
        raise OPEInputError(f"pi_e has {pe.shape[0]} rounds, expected {n} like reward")
    if not np.allclose(pe.sum(axis=1), 1.0, atol=1e-6) or np.any(pe < 0):
        raise OPEInputError("every row of pi_e must be a probability distribution (sum to 1)")
    return pe, q


# ----------------------------------------------------------------------------------------
# Per-round terms: every estimator is mean(numerator) / mean(denominator)


@dataclass(frozen=True)
class RoundTerms:
    """One estimator as per-round terms: ``value = mean(numerator) / mean(denominator)``.

    ``denominator`` is ``None`` for plain means (IPW, DM, DR); SNIPW's is the weights.
    """

    name: str
    numerator: FloatArray
    denominator: FloatArray | None = None

    def weighted_value(self, weight: FloatArray) -> float:
        """The estimate with round ``i`` counted ``weight[i]`` times (a bootstrap sample)."""
        num = float(weight @ self.numerator)
        den = float(weight.sum()) if self.denominator is None else float(weight @ self.denominator)
        return num / den if den > 0 else float("nan")

    def value(self, index: NDArray[np.intp] | None = None) -> float:
        num = self.numerator if index is None else self.numerator[index]
        if self.denominator is None:
            return float(num.mean())
        den = self.denominator if index is None else self.denominator[index]
        total = float(den.sum())
        return float(num.sum()) / total if total > 0 else float("nan")


def ipw_terms(reward: ArrayLike, pscore: ArrayLike, pi_e_logged: ArrayLike) -> RoundTerms:
    r, w = _weights(reward, pscore, pi_e_logged)
    return RoundTerms("ipw", w * r)


def snipw_terms(reward: ArrayLike, pscore: ArrayLike, pi_e_logged: ArrayLike) -> RoundTerms:
    r, w = _weights(reward, pscore, pi_e_logged)
    return RoundTerms("snipw", w * r, w)


def dm_terms(pi_e: ArrayLike, q_hat: ArrayLike) -> RoundTerms:
    pe, q = _matrices(pi_e, q_hat)
    return RoundTerms("dm", (pe * q).sum(axis=1))


def dr_terms(
    reward: ArrayLike, pscore: ArrayLike, action: ArrayLike, pi_e: ArrayLike, q_hat: ArrayLike
) -> RoundTerms:
    a = np.asarray(action)
    if a.ndim != 1 or not np.issubdtype(a.dtype, np.integer):
        raise OPEInputError("action must be one integer action index per round")
    r = _vec("reward", reward)
    pe, q = _matrices(pi_e, q_hat, r.shape[0])
    if a.shape[0] != r.shape[0] or np.any(a < 0) or np.any(a >= pe.shape[1]):
        raise OPEInputError(f"action must hold {r.shape[0]} indices in [0, {pe.shape[1]})")
    rows = np.arange(r.shape[0])
    _, w = _weights(r, pscore, pe[rows, a])
    baseline = (pe * q).sum(axis=1)
    return RoundTerms("dr", baseline + w * (r - q[rows, a]))


# ----------------------------------------------------------------------------------------
# The estimators


def ipw(reward: ArrayLike, pscore: ArrayLike, pi_e_logged: ArrayLike) -> float:
    """Inverse propensity weighting: ``V_IPW = (1/n) sum_i w_i r_i``, ``w_i = pi_e(a_i|x_i)/p_i``.

    Unbiased whenever the logged propensities are right and ``pi_b`` gives every action
    ``pi_e`` may choose a positive probability (``E_{pi_b}[w r] = E_{pi_e}[r]``); it needs no
    reward model. Its variance grows with the weights, ``Var ~ E[w^2 r^2] / n``: when ``pi_e``
    concentrates on actions ``pi_b`` rarely chose, a few rounds with large weights decide the
    estimate. With rare rewards (clicks) the estimate is the sum of a few weighted clicks.
    """
    return ipw_terms(reward, pscore, pi_e_logged).value()


def snipw(reward: ArrayLike, pscore: ArrayLike, pi_e_logged: ArrayLike) -> float:
    """Self-normalized IPW: ``V_SNIPW = sum_i w_i r_i / sum_i w_i``.

    Divides by the realised total weight instead of ``n`` (whose expectation it is), so the
    estimate is a weighted mean of observed rewards and stays within their range. That costs a
    bias of order ``1/n`` (a ratio of means) and buys lower variance when the weights'
    sum fluctuates; it is also invariant to a constant error in the propensities. When
    ``pi_b`` is uniform and ``pi_e`` a fixed distribution per position (the Open Bandit
    check), ``sum_i w_i`` is close to ``n`` and SNIPW is close to IPW.
    """
    return snipw_terms(reward, pscore, pi_e_logged).value()


def direct_method(pi_e: ArrayLike, q_hat: ArrayLike) -> float:
    """Direct method: ``V_DM = (1/n) sum_i sum_a pi_e(a|x_i) q_hat(x_i, a)``.

    Uses the logged rewards only through the reward model: no weights, so its variance is the
    lowest of the four (it averages predictions, not rare clicks). Its bias is the model's
    error under ``pi_e``'s actions, ``E[sum_a pi_e(a|x) (q_hat - q)(x, a)]``, which no amount
    of data removes if the model is misspecified, and which a regularized model pulls towards
    the logging policy's average (shrinkage). Consistent only if ``q_hat`` is.
    """
    return dm_terms(pi_e, q_hat).value()


def doubly_robust(
    reward: ArrayLike, pscore: ArrayLike, action: ArrayLike, pi_e: ArrayLike, q_hat: ArrayLike
) -> float:
    """Doubly robust: ``V_DR = V_DM + (1/n) sum_i w_i (r_i - q_hat(x_i, a_i))``.

    The IPW term corrects the DM's bias with the model's residuals on the logged actions:
    unbiased if either the propensities or the reward model are right. Its variance is IPW's
    with ``r`` replaced by the residual ``r - q_hat``, smaller when the model explains part of
    the reward; with a weak model (clicks at 0.4 % that no feature predicts) the residual is
    about ``r`` and DR behaves like IPW. ``q_hat`` must be cross-fitted, see the module doc.
    """
    return dr_terms(reward, pscore, action, pi_e, q_hat).value()


# ----------------------------------------------------------------------------------------
# Bootstrap


@dataclass(frozen=True)
class Interval:
    """A percentile-bootstrap interval at level ``1 - alpha``."""

    low: float
    high: float
    alpha: float
    n_resamples: int


def bootstrap_intervals(
    terms: Sequence[RoundTerms],
    *,
    n_resamples: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    chunk: int = 64,
    progress: Progress | None = None,
) -> dict[str, Interval]:
    """Percentile bootstrap: resample rounds with replacement, recompute, take quantiles.

    Each resample draws ``n`` round indices uniformly with replacement (``numpy`` generator
    seeded with ``seed``), evaluates every estimator on the same indices, and the interval is
    the ``alpha/2`` and ``1 - alpha/2`` quantiles of the ``n_resamples`` values. The reward
    model is not refitted per resample, so the interval covers the sampling noise of the
    rounds given the model, not the model's fitting noise (cross-fitting keeps the two
    apart). Rounds are treated as independent; users seen in several rounds make the
    interval somewhat too narrow.
    """
    if n_resamples < 1:
        raise OPEInputError("n_resamples must be at least 1 (e.g. 1000)")
    if not 0 < alpha < 1:
        raise OPEInputError("alpha must be in (0, 1), e.g. 0.05 for 95 % intervals")
    if not terms:
        return {}
    n = terms[0].numerator.shape[0]
    if any(t.numerator.shape[0] != n for t in terms):
        raise OPEInputError("all estimators must be computed on the same rounds")
    rng = np.random.default_rng(seed)
    values = {t.name: np.empty(n_resamples) for t in terms}
    done = 0
    while done < n_resamples:
        size = min(chunk, n_resamples - done)
        idx = rng.integers(0, n, size=(size, n))
        for t in terms:
            num = t.numerator[idx].mean(axis=1)
            if t.denominator is None:
                values[t.name][done : done + size] = num
            else:
                den = t.denominator[idx].mean(axis=1)
                with np.errstate(invalid="ignore", divide="ignore"):
                    values[t.name][done : done + size] = np.where(den > 0, num / den, np.nan)
        done += size
        if progress is not None:
            progress(done, n_resamples)
    out = {}
    for name, vals in values.items():
        lo, hi = np.nanquantile(vals, [alpha / 2, 1 - alpha / 2])
        out[name] = Interval(float(lo), float(hi), alpha, n_resamples)
    return out


# ----------------------------------------------------------------------------------------
# All four at once


@dataclass(frozen=True)
class EstimateResult:
    """One estimator's estimate of ``V(pi_e)`` with its bootstrap interval."""

    estimator: str
    value: float
    low: float
    high: float

    def relative_error(self, truth: float) -> float:
        """``|estimate - truth| / truth``, the Open Bandit benchmark's error measure."""
        return abs(self.value - truth) / truth


def estimator_terms(
    reward: ArrayLike, pscore: ArrayLike, action: ArrayLike, pi_e: ArrayLike, q_hat: ArrayLike
) -> list[RoundTerms]:
    """DM, IPW, SNIPW and DR as per-round terms (order: :data:`ESTIMATORS`)."""
    a = np.asarray(action)
    pe = np.asarray(pi_e, dtype=np.float64)
    if pe.ndim != 2 or a.ndim != 1 or a.shape[0] != pe.shape[0]:
        raise OPEInputError(
            f"pi_e must be (rounds, actions) with one row per logged action; got {pe.shape} "
            f"for action of shape {a.shape}"
        )
    if not np.issubdtype(a.dtype, np.integer) or np.any(a < 0) or np.any(a >= pe.shape[1]):
        raise OPEInputError(f"action must hold integer indices in [0, {pe.shape[1]})")
    pe_logged = pe[np.arange(a.shape[0]), a]
    return [
        dm_terms(pe, q_hat),
        ipw_terms(reward, pscore, pe_logged),
        snipw_terms(reward, pscore, pe_logged),
        dr_terms(reward, pscore, a, pe, q_hat),
    ]


def evaluate(
    reward: ArrayLike,
    pscore: ArrayLike,
    action: ArrayLike,
    pi_e: ArrayLike,
    q_hat: ArrayLike,
    *,
    n_resamples: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    progress: Progress | None = None,
) -> list[EstimateResult]:
    """DM, IPW, SNIPW and DR of ``pi_e`` with paired bootstrap intervals, ``q_hat`` held fixed.

    The intervals are conditional on the reward model (see :func:`bootstrap_intervals`): for
    DM they can be far too narrow. :func:`attune.bandits.evaluation.evaluate_policy` refits
    the model in every resample instead.
    """
    terms = estimator_terms(reward, pscore, action, pi_e, q_hat)
    intervals = bootstrap_intervals(
        terms, n_resamples=n_resamples, alpha=alpha, seed=seed, progress=progress
    )
    return [
        EstimateResult(t.name, t.value(), intervals[t.name].low, intervals[t.name].high)
        for t in terms
    ]


def rate_reporter(
    label: str,
    emit: Callable[[str], None],
    min_seconds: float = 3.0,
    every: float = 5.0,
    unit: str = "",
) -> Progress:
    """A :data:`Progress` that emits ``label: done/total, rate/s, ETA s`` lines
    (:func:`attune.progress.reporter`): silent for the first ``min_seconds``, then at most once
    every ``every`` seconds, and once at the end when the work took longer than that."""
    from attune.progress import reporter

    return reporter(label, emit, unit, every=every, min_seconds=min_seconds)
