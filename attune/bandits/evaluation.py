"""Evaluate a slate policy on logged bandit data: reward model, estimators, and the obp protocol.

Glue between :mod:`attune.bandits.open_bandit` (the logs), :mod:`attune.bandits.reward_model`
(the cross-fitted ``q_hat``) and :mod:`attune.bandits.ope` (the estimators). The evaluation
policy is given as ``action_dist``, the probability of each action at each position, either
one ``(n_actions, len_list)`` table for every round (a context-free policy such as Bernoulli
TS with a fixed posterior) or one per round, ``(n_rounds, n_actions, len_list)``. A round
shows one action at one position, so the estimators see ``pi_e(. | x_i) = action_dist[i, :,
position_i]``, as obp does.

The reward model's features and penalty were measured, not assumed (docs/bandits.md):
position and item one-hots plus the user-item affinity; the user features made held-out log
loss worse at every penalty and are left out. The penalty is chosen per dataset by K-fold log
loss on the logs (:func:`select_l2`), never by the ground truth.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from attune.bandits.ope import (
    ESTIMATORS,
    EstimateResult,
    Progress,
    dm_terms,
    dr_terms,
    estimator_terms,
)
from attune.bandits.open_bandit import BanditLogs
from attune.bandits.reward_model import CrossFitter, log_loss

L2_GRID = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0)
"""Penalties :func:`select_l2` tries (the item offsets' prior precision on the logit scale)."""


class PolicyError(ValueError):
    """An evaluation policy that does not fit the logs; the message says how to fix it."""


def per_round_distribution(
    action_dist: NDArray[np.float64], logs: BanditLogs
) -> NDArray[np.float64]:
    """``pi_e[i, a]``: the policy's probability of action ``a`` at round ``i``'s position.

    Validates the shape against the logs and that every position's column sums to 1.
    """
    dist = np.asarray(action_dist, dtype=np.float64)
    if dist.ndim == 2:
        dist = dist[None, :, :]
    if dist.ndim != 3 or dist.shape[1:] != (logs.n_actions, logs.len_list):
        raise PolicyError(
            f"the policy gives shape {np.asarray(action_dist).shape}; the logs need "
            f"(n_actions, positions) = ({logs.n_actions}, {logs.len_list}) or "
            f"(rounds, n_actions, positions) = ({logs.n_rounds}, {logs.n_actions}, {logs.len_list})"
        )
    if dist.shape[0] not in (1, logs.n_rounds):
        raise PolicyError(
            f"the policy has {dist.shape[0]} rounds but the logs {logs.n_rounds}: give one "
            "distribution for all rounds or one per logged round"
        )
    if np.any(dist < 0) or not np.allclose(dist.sum(axis=1), 1.0, atol=1e-6):
        raise PolicyError(
            "every position's probabilities must be non-negative and sum to 1 over the items"
        )
    rounds = (
        np.zeros(logs.n_rounds, dtype=np.int64) if dist.shape[0] == 1 else np.arange(logs.n_rounds)
    )
    return np.asarray(dist[rounds, :, logs.position], dtype=np.float64)


def reward_features(logs: BanditLogs) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """The reward model's round features (position one-hot) and pair feature (affinity)."""
    return np.eye(logs.len_list)[logs.position], logs.affinity


def _select(fitter: CrossFitter, logs: BanditLogs, grid: Sequence[float]) -> float:
    rows = np.arange(logs.n_rounds)
    losses = [log_loss(logs.reward, fitter.predict(l2=l2)[rows, logs.action]) for l2 in grid]
    return float(grid[int(np.argmin(losses))])


def select_l2(
    logs: BanditLogs, *, folds: int = 3, seed: int = 0, grid: Sequence[float] = L2_GRID
) -> float:
    """The penalty of ``grid`` with the lowest out-of-fold log loss on the logs (ties: the
    first, i.e. the weakest penalty)."""
    z, s = reward_features(logs)
    fitter = CrossFitter(
        z, logs.action, logs.reward, logs.n_actions, pair=s, folds=folds, seed=seed
    )
    return _select(fitter, logs, grid)


@dataclass(frozen=True)
class Evaluation:
    """The four estimates of one policy on one set of logs, with the model's settings."""

    results: list[EstimateResult]
    l2: float
    folds: int
    n_bootstrap: int
    q_logged_log_loss: float


def evaluate_policy(
    logs: BanditLogs,
    action_dist: NDArray[np.float64],
    *,
    folds: int = 3,
    l2: float | None = None,
    n_bootstrap: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    progress: Progress | None = None,
) -> Evaluation:
    """DM, IPW, SNIPW and DR of the policy, with a cross-fitted reward model and bootstrap CIs.

    The interval is a percentile bootstrap (``n_bootstrap`` resamples of the rounds, drawn as
    multiplicities, seeded) that *refits* the cross-fitted reward model in every resample;
    each round keeps its fold, so copies of a round never predict each other. DM's and DR's
    intervals thus include the model's own sampling noise: holding the model fixed
    (:func:`attune.bandits.ope.evaluate`) gives DM an interval of almost no width, because
    averaging fixed predictions over resampled rounds hardly varies. The penalty ``l2`` is
    chosen once (:func:`select_l2`) when not given.
    """
    pi_e = per_round_distribution(action_dist, logs)
    z, s = reward_features(logs)
    fitter = CrossFitter(
        z, logs.action, logs.reward, logs.n_actions, pair=s, folds=folds, seed=seed
    )
    penalty = _select(fitter, logs, L2_GRID) if l2 is None else l2
    q_hat = fitter.predict(l2=penalty)
    terms = estimator_terms(logs.reward, logs.pscore, logs.action, pi_e, q_hat)
    rng = np.random.default_rng(seed)
    boot = np.empty((len(terms), n_bootstrap))
    n = logs.n_rounds
    for b in range(n_bootstrap):
        weight = np.bincount(rng.integers(0, n, n), minlength=n).astype(np.float64)
        q_b = fitter.predict(l2=penalty, weight=weight)
        model_terms = {
            "dm": dm_terms(pi_e, q_b),
            "dr": dr_terms(logs.reward, logs.pscore, logs.action, pi_e, q_b),
        }
        boot[:, b] = [model_terms.get(t.name, t).weighted_value(weight) for t in terms]
        if progress is not None:
            progress(b + 1, n_bootstrap)
    results = []
    for t, values in zip(terms, boot, strict=True):
        if n_bootstrap:
            lo, hi = np.nanquantile(values, [alpha / 2, 1 - alpha / 2])
        else:
            lo = hi = float("nan")
        results.append(EstimateResult(t.name, t.value(), float(lo), float(hi)))
    loss = log_loss(logs.reward, q_hat[np.arange(n), logs.action])
    return Evaluation(results, penalty, folds, n_bootstrap, loss)


def resample_logs(logs: BanditLogs, index: NDArray[np.intp]) -> BanditLogs:
    """The rounds ``index`` of ``logs`` (with repetition: a bootstrap sample)."""
    return BanditLogs(
        action=logs.action[index],
        position=logs.position[index],
        reward=logs.reward[index],
        pscore=logs.pscore[index],
        user_features=logs.user_features[index],
        affinity=logs.affinity[index],
        n_actions=logs.n_actions,
        len_list=logs.len_list,
        source=logs.source,
    )


@dataclass(frozen=True)
class ErrorSummary:
    """Relative errors ``|estimate - truth| / truth`` over bootstrap runs of the obp protocol."""

    estimator: str
    mean: float
    std: float
    runs: int


def obp_protocol_errors(
    logs: BanditLogs,
    action_dist: NDArray[np.float64],
    truth: float,
    *,
    runs: int = 30,
    folds: int = 3,
    l2: float | None = None,
    seed: int = 0,
    progress: Progress | None = None,
) -> list[ErrorSummary]:
    """Mean and standard deviation of each estimator's relative error over ``runs`` bootstrap
    samples of the logs, refitting the cross-fitted reward model in each.

    This is how obp's ``examples/obd/evaluate_off_policy_estimators.py`` reports its published
    figures (``n_runs`` bootstrap samples of the rounds, 3-fold cross-fitting, the mean of the
    relative errors), so these numbers, not the full-sample ones, are comparable with them.
    """
    dist = np.asarray(action_dist, dtype=np.float64)
    if dist.ndim != 2:
        raise PolicyError(
            "the obp protocol resamples rounds: give one (n_actions, positions) distribution "
            "for all rounds"
        )
    penalty = select_l2(logs, folds=folds, seed=seed) if l2 is None else l2
    errors: dict[str, list[float]] = {name: [] for name in ESTIMATORS}
    for run in range(runs):
        # The bootstrap samples obp draws (sample_bootstrap_bandit_feedback(random_state=run):
        # legacy RandomState(run).choice), so that model-free estimators see the same rounds.
        index = np.random.RandomState(seed + run).choice(logs.n_rounds, logs.n_rounds)
        sample = resample_logs(logs, index)
        ev = evaluate_policy(sample, dist, folds=folds, l2=penalty, n_bootstrap=0, seed=seed + run)
        for res in ev.results:
            errors[res.estimator].append(res.relative_error(truth))
        if progress is not None:
            progress(run + 1, runs)
    return [
        ErrorSummary(
            name, float(np.mean(errs)), float(np.std(errs, ddof=1)) if runs > 1 else 0.0, runs
        )
        for name, errs in errors.items()
    ]
