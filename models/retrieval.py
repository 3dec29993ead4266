"""The two-tower retrieval model (TensorFlow Recommenders).

Query tower: user id, recent-item sequence, request context (see
:class:`models.encoders.QueryEncoder`). Candidate tower: item id and content features (see
:class:`models.encoders.ItemEncoder`). Both towers' outputs are L2-normalized and compared by a
dot product divided by a temperature.

A *popularity prior* is part of the score: the candidate side carries one extra coordinate, the
item's log time-decayed popularity (as of the query's time in training, as of the end of the
training data at serving), and the query side a weight for it. So
``score = <q, c> / T + w(q) * prior(item)`` is still a single dot product, and exported candidate
embeddings work with any nearest-neighbour index. The weight is either

* learned per query (``prior_weight`` unset), trained with the prior in the logits; or
* a fixed ``prior_weight``, with the prior left out of training: batches of time-adjacent
  examples without the log-Q correction make the towers learn affinity *relative to what was
  popular at the time* (in-batch negatives are drawn in proportion to it), and serving adds the
  current popularity back, ``prior_weight * prior``. Item embeddings then carry no stale
  popularity, and "what is popular now" comes from the prior alone.

Training is in-batch softmax over positive interactions (``tfrs.tasks.Retrieval``), optionally
with ``uniform_negatives`` catalog items drawn uniformly per batch as extra negatives (mixed
negative sampling, Yang et al. 2020: in-batch negatives are popular items, uniform ones reach
the long tail), with
* a correction for popularity sampling bias (in-batch negatives are drawn in proportion to how
  often items are positives): either in the loss, the log-Q correction
  (``candidate_sampling_probability``, scaled by ``logq_weight``: every candidate's logit loses
  ``logq_weight * log(B p + n_uniform / n_catalog)``, its expected count in the batch's
  negatives, see :func:`models.encoders.mixed_sampling_probability`), or at serving, by adding the
  log prior back with a fixed ``prior_weight`` (the default: on MovieTweetings validation splits
  it beat the in-loss correction on both the temporal and the user-stratified split);
* accidental hits removed (the same item appearing as its own negative);
* optional recency weights on examples (recent behaviour counts more when training ends "now").
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from attune.config import RetrievalConfig
from models._tensorflow import tf, tfrs
from models.data import interaction_mask
from models.encoders import (
    FEATURE_GROUPS,
    FeatureSpace,
    ItemEncoder,
    QueryEncoder,
    features_to_tensors,
    mixed_sampling_probability,
    recency_weights,
    sampling_probability,
)
from models.features import TrainingData, example_query_features, unix_seconds
from models.progress import KerasProgress

log = logging.getLogger(__name__)


class RetrievalModel(tfrs.Model):
    """Two towers and a retrieval task; :meth:`compute_loss` is the only training logic."""

    def __init__(self, space: FeatureSpace, params: RetrievalConfig) -> None:
        super().__init__()
        unknown = set(params.features) - set(FEATURE_GROUPS)
        if unknown:
            raise ValueError(
                f"unknown feature group {sorted(unknown)[0]!r}: "
                f"expected {', '.join(FEATURE_GROUPS)}"
            )
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
            sequence_encoder=params.sequence_encoder,
        )
        self.prior_weight = tf.keras.layers.Dense(1, activation="softplus", name="prior_weight")
        self.item_prior = tf.constant(space.item_prior)
        self.catalog_lookup = tf.keras.layers.StringLookup(
            vocabulary=[str(c) for c in space.catalog], num_oov_indices=1
        )
        self.catalog_ids = tf.constant(space.catalog.astype(str))
        self.task = tfrs.tasks.Retrieval(remove_accidental_hits=True)

    # The two towers -------------------------------------------------------------------
    def query_embedding(
        self, features: dict[str, tf.Tensor], training: bool = False, with_prior: bool = True
    ) -> tf.Tensor:
        """``[batch, dim + 1]``: normalized query / sqrt(T), then the prior's weight: learned
        per query (``prior_weight`` unset), or the fixed ``prior_weight`` (0 in training)."""
        q = self.query_encoder(features, training=training)
        scale = 1.0 / np.sqrt(self.params.temperature)
        out = [tf.math.l2_normalize(q, axis=-1) * scale]
        if self.use_prior:
            if self.params.prior_weight is None:
                out.append(self.prior_weight(q))
            else:
                weight = self.params.prior_weight if with_prior else 0.0
                out.append(tf.fill([tf.shape(q)[0], 1], tf.constant(weight, tf.float32)))
        return tf.concat(out, axis=-1)

    def candidate_embedding(
        self, item_ids: tf.Tensor, prior: tf.Tensor | None = None, training: bool = False
    ) -> tf.Tensor:
        """``[n, dim + 1]``: normalized item vector / sqrt(T), then the item's log prior
        (``prior`` given per example in training, else the end-of-training snapshot)."""
        c = self.item_encoder(item_ids, training=training)
        scale = 1.0 / np.sqrt(self.params.temperature)
        out = [tf.math.l2_normalize(c, axis=-1) * scale]
        if self.use_prior:
            if prior is None:
                prior = tf.gather(self.item_prior, self.catalog_lookup(item_ids))
            out.append(tf.reshape(prior, [-1, 1]))
        return tf.concat(out, axis=-1)

    def compute_loss(self, features: dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        """In-batch softmax; with ``uniform_negatives``, the batch's candidates are followed by
        that many catalog items drawn uniformly (mixed negative sampling), which score against
        every query of the batch; their prior is the end-of-training snapshot."""
        query = self.query_embedding(features, training=training, with_prior=False)
        ids = features["item_id"]
        candidate = self.candidate_embedding(ids, features.get("prior"), training=training)
        p_batch = features["sampling_probability"]
        n_uniform = self.params.uniform_negatives
        n_catalog = int(self.catalog_ids.shape[0])
        batch = tf.cast(tf.shape(ids)[0], tf.float32)
        if n_uniform > 0:
            drawn = tf.random.uniform([n_uniform], 0, n_catalog, dtype=tf.int64)
            extra_ids = tf.gather(self.catalog_ids, drawn)
            extra = self.candidate_embedding(extra_ids, training=training)
            # A drawn item that is also one of the batch's items has its in-batch probability
            # too (its share of the batch's examples); others were not drawn in-batch.
            same = tf.cast(tf.equal(extra_ids[:, None], ids[None, :]), tf.float32)
            extra_p = tf.reduce_sum(same * p_batch[None, :], axis=1) / tf.maximum(
                tf.reduce_sum(same, axis=1), 1.0
            )
            candidate = tf.concat([candidate, extra], axis=0)
            ids = tf.concat([ids, extra_ids], axis=0)
            p_batch = tf.concat([p_batch, extra_p], axis=0)
        probability = None
        if self.params.logq_weight > 0:
            expected = mixed_sampling_probability(p_batch, batch, n_uniform, n_catalog)
            probability = tf.pow(expected, self.params.logq_weight)
        return self.task(
            query,
            candidate,
            sample_weight=features.get("weight"),
            candidate_sampling_probability=probability,
            candidate_ids=ids,
            compute_metrics=False,
            compute_batch_metrics=False,
        )


@dataclass
class TrainedRetrieval:
    """A fitted retrieval model and what it was fitted on."""

    model: RetrievalModel
    space: FeatureSpace
    params: RetrievalConfig
    data: TrainingData
    history: list[float] = field(default_factory=list)
    seconds: float = 0.0
    name: str = "tfrs-retrieval"
    _candidates: np.ndarray | None = None

    def candidate_matrix(self, batch_size: int = 4096) -> np.ndarray:
        """Embeddings of the whole catalog, ``[n_catalog, dim (+1)]``, computed once."""
        if self._candidates is None:
            parts = []
            for start in range(0, len(self.space.catalog), batch_size):
                ids = tf.constant(self.space.catalog[start : start + batch_size].astype(str))
                parts.append(self.model.candidate_embedding(ids).numpy())
            self._candidates = np.concatenate(parts, axis=0)
        return self._candidates

    def query_matrix(self, features: dict[str, np.ndarray]) -> np.ndarray:
        return np.asarray(self.model.query_embedding(features_to_tensors(features)).numpy())

    def fit(self, data: TrainingData) -> TrainedRetrieval:  # pragma: no cover - protocol only
        raise NotImplementedError("use train_retrieval()")

    def score(self, users: np.ndarray) -> np.ndarray:
        """``[len(users), n_catalog]`` scores as of the end of training data."""
        feats = self.data.query_features(users, self.params.sequence_length)
        return self.query_matrix(feats) @ self.candidate_matrix().T


def training_examples(
    data: TrainingData, space: FeatureSpace, params: RetrievalConfig
) -> dict[str, np.ndarray]:
    """One example per positive (or per interaction) of the training data: the raw query
    features as known just before it, the item, its point-in-time prior, its sampling
    probability and its recency weight."""
    feats = example_query_features(data.interactions, params.sequence_length)
    if params.train_on == "positives":
        mask = data.positives
    elif params.train_on == "interactions":
        mask = interaction_mask(data.interactions)
    else:
        raise ValueError(f"train_on must be positives or interactions, not {params.train_on!r}")
    rows = data.interactions[mask]
    items = data.item_indices(rows["item_id"].to_numpy(dtype=object))
    times = unix_seconds(rows["timestamp"])
    examples = {name: values[mask] for name, values in feats.items()}
    examples["item_id"] = rows["item_id"].to_numpy(dtype=object)
    examples["prior"] = space.prior(items, times)
    if params.batching == "time":
        # Batches are runs of time-adjacent examples (rows are in time order), so in-batch
        # negatives are items that were current at the query's time and their priors are
        # nearly the query-time priors; the sampling probability is the batch's own frequency.
        probability = np.zeros(len(items), dtype=np.float32)
        for start in range(0, len(items), params.batch_size):
            chunk = slice(start, start + params.batch_size)
            probability[chunk] = sampling_probability(items[chunk], data.n_items)
        examples["sampling_probability"] = probability
    elif params.batching == "shuffle":
        examples["sampling_probability"] = sampling_probability(items, data.n_items)
    else:
        raise ValueError(f"batching must be time or shuffle, not {params.batching!r}")
    examples["weight"] = recency_weights(times, data.now, params.example_half_life_days)
    return examples


def make_dataset(
    examples: dict[str, np.ndarray], batch_size: int, seed: int, batching: str = "shuffle"
) -> tf.data.Dataset:
    """Batches of examples; ``time`` batching keeps consecutive rows together and shuffles the
    order of the batches, ``shuffle`` shuffles rows."""
    tensors = features_to_tensors(examples)
    n = len(next(iter(examples.values())))
    ds = tf.data.Dataset.from_tensor_slices(tensors)
    if batching == "time":
        ds = ds.batch(batch_size).shuffle(n // batch_size + 1, seed=seed)
    else:
        ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True).batch(batch_size)
    return ds.prefetch(tf.data.AUTOTUNE)


def train_retrieval(
    data: TrainingData,
    params: RetrievalConfig,
    prior_half_life_days: float,
    seed: int = 42,
    progress: bool = True,
) -> TrainedRetrieval:
    """Fit the two-tower model on ``data`` with fixed seeds; shows a progress bar."""
    started = time.monotonic()
    tf.keras.utils.set_random_seed(seed)
    space = FeatureSpace.build(
        data, prior_half_life_days, min_item_interactions=params.min_item_interactions
    )
    examples = training_examples(data, space, params)
    n = len(examples["item_id"])
    if n == 0:
        raise ValueError("no training examples: the training data has no positive interactions")
    model = RetrievalModel(space, params)
    model.compile(optimizer=tf.keras.optimizers.Adam(learning_rate=params.learning_rate))
    ds = make_dataset(examples, params.batch_size, seed, params.batching)
    steps = int(np.ceil(n / params.batch_size))
    history = model.fit(
        ds,
        epochs=params.epochs,
        verbose=0,
        callbacks=[KerasProgress("retrieval", params.epochs, steps, enabled=progress)],
    )
    seconds = time.monotonic() - started
    losses = [float(v) for v in history.history.get("loss", [])]
    log.info(
        "retrieval: %d examples, %d epochs, %.1f s, loss %s", n, params.epochs, seconds, losses
    )
    return TrainedRetrieval(model, space, params, data, losses, seconds)
