"""Baselines every model has to beat, scored exactly like the TFRS models.

All of them learn from the positive training interactions (rating >= threshold, or a positive
implicit event) and score the whole catalog for a batch of users:

* :class:`Popularity` - items by number of users with a positive interaction; with a half-life,
  each interaction counts ``0.5 ** (age / half_life)`` at the end of training (recent popularity);
* :class:`ItemKNN` - item-to-item cosine similarity of co-occurrence in users' positive
  histories, shrunk towards 0 for rarely co-occurring pairs, keeping each item's ``neighbours``
  most similar items (classic item-based CF);
* :class:`EASE` - Steck's "Embarrassingly Shallow Autoencoder" (WWW 2019): an item-to-item
  weight matrix learned in closed form by ridge regression of each item on all the others;
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
import scipy.linalg
import scipy.sparse

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


@dataclass(frozen=True)
class CoOccurrence:
    """Who has what among the positive training pairs, shared by the item-kNN grid.

    ``rows, cols, counts``: every ordered pair of distinct items ``(a, b)`` with ``counts`` > 0
    users having both; ``item_users[a]``: users having ``a``; ``history``: each user's items.
    """

    rows: np.ndarray
    cols: np.ndarray
    counts: np.ndarray
    item_users: np.ndarray
    history: dict[str, np.ndarray]


def cooccurrence(data: TrainingData) -> CoOccurrence:
    """Co-occurrence counts of items in users' positive histories (each user counts once)."""
    n = data.n_items
    pairs = data.positive_pairs().drop_duplicates(["user_id", "item"])
    by_user = pairs.groupby("user_id", sort=False)["item"].apply(np.asarray)
    item_users = np.bincount(pairs["item"].to_numpy(), minlength=n).astype(np.float64)
    codes = [
        (items[:, None] * n + items[None, :]).ravel()
        for items in by_user.to_numpy()
        if len(items) > 1
    ]
    all_codes = np.concatenate(codes) if codes else np.zeros(0, dtype=np.int64)
    uniq, c = np.unique(all_codes, return_counts=True)
    rows, cols = np.divmod(uniq, n)
    keep = rows != cols
    return CoOccurrence(
        rows[keep].astype(np.int64),
        cols[keep].astype(np.int64),
        c[keep].astype(np.float64),
        item_users,
        by_user.to_dict(),
    )


def _tie_break(data: TrainingData) -> np.ndarray:
    """Popularity scaled into [0, 1e-6]: orders items the model scores equally (and is the
    whole ranking of users the model knows nothing about)."""
    pop = popularity_counts(data)
    return (pop / max(pop.max(), 1.0) * 1e-6).astype(np.float32)


class ItemKNN:
    """Item-based collaborative filtering from co-occurrence, with shrinkage.

    ``sim(a, b) = c_ab / (sqrt(n_a * n_b) + shrinkage)`` where ``c_ab`` counts users with both
    items in their positive history and ``n_a`` users with item ``a``. With ``shrinkage = 0``
    this is the cosine similarity; a positive shrinkage pulls the similarity of pairs seen
    together by few users towards 0 (a pair of two rare items seen together once has cosine 1,
    which says little). A user's score for item ``b`` is the sum of ``sim(a, b)`` over the items
    ``a`` of their positive history, ``b`` among ``a``'s ``neighbours`` most similar items.
    """

    name = "item-knn"

    def __init__(self, neighbours: int = 100, shrinkage: float = 0.0) -> None:
        if neighbours < 1 or shrinkage < 0:
            raise ValueError("item-kNN needs neighbours >= 1 and shrinkage >= 0")
        self.neighbours = neighbours
        self.shrinkage = shrinkage
        self._indptr = np.zeros(1, dtype=np.int64)
        self._indices = np.zeros(0, dtype=np.int64)
        self._values = np.zeros(0, dtype=np.float32)
        self._popularity: np.ndarray | None = None
        self._history: dict[str, np.ndarray] = {}

    def fit(self, data: TrainingData, co: CoOccurrence | None = None) -> ItemKNN:
        """Fit on ``data``; ``co`` is ``cooccurrence(data)`` when already computed (a grid
        search computes it once for every neighbours x shrinkage pair)."""
        n = data.n_items
        co = cooccurrence(data) if co is None else co
        self._history = co.history
        rows, cols = co.rows, co.cols
        sim = co.counts / (np.sqrt(co.item_users[rows] * co.item_users[cols]) + self.shrinkage)
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
        self._popularity = _tie_break(data)
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


def ease_weights(gram: np.ndarray, lam: float) -> np.ndarray:
    """EASE's closed-form item-item weights from the Gram matrix ``G = X^T X``.

    EASE fits ``min_B ||X - X B||^2 + lam ||B||^2`` subject to ``diag(B) = 0`` (an item may not
    predict itself). With ``P = (G + lam I)^-1`` the Lagrangian solution is
    ``B = I - P diag(1 / diag(P))``, i.e. ``B_ab = -P_ab / P_bb`` and ``B_aa = 0`` (Steck 2019,
    eq. 8). ``G + lam I`` is symmetric positive definite for ``lam > 0``, so ``P`` comes from a
    Cholesky factorisation (LAPACK potrf + potri, about ``n^3`` flops). Computed in ``gram``'s
    dtype; ``gram`` is left unchanged.
    """
    if lam <= 0:
        raise ValueError(f"EASE needs a positive regularization lambda, got {lam}")
    n = gram.shape[0]
    a = np.array(gram, order="F", copy=True)
    a[np.diag_indices(n)] += lam
    potrf, potri = scipy.linalg.lapack.get_lapack_funcs(("potrf", "potri"), (a,))
    factor, info = potrf(a, lower=False, overwrite_a=True, clean=True)
    if info != 0:
        raise ValueError(f"EASE: X^T X + {lam} I is not positive definite (LAPACK info {info})")
    inv, info = potri(factor, lower=False, overwrite_c=True)
    if info != 0:
        raise ValueError(f"EASE: inverting X^T X + {lam} I failed (LAPACK info {info})")
    del factor, a
    # potri fills the upper triangle only: mirror it (P is symmetric).
    p = np.triu(inv)
    del inv
    p += np.triu(p, 1).T
    diag = p.diagonal().copy()
    p /= -diag[None, :]
    np.fill_diagonal(p, 0.0)
    return p


class EASE:
    """EASE (Steck, "Embarrassingly Shallow Autoencoders for Sparse Data", WWW 2019).

    ``X`` is the binary user x item matrix of positive training pairs, restricted to the items
    with at least one positive (the others have no column to learn from: they rank below every
    scored item). The weights ``B`` (:func:`ease_weights`) are exact: one
    Cholesky solve, in float64 when ``3 n^2 x 8`` bytes fit in ``max_memory_gb`` (the Gram
    matrix, its inverse and one mirrored copy are alive at the peak), else float32; they are
    kept in float32 for scoring. A user's scores are ``x_u B``: the sum of the weight rows of
    the items in their positive history. ``lam`` (``models.ease_lambda_grid``) is chosen on
    the validation split.
    """

    name = "ease"

    def __init__(self, lam: float = 500.0, max_memory_gb: float = 4.0) -> None:
        if lam <= 0:
            raise ValueError(f"EASE needs a positive regularization lambda, got {lam}")
        self.lam = lam
        self.max_memory_gb = max_memory_gb
        self.fit_info: dict[str, float | int | str] = {}
        self._weights: np.ndarray | None = None
        self._columns = np.zeros(0, dtype=np.int64)
        self._position: dict[str, np.ndarray] = {}
        self._popularity: np.ndarray | None = None

    def fit(self, data: TrainingData) -> EASE:
        started = time.monotonic()
        pairs = data.positive_pairs().drop_duplicates(["user_id", "item"])
        self._columns = np.unique(pairs["item"].to_numpy()).astype(np.int64)
        m = len(self._columns)
        column_of = np.full(data.n_items, -1, dtype=np.int64)
        column_of[self._columns] = np.arange(m)
        cols = column_of[pairs["item"].to_numpy()]
        users, rows = np.unique(pairs["user_id"].to_numpy(dtype=object), return_inverse=True)
        x = scipy.sparse.csr_matrix(
            (np.ones(len(pairs), dtype=np.float64), (rows, cols)), shape=(len(users), m)
        )
        budget = self.max_memory_gb * 1e9
        if 3 * m * m * 8 <= budget:
            dtype: type[np.floating] = np.float64
        elif 3 * m * m * 4 <= budget:
            dtype = np.float32
        else:
            need = 3 * m * m * 4 / 1e9
            raise ValueError(
                f"EASE over {m} items needs about {need:.1f} GB in float32, more than "
                f"models.ease_max_memory_gb = {self.max_memory_gb}: raise it, or leave ease out "
                "of --models"
            )
        gram = (x.T @ x).toarray().astype(dtype, copy=False)
        self._weights = ease_weights(gram, self.lam).astype(np.float32)
        del gram
        self._position = _positions(users, rows, cols)
        self._popularity = _tie_break(data)
        self.fit_info = {
            "items": m,
            "users": len(users),
            "dtype": np.dtype(dtype).name,
            "seconds": round(time.monotonic() - started, 2),
            "peak_matrix_gb": round(3 * m * m * np.dtype(dtype).itemsize / 1e9, 2),
        }
        return self

    def score(self, users: np.ndarray) -> np.ndarray:
        if self._weights is None or self._popularity is None:
            raise RuntimeError("fit the model before scoring")
        out = np.tile(self._popularity, (len(users), 1))
        known = [(row, self._position[u]) for row, u in enumerate(users) if u in self._position]
        if not known:
            return out
        m = len(self._columns)
        indptr = np.concatenate([[0], np.cumsum([len(c) for _, c in known])])
        x = scipy.sparse.csr_matrix(
            (
                np.ones(int(indptr[-1]), dtype=np.float32),
                np.concatenate([c for _, c in known]),
                indptr,
            ),
            shape=(len(known), m),
        )
        rows = np.array([row for row, _ in known], dtype=np.int64)
        # Users with a history: EASE scores on the learned columns, the rest below them all
        # (EASE scores can be negative, so "below" is a floor, not 0).
        out[rows] = np.float32(-1e30)
        out[np.ix_(rows, self._columns)] = np.asarray(x @ self._weights, dtype=np.float32)
        return out


def _positions(users: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> dict[str, np.ndarray]:
    """Each user's columns in the EASE matrix, from the (row, column) pairs of ``X``."""
    order = np.argsort(rows, kind="stable")
    counts = np.bincount(rows, minlength=len(users))
    return dict(zip(users, np.split(cols[order], np.cumsum(counts)[:-1]), strict=True))


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
