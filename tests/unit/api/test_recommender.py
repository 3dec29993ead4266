"""The recommendation pipeline with a fake store and a fake model client: which source answers,
how candidates flow through ranking and rules, and that failures degrade instead of failing."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from attune.api.breaker import CircuitBreaker
from attune.api.model_client import GuardedModels, ModelUnavailable
from attune.api.recommender import Recommender, RecRequest
from attune.api.store import CatalogCache, ItemInfo, RequestData
from attune.config import AttuneConfig, RulesConfig
from attune.online_store import RecentItem, UserFeatures

CATALOG = CatalogCache(
    {
        "seen1": ItemInfo("Seen One", ("Drama",)),
        "seen2": ItemInfo("Seen Two", ("Comedy",)),
        "r1": ItemInfo("R One", ("Drama",)),
        "r2": ItemInfo("R Two", ("Horror",)),
        "r3": ItemInfo("R Three", ("Comedy",)),
        "n1": ItemInfo("N One", ("War",)),
        "t1": ItemInfo("T One", ("Action",)),
        "b1": ItemInfo("B One", ("Drama",)),
        "b2": ItemInfo("B Two", ("Horror",)),
        "pop1": ItemInfo("Pop One", ("Family",)),
        "pop2": ItemInfo("Pop Two", ("Family",)),
    }
)


class FakeStore:
    def __init__(self, data: RequestData, neighbours: dict[str, list[tuple[str, float]]]) -> None:
        self.data = data
        self.nb = neighbours
        self.catalog = CATALOG

    async def read_request(self, subject: str, now_ms: int) -> RequestData:
        return self.data

    async def neighbours(self, seeds: Any, per_seed: int) -> dict[str, list[tuple[str, float]]]:
        return {s: self.nb.get(s, [])[:per_seed] for s in seeds}


class FakeClient:
    protocol = "fake"

    def __init__(self, fail: str | None = None, fail_ranking: bool = False) -> None:
        self.fail = fail
        self.fail_ranking = fail_ranking
        self.calls: list[tuple[str, dict[str, Any]]] = []

    async def predict(self, model: str, inputs: Any, **kw: Any) -> dict[str, np.ndarray]:
        self.calls.append((model, dict(inputs)))
        if self.fail == "unavailable" or (model == "ranking" and self.fail_ranking):
            raise ModelUnavailable("unavailable", "test")
        if self.fail == "slow":
            await asyncio.sleep(1.0)
        if model == "retrieval":
            # retrieval returns a seen item too; rules must drop it
            return {
                "item_ids": np.array([["r1", "seen1", "r2", "r3"]], dtype=object),
                "scores": np.array([[0.9, 0.8, 0.7, 0.6]], dtype=np.float32),
            }
        # ranking: score = 10 - position in the candidate list, except n1 goes first (+20)
        cands = list(inputs["candidate_ids"][0])
        scores = [20.0 if c == "n1" else 10.0 - i for i, c in enumerate(cands)]
        return {"scores": np.array([scores], dtype=np.float32)}

    async def close(self) -> None:
        pass


def data(**changes: Any) -> RequestData:
    features = UserFeatures(
        user="u",
        recent=[RecentItem("seen1", "rating", 2), RecentItem("seen2", "item_view", 1)],
    )
    base: dict[str, Any] = dict(
        features=features,
        segment="active",
        batch_recs=[("b1", 2.0), ("b2", 1.0), ("seen2", 0.5)],
        suppressed={},
        consent={},
        trending=["t1"],
        popular=["pop1", "pop2"],
    )
    base.update(changes)
    return RequestData(**base)


def recommender(
    client: FakeClient, d: RequestData, **rule_changes: Any
) -> tuple[Recommender, CircuitBreaker]:
    cfg = AttuneConfig()
    api = cfg.api.model_copy(
        update={
            "rules": RulesConfig(**rule_changes),
            "model_server": cfg.api.model_server.model_copy(update={"timeout_ms": 50.0}),
        }
    )
    cfg = cfg.model_copy(update={"api": api})
    breaker = CircuitBreaker("m", 2, 60.0)
    models = GuardedModels(client, 0.05, breaker)
    store = FakeStore(d, {"seen1": [("n1", 0.5), ("seen2", 0.4)]})
    return Recommender(cfg, store, models, clock=lambda: 1_700_000_000.0), breaker  # type: ignore[arg-type]


def run(rec: Recommender, **req: Any) -> Any:
    return asyncio.run(rec.recommend(RecRequest(subject="u", is_user=True, **{"k": 5, **req})))


def test_model_path_retrieves_ranks_and_applies_rules() -> None:
    client = FakeClient()
    rec, _ = recommender(client, data())
    out = run(rec)
    assert out.source == "model" and out.degraded is None
    # pool sent to ranking (seen1 filtered before ranking): r1, r2, r3 (retrieval), n1
    # (neighbour of seen1; seen2 is seen), t1 (trending)
    ranking_inputs = client.calls[1][1]
    assert list(ranking_inputs["candidate_ids"][0]) == ["r1", "r2", "r3", "n1", "t1"]
    # scores 10, 9, 8, 20, 6 -> n1, r1, r2, r3, t1
    assert [i.item_id for i in out.items] == ["n1", "r1", "r2", "r3", "t1"]
    assert out.items[0].reason == "because you rated Seen One"  # n1 neighbours seen1
    # r1 is Drama like seen1 (the latest item) -> that reason
    assert out.items[1].reason == "because you rated Seen One"
    assert out.items[4].reason == "trending now"
    # the query: user id, recent items newest first, request time in seconds
    q = client.calls[0][1]
    assert list(q["recent_items"][0]) == ["seen1", "seen2"]
    assert int(q["request_time"][0]) == 1_700_000_000
    assert q["segment"][0] == "active"
    assert set(out.timings) >= {"features", "retrieval", "candidates", "ranking", "rules", "total"}
    assert out.recommendation_id.startswith("recs:control:")


def test_seed_item_goes_first_in_the_sequence() -> None:
    client = FakeClient()
    rec, _ = recommender(client, data())
    run(rec, seed_item="r3")
    assert list(client.calls[0][1]["recent_items"][0]) == ["r3", "seen1", "seen2"]


def test_ranking_failure_keeps_retrieval_order() -> None:
    rec, _ = recommender(FakeClient(fail_ranking=True), data())
    out = run(rec, k=3)
    assert out.source == "model" and out.degraded == "ranking unavailable"
    assert [i.item_id for i in out.items] == ["r1", "r2", "r3"]


def test_model_down_falls_back_to_batch_then_breaker_opens() -> None:
    rec, breaker = recommender(FakeClient(fail="unavailable"), data())
    out = run(rec, k=3)
    # batch recs b1, b2 (seen2 is seen and dropped) then fill: t1 (trending)
    assert out.source == "batch" and out.degraded == "retrieval unavailable"
    assert [i.item_id for i in out.items] == ["b1", "b2", "t1"]
    run(rec, k=3)
    assert breaker.state == "open"  # two consecutive failures (threshold 2)
    out = run(rec, k=3)
    assert out.source == "batch" and out.degraded == "retrieval circuit_open"


def test_model_over_budget_falls_back() -> None:
    rec, _ = recommender(FakeClient(fail="slow"), data())
    out = run(rec, k=2)
    assert out.source == "batch" and out.degraded == "retrieval timeout"


def test_without_batch_recs_the_session_neighbours_answer() -> None:
    rec, _ = recommender(FakeClient(fail="unavailable"), data(batch_recs=[]))
    out = run(rec, k=3)
    # neighbours of seen1: n1 (seen2 is seen); then fill t1, pop1
    assert out.source == "session"
    assert [i.item_id for i in out.items] == ["n1", "t1", "pop1"]


def test_a_user_without_history_gets_popular_items() -> None:
    empty = data(features=UserFeatures(user="new"), batch_recs=[])
    client = FakeClient()
    rec, _ = recommender(client, empty)
    out = run(rec, k=3)
    assert out.source == "popular" and client.calls == []  # the model is not asked
    assert [(i.item_id, i.reason) for i in out.items] == [
        ("t1", "trending now"),
        ("pop1", "popular"),
        ("pop2", "popular"),
    ]


def test_no_personalization_consent_means_popular() -> None:
    client = FakeClient()
    rec, _ = recommender(client, data(consent={"personalization": False}))
    out = run(rec, k=2)
    assert out.source == "popular" and out.degraded == "no personalization consent"
    assert client.calls == []


def test_dismissed_and_suppressed_items_are_left_out() -> None:
    # n1 dismissed (and not undone); Horror suppressed by "not interested" in some item
    features = UserFeatures(
        user="u",
        recent=[RecentItem("seen1", "rating", 2), RecentItem("seen2", "item_view", 1)],
        dismissed_items=["n1"],
    )
    d = data(features=features, suppressed={"Horror": "x"})
    rec, _ = recommender(FakeClient(), d)
    out = run(rec, k=5)
    # ranked: n1 (dismissed), r1, r2 (Horror), r3, t1; fill pop1 -> r1, r3, t1, pop1, pop2
    assert [i.item_id for i in out.items] == ["r1", "r3", "t1", "pop1", "pop2"]


@pytest.mark.parametrize("ranking", [False])
def test_variant_without_ranking_uses_retrieval_order(ranking: bool) -> None:
    client = FakeClient()
    rec, _ = recommender(client, data())
    variants = {
        "control": rec.api.experiment.variants["control"].model_copy(update={"ranking": ranking})
    }
    rec.api = rec.api.model_copy(
        update={"experiment": rec.api.experiment.model_copy(update={"variants": variants})}
    )
    out = run(rec, k=3)
    assert [c[0] for c in client.calls] == ["retrieval"]
    assert [i.item_id for i in out.items] == ["r1", "r2", "r3"]
