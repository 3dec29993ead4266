"""Baselines and the shared evaluation protocol on tiny hand-made data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models.baselines import ItemKNN, Popularity
from models.data import complete_items
from models.features import TrainingData
from models.scoring import build_eval_task, top_k_from_scores
from tests.unit.models.conftest import frame

DAY = 86_400


def _data(
    rows: list[tuple[str, str, float | None, int]], extra_items: list[str] = ()
) -> TrainingData:  # type: ignore[assignment]
    inter = frame(rows)
    items = complete_items(None, pd.concat([inter, frame([("x", i, 1.0, 0) for i in extra_items])]))
    return TrainingData(inter, items, 7.0)


def test_popularity_counts_users_once_and_decays() -> None:
    # catalog A, B, C. A: u1 twice + u2 -> 2 users; B: u1; C: only a 3/10 (not positive).
    data = _data(
        [
            ("u1", "A", 8, 0),
            ("u1", "A", 9, DAY),
            ("u2", "A", 7, 2 * DAY),
            ("u1", "B", 10, 4 * DAY),
            ("u2", "C", 3, 4 * DAY),
        ]
    )
    assert Popularity().fit(data).score(np.array(["u1"]))[0].tolist() == [2.0, 1.0, 0.0]
    # now = day 4, half-life 1 day: A = u1 (latest day 1, age 3) 0.125 + u2 (age 2) 0.25;
    # B = age 0 -> 1.
    got = Popularity(1.0).fit(data).score(np.array(["u1"]))[0]
    assert got == pytest.approx([0.375, 1.0, 0.0])


def test_item_knn_cosine_by_hand() -> None:
    # u1 {A, B}, u2 {A, B, C}, u3 {B, C}, u4 {A}: n_A = 3, n_B = 3, n_C = 2, c_AB = 2,
    # c_AC = 1, c_BC = 2 -> sim(A,B) = 2/sqrt(9) = 2/3, sim(A,C) = 1/sqrt(6) = 0.40825.
    rows = [
        ("u1", "A", 8, 1),
        ("u1", "B", 8, 2),
        ("u2", "A", 8, 3),
        ("u2", "B", 8, 4),
        ("u2", "C", 8, 5),
        ("u3", "B", 8, 6),
        ("u3", "C", 8, 7),
        ("u4", "A", 8, 8),
    ]
    data = _data(rows)
    scores = ItemKNN(neighbours=10).fit(data).score(np.array(["u4"]))[0]
    # u4 has A: B = sim(A,B), C = sim(A,C); A itself gets no similarity (plus the 1e-6
    # popularity tie-break on every item)
    assert scores[1] == pytest.approx(2 / 3, abs=1e-5)
    assert scores[2] == pytest.approx(0.40825, abs=1e-5)
    assert scores[0] == pytest.approx(0.0, abs=1e-5)
    # with one neighbour per item, A keeps only B
    one = ItemKNN(neighbours=1).fit(data).score(np.array(["u4"]))[0]
    assert one[2] == pytest.approx(0.0, abs=1e-5)


def test_top_k_excludes_and_breaks_ties_by_index() -> None:
    scores = np.array([[0.5, 0.9, 0.9, 0.1, 0.9]])
    # item 1 excluded; the 0.9 tie between 2 and 4 goes to the lower index
    assert top_k_from_scores(scores, [np.array([1])], 3).tolist() == [[2, 4, 0]]


def test_eval_task_protocol() -> None:
    train = _data([("u1", "A", 8, 1), ("u1", "B", 3, 2), ("u2", "C", 9, 3)], extra_items=["D", "E"])
    test = frame(
        [
            ("u1", "B", 9, 10),  # B is in u1's training history: excluded, not relevant
            ("u1", "D", 8, 11),  # relevant; D never seen in training: cold
            ("u1", "E", 5, 12),  # not a positive
            ("u2", "A", 2, 13),  # u2 has no positive test item: not evaluated
            ("u9", "A", 9, 14),
        ]  # no training history: counted, not scored
    )
    task = build_eval_task(train, test)
    assert task.users.tolist() == ["u1"]
    catalog = train.catalog.tolist()
    assert catalog == ["A", "B", "C", "D", "E"]
    assert sorted(task.exclude[0].tolist()) == [0, 1]
    assert task.relevant[0].tolist() == [3]
    assert task.cold_items.tolist() == [False, False, False, True, True]
    assert task.relevant_cold[0].tolist() == [3]
    assert task.skipped_new_users == 1
