"""Top-k ranking metrics with binary relevance.

For one user with a ranked list ``r_1, r_2, ...`` (best first) and a set ``R`` of relevant items
(the user's positive test interactions), with ``hit_i = 1`` when ``r_i`` is in ``R``:

* ``Recall@k   = sum_{i<=k} hit_i / |R|``
* ``HitRate@k  = 1 if any hit_i (i <= k) else 0``
* ``NDCG@k     = DCG@k / IDCG@k`` with ``DCG@k = sum_{i<=k} hit_i / log2(i + 1)`` and ``IDCG@k``
  the DCG of a perfect list (``min(|R|, k)`` hits at the top)
* ``MAP@k      = (1 / min(|R|, k)) * sum_{i<=k} hit_i * Precision@i`` (the mean of AP@k)

Each is averaged over the users that have at least one relevant item. Beyond accuracy, over
the users' top-k lists (relevance plays no part):

* ``coverage``: the share of the catalog that appears in at least one user's top k;
* ``personalization = 1 - mean over user pairs (a, b) of |L_a ∩ L_b| / k``: 0 when everyone
  gets the same list, 1 when no two lists share an item (Zhou et al. 2010's "inter-list
  diversity"); computed exactly over all pairs (see :func:`personalization`);
* ``novelty``: the mean self-information ``-log2 p(i)`` of the recommended items, ``p(i)`` the
  share of training users with a positive on ``i``: recommending what 1 user in 2 already had
  scores 1 bit, what 1 in 1,024 had scores 10 bits.
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


def personalization(top_k: np.ndarray, k: int) -> float:
    """``1 -`` the mean overlap ``|L_a ∩ L_b| / k`` over all pairs of rows of ``top_k``.

    Exact without enumerating the pairs: an item in ``c_i`` of the ``n`` lists is shared by
    ``c_i (c_i - 1) / 2`` pairs, so the summed overlap of all ``n (n - 1) / 2`` pairs is
    ``sum_i c_i (c_i - 1) / 2`` (each list holds an item at most once). Negative entries are
    padding. NaN with fewer than two lists.
    """
    n = top_k.shape[0]
    if n < 2 or k <= 0:
        return float("nan")
    items = top_k[:, :k]
    per_row = [np.unique(row[row >= 0]) for row in items]
    flat = np.concatenate(per_row) if per_row else np.zeros(0, dtype=np.int64)
    _, counts = np.unique(flat, return_counts=True)
    shared = float((counts.astype(np.float64) * (counts - 1) / 2).sum())
    pairs = n * (n - 1) / 2
    return 1.0 - shared / pairs / k


def novelty(top_k: np.ndarray, item_users: np.ndarray, n_users: int, k: int) -> float:
    """Mean ``-log2 p(i)`` over every recommended item (padding excluded), ``p(i) =
    item_users[i] / n_users``. Items no training user had (cold items) count as if one had:
    the largest measurable novelty, ``log2(n_users)``. NaN when nothing is recommended."""
    items = top_k[:, :k].ravel()
    items = items[items >= 0]
    if len(items) == 0 or n_users <= 0:
        return float("nan")
    p = np.maximum(item_users[items].astype(np.float64), 1.0) / n_users
    return float(-np.log2(p).mean())


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
