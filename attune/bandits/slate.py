"""The action distribution of a slate Thompson-sampling policy, by Monte Carlo simulation.

A *slate* policy fills ``L`` positions at once with distinct items. Bernoulli Thompson sampling
does it by drawing one click rate per item from its Beta posterior, ``theta_a ~ Beta(alpha_a,
beta_a)``, and showing the items with the ``L`` largest draws in decreasing order: position 1
gets the largest. Off-policy evaluation needs the probability that the policy puts item ``a``
at position ``k``,

    ``pi(a | k) = P(theta_a is the k-th largest of all draws)``,

an integral over ``A`` Beta densities with no closed form for many items, so it is estimated by
simulation: draw ``n_sim`` slates and count. The standard error of each probability is at most
``sqrt(0.25 / n_sim)`` (0.0016 for 100,000 slates).

This is the computation of obp's ``BernoulliTS.compute_batch_action_dist`` (obp 0.4.1, which
simulates ``select_action`` ``n_sim`` times: ``argsort`` of the Beta draws, descending, first
``len_list``), vectorised: a chunk of slates at a time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources

import numpy as np
from numpy.typing import ArrayLike, NDArray

from attune.bandits.ope import Progress

PRIOR_FILE = "zozotown_bts_prior.json"


@dataclass(frozen=True)
class BetaPrior:
    """Per-item Beta parameters, with where they came from."""

    alpha: NDArray[np.float64]
    beta: NDArray[np.float64]
    source: str


def zozotown_bts_prior() -> BetaPrior:
    """The Beta prior of ZOZOTOWN's Bernoulli-TS policy in the Open Bandit Dataset's ALL campaign.

    Read from ``attune/bandits/zozotown_bts_prior.json`` (from obp 0.4.1, Apache-2.0; the file
    names its source). obp's ``BernoulliTS(is_zozotown_prior=True)`` never updates it when
    computing the action distribution, so the policy evaluated is the prior itself.
    """
    raw = json.loads(resources.files("attune.bandits").joinpath(PRIOR_FILE).read_text())
    return BetaPrior(
        np.asarray(raw["alpha"], dtype=np.float64),
        np.asarray(raw["beta"], dtype=np.float64),
        str(raw["source"]),
    )


def thompson_slate_distribution(
    alpha: ArrayLike,
    beta: ArrayLike,
    len_list: int,
    *,
    n_sim: int = 100_000,
    seed: int = 0,
    chunk: int = 10_000,
    progress: Progress | None = None,
) -> NDArray[np.float64]:
    """``dist[a, k]``: the probability that Thompson sampling shows item ``a`` at position ``k``.

    Simulates ``n_sim`` slates: per slate one ``Beta(alpha[a], beta[a])`` draw per item (numpy
    generator seeded with ``seed``), the ``len_list`` largest in decreasing order. Each column
    sums to 1 (every position shows one item); each row sums to at most 1 (an item is shown
    at most once per slate). Shape ``(n_items, len_list)``.
    """
    a = np.asarray(alpha, dtype=np.float64)
    b = np.asarray(beta, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(
            f"alpha and beta must be two vectors of one length, got {a.shape}, {b.shape}"
        )
    if np.any(a <= 0) or np.any(b <= 0):
        raise ValueError("Beta parameters must be positive")
    n_items = a.shape[0]
    if not 1 <= len_list <= n_items:
        raise ValueError(f"len_list must be between 1 and the number of items ({n_items})")
    if n_sim < 1:
        raise ValueError("n_sim must be at least 1 (e.g. 100000)")
    rng = np.random.default_rng(seed)
    counts = np.zeros((n_items, len_list), dtype=np.int64)
    positions = np.arange(len_list)
    done = 0
    while done < n_sim:
        size = min(chunk, n_sim - done)
        draws = rng.beta(a, b, size=(size, n_items))
        # The len_list largest draws of each slate (unordered), then ordered among themselves.
        top = np.argpartition(-draws, len_list - 1, axis=1)[:, :len_list]
        order = np.argsort(-np.take_along_axis(draws, top, axis=1), axis=1)
        slate = np.take_along_axis(top, order, axis=1)  # (size, len_list): items, best first
        cells = (slate * len_list + positions).ravel()
        counts += np.bincount(cells, minlength=n_items * len_list).reshape(n_items, len_list)
        done += size
        if progress is not None:
            progress(done, n_sim)
    return counts / float(n_sim)
