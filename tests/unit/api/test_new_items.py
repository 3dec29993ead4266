"""New items in the API: scored against the query embedding, ranked from their content, and
given a place in the list when ranking leaves them out (fake store and model client)."""

from __future__ import annotations

from typing import Any

import numpy as np

from attune.api.new_items import (
    NewItemContent,
    NewItems,
    best_new_items,
    candidate_content,
    keep_new_slots,
    load_new_items,
)
from attune.api.store import CatalogCache, ItemInfo
from attune.keys import Keys
from attune.rules import Candidate
from tests.unit.api.test_recommender import CATALOG, FakeClient, data, recommender, run

NEW = NewItems(
    ids=("x-horror", "x-comedy", "x-drama"),
    vectors=np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.6]], dtype=np.float32),
    content={
        "x-horror": NewItemContent("X Horror", ("Horror",), 2014),
        "x-comedy": NewItemContent("X Comedy", ("Comedy", "Romance"), 2013),
        "x-drama": NewItemContent("X Drama", ("Drama",), 0),
    },
    version="3",
)


def test_best_new_items_by_the_dot_product_with_the_query() -> None:
    # query (0.2, 0.9): x-horror 0.2, x-comedy 0.9, x-drama 0.6 * 1.1 = 0.66
    got = best_new_items(NEW, np.array([0.2, 0.9]), 2)
    assert [(c.item_id, round(c.score or 0, 4), c.origin) for c in got] == [
        ("x-comedy", 0.9, "new"),
        ("x-drama", 0.66, "new"),
    ]
    # an inadmissible item is skipped, the next one comes in
    got = best_new_items(NEW, np.array([0.2, 0.9]), 2, admissible=lambda i: i != "x-comedy")
    assert [c.item_id for c in got] == ["x-drama", "x-horror"]
    # no query embedding (an older model), another dimension, or none asked: nothing
    assert best_new_items(NEW, None, 2) == []
    assert best_new_items(NEW, np.array([1.0, 0.0, 0.0]), 2) == []
    assert best_new_items(NEW, np.array([0.2, 0.9]), 0) == []


def test_candidate_content_fills_new_items_and_leaves_the_others_empty() -> None:
    got = candidate_content(["r1", "x-comedy", "x-horror"], NEW)
    assert got["candidate_genres"].tolist() == [[["", ""], ["Comedy", "Romance"], ["Horror", ""]]]
    assert got["candidate_title"].tolist() == [["", "X Comedy", "X Horror"]]
    assert got["candidate_year"].tolist() == [[0, 2013, 2014]]


def test_keep_new_slots_replaces_the_last_items_that_are_not_pinned() -> None:
    final = [Candidate("a", 5.0, "retrieval"), Candidate("b", 4.0, "similar")]
    final.append(Candidate("pinned", None, "pin"))
    ranked = [*final[:2], Candidate("x1", 1.0, "new"), Candidate("x2", 2.0, "new")]
    # one slot: the best ranked new item x2 replaces b (the pin stays)
    out = keep_new_slots(final, ranked, 1)
    assert [c.item_id for c in out] == ["a", "x2", "pinned"]
    # two slots: x2 takes b's place, then x1 takes a's
    assert [c.item_id for c in keep_new_slots(final, ranked, 2)] == ["x1", "x2", "pinned"]
    # a refused place is skipped
    out = keep_new_slots(final, ranked, 1, fits=lambda chosen, i, c: i != 1)
    assert [c.item_id for c in out] == ["x2", "b", "pinned"]
    # already one in: nothing changes; no slots: nothing changes
    assert keep_new_slots(out, ranked, 1) == out
    assert keep_new_slots(final, ranked, 0) == final


class NewItemsClient(FakeClient):
    """Retrieval also returns the query embedding (0.2, 0.9); ranking puts new items last."""

    async def predict(self, model: str, inputs: Any, **kw: Any) -> dict[str, np.ndarray]:
        self.signatures = [*getattr(self, "signatures", []), kw.get("signature")]
        out = await super().predict(model, inputs, **kw)
        if model == "retrieval":
            out["query_embedding"] = np.array([[0.2, 0.9]], dtype=np.float32)
        else:
            cands = list(inputs["candidate_ids"][0])
            out["scores"] = np.array(
                [[-1.0 if c.startswith("x-") else 10.0 - i for i, c in enumerate(cands)]],
                dtype=np.float32,
            )
        return out


def test_the_best_new_item_is_ranked_with_its_content_and_gets_a_place() -> None:
    client = NewItemsClient()
    rec, _ = recommender(client, data())
    rec.store.new_items = NEW  # type: ignore[attr-defined]
    rec.store.catalog = CatalogCache(  # type: ignore[attr-defined]
        {**CATALOG.items, **{i: ItemInfo(c.title, c.genres) for i, c in NEW.content.items()}}
    )
    out = run(rec)
    assert out.source == "model"
    # api.candidates.new_items (10) > 3: every new item joins, best first, after retrieval
    ranking_inputs = client.calls[1][1]
    assert list(ranking_inputs["candidate_ids"][0]) == [
        "r1", "r2", "r3", "x-comedy", "x-drama", "x-horror", "n1", "t1",
    ]  # fmt: skip
    assert client.signatures == ["serving_default", "with_content"]
    assert ranking_inputs["candidate_title"][0][3] == "X Comedy"
    # ranking scores the new items -1 (last); new_slots = 1 keeps the best ranked one, which
    # ties at -1: the pool order (x-comedy first) decides, and it takes the last place.
    # Ranking: r1 10, r2 9, r3 8, n1 4, t1 3 -> k = 5 gives r1 r2 r3 n1 t1, t1 replaced.
    assert [i.item_id for i in out.items] == ["r1", "r2", "r3", "n1", "x-comedy"]
    new = out.items[4]
    assert new.origin == "new"
    # x-comedy is a comedy like seen2, which the user viewed
    assert new.reason == "new, and like Seen Two, which you viewed"


def test_an_experiment_on_another_model_version_gets_no_new_items() -> None:
    from attune.api.recommender import Treatment

    client = NewItemsClient()
    rec, _ = recommender(client, data())
    rec.store.new_items = NEW  # type: ignore[attr-defined]
    out = {"query_embedding": np.array([[0.2, 0.9]])}
    ex = rec._exclusions(rec_request(), data())
    assert rec._new_candidates(out, ex, Treatment(model_label="canary")) == []
    assert [c.item_id for c in rec._new_candidates(out, ex, Treatment())][:1] == ["x-comedy"]


def rec_request() -> Any:
    from attune.api.recommender import RecRequest

    return RecRequest(subject="u", is_user=True, k=5)


class FakeRedis:
    """hgetall, zrevrange and a pipeline of get / hmget over dicts."""

    def __init__(self, strings: dict[str, bytes], hashes: dict[str, dict[bytes, bytes]]) -> None:
        self.strings, self.hashes = strings, hashes
        self.zset: list[bytes] = []
        self._queued: list[Any] = []

    def hgetall(self, key: str) -> dict[bytes, bytes]:
        return self.hashes.get(key, {})

    def zrevrange(self, key: str, start: int, stop: int) -> list[bytes]:
        return self.zset[start : stop + 1]

    def pipeline(self, transaction: bool = False) -> FakeRedis:
        return self

    def get(self, key: str) -> None:
        self._queued.append(self.strings.get(key))

    def hmget(self, key: str, *fields: str) -> None:
        h = self.hashes.get(key, {})
        self._queued.append([h.get(f.encode()) for f in fields])

    def execute(self) -> list[Any]:
        out, self._queued = self._queued, []
        return out


def test_load_new_items_reads_vectors_and_content() -> None:
    keys = Keys("t")
    vec = np.array([0.5, -1.0, 2.0], dtype="<f4").tobytes()
    r = FakeRedis(
        {keys.item_vector("a"): vec, keys.item_vector("b"): b"\x00" * 8},  # b: 2 floats
        {
            keys.new_items_meta: {b"version": b"4", b"dim": b"3"},
            keys.item_meta("a"): {b"title": b"A", b"genres": b'["Drama"]', b"year": b"2014"},
        },
    )
    r.zset = [b"a", b"b", b"c"]  # c has no vector (yet)
    got = load_new_items(r, keys)
    assert got.ids == ("a",) and got.version == "4"
    assert got.vectors.tolist() == [[0.5, -1.0, 2.0]]
    assert got.content == {"a": NewItemContent("A", ("Drama",), 2014)}
