"""The served pipeline, offline: what the API would have answered each test user at the cutoff.

:class:`ServedPipeline` (``served-pipeline`` in ``attune models evaluate``) runs, for every
scored user, the steps of :mod:`attune.api.recommender` with the same code where the code is
pure, and with offline stand-ins for what the API reads from Redis, each computed from the
training data only (nothing after the split's cutoff):

1. **seeds** – the user's latest ``api.candidates.seeds`` distinct interacted items (the online
   store's recent list, most recent first);
2. **retrieval** – the retrieval model's best ``api.candidates.retrieval`` items over the whole
   catalog (what the exported ``serving_default`` signature returns);
3. **neighbours** – each seed's best ``api.candidates.per_seed`` co-occurrence neighbours of
   the kind ``api.candidates.neighbours`` (``user``: item-kNN, ``session``):
   :func:`training_cooccurrence`, the NumPy twin of the batch layer's ``spark/gold.py``
   ``item_cooccurrence`` (same baskets, same score, same ``batch.cooccurrence`` limits);
4. **trending** – the best ``api.candidates.trending`` items of the ``api.candidates.
   trending_window_s`` window ending at the cutoff (whole slices, like the speed layer's
   counts: :func:`trending_items`);
5. **pool** – :func:`attune.candidates.candidate_pool`, the API's function;
6. **ranking** – the ranking model scores the pool, plus ``api.candidates.neighbour_weight``
   times each candidate's neighbour score (:func:`attune.candidates.add_neighbour_score`);
7. **rules** – :func:`attune.rules.apply_rules`, the API's function, with ``api.rules``: the
   hard filters, boosts, calibration to the user's genre affinities (:func:`genre_tastes`, the
   online store's decayed affinities from the training interactions), the diversity cap per
   primary genre, and the fill with trending then popular items (engagement counts, the speed
   layer's all-time popularity).

Offline, every event of the training data counts as an engagement (a rating in a ratings
file; the interaction events of an event log, :func:`models.data.interaction_mask`), and
*seen* is the user's whole training history (the evaluation excludes it anyway; the online
store keeps the last ``speed.features.recent_items``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from attune.candidates import (
    add_neighbour_score,
    best_admissible,
    candidate_pool,
    fits_cap,
    keep_new_slots,
    neighbour_scores,
)
from attune.config import AttuneConfig, CooccurrenceConfig
from attune.rules import Candidate, Exclusions, apply_rules, blocked_by
from models.data import interaction_mask
from models.features import TrainingData, last_items, unix_seconds

PURCHASE_TYPES = frozenset({"purchase", "checkout"})


# ----------------------------------------------------------------------------------------
# Session co-occurrence (the batch layer's gold/item_cooccurrence, kind = session)


def session_keys(
    users: np.ndarray, session_ids: np.ndarray | None, ts_ms: np.ndarray, gap_ms: int
) -> np.ndarray:
    """Each event's basket ``user:session``: its ``session_id`` when it has one, else the
    block of ``gap_ms`` its time falls in (``t<floor(ts / gap)>``), as in the batch layer."""
    blocks = np.char.add("t", (ts_ms // gap_ms).astype(str)).astype(object)
    if session_ids is not None:
        sid = np.asarray(session_ids, dtype=object)
        has = np.array([isinstance(s, str) and s != "" for s in sid], dtype=bool)
        blocks = np.where(has, sid, blocks)
    return np.asarray([f"{u}:{s}" for u, s in zip(users, blocks, strict=True)], dtype=object)


@dataclass
class CooccurrenceTable:
    """Per item (catalog index), its neighbours best first, CSR-like: the neighbours of item
    ``a`` are ``indices[indptr[a]:indptr[a + 1]]`` with ``scores`` and ``counts`` alongside."""

    indptr: np.ndarray
    indices: np.ndarray
    scores: np.ndarray
    counts: np.ndarray

    def neighbours(self, item: int, k: int) -> list[tuple[int, float]]:
        lo, hi = int(self.indptr[item]), int(self.indptr[item + 1])
        hi = min(hi, lo + k)
        return [
            (int(i), float(s)) for i, s in zip(self.indices[lo:hi], self.scores[lo:hi], strict=True)
        ]


def session_cooccurrence(
    baskets: np.ndarray,
    items: np.ndarray,
    n_items: int,
    params: CooccurrenceConfig,
    *,
    max_items: int | None = None,
    shrinkage: float = 0.0,
) -> CooccurrenceTable:
    """Co-occurrence neighbours of every item, from engagement events in time order.

    ``baskets`` (session keys, :func:`session_keys`) and ``items`` (catalog indices) are one
    entry per event, **in time order**. As in ``spark/gold.py`` (``_latest_distinct`` and
    ``_pairs``): each basket keeps its ``max_session_items`` most recently engaged distinct
    items (an item counts at its latest event) and counts only with at least 2 of them; ``n_a``
    is the number of such baskets holding ``a``, ``n_ab`` those holding both; pairs seen in
    fewer than ``min_count`` baskets are dropped; ``score = n_ab / sqrt(n_a n_b)``; each item
    keeps its ``top_k`` best by score, then count, then catalog index (ids are sorted).

    The kind ``user`` (:func:`training_cooccurrence`) is the same with one basket per user,
    ``max_items = max_user_items`` and ``score = n_ab / (sqrt(n_a n_b) + shrinkage)``.
    """
    max_items = params.max_session_items if max_items is None else max_items
    frame = pd.DataFrame({"basket": baskets, "item": np.asarray(items, dtype=np.int64)})
    frame["order"] = np.arange(len(frame))
    latest = frame.drop_duplicates(["basket", "item"], keep="last").sort_values("order")
    kept = latest.groupby("basket", sort=False).tail(max_items)
    sizes = kept.groupby("basket", sort=False)["item"].transform("size")
    kept = kept[sizes.to_numpy() >= 2]
    groups = kept.groupby("basket", sort=False)["item"].apply(np.asarray)
    support = np.bincount(kept["item"].to_numpy(), minlength=n_items).astype(np.float64)
    codes = [(g[:, None] * n_items + g[None, :]).ravel() for g in groups.to_numpy()]
    all_codes = np.concatenate(codes) if codes else np.zeros(0, dtype=np.int64)
    uniq, count = np.unique(all_codes, return_counts=True)
    a, b = np.divmod(uniq, n_items)
    keep = (a != b) & (count >= params.min_count)
    a, b, count = a[keep], b[keep], count[keep]
    score = count / (np.sqrt(support[a] * support[b]) + shrinkage)
    order = np.lexsort((b, -count, -score, a))
    a, b, score, count = a[order], b[order], score[order], count[order]
    per_item = np.bincount(a, minlength=n_items)
    starts = np.concatenate([[0], np.cumsum(per_item)[:-1]]).astype(np.int64)
    rank = np.arange(len(a)) - np.repeat(starts, per_item)
    top = rank < params.top_k
    a, b, score, count = a[top], b[top], score[top], count[top]
    indptr = np.concatenate([[0], np.cumsum(np.bincount(a, minlength=n_items))]).astype(np.int64)
    return CooccurrenceTable(indptr, b.astype(np.int64), score.astype(np.float64), count)


def training_cooccurrence(
    data: TrainingData, cfg: AttuneConfig, kind: str | None = None
) -> CooccurrenceTable:
    """:func:`session_cooccurrence` of the training data's interaction events, of ``kind``
    (``session`` or ``user``; default ``api.candidates.neighbours``, what the API's neighbour
    source reads), with the configured session gap (``speed.features.session_gap``) and limits
    (``batch.cooccurrence``): what the batch layer would have written to Redis at the end of the
    training data."""
    kind = cfg.api.candidates.neighbours if kind is None else kind
    inter = data.interactions[interaction_mask(data.interactions)]
    items = data.item_indices(inter["item_id"].to_numpy(dtype=object))
    ts_ms = unix_seconds(inter["timestamp"]) * 1000
    params = cfg.batch.cooccurrence
    if kind == "user":
        users = inter["user_id"].to_numpy(dtype=object).astype(str)
        return session_cooccurrence(
            users,
            items,
            data.n_items,
            params,
            max_items=params.max_user_items,
            shrinkage=params.user_shrinkage,
        )
    sessions = inter["session_id"].to_numpy(dtype=object) if "session_id" in inter else None
    baskets = session_keys(
        inter["user_id"].to_numpy(dtype=object),
        sessions,
        ts_ms,
        int(cfg.speed.features.session_gap.total_seconds() * 1000),
    )
    return session_cooccurrence(baskets, items, data.n_items, cfg.batch.cooccurrence)


def ranking_source(data: TrainingData, cfg: AttuneConfig) -> Any:
    """What ``train_ranking`` needs to train on the candidate sources
    (``models.ranking.source_negatives`` / ``source_features``): the neighbour source as the API
    would read it, or None when neither is on. One definition for ``attune models evaluate``
    and ``attune models train``. Both options read the session co-occurrence (the kind their
    point-in-time training features, :mod:`models.ranking_features`, are computed from),
    whatever ``api.candidates.neighbours`` says; both are off by default (measured worse)."""
    rc = cfg.models.ranking
    if rc.source_negatives <= 0 and not rc.source_features:
        return None
    from models.ranking import SourceNeighbours
    from models.ranking_features import SourceSettings

    cands = cfg.api.candidates
    return SourceNeighbours(
        training_cooccurrence(data, cfg, "session"),
        cands.seeds,
        cands.per_seed,
        SourceSettings(cfg),
    )


def genre_tastes(
    interactions: pd.DataFrame,
    users: np.ndarray,
    categories: Any,
    weights: dict[str, float],
    rating_neutral: float,
    half_life_s: float,
) -> list[dict[str, float]]:
    """Each user's genre affinities as the online store computes them (``attune.features``:
    every genre of the item gets the event's weight, a rating ``weights["rating"] * (rating -
    neutral) / neutral``, decayed by ``half_life_s`` to the user's latest interaction). One
    difference: the store drops what is older than its two newest buckets (16 half-lives
    each); here those contributions stay, already decayed to less than 2^-16 of their weight."""
    inter = interactions[interaction_mask(interactions)]
    inter = inter[inter["user_id"].isin(set(users))]
    types = inter["event_type"].astype(str)
    w = types.map(lambda t: weights.get(t, 0.0)).astype(float).to_numpy()
    if "rating" in inter and "rating" in weights:
        is_rating = (types == "rating").to_numpy()
        r = pd.to_numeric(inter["rating"], errors="coerce").to_numpy(dtype=float)
        w = np.where(
            is_rating, np.nan_to_num(weights["rating"] * (r - rating_neutral) / rating_neutral), w
        )
    t = unix_seconds(inter["timestamp"]).astype(float)
    last = pd.Series(t).groupby(inter["user_id"].to_numpy()).transform("max").to_numpy()
    value = w * np.exp2((t - last) / half_life_s)
    tastes: dict[str, dict[str, float]] = {}
    for user, item, v in zip(inter["user_id"], inter["item_id"], value, strict=True):
        if v == 0:
            continue
        mine = tastes.setdefault(str(user), {})
        for g in dict.fromkeys(categories(str(item))):
            mine[g] = mine.get(g, 0.0) + float(v)
    return [tastes.get(str(u), {}) for u in users]


def trending_items(
    items: np.ndarray, ts_ms: np.ndarray, as_of_ms: int, window_s: int, slices: int, k: int
) -> list[int]:
    """The ``k`` items with most engagements in the window ending at ``as_of_ms`` (whole
    slices: the slice holding ``as_of_ms`` and the ``slices - 1`` before it, as
    :func:`attune.features.trending`), best first, ties by catalog index."""
    length = window_s * 1000 // slices
    last = as_of_ms // length
    idx = ts_ms // length
    inside = (idx > last - slices) & (idx <= last)
    counts = np.bincount(np.asarray(items)[inside], minlength=0)
    ranked = [int(i) for i in np.lexsort((np.arange(len(counts)), -counts)) if counts[i] > 0]
    return ranked[:k]


# ----------------------------------------------------------------------------------------
# The pipeline


class ServedPipeline:
    """Retrieval + co-occurrence neighbours + trending -> ranking -> rules, per user, offline
    (see the module docstring). ``retrieval`` and ``ranking`` are trained models (anything
    with ``score(users)`` and ``score_candidates(features, candidate_ids)``, and
    ``params.sequence_length`` for the ranking); without ``ranking`` the pool keeps the
    API's order without ranking (retrieval results only, in retrieval order)."""

    name = "served-pipeline"

    def __init__(
        self, cfg: AttuneConfig, retrieval: Any, ranking: Any | None, k: int | None = None
    ) -> None:
        self.cfg = cfg
        self.k = cfg.models.k if k is None else k
        self.retrieval = retrieval
        self.ranking = ranking
        self._data: TrainingData | None = None

    def fit(self, data: TrainingData) -> ServedPipeline:
        """The offline stand-ins for the Redis reads: co-occurrence, trending, popular."""
        cand = self.cfg.api.candidates
        feats = self.cfg.speed.features
        inter = data.interactions[interaction_mask(data.interactions)]
        items = data.item_indices(inter["item_id"].to_numpy(dtype=object))
        ts_ms = unix_seconds(inter["timestamp"]) * 1000
        self.cooccurrence = training_cooccurrence(data, self.cfg)
        as_of = int(data.now) * 1000
        self.trending = [
            str(data.catalog[i])
            for i in trending_items(
                items, ts_ms, as_of, cand.trending_window_s, feats.trending_slices, cand.trending
            )
        ]
        counts = np.bincount(items, minlength=data.n_items)
        order = np.lexsort((np.arange(data.n_items), -counts))
        self.popular = [str(data.catalog[i]) for i in order[: cand.popular] if counts[i] > 0]
        # Items nobody interacted with before the cutoff: what the API knows as new items
        # (published to the catalog after the served model was trained; :mod:`attune.api.
        # new_items`), reached through their content vector and the reserved slots.
        self.new_items = np.flatnonzero(counts == 0)
        self._new_ids = [str(i) for i in data.catalog[self.new_items]]
        genres = data.items.get("genres")
        self._categories: dict[str, tuple[str, ...]] = (
            {
                str(i): tuple(g) if g is not None else ()
                for i, g in zip(data.catalog, genres.to_numpy(), strict=True)
            }
            if genres is not None
            else {}
        )
        self._data = data
        return self

    def categories(self, item_id: str) -> tuple[str, ...]:
        return self._categories.get(item_id, ())

    def neighbours_of(self, seeds: Sequence[str]) -> dict[str, list[tuple[str, float]]]:
        """Seed -> its ``per_seed`` best neighbours (what ``ApiStore.neighbours`` reads)."""
        data = self._require()
        k = self.cfg.api.candidates.per_seed
        return {
            s: [
                (str(data.catalog[i]), v)
                for i, v in self.cooccurrence.neighbours(data.item_index[s], k)
            ]
            for s in seeds
            if s in data.item_index
        }

    def _require(self) -> TrainingData:
        if self._data is None:
            raise RuntimeError("fit the pipeline before scoring")
        return self._data

    def final_lists(self, users: np.ndarray, k: int) -> list[list[Candidate]]:
        """Each user's served list of at most ``k`` items (the API's ``apply_rules`` output)."""
        data = self._require()
        cand = self.cfg.api.candidates
        rules = self.cfg.api.rules
        seeds_of = last_items(data.interactions, users, cand.seeds)
        histories = data.histories(users, positives_only=False)
        inter = data.interactions[interaction_mask(data.interactions)]
        bought = inter[inter["event_type"].astype(str).isin(PURCHASE_TYPES)]
        purchased = bought.groupby("user_id", sort=False)["item_id"].unique().to_dict()
        retrieval_scores = self.retrieval.score(users)
        is_new = np.zeros(data.n_items, dtype=bool)
        is_new[self.new_items] = True
        n = min(cand.retrieval, retrieval_scores.shape[1])
        top = np.argpartition(-retrieval_scores, n - 1, axis=1)[:, :n]
        top_scores = np.take_along_axis(retrieval_scores, top, axis=1)
        order = np.lexsort((top, -top_scores), axis=1)
        top = np.take_along_axis(top, order, axis=1)
        top_scores = np.take_along_axis(top_scores, order, axis=1)
        exclusions = [
            Exclusions(
                seen=frozenset(str(i) for i in data.catalog[histories[row]]),
                purchased=frozenset(str(i) for i in purchased.get(user, ())),
            )
            for row, user in enumerate(users)
        ]
        pools: list[dict[str, Candidate]] = []
        proposed: list[dict[str, tuple[float, str]]] = []
        for row, ex in enumerate(exclusions):
            retrieved = [
                Candidate(str(data.catalog[i]), float(s), "retrieval")
                for i, s in zip(top[row], top_scores[row], strict=True)
                if not is_new[i]
            ]
            retrieved += self.new_candidates(retrieval_scores[row], ex)
            seeds = [s for s in seeds_of[row] if s]
            neighbours = self.neighbours_of(seeds)
            proposed.append(neighbour_scores(neighbours) if cand.neighbour_weight else {})
            pools.append(
                candidate_pool(
                    retrieved,
                    neighbours,
                    self.trending[: cand.trending],
                    max_ranked=cand.max_ranked,
                    ex=ex,
                    categories=self.categories,
                    rules=rules,
                )
            )
        ranked = [
            add_neighbour_score(r, proposed[row], cand.neighbour_weight)
            for row, r in enumerate(self._rank(users, pools))
        ]
        fill = [Candidate(i, None, "trending") for i in self.trending] + [
            Candidate(i, None, "popular") for i in self.popular
        ]
        feats = self.cfg.speed.features
        tastes = (
            genre_tastes(
                data.interactions,
                users,
                self.categories,
                dict(feats.affinity_weights),
                feats.rating_neutral,
                feats.affinity_half_life.total_seconds(),
            )
            if rules.calibration > 0
            else [None] * len(users)
        )
        out = []
        for row, ex in enumerate(exclusions):
            final = apply_rules(
                ranked[row], k, ex, self.categories, rules, fill=fill, tastes=tastes[row]
            )
            if cand.new_slots:
                final = keep_new_slots(
                    final, ranked[row], cand.new_slots, fits_cap(self.categories, rules)
                )
            out.append(final)
        return out

    def new_candidates(self, scores: np.ndarray, ex: Exclusions) -> list[Candidate]:
        """The ``api.candidates.new_items`` best admissible new items by the retrieval score
        (content only: a new item's popularity prior is 0), as the API's
        :func:`attune.api.new_items.best_new_items` picks them from their vectors."""
        self._require()
        n = self.cfg.api.candidates.new_items
        if n <= 0 or not len(self.new_items):
            return []
        rules = self.cfg.api.rules
        return best_admissible(
            self._new_ids,
            scores[self.new_items].tolist(),
            n,
            lambda item: blocked_by(item, self.categories(item), ex, rules) is None,
        )

    def _rank(self, users: np.ndarray, pools: list[dict[str, Candidate]]) -> list[list[Candidate]]:
        """The ranking model's scores for each pool (the API's ``_rank`` after the pool)."""
        if self.ranking is None:
            return [[c for c in p.values() if c.origin == "retrieval"] for p in pools]
        data = self._require()
        width = max((len(p) for p in pools), default=0)
        if width == 0:
            return [[] for _ in pools]
        ids = np.full((len(pools), width), "", dtype=object)
        for row, p in enumerate(pools):
            ids[row, : len(p)] = list(p)
        feats = data.query_features(users, self.ranking.params.sequence_length)
        scores = self.ranking.score_candidates(feats, ids)
        return [
            [
                Candidate(i, float(s), p[i].origin, p[i].seed)
                for i, s in zip(list(p), scores[row, : len(p)], strict=True)
            ]
            for row, p in enumerate(pools)
        ]

    def score(self, users: np.ndarray) -> np.ndarray:
        """Catalog scores that reproduce the served lists: the item at position ``p`` of a list
        of ``k`` scores ``k - p``, every other item ``-inf``."""
        data = self._require()
        k = self.k
        out = np.full((len(users), data.n_items), -np.inf, dtype=np.float32)
        for row, final in enumerate(self.final_lists(users, k)):
            for pos, c in enumerate(final):
                out[row, data.item_index[c.item_id]] = k - pos
        return out
