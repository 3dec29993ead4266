"""Top-k ranking metrics with binary relevance.

For one user with a ranked list ``r_1, r_2, ...`` (best first) and a set ``R`` of relevant items
(the user's positive test interactions), with ``hit_i = 1`` when ``r_i`` is in ``R``:

* ``Recall@k   = sum_{i<=k} hit_i / |R|``
* ``HitRate@k  = 1 if any hit_i (i <= k) else 0``
* ``NDCG@k     = DCG@k / IDCG@k`` with ``DCG@k = sum_{i<=k} hit_i / log2(i + 1)`` and ``IDCG@k``
  the DCG of a perfect list (``min(|R|, k)`` hits at the top)
* ``MAP@k      = (1 / min(|R|, k)) * sum_{i<=k} hit_i * Precision@i`` (the mean of AP@k)

Each is averaged over the users that have at least one relevant item. Catalog coverage is the
share of the catalog that appears in at least one user's top k.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

METRIC_NAMES: tuple[str, ...] = ("recall", "ndcg", "map", "hit_rate")


def _hits(
    ranked: Sequence[int] | np.ndarray, relevant: set[int] | np.ndarray, k: int
) -> np.ndarray:
    top = np.asarray(ranked)[:k]
    return np.isin(
        top, np.fromiter(relevant, dtype=top.dtype) if isinstance(relevant, set) else relevant
    )


def _discounts(k: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(2, k + 2))


def recall_at_k(
    ranked: Sequence[int] | np.ndarray, relevant: set[int] | np.ndarray, k: int
) -> float:
    n_rel = len(relevant)
    return float(_hits(ranked, relevant, k).sum() / n_rel) if n_rel else 0.0


def hit_rate_at_k(
    ranked: Sequence[int] | np.ndarray, relevant: set[int] | np.ndarray, k: int
) -> float:
    return float(_hits(ranked, relevant, k).any())


def ndcg_at_k(ranked: Sequence[int] | np.ndarray, relevant: set[int] | np.ndarray, k: int) -> float:
    n_rel = len(relevant)
    if not n_rel:
        return 0.0
    hits = _hits(ranked, relevant, k)
    disc = _discounts(k)
    return float((hits * disc[: len(hits)]).sum() / disc[: min(n_rel, k)].sum())


def average_precision_at_k(
    ranked: Sequence[int] | np.ndarray, relevant: set[int] | np.ndarray, k: int
) -> float:
    n_rel = len(relevant)
    if not n_rel:
        return 0.0
    hits = _hits(ranked, relevant, k).astype(float)
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float((precision * hits).sum() / min(n_rel, k))


def catalog_coverage(top_k: np.ndarray, n_items: int) -> float:
    """Share of the ``n_items`` catalog that appears in at least one row of ``top_k``
    (negative entries are padding, not items)."""
    if n_items <= 0:
        return 0.0
    items = np.unique(top_k)
    return float(len(items[items >= 0]) / n_items)


def per_user_metrics(
    top_k: np.ndarray, relevant: Sequence[np.ndarray], k: int
) -> dict[str, np.ndarray]:
    """Every metric for every user: ``top_k[u]`` ranked item indices, ``relevant[u]`` the set."""
    n = len(relevant)
    if top_k.shape[0] != n:
        raise ValueError(f"{top_k.shape[0]} rankings for {n} users")
    top = top_k[:, :k]
    hits = np.zeros(top.shape, dtype=bool)
    for u in range(n):
        hits[u] = np.isin(top[u], relevant[u])
    n_rel = np.array([len(r) for r in relevant], dtype=float)
    disc = _discounts(top.shape[1])
    ideal_cum = np.concatenate([[0.0], np.cumsum(disc)])
    ideal = ideal_cum[np.minimum(n_rel, top.shape[1]).astype(int)]
    hit_count = hits.sum(axis=1)
    precision = np.cumsum(hits, axis=1) / np.arange(1, top.shape[1] + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "recall": np.where(n_rel > 0, hit_count / n_rel, 0.0),
            "ndcg": np.where(ideal > 0, (hits * disc).sum(axis=1) / ideal, 0.0),
            "map": np.where(
                n_rel > 0, (precision * hits).sum(axis=1) / np.minimum(n_rel, top.shape[1]), 0.0
            ),
            "hit_rate": (hit_count > 0).astype(float),
        }


def summarize(top_k: np.ndarray, relevant: Sequence[np.ndarray], k: int) -> dict[str, float]:
    """Mean of each metric over the users with at least one relevant item, plus ``users``."""
    keep = np.array([len(r) > 0 for r in relevant], dtype=bool)
    if not keep.any():
        return {**{name: float("nan") for name in METRIC_NAMES}, "users": 0}
    per_user = per_user_metrics(
        top_k[keep], [r for r, k_ in zip(relevant, keep, strict=True) if k_], k
    )
    out: dict[str, float] = {name: float(values.mean()) for name, values in per_user.items()}
    out["users"] = int(keep.sum())
    return out
