"""Feature preprocessing and encoders shared by the retrieval and ranking models.

Everything a model needs to turn *raw* features into vectors lives inside the model, so the
exported SavedModels take raw strings and integers and training/serving skew cannot happen:

* :class:`FeatureSpace` - vocabularies and the item table, computed once from training data:
  user ids, item ids with interactions, the catalog with each item's content (genres multi-hot,
  title tokens by :func:`attune.features.title_tokens`, the rule the batch layer's
  ``gold/items.title_tokens`` follows, year bucket, price bucket) and a popularity prior per
  item; the item table is a constant of the exported SavedModel, which receives item ids;
* :class:`ItemEncoder` - item id strings (any shape) -> vectors, from an id embedding (unknown
  and rare ids share out-of-vocabulary rows) plus content features looked up in the item table,
  so an item nobody interacted with still gets a meaningful vector;
* :class:`QueryEncoder` - raw query features (:data:`models.features.QUERY_FEATURES`) -> vectors:
  user id (hashed OOV buckets for new users), the recent-item sequence encoded with the same
  :class:`ItemEncoder` and summarized by a *sequence encoder*, and the request context (hour,
  weekday, device, placement, segment).

Sequence encoders (``sequence_encoder`` of the retrieval and ranking configuration):

``mean``       item vectors averaged with learned, softmax-normalized weights per position
               (order matters only through the position weights; times are not read);
``gru``        a GRU run from the oldest to the most recent item over item vector + time-gap
               embedding; its last state summarizes the sequence (order is implicit);
``attention``  one self-attention block (SASRec-like) over item vector + position embedding +
               time-gap embedding, then attention pooling with a learned query.

The time gap of a recent item is ``request_time - recent_times`` (how long ago the user touched
it), bucketized on a log scale by :func:`time_gap_buckets`; padding (``""``, time ``0``) is
masked everywhere, so a padded slot never changes the query vector.

Feature groups can be switched off (``features`` parameter) to measure what each adds.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from attune.config import FEATURE_GROUP_NAMES
from attune.features import title_tokens
from models._tensorflow import tf
from models.data import CONTEXT_COLUMNS, interaction_mask
from models.features import PAD, TrainingData, unix_seconds

# The feature groups, named once in the configuration (models.retrieval.features).
FEATURE_GROUPS: tuple[str, ...] = FEATURE_GROUP_NAMES

CONTENT_INPUTS: tuple[str, ...] = ("genres", "title", "year")
"""An item's raw content as the models take it for items their item table does not hold:
``genres`` string ``[..., G]`` (``""`` padded), ``title`` string, ``year`` int64 (0 = unknown)."""

YEAR_BOUNDARIES = (1950, 1970, 1980, 1990, 2000, 2005, 2008, 2010, 2011, 2012, 2013, 2014)


def decayed_counts(
    event_items: np.ndarray,
    event_times: np.ndarray,
    query_items: np.ndarray,
    query_times: np.ndarray,
    half_life_days: float,
    n_items: int,
) -> np.ndarray:
    """For each query (item, time), ``sum 0.5 ** ((time - t_e) / half_life)`` over the events
    ``e`` of that item strictly before ``time``: a point-in-time, time-decayed popularity.

    Computed in closed form: sort events by (item, time), prefix-sum ``2 ** ((t_e - t0) / h)``,
    and look each query up with a binary search, so it is exact for any query time (training
    examples, sampled negatives, "now")."""
    h = half_life_days * 86_400.0
    if len(query_times) == 0:
        return np.zeros(0)
    if len(event_times) == 0:
        return np.zeros(len(query_times))
    # Times relative to the first event keep 2 ** (t / h) finite for any realistic span.
    t0 = float(min(event_times.min(), query_times.min()))
    order = np.lexsort((event_times, event_items))
    items_sorted = event_items[order].astype(np.int64)
    times_sorted = event_times[order].astype(np.float64)
    span = float(max(event_times.max(), query_times.max()) - t0 + 2.0)
    key_events = items_sorted * span + (times_sorted - t0)
    weights = np.exp2((times_sorted - t0) / h)
    prefix = np.concatenate([[0.0], np.cumsum(weights)])
    starts = np.searchsorted(items_sorted, np.arange(n_items), side="left")
    q_items = query_items.astype(np.int64)
    key_query = q_items * span + (query_times.astype(np.float64) - t0)
    pos = np.searchsorted(key_events, key_query, side="left")  # events strictly before
    total = prefix[pos] - prefix[starts[q_items]]
    return np.asarray(total * np.exp2(-(query_times.astype(np.float64) - t0) / h))


@dataclass
class FeatureSpace:
    """Vocabularies and the item table, computed from training data only."""

    users: np.ndarray
    id_items: np.ndarray
    catalog: np.ndarray
    genres: np.ndarray
    item_genres: np.ndarray  # [n_catalog + 1, n_genres] float32, row 0 = unknown item
    title_vocab: np.ndarray
    item_title: np.ndarray  # [n_catalog + 1, title_len] int64 token ids (0 = none)
    item_year: np.ndarray  # [n_catalog + 1] int64 bucket (0 = unknown)
    item_price: np.ndarray  # [n_catalog + 1] int64 bucket (0 = unknown)
    price_boundaries: np.ndarray
    contexts: dict[str, np.ndarray]
    half_life_days: float
    event_items: np.ndarray  # catalog indices of positive training events (for the prior)
    event_times: np.ndarray
    item_prior: np.ndarray  # [n_catalog + 1] float32 log1p(decayed popularity at `now`)
    now: int

    @classmethod
    def build(
        cls,
        data: TrainingData,
        half_life_days: float,
        min_item_interactions: int = 1,
        title_length: int = 8,
        min_token_count: int = 2,
    ) -> FeatureSpace:
        inter = data.interactions[interaction_mask(data.interactions)]
        users = np.sort(inter["user_id"].unique().astype(object))
        counts = inter["item_id"].value_counts()
        id_items = np.sort(counts[counts >= min_item_interactions].index.to_numpy(dtype=object))
        items = data.items
        genre_lists = items["genres"].tolist()
        genres = np.array(sorted({g for gs in genre_lists for g in gs}), dtype=object)
        g_index = {g: i for i, g in enumerate(genres)}
        item_genres = np.zeros((len(items) + 1, max(len(genres), 1)), dtype=np.float32)
        for row, gs in enumerate(genre_lists, start=1):
            for g in gs:
                item_genres[row, g_index[g]] = 1.0
        tokens = [title_tokens(t) for t in items["title"].tolist()]
        token_counts = Counter(t for ts in tokens for t in set(ts))
        title_vocab = np.array(
            sorted(t for t, c in token_counts.items() if c >= min_token_count), dtype=object
        )
        t_index = {t: i + 1 for i, t in enumerate(title_vocab)}
        item_title = np.zeros((len(items) + 1, title_length), dtype=np.int64)
        for row, ts in enumerate(tokens, start=1):
            ids = [t_index[t] for t in ts if t in t_index][:title_length]
            item_title[row, : len(ids)] = ids
        year = items["year"].astype("float64").to_numpy(na_value=np.nan)
        item_year = np.zeros(len(items) + 1, dtype=np.int64)
        known = ~np.isnan(year)
        item_year[1:][known] = np.searchsorted(YEAR_BOUNDARIES, year[known], side="right") + 1
        price = items["price"].to_numpy(dtype=float, na_value=np.nan)
        has_price = ~np.isnan(price)
        if has_price.sum() >= 10:
            qs = np.unique(np.quantile(np.log1p(price[has_price]), np.linspace(0.1, 0.9, 9)))
        else:
            qs = np.zeros(0)
        item_price = np.zeros(len(items) + 1, dtype=np.int64)
        item_price[1:][has_price] = np.searchsorted(qs, np.log1p(price[has_price])) + 1
        contexts = {
            col: np.sort(inter[col].dropna().unique().astype(object)) for col in CONTEXT_COLUMNS
        }
        pos = data.interactions[data.positives]
        event_items = data.item_indices(pos["item_id"].to_numpy(dtype=object))
        event_times = unix_seconds(pos["timestamp"])
        space = cls(
            users=users,
            id_items=id_items,
            catalog=data.catalog,
            genres=genres,
            item_genres=item_genres,
            title_vocab=title_vocab,
            item_title=item_title,
            item_year=item_year,
            item_price=item_price,
            price_boundaries=qs,
            contexts=contexts,
            half_life_days=half_life_days,
            event_items=event_items,
            event_times=event_times,
            item_prior=np.zeros(len(items) + 1, dtype=np.float32),
            now=data.now,
        )
        space.item_prior[1:] = space.prior(np.arange(len(items)), np.full(len(items), data.now))
        return space

    def prior(self, items: np.ndarray, times: np.ndarray) -> np.ndarray:
        """``log1p`` of each item's decayed positive count strictly before each time."""
        counts = decayed_counts(
            self.event_items,
            self.event_times,
            items,
            times,
            self.half_life_days,
            len(self.catalog),
        )
        return np.log1p(counts).astype(np.float32)

    def describe(self) -> dict[str, Any]:
        return {
            "users": len(self.users),
            "id_items": len(self.id_items),
            "catalog": len(self.catalog),
            "genres": len(self.genres),
            "title_tokens": len(self.title_vocab),
            "contexts": {k: len(v) for k, v in self.contexts.items()},
            "prior_half_life_days": self.half_life_days,
        }


def _lookup(vocab: np.ndarray, oov: int = 1, mask: bool = False) -> tf.keras.layers.StringLookup:
    return tf.keras.layers.StringLookup(
        vocabulary=[str(v) for v in vocab] if len(vocab) else None,
        num_oov_indices=oov,
        mask_token=PAD if mask else None,
    )


class ItemEncoder(tf.keras.layers.Layer):
    """Item id strings, any shape ``S`` -> ``S + [dim]`` vectors (id embedding + content).

    ``id_dropout`` (training only) replaces a share of ids by the out-of-vocabulary id, so the
    content part learns to stand on its own for new items."""

    def __init__(
        self,
        space: FeatureSpace,
        dim: int,
        features: Sequence[str],
        id_dropout: float = 0.0,
        name: str = "item_encoder",
    ) -> None:
        super().__init__(name=name)
        self.use_content = "content" in features
        self.dim = dim
        self.id_dropout = id_dropout
        self.id_lookup = _lookup(space.id_items)
        self.id_embedding = tf.keras.layers.Embedding(len(space.id_items) + 1, dim)
        if self.use_content:
            self.catalog_lookup = _lookup(space.catalog)
            self.item_genres = tf.constant(space.item_genres)
            self.item_title = tf.constant(space.item_title)
            self.item_year = tf.constant(space.item_year)
            self.item_price = tf.constant(space.item_price)
            # raw content of items the table does not hold (content_features)
            self.genre_lookup = tf.keras.layers.StringLookup(
                vocabulary=[str(g) for g in space.genres] or ["\x00"],
                num_oov_indices=1,  # index 0: "" and values unknown to training
            )
            self.token_lookup = tf.keras.layers.StringLookup(
                vocabulary=[str(t) for t in space.title_vocab] or ["\x00"],
                num_oov_indices=1,  # index 0: "" and values unknown to training
            )
            self.genre_embedding = tf.keras.layers.Dense(
                dim // 2, use_bias=False, name="genre_embedding"
            )
            self.title_embedding = tf.keras.layers.Embedding(
                len(space.title_vocab) + 1, dim // 2, mask_zero=True, name="title_embedding"
            )
            self.year_embedding = tf.keras.layers.Embedding(len(YEAR_BOUNDARIES) + 2, dim // 4)
            self.price_embedding = tf.keras.layers.Embedding(len(space.price_boundaries) + 2, 8)
        self.projection = tf.keras.layers.Dense(dim, name="projection")

    def call(
        self,
        item_ids: tf.Tensor,
        training: bool = False,
        content: dict[str, tf.Tensor] | None = None,
        content_only: bool = False,
    ) -> tf.Tensor:
        """``content`` (raw :data:`CONTENT_INPUTS` of the same items, ``S + [genres]`` and
        ``S``) stands in for the item table's content of items the table does not hold: items
        added to the catalog after training (see :meth:`content_features`); with
        ``content_only`` it replaces the table's content of every item."""
        ids = self.id_lookup(item_ids)
        if training and self.id_dropout > 0:
            drop = tf.random.uniform(tf.shape(ids)) < self.id_dropout
            ids = tf.where(drop, tf.zeros_like(ids), ids)
        parts = [self.id_embedding(ids)]
        if self.use_content:
            row = self.catalog_lookup(item_ids)
            genres = tf.gather(self.item_genres, row)
            tokens = tf.gather(self.item_title, row)
            year = tf.gather(self.item_year, row)
            price = tf.gather(self.item_price, row)
            if content is not None:
                raw_genres, raw_tokens, raw_year = self.content_features(
                    content["genres"], content["title"], content["year"]
                )
                known = row > 0 if not content_only else tf.zeros_like(row, dtype=tf.bool)
                genres = tf.where(known[..., None], genres, raw_genres)
                tokens = tf.where(known[..., None], tokens, raw_tokens)
                year = tf.where(known, year, raw_year)
            n_genres = tf.maximum(tf.reduce_sum(genres, axis=-1, keepdims=True), 1.0)
            parts.append(self.genre_embedding(genres / n_genres))
            emb = self.title_embedding(tokens)
            mask = tf.cast(tokens > 0, emb.dtype)[..., None]
            parts.append(
                tf.reduce_sum(emb * mask, axis=-2) / tf.maximum(tf.reduce_sum(mask, axis=-2), 1.0)
            )
            parts.append(self.year_embedding(year))
            parts.append(self.price_embedding(price))
        return self.projection(tf.concat(parts, axis=-1))

    def from_content(
        self, item_ids: tf.Tensor, genres: tf.Tensor, title: tf.Tensor, year: tf.Tensor
    ) -> tf.Tensor:
        """Vectors of items described by their raw content (:data:`CONTENT_INPUTS`), whether
        or not the item table holds them: how an item added after training gets its vector."""
        content = {"genres": genres, "title": title, "year": year}
        return self(item_ids, content=content, content_only=True)

    def content_features(
        self, genres: tf.Tensor, title: tf.Tensor, year: tf.Tensor
    ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """Raw content -> the item table's columns, by the rules :meth:`FeatureSpace.build`
        applies: ``genres`` string ``S + [G]`` (``""`` padded) -> multi-hot over the training
        genres (unknown genres dropped); ``title`` string ``S`` -> ids of its known
        :func:`attune.features.title_tokens` (first ``title_length``, 0 padded; the same rule
        in TensorFlow: Unicode lower case, a trailing ``(YYYY)`` removed, runs of letters and
        digits); ``year`` int64 ``S`` (0 = unknown) -> year bucket. Price is not an input
        (bucket 0, unknown)."""
        genre_ids = self.genre_lookup(genres)  # 0 = padding or a genre unknown to training
        depth = int(self.item_genres.shape[-1]) + 1
        multi_hot = tf.reduce_max(tf.one_hot(genre_ids, depth, dtype=tf.float32), axis=-2)[..., 1:]
        shape = tf.shape(title)
        flat = tf.reshape(title, [-1])
        lowered = tf.strings.lower(flat, encoding="utf-8")
        lowered = tf.strings.regex_replace(lowered, r"\s*\(\pN{4}\)\s*$", "")
        words = tf.strings.split(tf.strings.regex_replace(lowered, r"[^\pL\pN]+", " "))
        token_ids = tf.ragged.map_flat_values(self.token_lookup, words)
        token_ids = tf.ragged.boolean_mask(token_ids, token_ids > 0)
        title_length = int(self.item_title.shape[-1])
        dense = token_ids.to_tensor(default_value=0, shape=[None, title_length])
        tokens = tf.reshape(dense, tf.concat([shape, [title_length]], axis=0))
        year = tf.cast(year, tf.int64)
        boundaries = tf.constant(YEAR_BOUNDARIES, tf.int64)
        # searchsorted(side="right") + 1, like the table; 0 (unknown) stays 0
        bucket = tf.reduce_sum(tf.cast(year[..., None] >= boundaries, tf.int64), axis=-1) + 1
        year_bucket = tf.where(year > 0, bucket, tf.zeros_like(bucket))
        return multi_hot, tokens, year_bucket


SEQUENCE_ENCODERS: tuple[str, ...] = ("mean", "gru", "attention")
TIME_GAP_BUCKETS = 24
"""Bucket 0: padding or unknown time; bucket ``b >= 1`` holds gaps of ``2 ** (b - 1) - 1`` to
``2 ** b - 1`` minutes (``b = 1 + floor(log2(1 + minutes))``), the last bucket everything from
about 8 years up."""


def time_gap_buckets(
    request_time: tf.Tensor, recent_times: tf.Tensor, n_buckets: int = TIME_GAP_BUCKETS
) -> tf.Tensor:
    """``[batch]`` request times and ``[batch, n]`` item times (Unix seconds, 0 = padding) ->
    ``[batch, n]`` int64 buckets of the log time gap (see :data:`TIME_GAP_BUCKETS`).

    A gap is never negative: an item time after the request (clock skew between the speed
    layer and the API) counts as "just now"."""
    t = tf.cast(recent_times, tf.float64)
    gap = tf.maximum(tf.cast(request_time, tf.float64)[:, None] - t, 0.0)
    minutes = gap / 60.0
    bucket = 1 + tf.cast(tf.floor(tf.math.log(1.0 + minutes) / np.log(2.0)), tf.int64)
    bucket = tf.minimum(bucket, n_buckets - 1)
    return tf.where(recent_times > 0, bucket, tf.zeros_like(bucket))


def hour_and_weekday(request_time: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Unix seconds -> (hour of day 0-23, weekday 0-6 with Monday = 0), in UTC."""
    t = tf.cast(request_time, tf.int64)
    hour = tf.math.floormod(tf.math.floordiv(t, 3600), 24)
    weekday = tf.math.floormod(tf.math.floordiv(t, 86_400) + 3, 7)  # 1970-01-01 was a Thursday
    return hour, weekday


class QueryEncoder(tf.keras.layers.Layer):
    """Raw query features -> ``[batch, dim]`` (see the module docstring)."""

    def __init__(
        self,
        space: FeatureSpace,
        item_encoder: ItemEncoder,
        dim: int,
        features: Sequence[str],
        sequence_length: int,
        user_oov_buckets: int,
        hidden: int,
        name: str = "query_encoder",
        sequence_encoder: str = "mean",
    ) -> None:
        super().__init__(name=name)
        if sequence_encoder not in SEQUENCE_ENCODERS:
            raise ValueError(
                f"unknown sequence_encoder {sequence_encoder!r}: expected one of "
                f"{', '.join(SEQUENCE_ENCODERS)}"
            )
        self.features = tuple(features)
        self.item_encoder = item_encoder
        self.sequence_encoder = sequence_encoder
        self.sequence_length = sequence_length
        if "user" in self.features:
            self.user_lookup = _lookup(space.users, oov=user_oov_buckets)
            self.user_embedding = tf.keras.layers.Embedding(
                len(space.users) + user_oov_buckets, dim
            )
        if "sequence" in self.features:
            self.position_logits = self.add_weight(
                name="position_logits", shape=(sequence_length,), initializer="zeros"
            )
            item_dim = item_encoder.dim
            if sequence_encoder != "mean":
                self.gap_embedding = tf.keras.layers.Embedding(
                    TIME_GAP_BUCKETS, item_dim, name="time_gap_embedding"
                )
            if sequence_encoder == "gru":
                self.gru = tf.keras.layers.GRU(item_dim, go_backwards=True, name="sequence_gru")
            if sequence_encoder == "attention":
                self.position_embedding = tf.keras.layers.Embedding(
                    sequence_length, item_dim, name="position_embedding"
                )
                self.attention = tf.keras.layers.MultiHeadAttention(
                    num_heads=2, key_dim=max(item_dim // 2, 1), name="sequence_attention"
                )
                self.attention_norm = tf.keras.layers.LayerNormalization(name="attention_norm")
                self.feed_forward = tf.keras.layers.Dense(
                    item_dim, activation="relu", name="attention_ffn"
                )
                self.ffn_norm = tf.keras.layers.LayerNormalization(name="ffn_norm")
                self.pool_query = tf.keras.layers.Dense(1, use_bias=False, name="pool_query")
        if "context" in self.features:
            self.hour_embedding = tf.keras.layers.Embedding(24, 8)
            self.weekday_embedding = tf.keras.layers.Embedding(7, 4)
            # Context columns never filled in training carry no signal: they stay inputs of the
            # serving signature but are not embedded.
            self.context_columns = tuple(c for c in CONTEXT_COLUMNS if len(space.contexts[c]))
            self.context_lookups = {c: _lookup(space.contexts[c]) for c in self.context_columns}
            self.context_embeddings = {
                c: tf.keras.layers.Embedding(len(space.contexts[c]) + 1, 8, name=f"{c}_embedding")
                for c in self.context_columns
            }
        self.hidden = tf.keras.layers.Dense(hidden, activation="relu") if hidden else None
        self.output_layer = tf.keras.layers.Dense(dim, name="query_projection")

    def pooled_sequence(self, recent_items: tf.Tensor, training: bool = False) -> tf.Tensor:
        """``[batch, n]`` recent item ids (most recent first, ``""`` padding) -> ``[batch, dim]``:
        item vectors averaged with learned, softmax-normalized weights per position."""
        n = tf.shape(recent_items)[1]
        vectors = self.item_encoder(recent_items, training=training)
        present = tf.not_equal(recent_items, PAD)
        return self._masked_pool(vectors, present, self.position_logits[:n])

    @staticmethod
    def _masked_pool(vectors: tf.Tensor, present: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
        """Softmax-weighted sum of ``vectors [batch, n, d]`` over the ``present`` slots only
        (``logits`` ``[n]`` or ``[batch, n]``); all-padding rows give zeros."""
        logits = tf.broadcast_to(logits, tf.shape(present))
        logits = tf.where(present, logits, tf.fill(tf.shape(logits), -1e9))
        weights = tf.nn.softmax(logits, axis=-1) * tf.cast(present, tf.float32)
        return tf.reduce_sum(vectors * weights[..., None], axis=1)

    def encode_sequence(
        self,
        recent_items: tf.Tensor,
        recent_times: tf.Tensor | None,
        request_time: tf.Tensor,
        training: bool = False,
    ) -> tf.Tensor:
        """``[batch, n]`` recent items (and their times) -> ``[batch, item_dim]`` with the
        configured sequence encoder; padding is masked (a padded slot changes nothing)."""
        if self.sequence_encoder == "mean":
            return self.pooled_sequence(recent_items, training=training)
        n = tf.shape(recent_items)[1]
        present = tf.not_equal(recent_items, PAD)
        if recent_times is None:  # a caller without times: every gap "unknown" (bucket 0)
            recent_times = tf.zeros(tf.shape(recent_items), tf.int64)
        gaps = time_gap_buckets(request_time, recent_times)
        x = self.item_encoder(recent_items, training=training) + self.gap_embedding(gaps)
        x = x * tf.cast(present, x.dtype)[..., None]
        if self.sequence_encoder == "gru":
            # go_backwards: from the oldest slot to the most recent (slot 0); masked slots keep
            # the state, so the final state has read exactly the present items.
            return self.gru(x, mask=present, training=training)
        x = x + self.position_embedding(tf.range(n))[None, :, :]
        pair_mask = tf.logical_and(present[:, :, None], present[:, None, :])
        attended = self.attention(x, x, attention_mask=pair_mask, training=training)
        x = self.attention_norm(x + attended)
        x = self.ffn_norm(x + self.feed_forward(x))
        logits = tf.squeeze(self.pool_query(x), axis=-1) + self.position_logits[:n]
        return self._masked_pool(x, present, logits)

    def call(self, features: dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        parts = []
        if "user" in self.features:
            parts.append(self.user_embedding(self.user_lookup(features["user_id"])))
        if "sequence" in self.features:
            length = self.sequence_length
            recent = features["recent_items"][:, :length]
            times = features.get("recent_times")
            if times is not None:
                times = times[:, :length]
            parts.append(
                self.encode_sequence(recent, times, features["request_time"], training=training)
            )
        if "context" in self.features:
            hour, weekday = hour_and_weekday(features["request_time"])
            parts.append(self.hour_embedding(hour))
            parts.append(self.weekday_embedding(weekday))
            for col in self.context_columns:
                parts.append(self.context_embeddings[col](self.context_lookups[col](features[col])))
        if not parts:
            raise ValueError("the query tower needs at least one of user, sequence, context")
        x = tf.concat(parts, axis=-1)
        if self.hidden is not None:
            x = self.hidden(x)
        return self.output_layer(x)


def features_to_tensors(features: dict[str, np.ndarray]) -> dict[str, tf.Tensor]:
    """NumPy feature columns -> tensors with the serving dtypes (strings, int64, float32)."""
    out: dict[str, tf.Tensor] = {}
    for name, values in features.items():
        arr = np.asarray(values)
        if arr.dtype == object or arr.dtype.kind in "US":
            out[name] = tf.constant(arr.astype(str), dtype=tf.string)
        elif arr.dtype.kind in "iu":
            out[name] = tf.constant(arr, dtype=tf.int64)
        else:
            out[name] = tf.constant(arr, dtype=tf.float32)
    return out


def sampling_probability(items: np.ndarray, n_items: int) -> np.ndarray:
    """Each example's candidate frequency among the examples: the in-batch sampling
    probability that the log-Q correction divides out."""
    counts = np.bincount(items, minlength=n_items).astype(np.float64)
    return (counts[items] / max(len(items), 1)).astype(np.float32)


def mixed_sampling_probability(
    in_batch_probability: Any, batch_size: Any, n_uniform: int, n_catalog: int
) -> Any:
    """Expected number of times a candidate is drawn into one batch's negatives under mixed
    negative sampling (Yang et al. 2020): ``batch_size * p + n_uniform / n_catalog``, where
    ``p`` is its per-example sampling probability (its share of the examples: how in-batch
    negatives are drawn) and ``n_uniform`` catalog items are drawn uniformly.

    The log-Q correction subtracts ``log`` of this from every candidate's logit. Its two limits
    are the corrections of each sampler alone: ``log(B p)`` for in-batch negatives, and the
    constant ``log(n_uniform / n_catalog)`` for uniform ones; an item both popular and
    uniformly drawn gets the sum of both chances, not one of them. Works on NumPy arrays and
    tensors alike."""
    return in_batch_probability * batch_size + n_uniform / n_catalog


def recency_weights(times: np.ndarray, now: int, half_life_days: float | None) -> np.ndarray:
    """``0.5 ** (age / half_life)`` per example (1 everywhere when ``half_life_days`` is None),
    rescaled to mean 1 so the learning rate means the same with or without it."""
    if not half_life_days:
        return np.ones(len(times), dtype=np.float32)
    w = np.exp2(-(now - times.astype(np.float64)) / (half_life_days * 86_400.0))
    return (w / max(w.mean(), 1e-12)).astype(np.float32)
