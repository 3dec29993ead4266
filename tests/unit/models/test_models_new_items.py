"""New items: a vector from raw content alone, for items the trained model never saw.

The ``item_embeddings`` signature of the retrieval SavedModel and the ``with_content``
signature of the ranking SavedModel take an item's raw content (genres, title, year); these
tests check that the raw path computes the item table's features exactly (so a known item's
vector does not depend on where its content came from) and that a model trained without an
item places it among the items of its genres.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from attune.config import AttuneConfig
from models.data import complete_items, conform_items
from models.features import TrainingData
from tests.unit.models.conftest import frame

GENRES = ("Horror", "Comedy")


def _catalog() -> pd.DataFrame:
    """10 horror and 10 comedy movies; titles carry no genre words (only "movie" and a number
    word), so genre is the only content that tells the two apart."""
    numbers = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
    rows = []
    for genre in GENRES:
        for n, word in enumerate(numbers):
            rows.append(
                {
                    "item_id": f"{genre[0].lower()}{n}",
                    "title": f"Movie {word.title()} ({2000 + n})",
                    "genres": genre,
                    "year": 2000 + n,
                }
            )
    return conform_items(pd.DataFrame(rows), "test catalog")


@pytest.fixture(scope="module")
def trained() -> Any:
    """Retrieval trained on 40 users: 20 rate only horror movies high, 20 only comedies."""
    from models.retrieval import train_retrieval

    rng = np.random.default_rng(7)
    rows = []
    t = 1_600_000_000
    for u in range(40):
        genre = GENRES[u % 2]
        for n in rng.permutation(10)[:8]:
            t += 60
            rows.append((f"u{u}", f"{genre[0].lower()}{n}", 9.0, t))
    inter = frame(rows)
    data = TrainingData(inter, complete_items(_catalog(), inter), 7.0)
    params = AttuneConfig().models.retrieval.model_copy(
        update={"epochs": 30, "embedding_dim": 16, "batch_size": 32, "id_dropout": 0.5}
    )
    return data, train_retrieval(data, params, 30.0, seed=3, progress=False)


def _content(items: list[tuple[str, list[str], str, int]]) -> dict[str, np.ndarray]:
    width = max(len(g) for _, g, _, _ in items)
    return {
        "item_ids": np.array([i for i, _, _, _ in items], dtype=object),
        "genres": np.array([g + [""] * (width - len(g)) for _, g, _, _ in items], dtype=object),
        "title": np.array([t for _, _, t, _ in items], dtype=object),
        "year": np.array([y for _, _, _, y in items], dtype=np.int64),
    }


def out_known(loaded: Any, ids: list[str]) -> list[bool]:
    from models.export import call_signature

    content = _content([(i, ["Horror"], "Movie", 2000) for i in ids])
    return [bool(k) for k in call_signature(loaded, "item_embeddings", content)["known"]]


def _unit(v: np.ndarray) -> np.ndarray:
    return np.asarray(v / np.linalg.norm(v, axis=-1, keepdims=True))


def test_raw_content_gives_the_item_tables_features(trained: Any) -> None:
    from models._tensorflow import tf

    data, retrieval = trained
    enc = retrieval.model.item_encoder
    genres = tf.constant([["Comedy", ""], ["Horror", "Western"], ["", ""]])
    title = tf.constant(["Movie Three (2002)", "MOVIE  ten!", "Unknown words"])
    year = tf.constant([2002, 1949, 0], tf.int64)
    multi_hot, tokens, bucket = enc.content_features(genres, title, year)
    space = retrieval.space
    # genre columns are the sorted training genres: Comedy, Horror; Western is unknown
    assert list(space.genres) == ["Comedy", "Horror"]
    assert multi_hot.numpy().tolist() == [[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]
    vocab = list(space.title_vocab)
    got = [[vocab[i - 1] for i in row if i > 0] for row in tokens.numpy()]
    # "(2002)" is the year, not a word; case and punctuation do not matter; every title word
    # of the catalog occurs twice (one horror, one comedy title), so all are in the vocabulary,
    # and "unknown", "words" are not
    assert got == [["movie", "three"], ["movie", "ten"], []]
    # YEAR_BOUNDARIES start 1950, 1970, 1980, 1990, 2000, 2005: 2002 is past 5 of them -> 6;
    # 1949 is before all -> 1; 0 is unknown -> 0
    assert bucket.numpy().tolist() == [6, 1, 0]
    # the table holds the same for c2 ("Movie Three (2002)", Comedy)
    row = data.item_index["c2"] + 1
    assert space.item_genres[row].tolist() == [1.0, 0.0]
    assert space.item_year[row] == 6
    assert [vocab[i - 1] for i in space.item_title[row] if i > 0] == ["movie", "three"]


def test_item_embeddings_of_a_known_item_match_its_candidate_embedding(
    trained: Any, tmp_path: Path
) -> None:
    from models._tensorflow import tf
    from models.export import call_signature, save_retrieval

    data, retrieval = trained
    save_retrieval(retrieval, tmp_path / "r", k=5)
    loaded = tf.saved_model.load(str(tmp_path / "r"))
    assert "item_embeddings" in loaded.signatures
    got = call_signature(
        loaded,
        "item_embeddings",
        _content(
            [("h4", ["Horror"], "Movie Five (2004)", 2004), ("c0", ["Comedy"], "Movie One", 2000)]
        ),
    )["embeddings"]
    want = retrieval.candidate_matrix()[[data.item_index["h4"], data.item_index["c0"]]]
    # the same id and content give the same vector; the last coordinate is the popularity
    # prior, which a vector made from content starts at 0
    np.testing.assert_allclose(got[:, :-1], want[:, :-1], rtol=1e-5, atol=1e-5)
    assert got[:, -1].tolist() == [0.0, 0.0]
    assert out_known(loaded, ["h4", "not-in-training"]) == [True, False]
    # serving_default returns the query embedding too, the one item vectors are scored with
    feats = data.query_features(np.array(["u0", "u1"], dtype=object), 20)
    out = call_signature(loaded, "serving_default", feats)
    np.testing.assert_allclose(
        out["query_embedding"], retrieval.query_matrix(feats), rtol=1e-5, atol=1e-5
    )


def test_a_new_item_lands_among_the_items_of_its_genre(trained: Any, tmp_path: Path) -> None:
    from models._tensorflow import tf
    from models.export import call_signature, save_retrieval

    data, retrieval = trained
    save_retrieval(retrieval, tmp_path / "r", k=5)
    loaded = tf.saved_model.load(str(tmp_path / "r"))
    new = call_signature(
        loaded,
        "item_embeddings",
        _content(
            [
                ("new-horror", ["Horror"], "Movie Eleven (2013)", 2013),
                ("new-comedy", ["Comedy"], "Movie Eleven (2013)", 2013),
            ]
        ),
    )["embeddings"][:, :-1]
    known = retrieval.candidate_matrix()[:, :-1]
    horror = np.array([i.startswith("h") for i in data.catalog])
    sim = _unit(new) @ _unit(known).T  # cosine of each new item with each catalog item
    # the new horror item is closer on average to horror items than to comedies,
    # and the other way round for the new comedy
    assert sim[0, horror].mean() > sim[0, ~horror].mean()
    assert sim[1, ~horror].mean() > sim[1, horror].mean()
    # and a horror fan's query scores the new horror item above the new comedy (u0 rated
    # only horror movies: users with an even number like horror)
    q = retrieval.query_matrix(data.query_features(np.array(["u0", "u1"], dtype=object), 20))
    scores = q[:, :-1] @ new.T
    assert scores[0, 0] > scores[0, 1]
    assert scores[1, 1] > scores[1, 0]


def test_ranking_scores_unknown_candidates_from_their_content(tmp_path: Path) -> None:
    from models._tensorflow import tf
    from models.export import call_signature, save_ranking
    from models.ranking import train_ranking

    rows = [
        (f"u{u}", f"{'hc'[u % 2]}{n}", 9.0, 1_600_000_000 + 60 * (10 * u + n))
        for u in range(8)
        for n in range(5)
    ]
    inter = frame(rows)
    data = TrainingData(inter, complete_items(_catalog(), inter), 7.0)
    params = AttuneConfig().models.ranking.model_copy(update={"epochs": 1, "embedding_dim": 8})
    ranking = train_ranking(data, params, 30.0, seed=1, progress=False)
    save_ranking(ranking, tmp_path / "k")
    loaded = tf.saved_model.load(str(tmp_path / "k"))
    feats = data.query_features(np.array(["u0"], dtype=object), 20)
    cands = np.array([["h1", "c2", "brand-new"]], dtype=object)
    plain = call_signature(loaded, "serving_default", {**feats, "candidate_ids": cands})["scores"]
    content = {
        "candidate_genres": np.array([[["Horror"], ["Comedy"], ["Comedy"]]], dtype=object),
        # known candidates' content is ignored (the table's wins), so a wrong one is harmless
        "candidate_title": np.array([["x", "y", "Movie Three (2002)"]], dtype=object),
        "candidate_year": np.array([[0, 0, 2002]], dtype=np.int64),
    }
    with_content = call_signature(
        loaded, "with_content", {**feats, "candidate_ids": cands, **content}
    )["scores"]
    np.testing.assert_allclose(with_content[:, :2], plain[:, :2], rtol=1e-5, atol=1e-5)
    # the unknown one is scored from the content it came with, as the in-memory model does
    memory = ranking.model.score(
        {
            **{k: tf.constant(v) for k, v in feats.items()},
            "candidate_content": {
                "genres": tf.constant(content["candidate_genres"].astype(str)),
                "title": tf.constant(content["candidate_title"].astype(str)),
                "year": tf.constant(content["candidate_year"]),
            },
        },
        tf.constant(cands.astype(str)),
    ).numpy()
    np.testing.assert_allclose(with_content, memory, rtol=1e-5, atol=1e-5)
    assert with_content[0, 2] != plain[0, 2]
