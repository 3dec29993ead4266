"""Source features of the ranking model: what the candidate sources know about a candidate.

The served pipeline (models/pipeline.py, the API) pools candidates from retrieval, co-occurrence
neighbours of the user's latest items and trending items; the ranking model orders the pool. To
let it *blend* the sources, each (query, candidate) pair gets :data:`SOURCE_FEATURES`:

``cooc_sum``, ``cooc_max``  the co-occurrence score ``n_ab / sqrt(n_a n_b)`` of the candidate
                            as a neighbour of each of the user's latest items (``models.
                            ranking.source_recent_items``, else ``api.candidates.seeds``; the
                            neighbour source's table, top ``batch.cooccurrence.top_k`` per
                            item), summed and maxed over those items (0 when not a neighbour);
``pop_1d``, ``pop_7d``      ``log1p`` of the candidate's positive count decayed with a half-life
                            of 1 and 7 days (what trending and recent popularity see);
``pop_all``                 ``log1p`` of its all-time positive count (the popular fill);
``age``                     ``log1p`` of the days since the item's first positive (0 when none
                            yet): new items behave differently from old ones at equal counts.

No signature change: at serving the model computes them itself from its existing raw inputs
(``recent_items``, ``request_time``, ``candidate_ids``) and tables baked into the SavedModel
(:class:`SourceTables`: the neighbour pairs as a static hash table, the popularity as of the end
of training, the first-positive times). In training the same features are computed here in
NumPy **point in time**, as of each example's time, so nothing after it leaks in:

* popularity counts only positives strictly before the example (:func:`decayed_counts`);
* age uses the first positive strictly before it (0 when the item had none yet);
* co-occurrence uses a table built from the events before the example's *time chunk*: the
  training span is cut into ``chunks`` equal-count chunks and rows of chunk ``k`` read the table
  of the events of chunks ``0..k-1`` (the first chunk has no table: its features are 0), so an
  example's own session never counts for it. The table is thus a little staler in training
  than at serving, where it holds all the training data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from attune.config import AttuneConfig
from models.data import interaction_mask
from models.encoders import decayed_counts
from models.features import TrainingData, unix_seconds
from models.pipeline import CooccurrenceTable, session_cooccurrence, session_keys

SOURCE_FEATURES: tuple[str, ...] = ("cooc_sum", "cooc_max", "pop_1d", "pop_7d", "pop_all", "age")
HALF_LIVES_DAYS: tuple[float, ...] = (1.0, 7.0, float("inf"))  # pop_1d, pop_7d, pop_all
PAIR_SEPARATOR = "\t"
DAY_S = 86_400.0


# ----------------------------------------------------------------------------------------
# Pure feature functions (NumPy; catalog indices, -1 = padding / unknown)


def cooccurrence_features(
    recent: np.ndarray, candidates: np.ndarray, table: CooccurrenceTable
) -> np.ndarray:
    """``[rows, 2]`` (sum, max) over the row's ``recent`` items ``r`` (``[rows, S]``, ``-1``
    padding) of the score of ``candidates[row]`` among ``r``'s neighbours in ``table``
    (0 when it is not one)."""
    rows, s = recent.shape
    out = np.zeros((rows, 2), dtype=np.float32)
    if rows == 0 or s == 0 or len(table.indices) == 0:
        return out
    n = len(table.indptr) - 1
    seed = np.repeat(np.arange(n, dtype=np.int64), np.diff(table.indptr))
    codes = seed * n + table.indices
    order = np.argsort(codes, kind="stable")
    codes, scores = codes[order], table.scores[order]
    query = np.where(recent >= 0, recent, 0) * n + np.asarray(candidates)[:, None]
    pos = np.minimum(np.searchsorted(codes, query), len(codes) - 1)
    hit = (codes[pos] == query) & (recent >= 0) & (np.asarray(candidates)[:, None] >= 0)
    value = np.where(hit, scores[pos], 0.0)
    out[:, 0] = value.sum(axis=1)
    out[:, 1] = value.max(axis=1)
    return out


def popularity_features(
    event_items: np.ndarray,
    event_times: np.ndarray,
    items: np.ndarray,
    times: np.ndarray,
    n_items: int,
) -> np.ndarray:
    """``[rows, 3]`` ``log1p`` of each item's positive count strictly before each time, decayed
    with the :data:`HALF_LIVES_DAYS` (the last one infinite: the plain count)."""
    cols = [
        np.log1p(decayed_counts(event_items, event_times, items, times, h, n_items))
        for h in HALF_LIVES_DAYS
    ]
    return np.stack(cols, axis=1).astype(np.float32) if len(items) else np.zeros((0, 3), np.float32)


def first_times(event_items: np.ndarray, event_times: np.ndarray, n_items: int) -> np.ndarray:
    """Each item's first event time (``inf`` when it has none)."""
    first = np.full(n_items, np.inf)
    np.minimum.at(first, np.asarray(event_items, dtype=np.int64), np.asarray(event_times, float))
    return first


def age_feature(first: np.ndarray, items: np.ndarray, times: np.ndarray) -> np.ndarray:
    """``log1p`` of the days between each item's first event and the time; 0 when the item
    had no event strictly before the time (point in time: a later first event is unknown)."""
    f = first[np.asarray(items, dtype=np.int64)]
    t = np.asarray(times, dtype=np.float64)
    days = np.where(f < t, (t - f) / DAY_S, 0.0)
    return np.log1p(days).astype(np.float32)


# ----------------------------------------------------------------------------------------
# Tables: what the SavedModel bakes in, and the point-in-time training features


@dataclass(frozen=True)
class SourceTables:
    """The end-of-training tables the ranking model computes the features from at serving.

    ``pair_keys`` ``"<seed>\\t<candidate>"`` -> ``pair_scores`` (the neighbour table, by item
    id); ``popularity`` ``[n_items, 3]`` the popularity columns as of ``now``; ``first_seen``
    ``[n_items]`` first positive time (``inf`` none); ``seeds`` how many recent items count."""

    pair_keys: np.ndarray
    pair_scores: np.ndarray
    popularity: np.ndarray
    first_seen: np.ndarray
    seeds: int


@dataclass(frozen=True)
class SourceSettings:
    """What the features need from the configuration: the neighbour source's session rule and
    limits (``speed.features.session_gap``, ``batch.cooccurrence``), how many latest items
    count (``models.ranking.source_recent_items``, else ``api.candidates.seeds``), and the
    number of time chunks of the point-in-time co-occurrence."""

    cfg: AttuneConfig
    chunks: int = 4

    @property
    def seeds(self) -> int:
        """How many of the latest items the co-occurrence features read."""
        return self.cfg.models.ranking.source_recent_items or self.cfg.api.candidates.seeds


def _engagements(
    data: TrainingData, cfg: AttuneConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(baskets, catalog indices, Unix seconds) of the training engagement events, time order."""
    inter = data.interactions[interaction_mask(data.interactions)]
    items = data.item_indices(inter["item_id"].to_numpy(dtype=object))
    ts = unix_seconds(inter["timestamp"])
    sessions = inter["session_id"].to_numpy(dtype=object) if "session_id" in inter else None
    gap_ms = int(cfg.speed.features.session_gap.total_seconds() * 1000)
    baskets = session_keys(inter["user_id"].to_numpy(dtype=object), sessions, ts * 1000, gap_ms)
    return baskets, items, ts


def pair_table(table: CooccurrenceTable, catalog: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The neighbour table as ``"<seed>\\t<neighbour>"`` keys (item ids) and scores."""
    n = len(table.indptr) - 1
    seed = np.repeat(np.arange(n), np.diff(table.indptr))
    keys = np.asarray(
        [
            f"{a}{PAIR_SEPARATOR}{b}"
            for a, b in zip(catalog[seed], catalog[table.indices], strict=True)
        ],
        dtype=object,
    )
    return keys, table.scores.astype(np.float32)


def build_tables(
    data: TrainingData,
    settings: SourceSettings,
    event_items: np.ndarray,
    event_times: np.ndarray,
    table: CooccurrenceTable,
) -> SourceTables:
    """The serving tables as of the end of the training data (``data.now``); ``event_items``,
    ``event_times``: the positive events (the popularity prior's)."""
    n = data.n_items
    keys, scores = pair_table(table, data.catalog)
    as_of = np.full(n, data.now + 1, dtype=np.int64)  # every event at or before `now` counts
    return SourceTables(
        pair_keys=keys,
        pair_scores=scores,
        popularity=popularity_features(event_items, event_times, np.arange(n), as_of, n),
        first_seen=first_times(event_items, event_times, n),
        seeds=settings.seeds,
    )


def training_features(
    data: TrainingData,
    settings: SourceSettings,
    event_items: np.ndarray,
    event_times: np.ndarray,
    recent: np.ndarray,
    candidates: np.ndarray,
    times: np.ndarray,
) -> np.ndarray:
    """``[rows, len(SOURCE_FEATURES)]`` point-in-time features of training pairs: ``recent``
    ``[rows, >= seeds]`` catalog indices of the row's latest items before it (most recent
    first, ``-1`` padding), ``candidates`` catalog indices, ``times`` the rows' Unix seconds."""
    cfg = settings.cfg
    n = data.n_items
    rows = len(candidates)
    out = np.zeros((rows, len(SOURCE_FEATURES)), dtype=np.float32)
    if rows == 0:
        return out
    baskets, items, ts = _engagements(data, cfg)
    seeds = recent[:, : settings.seeds]
    bounds = np.quantile(ts, np.linspace(0, 1, settings.chunks + 1)[1:-1]) if len(ts) else []
    chunk = np.searchsorted(np.asarray(bounds), times, side="right")
    for k in range(1, settings.chunks):
        in_chunk = chunk == k
        if not in_chunk.any():
            continue
        before = ts < bounds[k - 1]
        table = session_cooccurrence(baskets[before], items[before], n, cfg.batch.cooccurrence)
        out[in_chunk, 0:2] = cooccurrence_features(seeds[in_chunk], candidates[in_chunk], table)
    out[:, 2:5] = popularity_features(event_items, event_times, candidates, times, n)
    out[:, 5] = age_feature(first_times(event_items, event_times, n), candidates, times)
    return out
