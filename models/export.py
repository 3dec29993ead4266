"""SavedModels for TF Serving: raw features in, recommendations or scores out.

Both models are exported with their preprocessing (string vocabularies, the item table with
content features and the popularity prior, hour/weekday extraction) inside, so a client sends raw
values and gets answers; the official ``tensorflow/serving`` image and attune's own
TF-Serving-protocol server load them unchanged.

Signatures (every input and output has the batch dimension first):

retrieval
    ``serving_default``: the query inputs below -> ``item_ids`` string ``[batch, k]`` and
    ``scores`` float32 ``[batch, k]``, best first, over the whole catalog;
    ``query_embedding``: the query inputs -> ``embedding`` float32 ``[batch, dim]``;
    ``candidate_embedding``: ``item_id`` string ``[batch]`` -> ``embedding`` ``[batch, dim]``
    (``score = <query embedding, candidate embedding>``, for an external ANN index);
    ``item_embeddings``: raw content, ``item_ids`` string ``[batch]``, ``genres`` string
    ``[batch, g]`` (``""`` padded), ``title`` string ``[batch]``, ``year`` int64 ``[batch]``
    (0 = unknown) -> ``embeddings`` ``[batch, dim]`` computed from that content (an id the
    model does not know counts as out-of-vocabulary; the popularity coordinate is 0) and
    ``known`` bool ``[batch]`` (the model's own index holds the item): how items added to the
    catalog after training get vectors without retraining. ``serving_default`` also outputs
    ``query_embedding`` ``[batch, dim]``, so one call scores such vectors too.
ranking
    ``serving_default``: the query inputs plus ``candidate_ids`` string ``[batch, candidates]`` ->
    ``scores`` float32 ``[batch, candidates]`` (higher = more likely engagement);
    ``with_content``: the same plus each candidate's raw content, ``candidate_genres`` string
    ``[batch, candidates, g]``, ``candidate_title`` string and ``candidate_year`` int64
    ``[batch, candidates]``, used for candidates the model's item table does not hold (items
    added after training); the others score exactly as in ``serving_default``.

Query inputs: ``user_id`` string ``[batch]``, ``recent_items`` string ``[batch, n]`` (most recent
first, ``""`` padded; any ``n``, the model uses its first ``sequence_length``), ``recent_times``
int64 ``[batch, n]`` (Unix seconds of each recent item's latest interaction, ``0`` for padding;
the ``gru`` and ``attention`` sequence encoders read the gaps to ``request_time``; ``mean``
ignores them), ``request_time`` int64 ``[batch]`` (Unix seconds), ``device``, ``placement``,
``segment`` string ``[batch]`` (``""`` when unknown).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from models._tensorflow import tf
from models.ranking import TrainedRanking
from models.retrieval import TrainedRetrieval

RETRIEVAL_SIGNATURES: tuple[str, ...] = (
    "serving_default",
    "query_embedding",
    "candidate_embedding",
    "item_embeddings",
)
RANKING_SIGNATURES: tuple[str, ...] = ("serving_default", "with_content")

CONTENT_SPECS: dict[str, tf.TensorSpec] = {
    "item_ids": tf.TensorSpec([None], tf.string, name="item_ids"),
    "genres": tf.TensorSpec([None, None], tf.string, name="genres"),
    "title": tf.TensorSpec([None], tf.string, name="title"),
    "year": tf.TensorSpec([None], tf.int64, name="year"),
}
CANDIDATE_CONTENT_SPECS: dict[str, tf.TensorSpec] = {
    "candidate_genres": tf.TensorSpec([None, None, None], tf.string, name="candidate_genres"),
    "candidate_title": tf.TensorSpec([None, None], tf.string, name="candidate_title"),
    "candidate_year": tf.TensorSpec([None, None], tf.int64, name="candidate_year"),
}

QUERY_SPECS: dict[str, tf.TensorSpec] = {
    "user_id": tf.TensorSpec([None], tf.string, name="user_id"),
    "recent_items": tf.TensorSpec([None, None], tf.string, name="recent_items"),
    "recent_times": tf.TensorSpec([None, None], tf.int64, name="recent_times"),
    "request_time": tf.TensorSpec([None], tf.int64, name="request_time"),
    "device": tf.TensorSpec([None], tf.string, name="device"),
    "placement": tf.TensorSpec([None], tf.string, name="placement"),
    "segment": tf.TensorSpec([None], tf.string, name="segment"),
}
_Q = list(QUERY_SPECS.values())


def _query(
    user_id: tf.Tensor,
    recent_items: tf.Tensor,
    recent_times: tf.Tensor,
    request_time: tf.Tensor,
    device: tf.Tensor,
    placement: tf.Tensor,
    segment: tf.Tensor,
) -> dict[str, tf.Tensor]:
    return {
        "user_id": user_id,
        "recent_items": recent_items,
        "recent_times": recent_times,
        "request_time": request_time,
        "device": device,
        "placement": placement,
        "segment": segment,
    }


class RetrievalServing(tf.Module):
    """The retrieval model plus a brute-force index of the whole catalog."""

    def __init__(self, trained: TrainedRetrieval, k: int) -> None:
        super().__init__(name="retrieval_serving")
        self.model = trained.model
        catalog = trained.space.catalog.astype(str)
        self.k = int(min(k, len(catalog)))
        self.candidate_ids = tf.Variable(catalog, trainable=False, name="candidate_ids")
        self.candidate_embeddings = tf.Variable(
            trained.candidate_matrix().astype(np.float32),
            trainable=False,
            name="candidate_embeddings",
        )

    @tf.function(input_signature=_Q)
    def recommend(
        self,
        user_id: tf.Tensor,
        recent_items: tf.Tensor,
        recent_times: tf.Tensor,
        request_time: tf.Tensor,
        device: tf.Tensor,
        placement: tf.Tensor,
        segment: tf.Tensor,
    ) -> dict[str, tf.Tensor]:
        feats = _query(
            user_id, recent_items, recent_times, request_time, device, placement, segment
        )
        query = self.model.query_embedding(feats)
        scores = tf.matmul(query, self.candidate_embeddings, transpose_b=True)
        top = tf.math.top_k(scores, k=self.k)
        return {
            "item_ids": tf.gather(self.candidate_ids, top.indices),
            "scores": top.values,
            # so items outside the index (item_embeddings) can be scored with one call
            "query_embedding": query,
        }

    @tf.function(input_signature=_Q)
    def embed_query(
        self,
        user_id: tf.Tensor,
        recent_items: tf.Tensor,
        recent_times: tf.Tensor,
        request_time: tf.Tensor,
        device: tf.Tensor,
        placement: tf.Tensor,
        segment: tf.Tensor,
    ) -> dict[str, tf.Tensor]:
        feats = _query(
            user_id, recent_items, recent_times, request_time, device, placement, segment
        )
        return {"embedding": self.model.query_embedding(feats)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="item_id")])
    def embed_candidate(self, item_id: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"embedding": self.model.candidate_embedding(item_id)}

    @tf.function(input_signature=list(CONTENT_SPECS.values()))
    def embed_items(
        self, item_ids: tf.Tensor, genres: tf.Tensor, title: tf.Tensor, year: tf.Tensor
    ) -> dict[str, tf.Tensor]:
        """Vectors from raw content: the content the request carries replaces the item
        table's (the id still counts when the model knows it; an unknown id is the
        out-of-vocabulary row), the prior coordinate is 0 (no popularity yet)."""
        model = self.model
        c = model.item_encoder.from_content(item_ids, genres, title, year)
        scale = 1.0 / np.sqrt(model.params.temperature)
        out = [tf.math.l2_normalize(c, axis=-1) * scale]
        if model.use_prior:
            out.append(tf.zeros([tf.shape(c)[0], 1], tf.float32))
        # whether the model's own index holds the item (its vector there has the prior)
        known = model.catalog_lookup(item_ids) > 0
        return {"embeddings": tf.concat(out, axis=-1), "known": known}


class RankingServing(tf.Module):
    def __init__(self, trained: TrainedRanking) -> None:
        super().__init__(name="ranking_serving")
        self.model = trained.model

    @tf.function(
        input_signature=[*_Q, tf.TensorSpec([None, None], tf.string, name="candidate_ids")]
    )
    def rank(
        self,
        user_id: tf.Tensor,
        recent_items: tf.Tensor,
        recent_times: tf.Tensor,
        request_time: tf.Tensor,
        device: tf.Tensor,
        placement: tf.Tensor,
        segment: tf.Tensor,
        candidate_ids: tf.Tensor,
    ) -> dict[str, tf.Tensor]:
        feats = _query(
            user_id, recent_items, recent_times, request_time, device, placement, segment
        )
        return {"scores": self.model.score(feats, candidate_ids)}

    @tf.function(
        input_signature=[
            *_Q,
            tf.TensorSpec([None, None], tf.string, name="candidate_ids"),
            *CANDIDATE_CONTENT_SPECS.values(),
        ]
    )
    def rank_with_content(
        self,
        user_id: tf.Tensor,
        recent_items: tf.Tensor,
        recent_times: tf.Tensor,
        request_time: tf.Tensor,
        device: tf.Tensor,
        placement: tf.Tensor,
        segment: tf.Tensor,
        candidate_ids: tf.Tensor,
        candidate_genres: tf.Tensor,
        candidate_title: tf.Tensor,
        candidate_year: tf.Tensor,
    ) -> dict[str, tf.Tensor]:
        """``serving_default`` plus each candidate's raw content, used for the candidates the
        item table does not hold (items added after training); the others score as in
        ``serving_default``."""
        feats = _query(
            user_id, recent_items, recent_times, request_time, device, placement, segment
        )
        feats["candidate_content"] = {
            "genres": candidate_genres,
            "title": candidate_title,
            "year": candidate_year,
        }
        return {"scores": self.model.score(feats, candidate_ids)}


def save_retrieval(trained: TrainedRetrieval, path: Path, k: int) -> None:
    """Write the retrieval SavedModel to ``path`` (which must not exist yet)."""
    module = RetrievalServing(trained, k)
    tf.saved_model.save(
        module,
        str(path),
        signatures={
            "serving_default": module.recommend.get_concrete_function(),
            "query_embedding": module.embed_query.get_concrete_function(),
            "candidate_embedding": module.embed_candidate.get_concrete_function(),
            "item_embeddings": module.embed_items.get_concrete_function(),
        },
    )


def save_ranking(trained: TrainedRanking, path: Path) -> None:
    """Write the ranking SavedModel to ``path`` (which must not exist yet)."""
    module = RankingServing(trained)
    tf.saved_model.save(
        module,
        str(path),
        signatures={
            "serving_default": module.rank.get_concrete_function(),
            "with_content": module.rank_with_content.get_concrete_function(),
        },
    )


def signature_summary(path: Path) -> dict[str, Any]:
    """``{signature: {"inputs": {name: [dtype, shape]}, "outputs": {...}}}`` of a SavedModel."""
    loaded = tf.saved_model.load(str(path))
    out: dict[str, Any] = {}
    for name, fn in loaded.signatures.items():
        _, kwargs = fn.structured_input_signature
        out[name] = {
            "inputs": {k: [v.dtype.name, v.shape.as_list()] for k, v in sorted(kwargs.items())},
            "outputs": {
                k: [v.dtype.name, v.shape.as_list()]
                for k, v in sorted(fn.structured_outputs.items())
            },
        }
    return out


def load_saved_model(path: Path | str) -> Any:
    """Load an exported SavedModel (its ``signatures`` are what TF Serving serves)."""
    return tf.saved_model.load(str(path))


def call_signature(
    loaded: Any, signature: str, inputs: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Run a loaded SavedModel's signature on NumPy inputs (strings, int64)."""
    from models.encoders import features_to_tensors

    fn = loaded.signatures[signature]
    result = fn(**features_to_tensors(inputs))
    return {k: v.numpy() for k, v in result.items()}
