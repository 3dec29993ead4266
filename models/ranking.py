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

log = logging.getLogger(__name__)


class RankingModel(tfrs.Model):
    """Deep & cross network with an engagement head and a rating head."""

    def __init__(self, space: FeatureSpace, params: RankingConfig) -> None:
        super().__init__()
        self.params = params
        self.use_prior = "prior" in params.features
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
    ) -> tuple[tf.Tensor, tf.Tensor]:
        """``[batch, candidates]`` engagement logits and predicted ratings."""
        query = self.query_encoder(features, training=training)  # [B, D]
        items = self.item_encoder(candidate_ids, training=training)  # [B, C, D]
        n_cand = tf.shape(candidate_ids)[1]
        q = tf.repeat(query[:, None, :], n_cand, axis=1)
        parts = [q, items, tf.reduce_sum(q * items, axis=-1, keepdims=True)]
        if self.use_prior:
            if prior is None:
                prior = tf.gather(self.item_prior, self.catalog_lookup(candidate_ids))
            parts.append(tf.cast(prior, tf.float32)[..., None])
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
        engagement, rating = self.heads(features, candidate, prior, training=training)
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


def training_rows(
    data: TrainingData, space: FeatureSpace, params: RankingConfig, seed: int
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(query features per interaction row, labelled (row, candidate) pairs).

    Keeping the query features once per interaction, and pairs as row indices into them, keeps
    memory flat however many negatives are sampled."""
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
    return queries, pairs


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
) -> TrainedRanking:
    """Fit the ranking model on ``data`` with fixed seeds; shows a progress bar. ``space``
    (vocabularies, item table) may be shared with the retrieval model trained on the same data."""
    started = time.monotonic()
    tf.keras.utils.set_random_seed(seed)
    if space is None or space.half_life_days != prior_half_life_days:
        space = FeatureSpace.build(data, prior_half_life_days)
    queries, pairs = training_rows(data, space, params, seed)
    model = RankingModel(space, params)
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
