"""The query tower's sequence encoders: time-gap buckets, output shapes, masking of padding,
mixed-negative sampling probabilities, and the ``recent_times`` serving input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from attune.config import AttuneConfig
from models.data import complete_items, conform_items
from models.features import TrainingData
from tests.unit.models.conftest import frame


def test_time_gap_buckets_by_hand() -> None:
    from models._tensorflow import tf
    from models.encoders import TIME_GAP_BUCKETS, time_gap_buckets

    request = tf.constant([10_000, 2_000_000_000], tf.int64)
    times = tf.constant(
        [
            # gap 0 s, 60 s, 120 s, 180 s, 9999 s, padding, 60 s in the future
            [10_000, 9_940, 9_880, 9_820, 1, 0, 10_060],
            # gap ~63 years; then padding
            [1, 0, 0, 0, 0, 0, 0],
        ],
        tf.int64,
    )
    got = time_gap_buckets(request, times).numpy().tolist()
    # bucket = 1 + floor(log2(1 + minutes)), padding 0, capped at TIME_GAP_BUCKETS - 1:
    # 0 min -> 1 + 0 = 1; 1 min -> 1 + log2(2) = 2; 2 min -> 1 + floor(1.58) = 2;
    # 3 min -> 1 + log2(4) = 3; 9999 s = 166.65 min -> 1 + floor(log2(167.65) = 7.39) = 8;
    # future -> gap 0 -> 1; 2e9 s = 3.3e7 min -> 1 + 24 = 25 -> capped at 23.
    assert TIME_GAP_BUCKETS == 24
    assert got == [[1, 2, 2, 3, 8, 0, 1], [23, 0, 0, 0, 0, 0, 0]]


def test_mixed_sampling_probability_by_hand() -> None:
    from models.encoders import mixed_sampling_probability

    # batch of 4 examples: an item on 2 of them has p = 0.5 -> 4 * 0.5 = 2 expected in-batch
    # draws, plus 8 uniform draws over 100 items -> 0.08; an item outside the batch: 0.08.
    got = mixed_sampling_probability(np.array([0.5, 0.0]), 4, 8, 100)
    assert got == pytest.approx([2.08, 0.08])
    # without uniform negatives it is B * p: the in-batch log-Q correction up to a constant
    assert mixed_sampling_probability(np.array([0.25]), 4, 0, 100) == pytest.approx([1.0])


def _space():  # type: ignore[no-untyped-def]
    from models.encoders import FeatureSpace

    ids = ["x", "y", "z", "w"]
    items = conform_items(
        pd.DataFrame({"item_id": ids, "title": ["Ex", "Why", "Zed", "Double"]}), "test items"
    )
    inter = frame(
        [("a", "x", 8.0, 100), ("a", "y", 8.0, 200), ("b", "z", 8.0, 300), ("b", "w", 2.0, 400)]
    )
    data = TrainingData(inter, complete_items(items, inter), 7.0)
    return FeatureSpace.build(data, half_life_days=30.0, min_token_count=1)


def _encoder(kind: str):  # type: ignore[no-untyped-def]
    from models._tensorflow import tf
    from models.encoders import ItemEncoder, QueryEncoder

    tf.keras.utils.set_random_seed(3)
    space = _space()
    features = ["sequence", "content"]
    items = ItemEncoder(space, 8, features)
    return QueryEncoder(space, items, 8, features, 4, 2, 0, sequence_encoder=kind)


def _query(items: list[list[str]], times: list[list[int]]) -> dict:  # type: ignore[type-arg]
    from models.encoders import features_to_tensors

    n = len(items)
    return features_to_tensors(
        {
            "user_id": np.array(["a"] * n, dtype=object),
            "recent_items": np.array(items, dtype=object),
            "recent_times": np.array(times, dtype=np.int64),
            "request_time": np.full(n, 1_000, dtype=np.int64),
            **{c: np.array([""] * n, dtype=object) for c in ("device", "placement", "segment")},
        }
    )


@pytest.mark.parametrize("kind", ["mean", "gru", "attention"])
def test_sequence_encoders_shapes_and_padding_is_masked(kind: str) -> None:
    enc = _encoder(kind)
    base = enc(_query([["x", "y"], ["z", ""], ["", ""]], [[900, 800], [990, 0], [0, 0]]))
    assert base.shape == (3, 8)
    assert np.isfinite(base.numpy()).all()
    # more padding columns, and a stray time in a padded slot, change nothing
    padded = enc(
        _query(
            [["x", "y", "", ""], ["z", "", "", ""], ["", "", "", ""]],
            [[900, 800, 0, 0], [990, 777, 0, 0], [0, 0, 0, 0]],
        )
    )
    np.testing.assert_allclose(padded.numpy(), base.numpy(), rtol=1e-5, atol=1e-6)
    # columns past sequence_length (4) are never read
    longer = enc(_query([["x", "y", "", "", "z"]], [[900, 800, 0, 0, 950]]))
    np.testing.assert_allclose(longer.numpy()[0], base.numpy()[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["gru", "attention"])
def test_gru_and_attention_read_time_gaps_and_order(kind: str) -> None:
    enc = _encoder(kind)
    out = enc(
        _query(
            [["x", "y"], ["x", "y"], ["y", "x"]],
            # same items; x one minute ago vs about 16 minutes ago (another bucket); reversed
            [[940, 900], [40, 900], [900, 940]],
        )
    ).numpy()
    assert not np.allclose(out[0], out[1])  # the time gap matters
    assert not np.allclose(out[0], out[2])  # the order matters


def test_mean_encoder_ignores_times() -> None:
    enc = _encoder("mean")
    out = enc(_query([["x", "y"], ["x", "y"]], [[940, 900], [40, 10]])).numpy()
    np.testing.assert_allclose(out[0], out[1])


def test_unknown_sequence_encoder_names_the_choices() -> None:
    with pytest.raises(ValueError, match="mean, gru, attention"):
        _encoder("lstm")


def test_signatures_take_recent_times_and_use_them(mini_dir: Path, tmp_path: Path) -> None:
    from models._tensorflow import tf
    from models.data import load_csv
    from models.export import call_signature, save_ranking, save_retrieval, signature_summary
    from models.ranking import train_ranking
    from models.retrieval import train_retrieval

    data = load_csv(mini_dir / "ratings.csv", mini_dir / "movies.csv").head(800)
    training = TrainingData(data.interactions, data.items, 7.0)
    mc = AttuneConfig().models
    small = {"epochs": 1, "embedding_dim": 16, "sequence_encoder": "attention"}
    retrieval = train_retrieval(
        training,
        mc.retrieval.model_copy(update={**small, "uniform_negatives": 32, "logq_weight": 1.0}),
        3.0,
        seed=1,
        progress=False,
    )
    ranking = train_ranking(
        training,
        mc.ranking.model_copy(update=small),
        3.0,
        seed=1,
        space=retrieval.space,
        progress=False,
    )
    save_retrieval(retrieval, tmp_path / "r", k=5)
    save_ranking(ranking, tmp_path / "k")
    for path in (tmp_path / "r", tmp_path / "k"):
        for name, sig in signature_summary(path).items():
            if "recent_items" in sig["inputs"]:
                assert sig["inputs"]["recent_times"] == ["int64", [None, None]], name
    users = training.interactions["user_id"].unique()[:3].astype(object)
    feats = training.query_features(users, 50)
    assert feats["recent_times"].shape == feats["recent_items"].shape
    loaded = tf.saved_model.load(str(tmp_path / "r"))
    q = call_signature(loaded, "query_embedding", feats)["embedding"]
    np.testing.assert_allclose(q, retrieval.query_matrix(feats), rtol=1e-5, atol=1e-5)
    # the served query depends on the times (an older history is another query)
    older = {**feats, "recent_times": np.where(feats["recent_times"] > 0, 1, 0)}
    assert not np.allclose(call_signature(loaded, "query_embedding", older)["embedding"], q)
