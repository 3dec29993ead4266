"""Export round trip: a loaded SavedModel answers exactly like the in-memory model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from attune.config import AttuneConfig
from models.data import load_csv
from models.features import TrainingData


@pytest.fixture(scope="module")
def trained(mini_dir: Path):  # type: ignore[no-untyped-def]
    from models.ranking import train_ranking
    from models.retrieval import train_retrieval

    data = load_csv(mini_dir / "ratings.csv", mini_dir / "movies.csv").head(1500)
    training = TrainingData(data.interactions, data.items, 7.0)
    mc = AttuneConfig().models
    small = {"epochs": 1, "embedding_dim": 16}
    retrieval = train_retrieval(
        training, mc.retrieval.model_copy(update=small), 3.0, seed=1, progress=False
    )
    ranking = train_ranking(
        training,
        mc.ranking.model_copy(update=small),
        3.0,
        seed=1,
        space=retrieval.space,
        progress=False,
    )
    return training, retrieval, ranking


def _queries(training: TrainingData) -> dict[str, np.ndarray]:
    users = np.array([*training.interactions["user_id"].unique()[:4], "a-new-user"], dtype=object)
    # 50 recent items, as the online store keeps; the model reads its first sequence_length
    return training.query_features(users, 50)


def test_retrieval_round_trip(trained, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from models._tensorflow import tf
    from models.export import call_signature, save_retrieval

    training, retrieval, _ = trained
    save_retrieval(retrieval, tmp_path / "r", k=10)
    loaded = tf.saved_model.load(str(tmp_path / "r"))
    assert set(loaded.signatures) == {
        "serving_default",
        "query_embedding",
        "candidate_embedding",
        "item_embeddings",
    }
    feats = _queries(training)
    out = call_signature(loaded, "serving_default", feats)
    memory = retrieval.score(feats["user_id"])
    order = np.argsort(-memory, axis=1, kind="stable")[:, :10]
    assert out["item_ids"].shape == (5, 10) and out["scores"].dtype == np.float32
    assert out["item_ids"].astype(str).tolist() == training.catalog[order].tolist()
    np.testing.assert_allclose(
        out["scores"], np.take_along_axis(memory, order, axis=1), rtol=1e-5, atol=1e-5
    )
    q = call_signature(loaded, "query_embedding", feats)["embedding"]
    np.testing.assert_allclose(q, retrieval.query_matrix(feats), rtol=1e-5, atol=1e-5)
    ids = training.catalog[:7].astype(object)
    c = call_signature(loaded, "candidate_embedding", {"item_id": ids})["embedding"]
    np.testing.assert_allclose(c, retrieval.candidate_matrix()[:7], rtol=1e-5, atol=1e-5)


def test_ranking_round_trip(trained, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from models._tensorflow import tf
    from models.export import call_signature, save_ranking

    training, _, ranking = trained
    save_ranking(ranking, tmp_path / "k")
    loaded = tf.saved_model.load(str(tmp_path / "k"))
    assert set(loaded.signatures) == {"serving_default", "with_content"}
    feats = _queries(training)
    cands = np.stack([np.roll(training.catalog, i)[:6] for i in range(5)]).astype(object)
    cands[0, 5] = "an-item-nobody-knows"
    out = call_signature(loaded, "serving_default", {**feats, "candidate_ids": cands})
    assert out["scores"].shape == (5, 6)
    np.testing.assert_allclose(
        out["scores"], ranking.score_candidates(feats, cands), rtol=1e-5, atol=1e-5
    )
