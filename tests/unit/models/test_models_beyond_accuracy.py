"""Personalization and novelty against values worked out by hand, and in the scored metrics."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from models.baselines import Popularity
from models.data import complete_items
from models.features import TrainingData
from models.metrics import novelty, personalization
from models.scoring import build_eval_task, metrics_for, rank_top_k
from tests.unit.models.conftest import frame


def test_personalization_by_hand() -> None:
    # k = 3. Lists [0,1,2], [0,1,3], [4,5,6]: pair overlaps 2, 0, 0 -> mean overlap / k =
    # (2/3 + 0 + 0) / 3 = 2/9 -> personalization 1 - 2/9 = 7/9.
    top = np.array([[0, 1, 2], [0, 1, 3], [4, 5, 6]])
    assert personalization(top, 3) == pytest.approx(7 / 9)
    # everyone gets the same list: 0; no two lists share an item: 1
    assert personalization(np.array([[1, 2, 3]] * 4), 3) == pytest.approx(0.0)
    assert personalization(np.array([[1, 2], [3, 4], [5, 6]]), 2) == pytest.approx(1.0)


def test_personalization_at_a_cutoff_and_with_padding() -> None:
    # at k = 1 only the first items count: [0], [0], [4] -> overlaps 1, 0, 0 -> mean 1/3 / 1
    # -> 2/3.
    top = np.array([[0, 1, 2], [0, 1, 3], [4, 5, 6]])
    assert personalization(top, 1) == pytest.approx(2 / 3)
    # -1 is padding, never shared: [7, -1] and [7, -1] overlap in 7 only -> 1 - 1/2 = 1/2.
    assert personalization(np.array([[7, -1], [7, -1]]), 2) == pytest.approx(0.5)
    # fewer than two lists: nothing to compare
    assert math.isnan(personalization(np.array([[1, 2]]), 2))


def test_novelty_by_hand() -> None:
    # 8 users. Item 0: all 8 -> -log2(8/8) = 0 bits; item 1: 4 -> 1 bit; item 2: 1 -> 3
    # bits; item 3: nobody (cold) counts as 1 user -> 3 bits. Lists [0,1], [2,3]:
    # (0 + 1 + 3 + 3) / 4 = 1.75.
    item_users = np.array([8, 4, 1, 0])
    assert novelty(np.array([[0, 1], [2, 3]]), item_users, 8, 2) == pytest.approx(1.75)
    # k = 1: items 0 and 2 -> (0 + 3) / 2
    assert novelty(np.array([[0, 1], [2, 3]]), item_users, 8, 1) == pytest.approx(1.5)
    assert math.isnan(novelty(np.array([[-1]]), item_users, 8, 1))


def test_scored_metrics_include_personalization_and_novelty() -> None:
    # Training positives: A by u1, u2, u3, u4; B by u1, u2; C by u3 (u4's C is a 2/10, not a
    # positive); D by nobody. 4 users with a positive.
    train = frame(
        [
            ("u1", "A", 8, 1),
            ("u1", "B", 8, 2),
            ("u2", "A", 9, 3),
            ("u2", "B", 7, 4),
            ("u3", "A", 8, 5),
            ("u3", "C", 8, 6),
            ("u4", "A", 8, 7),
            ("u4", "C", 2, 8),
        ]
    )
    items = complete_items(None, pd.concat([train, frame([("x", "D", 1.0, 0)])]))
    data = TrainingData(train, items, 7.0)
    test = frame([("u1", "C", 9, 20), ("u3", "B", 9, 21), ("u4", "B", 8, 22)])
    task = build_eval_task(data, test)
    assert task.item_users is not None
    assert task.item_users.tolist() == [4, 2, 1, 0] and task.positive_users == 4
    assert task.users.tolist() == ["u1", "u3", "u4"]
    # Popularity (A 4, B 2, C 1, D 0), training items excluded, top 2:
    # u1 (had A, B) -> [C, D]; u3 (had A, C) -> [B, D]; u4 (had A, C) -> [B, D].
    top = rank_top_k(Popularity().fit(data), task, 2, progress=False)
    assert top.tolist() == [[2, 3], [1, 3], [1, 3]]
    m = metrics_for(top, task, 2)
    # overlaps: (u1,u3) 1 (D), (u1,u4) 1 (D), (u3,u4) 2 -> mean 4/3 / 2 = 2/3 -> 1/3.
    assert m["personalization"] == pytest.approx(1 / 3)
    # novelty: C 1/4 -> 2 bits, D (nobody, as 1 user) -> 2 bits, B 2/4 -> 1 bit:
    # (2 + 2 + 1 + 2 + 1 + 2) / 6 = 10/6.
    assert m["novelty"] == pytest.approx(10 / 6)
