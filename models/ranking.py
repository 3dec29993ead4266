"""The ranking model: scores (user, context, candidate) pairs for engagement (TFRS, DCN).

Input: the raw query features (:data:`models.features.QUERY_FEATURES`) and ``candidate_ids``
``[batch, candidates]``. The query side is encoded once per row by a
:class:`~models.encoders.QueryEncoder`, each candidate by an :class:`~models.encoders.ItemEncoder`
(id + content), and the candidate's popularity prior (log time-decayed positive count, at the
query's time in training, at the end of training at serving) is added as a feature. The
concatenation, plus the query-candidate dot product, goes through a deep & cross network
(``tfrs.layers.dcn.Cross`` then dense layers) into two heads:

* ``engagement``: the logit of a positive interaction (binary cross-entropy); this is the score;
* ``rating``: the explicit rating, learned on rated examples only (mean squared error), a second
  task that shares the network (multi-task; ``rating_weight`` = 0 turns it off).

Training rows: every training interaction (label 1 when positive, 0 otherwise, e.g. a low
rating), plus ``negatives`` sampled items per positive, label 0: the items of random positive
events among the ``negative_window`` events closest in time, i.e. drawn from what was popular
*then*, so they look like the candidates retrieval proposes at that time (items released later
never serve as negatives for earlier queries).

With ``models.ranking.source_features`` the network also sees each candidate through the served
pipeline's sources (co-occurrence with the user's latest items, popularity at several
half-lives, item age; :mod:`models.ranking_features`): point in time in training, computed in
the graph from the raw inputs and tables baked into the SavedModel at serving (same signature).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from attune.config import RankingConfig
from models._tensorflow import tf, tfrs
from models.data import interaction_mask
from models.encoders import (
    FeatureSpace,
    ItemEncoder,
    QueryEncoder,
    features_to_tensors,
)
from models.features import TrainingData, example_query_features, unix_seconds
from models.progress import KerasProgress
from models.ranking_features import (
    PAIR_SEPARATOR,
    SourceSettings,
    SourceTables,
    build_tables,
    training_features,
)

log = logging.getLogger(__name__)


class RankingModel(tfrs.Model):
    """Deep & cross network with an engagement head and a rating head."""

    def __init__(
        self, space: FeatureSpace, params: RankingConfig, sources: SourceTables | None = None
    ) -> None:
        super().__init__()
        self.params = params
        self.use_prior = "prior" in params.features
        self.use_sources = sources is not None
        if sources is not None:
            # models.ranking_features: computed in the graph from the raw inputs at serving
            self.source_seeds = sources.seeds
            self.source_pairs = tf.lookup.StaticHashTable(
                tf.lookup.KeyValueTensorInitializer(
                    tf.constant(sources.pair_keys.astype(str), tf.string),
                    tf.constant(sources.pair_scores, tf.float32),
                ),
                default_value=0.0,
            )
            # row 0: items unknown to training (no popularity, age 0)
            self.source_popularity = tf.constant(
                np.vstack([np.zeros((1, 3)), sources.popularity]).astype(np.float32)
            )
            first = np.concatenate([[np.inf], sources.first_seen])
            self.source_first_seen = tf.constant(first.astype(np.float64))
        self.item_encoder = ItemEncoder(
            space, params.embedding_dim, params.features, id_dropout=params.id_dropout
        )
        self.query_encoder = QueryEncoder(
            space,
            self.item_encoder,
            params.embedding_dim,
            params.features,
            params.sequence_length,
            params.user_oov_buckets,
            params.query_hidden,
            sequence_encoder=params.sequence_encoder,
        )
        self.item_prior = tf.constant(space.item_prior)
        self.catalog_lookup = tf.keras.layers.StringLookup(
            vocabulary=[str(c) for c in space.catalog], num_oov_indices=1
        )
        self.cross = [tfrs.layers.dcn.Cross() for _ in range(params.cross_layers)]
        self.deep = [tf.keras.layers.Dense(n, activation="relu") for n in params.deep_layers]
        self.engagement_head = tf.keras.layers.Dense(1, name="engagement")
        self.rating_head = tf.keras.layers.Dense(1, name="rating")
        self.engagement_task = tfrs.tasks.Ranking(
            loss=tf.keras.losses.BinaryCrossentropy(from_logits=True)
        )
        self.rating_task = tfrs.tasks.Ranking(loss=tf.keras.losses.MeanSquaredError())

    def heads(
        self,
        features: dict[str, tf.Tensor],
        candidate_ids: tf.Tensor,
        prior: tf.Tensor | None = None,
        training: bool = False,
        sources: tf.Tensor | None = None,
    ) -> tuple[tf.Tensor, tf.Tensor]:
        """``[batch, candidates]`` engagement logits and predicted ratings."""
        query = self.query_encoder(features, training=training)  # [B, D]
        # raw content of candidates added after training (export's with_content signature)
        content = features.get("candidate_content")
        items = self.item_encoder(candidate_ids, training=training, content=content)  # [B, C, D]
        n_cand = tf.shape(candidate_ids)[1]
        q = tf.repeat(query[:, None, :], n_cand, axis=1)
        parts = [q, items, tf.reduce_sum(q * items, axis=-1, keepdims=True)]
        if self.use_prior:
            if prior is None:
                prior = tf.gather(self.item_prior, self.catalog_lookup(candidate_ids))
            parts.append(tf.cast(prior, tf.float32)[..., None])
        if self.use_sources:
            if sources is None:
                sources = self.source_features(features, candidate_ids)
            parts.append(tf.cast(sources, tf.float32))
        x = tf.concat(parts, axis=-1)
        width = x.shape[-1]
        x = tf.reshape(x, [-1, width])
        x0 = x
        for layer in self.cross:
            x = layer(x0, x)
        for layer in self.deep:
            x = layer(x)
        shape = tf.shape(candidate_ids)
        engagement = tf.reshape(self.engagement_head(x), shape)
        rating = tf.reshape(self.rating_head(x), shape)
        return engagement, rating

    def source_features(
        self, features: dict[str, tf.Tensor], candidate_ids: tf.Tensor
    ) -> tf.Tensor:
        """``[batch, candidates, len(SOURCE_FEATURES)]``: the graph twin of
        :func:`models.ranking_features.training_features` on the end-of-training tables."""
        recent = features["recent_items"][:, : self.source_seeds]  # [B, S]
        shape = tf.concat([tf.shape(candidate_ids), tf.shape(recent)[1:]], axis=0)  # [B, C, S]
        keys = tf.strings.join(
            [
                tf.broadcast_to(recent[:, None, :], shape),
                tf.broadcast_to(candidate_ids[:, :, None], shape),
            ],
            separator=PAIR_SEPARATOR,
        )
        pair = self.source_pairs.lookup(keys)
        pair = tf.where(tf.broadcast_to(recent[:, None, :], shape) == "", 0.0, pair)
        index = self.catalog_lookup(candidate_ids)
        popularity = tf.gather(self.source_popularity, index)  # [B, C, 3]
        first = tf.gather(self.source_first_seen, index)
        now = tf.cast(tf.reshape(features["request_time"], [-1, 1]), tf.float64)
        days = tf.where(first < now, (now - first) / 86_400.0, tf.zeros_like(first))
        age = tf.cast(tf.math.log1p(days), tf.float32)[..., None]
        return tf.concat(
            [
                tf.reduce_sum(pair, axis=-1, keepdims=True),
                tf.reduce_max(pair, axis=-1, keepdims=True),
                popularity,
                age,
            ],
            axis=-1,
        )

    def score(self, features: dict[str, tf.Tensor], candidate_ids: tf.Tensor) -> tf.Tensor:
        """The served score ``[batch, candidates]``: the engagement logit plus
        ``prior_correction`` times the log prior. Negatives are sampled in proportion to
        popularity at the time, so the logit measures affinity *relative* to popularity; adding
        the log prior back turns it into an estimate of the engagement itself (log-Q)."""
        engagement, _ = self.heads(features, candidate_ids)
        if self.params.prior_correction:
            prior = tf.gather(self.item_prior, self.catalog_lookup(candidate_ids))
            engagement = engagement + self.params.prior_correction * prior
        return engagement

    def compute_loss(self, features: dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        candidate = features["candidate_id"][:, None]
        prior = features["prior"][:, None]
        sources = features["sources"][:, None, :] if self.use_sources else None
        engagement, rating = self.heads(
            features, candidate, prior, training=training, sources=sources
        )
        loss = self.engagement_task(
            labels=features["label"][:, None], predictions=engagement, compute_metrics=False
        )
        if self.params.rating_weight > 0:
            loss += self.params.rating_weight * self.rating_task(
                labels=features["rating"][:, None],
                predictions=rating,
                sample_weight=features["has_rating"][:, None],
                compute_metrics=False,
            )
        return loss


@dataclass
class TrainedRanking:
    model: RankingModel
    space: FeatureSpace
    params: RankingConfig
    data: TrainingData
    history: list[float] = field(default_factory=list)
    seconds: float = 0.0
    name: str = "tfrs-ranking"

    def score_candidates(
        self, features: dict[str, np.ndarray], candidate_ids: np.ndarray
    ) -> np.ndarray:
        """``[batch, candidates]`` engagement logits for raw query features and candidate ids."""
        tensors = features_to_tensors({**features, "candidate_ids": candidate_ids})
        cands = tensors.pop("candidate_ids")
        return np.asarray(self.model.score(tensors, cands).numpy())


@dataclass(frozen=True)
class SourceNeighbours:
    """The co-occurrence neighbours the served pipeline's neighbour source proposes:
    ``table`` (a :class:`models.pipeline.CooccurrenceTable` over catalog indices) read for the
    user's ``seeds`` latest items, ``per_seed`` neighbours each (``api.candidates``)."""

    table: Any
    seeds: int
    per_seed: int
    settings: SourceSettings | None = None


def neighbour_negatives(
    recent: np.ndarray, positive: np.ndarray, source: SourceNeighbours, rng: np.random.Generator
) -> np.ndarray:
    """One hard negative per row: a random neighbour (among the ``per_seed`` best) of a random
    one of the row's ``seeds`` latest items. ``recent``: ``[rows, n]`` catalog indices of the
    user's recent items, most recent first, ``-1`` padding; ``positive``: the row's positive
    item. ``-1`` where there is none (no history, no neighbour, or the neighbour is the positive
    or one of the recent items, which the pool's seen filter would have removed)."""
    n = len(positive)
    seeds = recent[:, : source.seeds]
    if n == 0 or seeds.shape[1] == 0:
        return np.full(n, -1, dtype=np.int64)
    valid = (seeds >= 0).sum(axis=1)  # padding is at the end: valid seeds are a prefix
    col = np.minimum((rng.random(n) * np.maximum(valid, 1)).astype(np.int64), seeds.shape[1] - 1)
    seed_item = seeds[np.arange(n), col]
    ok = seed_item >= 0
    s = np.where(ok, seed_item, 0)
    indptr = source.table.indptr
    start = indptr[s]
    count = np.minimum(indptr[s + 1] - start, source.per_seed)
    ok &= count > 0
    if len(source.table.indices) == 0:
        return np.full(n, -1, dtype=np.int64)
    pick = start + (rng.random(n) * np.maximum(count, 1)).astype(np.int64)
    out = np.where(ok, source.table.indices[np.minimum(pick, len(source.table.indices) - 1)], -1)
    out[(out == positive) | (out[:, None] == recent).any(axis=1)] = -1
    return out.astype(np.int64)


def training_rows(
    data: TrainingData,
    space: FeatureSpace,
    params: RankingConfig,
    seed: int,
    source: SourceNeighbours | None = None,
    sources: SourceSettings | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(query features per interaction row, labelled (row, candidate) pairs).

    Keeping the query features once per interaction, and pairs as row indices into them, keeps
    memory flat however many negatives are sampled. With ``source`` and
    ``params.source_negatives``, that many of each positive's negatives are co-occurrence
    neighbours of the user's then-latest items (:func:`neighbour_negatives`; the time-window
    negative where there is none)."""
    rng = np.random.default_rng(seed)
    queries = example_query_features(data.interactions, params.sequence_length)
    keep = interaction_mask(data.interactions)
    rows = np.flatnonzero(keep)
    inter = data.interactions.iloc[rows]
    items = data.item_indices(inter["item_id"].to_numpy(dtype=object))
    times = unix_seconds(inter["timestamp"])
    label = data.positives[rows].astype(np.float32)
    rating = inter["rating"].to_numpy(dtype=float, na_value=np.nan)
    has_rating = (~np.isnan(rating)).astype(np.float32)
    is_pos = label > 0
    pos_rows = rows[is_pos]
    pos_times = times[is_pos]
    pos_items = items[is_pos]
    n_pos = len(pos_rows)
    # Negatives: items of positive events near in time (rows are in time order).
    centre = np.repeat(np.arange(n_pos), params.negatives)
    half = max(1, params.negative_window // 2)
    offsets = rng.integers(-half, half + 1, size=len(centre))
    neg_items = pos_items[np.clip(centre + offsets, 0, n_pos - 1)]
    n_source = min(params.source_negatives, params.negatives)
    recent = np.zeros((0, 0), dtype=np.int64)
    if (source is not None and n_source > 0 and n_pos > 0) or sources is not None:
        recent_ids = queries["recent_items"][pos_rows]
        recent = np.vectorize(lambda i: data.item_index.get(i, -1), otypes=[np.int64])(recent_ids)
    if source is not None and n_source > 0 and n_pos > 0:
        is_source = np.tile(np.arange(params.negatives), n_pos) < n_source
        picked = centre[is_source]
        hard = neighbour_negatives(recent[picked], pos_items[picked], source, rng)
        neg_items[is_source] = np.where(hard >= 0, hard, neg_items[is_source])
    neg_rows = pos_rows[centre]
    neg_times = pos_times[centre]
    all_rows = np.concatenate([rows, neg_rows])
    all_items = np.concatenate([items, neg_items])
    all_times = np.concatenate([times, neg_times])
    n_neg = len(neg_rows)
    pairs = {
        "row": all_rows.astype(np.int64),
        "candidate_id": space.catalog[all_items],
        "prior": space.prior(all_items, all_times),
        "label": np.concatenate([label, np.zeros(n_neg, dtype=np.float32)]),
        "rating": np.nan_to_num(np.concatenate([rating, np.zeros(n_neg)])).astype(np.float32)
        / 10.0,
        "has_rating": np.concatenate([has_rating, np.zeros(n_neg, dtype=np.float32)]),
    }
    if sources is not None:
        # the recent items of every row (positives' rows are `pos_rows`; others map to theirs)
        where = np.full(len(data.interactions), -1, dtype=np.int64)
        where[pos_rows] = np.arange(n_pos)
        all_recent = np.full((len(all_rows), queries["recent_items"].shape[1]), -1, np.int64)
        has = where[all_rows] >= 0
        if n_pos:
            all_recent[has] = recent[where[all_rows][has]]
        missing = ~has
        if missing.any():
            ids = queries["recent_items"][all_rows[missing]]
            all_recent[missing] = np.vectorize(
                lambda i: data.item_index.get(i, -1), otypes=[np.int64]
            )(ids)
        pairs["sources"] = training_features(
            data, sources, space.event_items, space.event_times, all_recent, all_items, all_times
        )
    return queries, pairs


def source_settings(
    params: RankingConfig, source: SourceNeighbours | None
) -> SourceSettings | None:
    """The source features' settings when ``models.ranking.source_features`` is on."""
    if not params.source_features:
        return None
    if source is None or source.settings is None:
        raise ValueError(
            "models.ranking.source_features needs the co-occurrence neighbours and the "
            "configuration: pass source=SourceNeighbours(..., settings=SourceSettings(cfg)) to "
            "train_ranking, or set models.ranking.source_features: false"
        )
    return source.settings


def make_dataset(
    queries: dict[str, np.ndarray], pairs: dict[str, np.ndarray], batch_size: int, seed: int
) -> tf.data.Dataset:
    """Shuffled batches of pairs joined with their query features (gathered per batch)."""
    query_tensors = features_to_tensors(queries)
    n = len(pairs["row"])
    ds = tf.data.Dataset.from_tensor_slices(features_to_tensors(pairs))
    ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True).batch(batch_size)

    def join(batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        row = batch["row"]
        return {**batch, **{k: tf.gather(v, row) for k, v in query_tensors.items()}}

    return ds.map(join, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def train_ranking(
    data: TrainingData,
    params: RankingConfig,
    prior_half_life_days: float,
    seed: int = 42,
    space: FeatureSpace | None = None,
    progress: bool = True,
    source: SourceNeighbours | None = None,
) -> TrainedRanking:
    """Fit the ranking model on ``data`` with fixed seeds; shows a progress bar. ``space``
    (vocabularies, item table) may be shared with the retrieval model trained on the same data."""
    started = time.monotonic()
    tf.keras.utils.set_random_seed(seed)
    if space is None or space.half_life_days != prior_half_life_days:
        space = FeatureSpace.build(data, prior_half_life_days)
    settings = source_settings(params, source)
    queries, pairs = training_rows(data, space, params, seed, source, settings)
    tables = None
    if settings is not None and source is not None:
        tables = build_tables(data, settings, space.event_items, space.event_times, source.table)
    model = RankingModel(space, params, tables)
    model.compile(optimizer=tf.keras.optimizers.Adam(learning_rate=params.learning_rate))
    ds = make_dataset(queries, pairs, params.batch_size, seed)
    steps = int(np.ceil(len(pairs["row"]) / params.batch_size))
    history = model.fit(
        ds,
        epochs=params.epochs,
        verbose=0,
        callbacks=[KerasProgress("ranking", params.epochs, steps, enabled=progress)],
    )
    seconds = time.monotonic() - started
    losses = [float(v) for v in history.history.get("loss", [])]
    log.info(
        "ranking: %d pairs, %d epochs, %.1f s, loss %s",
        len(pairs["row"]),
        params.epochs,
        seconds,
        losses,
    )
    return TrainedRanking(model, space, params, data, losses, seconds)


class TwoStage:
    """Retrieval proposes ``candidates`` items per user (after exclusions), ranking orders them:
    the full serving path, scored like any other model (non-candidates score -inf)."""

    def __init__(self, retrieval: Any, ranking: TrainedRanking, candidates: int) -> None:
        self.retrieval = retrieval
        self.ranking = ranking
        self.candidates = candidates
        self.name = "tfrs-retrieval+ranking"
        self.exclude: dict[str, np.ndarray] = {}

    def fit(self, data: TrainingData) -> TwoStage:  # pragma: no cover - protocol only
        raise NotImplementedError("train the retrieval and ranking models first")

    def score(self, users: np.ndarray) -> np.ndarray:
        data = self.retrieval.data
        retrieval_scores = self.retrieval.score(users)
        histories = data.histories(users, positives_only=False)
        for row, excl in enumerate(histories):
            retrieval_scores[row, excl] = -np.inf
        n = min(self.candidates, retrieval_scores.shape[1])
        cand = np.argpartition(-retrieval_scores, n - 1, axis=1)[:, :n]
        feats = data.query_features(users, self.ranking.params.sequence_length)
        ranked = self.ranking.score_candidates(feats, data.catalog[cand])
        if self.ranking.params.blend:
            ranked = ranked + self.ranking.params.blend * np.take_along_axis(
                retrieval_scores, cand, axis=1
            )
        out = np.full(retrieval_scores.shape, -np.inf, dtype=np.float32)
        np.put_along_axis(out, cand, ranked.astype(np.float32), axis=1)
        return out
