"""The served pipeline offline: session co-occurrence, trending, and the composition of the
API's steps (pool -> ranking -> rules) on a tiny fake, every expected value worked by hand."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from attune.config import AttuneConfig, CooccurrenceConfig
from models.data import complete_items
from models.features import TrainingData
from models.pipeline import ServedPipeline, session_cooccurrence, session_keys, trending_items
from tests.unit.models.conftest import frame

A, B, C, D = 0, 1, 2, 3


def _table(min_count: int) -> dict[int, list[tuple[int, float]]]:
    # Events in time order, per basket:
    #   s1: A, B, A, C  -> latest distinct items B, A, C         -> {A, B, C}
    #   s2: A, B                                                  -> {A, B}
    #   s3: D           -> a single item: not a basket
    #   s4: B, C, D, A  -> the 3 latest distinct (max 3): C, D, A -> {A, C, D}
    baskets = ["s1"] * 4 + ["s2"] * 2 + ["s3"] + ["s4"] * 4
    items = [A, B, A, C, A, B, D, B, C, D, A]
    params = CooccurrenceConfig(max_session_items=3, min_count=min_count, top_k=2)
    table = session_cooccurrence(np.array(baskets, dtype=object), np.array(items), 4, params)
    return {i: table.neighbours(i, 10) for i in range(4)}


def test_session_cooccurrence_by_hand() -> None:
    # support (baskets of >= 2 items holding the item): A 3 (s1 s2 s4), B 2, C 2, D 1.
    # pair counts: AB 2 (s1 s2), AC 2 (s1 s4), BC 1, AD 1, CD 1.
    # scores n_ab / sqrt(n_a n_b): AB = AC = 2/sqrt(6) = 0.8165, AD = 1/sqrt(3) = 0.5774,
    # BC = 1/sqrt(4) = 0.5, CD = 1/sqrt(2) = 0.7071. Top 2 per item (score, count, index):
    got = _table(min_count=1)
    assert [i for i, _ in got[A]] == [B, C]  # tie AB = AC broken by index; AD cut by top_k
    assert got[A][0][1] == pytest.approx(0.81650, abs=1e-5)
    assert [i for i, _ in got[B]] == [A, C]
    assert got[B][1][1] == pytest.approx(0.5)
    assert [i for i, _ in got[C]] == [A, D]  # CB (0.5) cut by top_k
    assert got[C][1][1] == pytest.approx(0.70711, abs=1e-5)
    assert [i for i, _ in got[D]] == [C, A]
    assert got[D][1][1] == pytest.approx(0.57735, abs=1e-5)


def test_session_cooccurrence_min_count() -> None:
    # only AB and AC are seen in 2 baskets; D keeps no neighbour
    got = _table(min_count=2)
    assert [i for i, _ in got[A]] == [B, C]
    assert [i for i, _ in got[B]] == [A]
    assert [i for i, _ in got[C]] == [A]
    assert got[D] == []


def test_session_keys_use_session_id_else_time_blocks() -> None:
    # gap 30 min = 1_800_000 ms: 1_000 ms is block 0, 1_800_000 ms block 1
    keys = session_keys(
        np.array(["u", "u", "v"], dtype=object),
        np.array([None, "s9", None], dtype=object),
        np.array([1_000, 1_000, 1_800_000]),
        1_800_000,
    )
    assert keys.tolist() == ["u:t0", "u:s9", "v:t1"]


def test_trending_counts_whole_slices_up_to_the_cutoff() -> None:
    # 1 h in 12 slices of 300_000 ms; as of 3_600_000 (slice 12) the window is slices 1..12,
    # i.e. [300_000, 3_900_000). Item 0 at 0 (slice 0) and item 3 at 3_900_000 (slice 13) are
    # outside; items 1 and 2 have 2 engagements each -> tie broken by index.
    items = np.array([0, 1, 2, 2, 1, 3])
    ts = np.array([0, 300_000, 3_600_000, 3_600_000, 3_700_000, 3_900_000])
    assert trending_items(items, ts, 3_600_000, 3600, 12, 5) == [1, 2]
    assert trending_items(items, ts, 3_600_000, 3600, 12, 1) == [1]


# ----------------------------------------------------------------------------------------
# The composition on a tiny fake

CATALOG = ["A", "B", "C", "D", "E", "F", "G"]
GENRES = {"A": ("x",), "B": ("x",), "C": ("y",), "D": ("y",), "E": ("y",), "F": ("z",)}


def _pipeline_data() -> TrainingData:
    rows = [
        ("u1", "B", 8.0, 0),
        ("u1", "A", 8.0, 10),
        ("u2", "A", 8.0, 20),
        ("u2", "C", 8.0, 30),
        ("u3", "D", 8.0, 40),
        ("u3", "E", 8.0, 50),
        ("u3", "D", 8.0, 60),
        ("u4", "F", 8.0, 70),
    ]
    inter = frame(rows)
    items = complete_items(None, pd.concat([inter, frame([("x", "G", 1.0, 0)])]))
    items["genres"] = [GENRES.get(i, ("x",)) for i in items["item_id"]]
    assert items["item_id"].tolist() == CATALOG
    return TrainingData(inter, items, 7.0)


class FakeRetrieval:
    """A retrieval model that scores A .95, G .9, E .8, C .1, others 0 for everyone."""

    def score(self, users: np.ndarray) -> np.ndarray:
        row = np.array([0.95, 0.0, 0.1, 0.0, 0.8, 0.0, 0.9], dtype=np.float32)
        return np.tile(row, (len(users), 1))


class FakeRanking:
    """Scores candidates by a fixed table; records what it was asked."""

    class params:  # mimics TrainedRanking.params
        sequence_length = 5

    def __init__(self) -> None:
        self.table = {"D": 4.0, "C": 3.0, "E": 2.0, "G": 1.0}
        self.asked: list[list[str]] = []

    def score_candidates(self, features: dict[str, Any], ids: np.ndarray) -> np.ndarray:
        self.asked = [[str(i) for i in row] for row in ids]
        return np.vectorize(lambda i: self.table.get(i, -1.0), otypes=[np.float32])(ids)


def _cfg() -> AttuneConfig:
    return AttuneConfig.model_validate(
        {
            "api": {
                "candidates": {
                    "retrieval": 3,
                    "seeds": 1,
                    "per_seed": 5,
                    "trending": 2,
                    "max_ranked": 4,
                    "popular": 10,
                },
                "rules": {"max_per_category": 1},
            },
            "batch": {"cooccurrence": {"min_count": 1}},
        }
    )


def test_served_pipeline_composes_pool_ranking_and_rules() -> None:
    # Baskets (30 min gap, all in block 0): u1 {B, A}, u2 {A, C}, u3 {D, E}; u4 {F} too small.
    # Neighbours of A: B, C. Trending (window holds every event; A and D 2 events each):
    # A, D, B, C, E, F; the pool takes 2: [A, D]. Popular (engagements): the same order.
    # u1 (history B, A; seed = latest item = A):
    #   retrieval top 3 over the catalog: A .95, G .9, E .8 -> A is seen; G has no training
    #   event, so it is a new item (not in the served model's index): retrieval gives E, and
    #   the new-items source G (the best new item by its retrieval score)
    #   neighbours of A: B (seen), C -> C (similar, seed A)
    #   trending A (seen), D -> D; pool = E, G, C, D (max_ranked 4)
    #   ranking: D 4, C 3, E 2, G 1
    #   rules (1 per primary genre): D (y); C, E (y) capped; G (x) -> [D, G]; fill: A, B seen,
    #   D, C, E already considered, F (z) -> [D, G, F]; one new item in it: no slot to keep
    data = _pipeline_data()
    ranking = FakeRanking()
    pipe = ServedPipeline(_cfg(), FakeRetrieval(), ranking, k=3).fit(data)
    final = pipe.final_lists(np.array(["u1"], dtype=object), 3)[0]
    assert ranking.asked == [["E", "G", "C", "D"]]
    assert [(c.item_id, c.origin, c.seed) for c in final] == [
        ("D", "trending", None),
        ("G", "new", None),
        ("F", "popular", None),
    ]
    # as catalog scores: position p of 3 scores 3 - p, the rest -inf
    scores = pipe.score(np.array(["u1"], dtype=object))[0]
    assert scores.tolist() == [-np.inf, -np.inf, -np.inf, 3.0, -np.inf, 1.0, 2.0]


def test_served_pipeline_without_ranking_keeps_the_retrieval_order() -> None:
    # pool as above; without ranking the API keeps the retrieval candidates in retrieval
    # order (the new item G is not one): E (y); fill: A seen, D (y) capped, B seen, C (y)
    # capped, E taken, F (z) -> [E, F]; only 2 items pass, and no new item was ranked
    pipe = ServedPipeline(_cfg(), FakeRetrieval(), None, k=3).fit(_pipeline_data())
    final = pipe.final_lists(np.array(["u1"], dtype=object), 3)[0]
    assert [c.item_id for c in final] == ["E", "F"]


def test_neighbour_negatives_by_hand() -> None:
    from models.pipeline import CooccurrenceTable
    from models.ranking import SourceNeighbours, neighbour_negatives

    # neighbours: 0 -> [1, 2], 1 -> [0], 2 -> none, 3 -> [0]; one seed, its best neighbour,
    # so no row depends on the random draws
    table = CooccurrenceTable(
        indptr=np.array([0, 2, 3, 3, 4]),
        indices=np.array([1, 2, 0, 0]),
        scores=np.ones(4),
        counts=np.ones(4, dtype=np.int64),
    )
    recent = np.array([[0, -1], [0, -1], [2, -1], [-1, -1], [3, 0], [3, -1]])
    positive = np.array([3, 1, 0, 0, 2, 2])
    got = neighbour_negatives(
        recent, positive, SourceNeighbours(table, 1, 1), np.random.default_rng(0)
    )
    # row 0: seed 0 -> 1; row 1: 1 is the positive; row 2: seed 2 has no neighbour; row 3: no
    # history; row 4: seed 3 -> 0, a recent item (seen); row 5: seed 3 -> 0
    assert got.tolist() == [1, -1, -1, -1, -1, 0]


def test_user_kind_shrinks_the_cosine() -> None:
    # The same baskets as _table, read as users (kind user: one basket per user), with
    # shrinkage 1: score = n_ab / (sqrt(n_a n_b) + 1).
    #   AB = AC = 2 / (sqrt(6) + 1) = 2 / 3.44949 = 0.57980; AD = 1 / (sqrt(3) + 1) = 0.36603;
    #   BC = 1 / (2 + 1) = 0.33333; CD = 1 / (sqrt(2) + 1) = 0.41421.
    baskets = ["s1"] * 4 + ["s2"] * 2 + ["s3"] + ["s4"] * 4
    items = [A, B, A, C, A, B, D, B, C, D, A]
    params = CooccurrenceConfig(max_session_items=20, min_count=1, top_k=2)
    table = session_cooccurrence(
        np.array(baskets, dtype=object), np.array(items), 4, params, max_items=3, shrinkage=1.0
    )
    got = {i: table.neighbours(i, 10) for i in range(4)}
    assert [i for i, _ in got[A]] == [B, C]
    assert got[A][0][1] == pytest.approx(0.57980, abs=1e-5)
    assert [i for i, _ in got[C]] == [A, D]
    assert got[C][1][1] == pytest.approx(0.41421, abs=1e-5)
    assert [i for i, _ in got[D]] == [C, A]
    assert got[D][1][1] == pytest.approx(0.36603, abs=1e-5)
