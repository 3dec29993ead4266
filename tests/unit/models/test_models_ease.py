"""EASE against an independent solve, and item-kNN's shrinkage, on tiny hand-made data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models.baselines import EASE, ItemKNN, cooccurrence, ease_weights
from models.data import complete_items
from models.features import TrainingData
from tests.unit.models.conftest import frame


def _data(
    rows: list[tuple[str, str, float, int]], extra_items: tuple[str, ...] = ()
) -> TrainingData:
    inter = frame(rows)
    items = complete_items(None, pd.concat([inter, frame([("x", i, 1.0, 0) for i in extra_items])]))
    return TrainingData(inter, items, 7.0)


def _constrained_ridge(x: np.ndarray, lam: float) -> np.ndarray:
    """EASE's problem solved one column at a time, without its closed form: column ``j`` of
    ``B`` is the ridge regression of item ``j`` on the *other* items (``B_jj = 0`` by leaving
    ``j`` out), written as the least-squares problem ``[X_-j; sqrt(lam) I] b ~ [x_j; 0]``."""
    n = x.shape[1]
    b = np.zeros((n, n))
    for j in range(n):
        others = [i for i in range(n) if i != j]
        a = np.vstack([x[:, others], np.sqrt(lam) * np.eye(n - 1)])
        y = np.concatenate([x[:, j], np.zeros(n - 1)])
        b[others, j] = np.linalg.lstsq(a, y, rcond=None)[0]
    return b


def test_ease_two_items_by_hand() -> None:
    # u1 {A, B}, u2 {A}, u3 {A}, u4 {B}: n_A = 3, n_B = 2, c_AB = 1. With lambda = 1, B's
    # column is the ridge regression of x_B on x_A alone: c_AB / (n_A + lambda) = 1 / 4; A's
    # column: c_AB / (n_B + lambda) = 1 / 3.
    data = _data(
        [
            ("u1", "A", 8, 1),
            ("u1", "B", 8, 2),
            ("u2", "A", 8, 3),
            ("u3", "A", 9, 4),
            ("u4", "B", 7, 5),
        ]
    )
    ease = EASE(lam=1.0).fit(data)
    scores = ease.score(np.array(["u2", "u4", "u1"], dtype=object))
    # u2 has A: score(B) = B_AB = 1/4, score(A) = 0 (diag(B) = 0 and u2 has no B).
    assert scores[0] == pytest.approx([0.0, 0.25], abs=1e-6)
    # u4 has B: score(A) = B_BA = 1/3.
    assert scores[1] == pytest.approx([1 / 3, 0.0], abs=1e-6)
    # u1 has both: A = B_BA = 1/3, B = B_AB = 1/4.
    assert scores[2] == pytest.approx([1 / 3, 0.25], abs=1e-6)
    assert ease.fit_info["items"] == 2 and ease.fit_info["dtype"] == "float64"


X = np.array(
    [
        [1, 1, 0, 0],
        [1, 0, 1, 0],
        [0, 1, 1, 1],
        [1, 1, 1, 0],
        [0, 0, 1, 1],
        [1, 0, 0, 1],
    ],
    dtype=np.float64,
)


@pytest.mark.parametrize("lam", [0.5, 3.0, 50.0])
def test_ease_weights_match_per_column_least_squares(lam: float) -> None:
    expected = _constrained_ridge(X, lam)
    got = ease_weights(X.T @ X, lam)
    np.testing.assert_allclose(got, expected, atol=1e-10)
    assert np.all(np.diag(got) == 0)


def test_ease_scores_are_history_times_weights_and_cold_items_rank_last() -> None:
    # The matrix X above as users u0..u5 x items A..D, plus item E that only has a negative
    # rating (no column to learn) and user u6 with only a negative rating (popularity).
    names = "ABCD"
    rows = [
        (f"u{u}", names[i], 8.0, 10 * u + i)
        for u in range(X.shape[0])
        for i in range(X.shape[1])
        if X[u, i]
    ]
    rows += [("u6", "E", 2.0, 100)]
    data = _data(rows)
    lam = 3.0
    users = np.array([f"u{u}" for u in range(6)] + ["u6"], dtype=object)
    scores = EASE(lam=lam).fit(data).score(users)
    expected = X @ _constrained_ridge(X, lam)
    np.testing.assert_allclose(scores[:6, :4], expected, atol=1e-5)
    # E has no positive: below every learned item for every user with a history.
    assert (scores[:6, 4] < scores[:6, :4].min(axis=1)).all()
    # u6 has no positive history: the popularity tie-break ranking (A, C: 4 users; B, D: 3;
    # E: 0), scaled into [0, 1e-6].
    assert np.argsort(-scores[6], kind="stable").tolist() == [0, 2, 1, 3, 4]
    assert scores[6].max() == pytest.approx(1e-6)


def test_ease_float32_within_memory_budget_and_a_clear_error_beyond() -> None:
    gram_items = 4
    rows = [
        (f"u{u}", "ABCD"[i], 8.0, 10 * u + i)
        for u in range(X.shape[0])
        for i in range(gram_items)
        if X[u, i]
    ]
    data = _data(rows)
    # float64 needs 3 * 4^2 * 8 = 384 bytes, float32 192: a 300-byte budget forces float32.
    ease = EASE(lam=3.0, max_memory_gb=300e-9).fit(data)
    assert ease.fit_info["dtype"] == "float32"
    users = np.array([f"u{u}" for u in range(6)], dtype=object)
    np.testing.assert_allclose(ease.score(users), X @ _constrained_ridge(X, 3.0), atol=1e-5)
    with pytest.raises(ValueError, match="ease_max_memory_gb"):
        EASE(lam=3.0, max_memory_gb=100e-9).fit(data)
    with pytest.raises(ValueError, match="positive"):
        EASE(lam=0.0)


def test_item_knn_shrinkage_by_hand() -> None:
    # u1 {A, B}, u2 {A, B, C}, u3 {B, C}, u4 {A}: n_A = 3, n_B = 3, n_C = 2, c_AB = 2,
    # c_AC = 1. Shrinkage 1: sim(A,B) = 2 / (sqrt(9) + 1) = 0.5,
    # sim(A,C) = 1 / (sqrt(6) + 1) = 1 / 3.44949 = 0.28990.
    data = _data(
        [
            ("u1", "A", 8, 1),
            ("u1", "B", 8, 2),
            ("u2", "A", 8, 3),
            ("u2", "B", 8, 4),
            ("u2", "C", 8, 5),
            ("u3", "B", 8, 6),
            ("u3", "C", 8, 7),
            ("u4", "A", 8, 8),
        ]
    )
    co = cooccurrence(data)
    scores = ItemKNN(neighbours=10, shrinkage=1.0).fit(data, co).score(np.array(["u4"]))[0]
    assert scores[1] == pytest.approx(0.5, abs=1e-5)
    assert scores[2] == pytest.approx(0.28990, abs=1e-5)
    # the shared co-occurrence gives what a fit from scratch gives
    again = ItemKNN(neighbours=10, shrinkage=1.0).fit(data).score(np.array(["u4"]))[0]
    np.testing.assert_array_equal(scores, again)
    with pytest.raises(ValueError, match="shrinkage"):
        ItemKNN(10, -1.0)
