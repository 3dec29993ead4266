"""Baselines every model has to beat, scored exactly like the TFRS models.

All of them learn from the positive training interactions (rating >= threshold, or a positive
implicit event) and score the whole catalog for a batch of users:

* :class:`Popularity` - items by number of users with a positive interaction; with a half-life,
  each interaction counts ``0.5 ** (age / half_life)`` at the end of training (recent popularity);
* :class:`ItemKNN` - item-to-item cosine similarity of co-occurrence in users' positive
  histories, keeping each item's ``neighbours`` most similar items (classic item-based CF);
* :class:`SparkALS` - Spark MLlib ALS with implicit feedback (Hu, Koren, Volinsky 2008).

Users a baseline knows nothing about (no positive history) get the popularity ranking, and the
neighbourhood models break ties by popularity, as a production system would.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from models.features import TrainingData

if TYPE_CHECKING:
    from attune.config import AttuneConfig

log = logging.getLogger(__name__)


class Recommender(Protocol):
    """What the evaluation needs from a model: fit on training data, score the catalog."""

    name: str

    def fit(self, data: TrainingData) -> Recommender: ...

    def score(self, users: np.ndarray) -> np.ndarray:
        """``[len(users), n_catalog]`` float32 scores; higher is better."""
        ...


def popularity_counts(data: TrainingData, half_life_days: float | None = None) -> np.ndarray:
    """Per catalog item: distinct users with a positive interaction, optionally time-decayed
    (each user-item pair counts once, at its latest time)."""
    pairs = data.positive_pairs()
    latest = pairs.groupby(["user_id", "item"], sort=False)["time"].max().reset_index()
    if half_life_days is None:
        weights = np.ones(len(latest))
    else:
        age_days = (data.now - latest["time"].to_numpy()) / 86_400.0
        weights = np.power(0.5, age_days / half_life_days)
    return np.bincount(latest["item"].to_numpy(), weights=weights, minlength=data.n_items)


class Popularity:
    """Most popular items first, the same list for everyone."""

    def __init__(self, half_life_days: float | None = None) -> None:
        self.half_life_days = half_life_days
        self.name = "popularity" if half_life_days is None else "recent-popularity"
        self._scores: np.ndarray | None = None

    def fit(self, data: TrainingData) -> Popularity:
        self._scores = popularity_counts(data, self.half_life_days).astype(np.float32)
        return self

    def score(self, users: np.ndarray) -> np.ndarray:
        if self._scores is None:
            raise RuntimeError("fit the model before scoring")
        return np.broadcast_to(self._scores, (len(users), len(self._scores))).copy()


class ItemKNN:
    """Item-based collaborative filtering from co-occurrence.

    ``sim(i, j) = c_ij / sqrt(n_i * n_j)`` where ``c_ij`` counts users with both items in their
    positive history and ``n_i`` users with item ``i``. A user's score for item ``j`` is the sum
    of ``sim(i, j)`` over the items ``i`` of their positive history, ``j`` among ``i``'s
    ``neighbours`` nearest items.
    """

    name = "item-knn"

    def __init__(self, neighbours: int = 100) -> None:
        self.neighbours = neighbours
        self._indptr = np.zeros(1, dtype=np.int64)
        self._indices = np.zeros(0, dtype=np.int64)
        self._values = np.zeros(0, dtype=np.float32)
        self._popularity: np.ndarray | None = None
        self._data: TrainingData | None = None
        self._history: dict[str, np.ndarray] = {}

    def fit(self, data: TrainingData) -> ItemKNN:
        n = data.n_items
        pairs = data.positive_pairs().drop_duplicates(["user_id", "item"])
        by_user = pairs.groupby("user_id", sort=False)["item"].apply(np.asarray)
        self._history = by_user.to_dict()
        counts = np.bincount(pairs["item"].to_numpy(), minlength=n).astype(np.float64)
        codes = [
            (items[:, None] * n + items[None, :]).ravel()
            for items in by_user.to_numpy()
            if len(items) > 1
        ]
        all_codes = np.concatenate(codes) if codes else np.zeros(0, dtype=np.int64)
        uniq, c = np.unique(all_codes, return_counts=True)
        rows, cols = np.divmod(uniq, n)
        keep = rows != cols
        rows, cols, c = rows[keep], cols[keep], c[keep]
        sim = c / np.sqrt(counts[rows] * counts[cols])
        # Keep each row's `neighbours` most similar items: sort by row, then similarity desc.
        order = np.lexsort((-sim, rows))
        rows, cols, sim = rows[order], cols[order], sim[order]
        row_counts = np.bincount(rows, minlength=n)
        starts = np.concatenate([[0], np.cumsum(row_counts)[:-1]])
        rank = np.arange(len(rows)) - np.repeat(starts, row_counts)
        keep = rank < self.neighbours
        rows, cols, sim = rows[keep], cols[keep], sim[keep]
        self._indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n))])
        self._indices = cols.astype(np.int64)
        self._values = sim.astype(np.float32)
        pop = popularity_counts(data)
        self._popularity = (pop / max(pop.max(), 1.0) * 1e-6).astype(np.float32)
        self._data = data
        return self

    def score(self, users: np.ndarray) -> np.ndarray:
        if self._popularity is None:
            raise RuntimeError("fit the model before scoring")
        out = np.tile(self._popularity, (len(users), 1))
        for row, user in enumerate(users):
            history = self._history.get(user)
            if history is None:
                continue
            spans = [np.arange(self._indptr[i], self._indptr[i + 1]) for i in history]
            idx = np.concatenate(spans) if spans else np.zeros(0, dtype=np.int64)
            np.add.at(out[row], self._indices[idx], self._values[idx])
        return out


@dataclass(frozen=True)
class ALSParams:
    rank: int = 64
    max_iter: int = 10
    reg_param: float = 20.0
    alpha: float = 40.0
    blocks: int = 2


class SparkALS:
    """Spark MLlib ALS on implicit feedback (confidence ``1 + alpha * r`` with ``r = 1`` for each
    positive user-item pair), factors then scored in NumPy so every model ranks the same way."""

    name = "als"

    def __init__(self, cfg: AttuneConfig, params: ALSParams | None = None, seed: int = 42) -> None:
        self.cfg = cfg
        self.params = params or ALSParams()
        self.seed = seed
        self._user_factors: dict[str, np.ndarray] = {}
        self._item_factors: np.ndarray | None = None
        self._fallback: np.ndarray | None = None

    def fit(self, data: TrainingData) -> SparkALS:
        import pandas as pd
        from pyspark.ml.recommendation import ALS

        from attune.spark_session import build_spark_session

        started = time.monotonic()
        spark = build_spark_session(
            self.cfg, "attune-models-als", {"spark.sql.execution.arrow.pyspark.enabled": "true"}
        )
        pairs = data.positive_pairs().drop_duplicates(["user_id", "item"])
        users = pairs["user_id"].unique()
        user_index = {u: i for i, u in enumerate(users)}
        frame = pd.DataFrame(
            {
                "user": pairs["user_id"].map(user_index).astype("int32"),
                "item": pairs["item"].astype("int32"),
                "rating": np.ones(len(pairs), dtype="float32"),
            }
        )
        sdf = spark.createDataFrame(frame)
        p = self.params
        als = ALS(
            rank=p.rank,
            maxIter=p.max_iter,
            regParam=p.reg_param,
            alpha=p.alpha,
            implicitPrefs=True,
            userCol="user",
            itemCol="item",
            ratingCol="rating",
            seed=self.seed,
            coldStartStrategy="drop",
            nonnegative=False,
            # Few blocks: on one machine, many small blocks only add shuffle overhead.
            numUserBlocks=p.blocks,
            numItemBlocks=p.blocks,
        )
        model = als.fit(sdf)
        uf: pd.DataFrame = model.userFactors.toPandas()
        itf: pd.DataFrame = model.itemFactors.toPandas()
        factors = np.zeros((data.n_items, p.rank), dtype=np.float32)
        known = np.zeros(data.n_items, dtype=bool)
        factors[itf["id"].to_numpy()] = np.stack(itf["features"].to_numpy()).astype(np.float32)
        known[itf["id"].to_numpy()] = True
        self._item_factors = factors
        self._unknown_items = ~known
        self._user_factors = {
            users[i]: np.asarray(f, dtype=np.float32)
            for i, f in zip(uf["id"].to_numpy(), uf["features"].to_numpy(), strict=True)
        }
        self._fallback = popularity_counts(data).astype(np.float32)
        log.info(
            "ALS: %d users, %d items, rank %d, fitted in %.1f s",
            len(users),
            int(known.sum()),
            p.rank,
            time.monotonic() - started,
        )
        return self

    def score(self, users: np.ndarray) -> np.ndarray:
        if self._item_factors is None or self._fallback is None:
            raise RuntimeError("fit the model before scoring")
        out = np.empty((len(users), len(self._item_factors)), dtype=np.float32)
        floor = np.float32(-1e30)
        for row, user in enumerate(users):
            f = self._user_factors.get(user)
            if f is None:  # no positive history: popularity
                out[row] = self._fallback
            else:
                out[row] = self._item_factors @ f
                out[row, self._unknown_items] = floor
        return out
