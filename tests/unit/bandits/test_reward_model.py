"""The cross-fitted logistic reward model."""

from __future__ import annotations

import numpy as np
import pytest

from attune.bandits.reward_model import cross_fit, fit_reward_model, fold_ids


def _data(n: int = 600, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    position = rng.integers(0, 3, n)
    z = np.eye(3)[position]
    action = rng.integers(0, 5, n)
    pair = rng.integers(0, 2, (n, 5)).astype(float)
    reward = (rng.random(n) < 0.1 + 0.1 * action / 4).astype(float)
    return z, action, reward, pair


def test_saturated_model_with_a_tiny_penalty_predicts_the_cell_means() -> None:
    # Action 0: 1 click in 4 rounds; action 1: 3 clicks in 4. The unpenalized MLE of
    # intercept + action offsets is the per-action click rate: 1/4 and 3/4.
    z = np.zeros((8, 0))
    action = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    reward = np.array([1, 0, 0, 0, 1, 1, 1, 0], dtype=float)
    model = fit_reward_model(z, action, reward, 2, l2=1e-8)
    np.testing.assert_allclose(model.predict(np.zeros((1, 0)))[0], [0.25, 0.75], atol=1e-4)


def test_a_huge_penalty_predicts_the_overall_rate() -> None:
    # 4 clicks in 8 rounds: every offset is shrunk to 0, the intercept gives 4/8.
    z = np.zeros((8, 0))
    action = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    reward = np.array([1, 0, 0, 0, 1, 1, 1, 0], dtype=float)
    model = fit_reward_model(z, action, reward, 2, l2=1e9)
    np.testing.assert_allclose(model.predict(np.zeros((1, 0)))[0], [0.5, 0.5], atol=1e-6)


def test_weights_count_rounds_like_copies() -> None:
    z, action, reward, pair = _data()
    doubled = fit_reward_model(
        np.vstack([z, z]),
        np.concatenate([action, action]),
        np.concatenate([reward, reward]),
        5,
        pair=np.vstack([pair, pair]),
        l2=3.0,
    )
    weighted = fit_reward_model(z, action, reward, 5, pair=pair, l2=3.0, weight=np.full(600, 2.0))
    np.testing.assert_allclose(doubled.predict(z, pair), weighted.predict(z, pair), rtol=1e-9)


def test_a_rounds_prediction_does_not_depend_on_its_own_reward() -> None:
    z, action, reward, pair = _data()
    before = cross_fit(z, action, reward, 5, pair=pair, l2=1.0, folds=3, seed=11)
    folds = fold_ids(600, 3, 11)
    for i in (0, 17, 599):
        flipped = reward.copy()
        flipped[i] = 1.0 - flipped[i]
        after = cross_fit(z, action, flipped, 5, pair=pair, l2=1.0, folds=3, seed=11)
        np.testing.assert_array_equal(after[i], before[i])  # its own fold's model never saw it
        # ... while the rounds of the other folds, whose models did see it, change.
        other = folds != folds[i]
        assert not np.allclose(after[other], before[other])


def test_fold_ids_are_balanced_and_seeded() -> None:
    ids = fold_ids(10, 3, 0)
    assert sorted(np.bincount(ids).tolist()) == [3, 3, 4]
    np.testing.assert_array_equal(ids, fold_ids(10, 3, 0))
    with pytest.raises(ValueError, match="folds"):
        fold_ids(10, 1, 0)
