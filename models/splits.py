"""Train/test splits of interactions that never leak test interactions into training.

Three kinds, all returning disjoint row sets whose union is the input:

``temporal``
    A global cut in time: the last ``test_fraction`` of interactions (by time) are the test set
    and every training interaction is strictly older than every test interaction. This is the
    honest split for a system that trains on the past and serves the future; new users and new
    ("cold") items appear only in the test period, as they do in production.
``user-stratified``
    Each user's interactions are split at random in the same proportion (users with a single
    interaction stay in training), so every test user has training history.
``random``
    Interactions are sampled at random, regardless of user.

:func:`validation_split` carves a validation set out of a training set with the same kind of
split, so hyper-parameters are chosen without ever looking at the test set.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

SplitKind = Literal["temporal", "user-stratified", "random"]
SPLIT_KINDS: tuple[str, ...] = ("temporal", "user-stratified", "random")


@dataclass(frozen=True)
class Split:
    """A split of interactions. ``train`` and ``test`` keep the input's time order."""

    kind: str
    train: pd.DataFrame
    test: pd.DataFrame
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def cutoff(self) -> pd.Timestamp:
        """The time the models are "asked" at: the newest training interaction."""
        return pd.Timestamp(self.train["timestamp"].max())

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "train_rows": len(self.train),
            "test_rows": len(self.test),
            "cutoff": str(self.cutoff),
            **self.params,
        }


def _check_fraction(test_fraction: float) -> None:
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test fraction must be between 0 and 1 (exclusive), got {test_fraction}")


def temporal_split(interactions: pd.DataFrame, test_fraction: float) -> Split:
    """Everything up to the ``1 - test_fraction`` quantile of time trains, the rest tests.

    Interactions sharing the timestamp at the cut all go to training, so the cut is a strict
    boundary in time (the test set may be slightly smaller than asked)."""
    _check_fraction(test_fraction)
    if interactions.empty:
        raise ValueError("cannot split an empty interactions table")
    ts = interactions["timestamp"].to_numpy()
    order = np.argsort(ts, kind="stable")
    n_train = max(1, min(len(ts) - 1, round(len(ts) * (1.0 - test_fraction))))
    boundary = ts[order[n_train - 1]]
    is_test = ts > boundary
    if not is_test.any():
        raise ValueError(
            "temporal split left no test interactions (all share the last timestamp); "
            "use a larger --test-fraction or another split"
        )
    return Split(
        "temporal",
        interactions[~is_test].reset_index(drop=True),
        interactions[is_test].reset_index(drop=True),
        {"test_fraction": test_fraction, "boundary": str(pd.Timestamp(boundary))},
    )


def user_stratified_split(interactions: pd.DataFrame, test_fraction: float, seed: int) -> Split:
    """For each user with n >= 2 interactions, ``max(1, round(n * test_fraction))`` of them, at
    most ``n - 1``, chosen at random, go to the test set."""
    _check_fraction(test_fraction)
    rng = np.random.default_rng(seed)
    users = interactions["user_id"].to_numpy()
    codes, inverse = np.unique(users, return_inverse=True)
    # A random key per row, then rank rows within their user by it: the lowest ranks are test.
    key = rng.random(len(users))
    order = np.lexsort((key, inverse))
    counts = np.bincount(inverse, minlength=len(codes))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.empty(len(users), dtype=np.int64)
    rank[order] = np.arange(len(users)) - np.repeat(starts, counts)
    n_test = np.where(
        counts >= 2, np.clip(np.round(counts * test_fraction), 1, counts - 1), 0
    ).astype(np.int64)
    is_test = rank < n_test[inverse]
    return Split(
        "user-stratified",
        interactions[~is_test].reset_index(drop=True),
        interactions[is_test].reset_index(drop=True),
        {"test_fraction": test_fraction, "seed": seed},
    )


def random_split(interactions: pd.DataFrame, test_fraction: float, seed: int) -> Split:
    """``round(n * test_fraction)`` interactions chosen uniformly at random are the test set."""
    _check_fraction(test_fraction)
    rng = np.random.default_rng(seed)
    n = len(interactions)
    n_test = max(1, min(n - 1, round(n * test_fraction)))
    is_test = np.zeros(n, dtype=bool)
    is_test[rng.choice(n, size=n_test, replace=False)] = True
    return Split(
        "random",
        interactions[~is_test].reset_index(drop=True),
        interactions[is_test].reset_index(drop=True),
        {"test_fraction": test_fraction, "seed": seed},
    )


def make_split(kind: str, interactions: pd.DataFrame, test_fraction: float, seed: int) -> Split:
    """The split named ``kind`` (``temporal``, ``user-stratified`` or ``random``)."""
    if kind == "temporal":
        return temporal_split(interactions, test_fraction)
    if kind == "user-stratified":
        return user_stratified_split(interactions, test_fraction, seed)
    if kind == "random":
        return random_split(interactions, test_fraction, seed)
    raise ValueError(f"unknown split {kind!r}: expected one of {', '.join(SPLIT_KINDS)}")


def validation_split(split: Split, fraction: float, seed: int) -> Split:
    """A split of ``split.train`` of the same kind: tune on it, never on ``split.test``."""
    inner = make_split(split.kind, split.train, fraction, seed + 1)
    return Split(inner.kind, inner.train, inner.test, dict(inner.params, validation=True))
