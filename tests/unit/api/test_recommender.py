"""The recommendation pipeline with a fake store and a fake model client: which source answers,
how candidates flow through ranking and rules, and that failures degrade instead of failing."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest

from attune.api.breaker import CircuitBreaker
from attune.api.model_client import GuardedModels, ModelUnavailable
from attune.api.new_items import NewItems
from attune.api.recommender import Recommender, RecRequest
from attune.api.store import CatalogCache, ItemInfo, RequestData
from attune.config import AttuneConfig, RulesConfig
from attune.experiments.assignment import Assigner
from attune.experiments.spec import parse_experiments
from attune.experiments.state import RunningState, declared_allocations
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
        self.new_items = NewItems()
        self.kinds: list[str] = []

    async def read_request(self, subject: str, now_ms: int) -> RequestData:
        return self.data

    async def neighbours(
        self, seeds: Any, per_seed: int, kind: str = "session"
    ) -> dict[str, list[tuple[str, float]]]:
        self.kinds.append(kind)
        return {s: self.nb.get(s, [])[:per_seed] for s in seeds}


class FakeClient:
    protocol = "fake"

    def __init__(self, fail: str | None = None, fail_ranking: bool = False) -> None:
        self.fail = fail
        self.fail_ranking = fail_ranking
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.labels: list[str | None] = []

    async def predict(self, model: str, inputs: Any, **kw: Any) -> dict[str, np.ndarray]:
        self.calls.append((model, dict(inputs)))
        self.labels.append(kw.get("label"))
        if self.fail == "crash":
            raise RuntimeError("a bug")
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


def run(rec: Recommender, subject: str = "u", **req: Any) -> Any:
    return asyncio.run(rec.recommend(RecRequest(subject=subject, is_user=True, **{"k": 5, **req})))


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
    # no experiment runs: "none:default:" + 20 hex
    assert out.recommendation_id.startswith("none:default:")
    assert len(out.recommendation_id) == 13 + 20
    assert (out.experiment, out.variant) == ("none", "default")


def test_neighbour_score_is_blended_into_the_ranking_score() -> None:
    # seen1's item-kNN neighbours: n1 0.5, r3 0.4. Ranking scores (FakeClient): r1 10, r2 9,
    # r3 8, n1 20, t1 6. With neighbour_weight 30: n1 20 + 30 * 0.5 = 35, r3 8 + 30 * 0.4 = 20;
    # the others have no neighbour score -> n1, r3, r1, r2, t1 (without it r3 is fourth).
    client = FakeClient()
    cfg = AttuneConfig()
    cands = cfg.api.candidates.model_copy(update={"neighbour_weight": 30.0, "neighbours": "user"})
    cfg = cfg.model_copy(update={"api": cfg.api.model_copy(update={"candidates": cands})})
    store = FakeStore(data(), {"seen1": [("n1", 0.5), ("r3", 0.4)]})
    models = GuardedModels(client, 0.05, CircuitBreaker("m", 2, 60.0))
    rec = Recommender(cfg, store, models, clock=lambda: 1_700_000_000.0)  # type: ignore[arg-type]
    out = run(rec)
    assert [i.item_id for i in out.items] == ["n1", "r3", "r1", "r2", "t1"]
    assert [i.score for i in out.items][:2] == [pytest.approx(35.0), pytest.approx(20.0)]
    assert store.kinds == ["user"]  # the item-kNN lists were read


def test_calibration_follows_the_users_affinities_from_the_features() -> None:
    # ranking scores (FakeClient): n1 20 War, r1 10 Drama, r2 9 Horror, r3 8 Comedy, t1 6
    # Action; relevance over them (20 - 6 = 14): n1 1, r1 4/14, r2 3/14. A Horror fan, weight
    # 0.5: place 1: r2 0.5 * 3/14 - 0 = 0.107, every other item costs 0.5 ln(1 / 0.01) = 2.30
    # (n1 0.5 - 2.30) -> r2; place 2: a second genre makes q_Horror 1/2 (smoothed 0.505,
    # KL 0.683): n1 0.5 - 0.342 = 0.158, r1 0.143 - 0.342 -> n1. Uncalibrated: n1, r1.
    features = UserFeatures(
        user="u", recent=[RecentItem("seen1", "rating", 2)], affinities={"Horror": 2.5}
    )
    calibrated, _ = recommender(
        FakeClient(), data(features=features), calibration=0.5, max_per_category=0
    )
    plain, _ = recommender(FakeClient(), data(features=features), max_per_category=0)
    assert [i.item_id for i in run(calibrated, k=2).items] == ["r2", "n1"]
    assert [i.item_id for i in run(plain, k=2).items] == ["n1", "r1"]


def test_an_erased_users_id_never_reaches_the_models() -> None:
    # their id embedding is still in the served models: the query carries the unknown id ""
    client = FakeClient()
    rec, _ = recommender(client, data(erased=True))
    out = run(rec)
    assert out.source == "model"
    assert [call[1]["user_id"][0] for call in client.calls] == ["", ""]  # retrieval, ranking
    client = FakeClient()
    rec, _ = recommender(client, data())
    run(rec)
    assert [call[1]["user_id"][0] for call in client.calls] == ["u", "u"]


def test_seed_item_goes_first_in_the_sequence() -> None:
    client = FakeClient()
    rec, _ = recommender(client, data())
    run(rec, seed_item="r3")
    assert list(client.calls[0][1]["recent_items"][0]) == ["r3", "seen1", "seen2"]


def test_query_carries_recent_times_in_seconds_from_the_recent_zset() -> None:
    # The recent zset scores items by event time in ms: seen1 at 1_699_999_400_500 ms ->
    # 1_699_999_400 s (10 min before the request at 1_700_000_000), seen2 at
    # 1_699_996_400_000 ms -> 1_699_996_400 s (1 h before); the seed item r3 is being looked at
    # now (request time); each list lines up with recent_items.
    features = UserFeatures(
        user="u",
        recent=[
            RecentItem("seen1", "rating", 1_699_999_400_500),
            RecentItem("seen2", "item_view", 1_699_996_400_000),
        ],
    )
    client = FakeClient()
    rec, _ = recommender(client, data(features=features))
    run(rec, seed_item="r3")
    q = client.calls[0][1]
    assert list(q["recent_items"][0]) == ["r3", "seen1", "seen2"]
    assert q["recent_times"].dtype == np.int64
    assert list(q["recent_times"][0]) == [1_700_000_000, 1_699_999_400, 1_699_996_400]
    for call in client.calls:  # ranking gets the same query features
        assert list(call[1]["recent_times"][0]) == [1_700_000_000, 1_699_999_400, 1_699_996_400]


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


# -- experiments ------------------------------------------------------------------------
# The clock is 1_700_000_000 s = 2023-11-14T22:13:20Z; the experiments started before that.
STARTED = datetime(2023, 11, 1, tzinfo=UTC)


def run_experiment(
    rec: Recommender,
    variants: dict[str, Any],
    *,
    running: bool = True,
    holdout: float = 0.0,
    **fields: Any,
) -> None:
    """Declare experiment e1 (layer recs, all traffic) and, with ``running``, record it as
    started; a variant of weight 0 never gets anybody, so one positive weight picks the arm."""
    decls = parse_experiments(
        {
            "holdout": {"share": holdout},
            "experiments": [
                {"id": "e1", "hypothesis": "h", "layer": "recs", "variants": variants, **fields}
            ],
        }
    )
    states = {}
    if running:
        states["e1"] = RunningState("e1", "running", STARTED, declared_allocations(decls)["e1"])
    rec.set_experiments(Assigner(decls, states))


def test_variant_without_ranking_uses_retrieval_order() -> None:
    client = FakeClient()
    rec, _ = recommender(client, data())
    run_experiment(rec, {"on": {"weight": 0}, "off": {"weight": 1, "ranking": False}})
    out = run(rec, k=3)
    assert [c[0] for c in client.calls] == ["retrieval"]
    assert [i.item_id for i in out.items] == ["r1", "r2", "r3"]
    assert (out.experiment, out.variant) == ("e1", "off")
    assert out.recommendation_id.startswith("e1:off:") and len(out.recommendation_id) == 27


def test_a_declared_experiment_that_does_not_run_changes_nothing() -> None:
    client = FakeClient()
    rec, _ = recommender(client, data())
    run_experiment(rec, {"on": {"weight": 0}, "off": {"ranking": False}}, running=False)
    out = run(rec, k=3)
    assert [c[0] for c in client.calls] == ["retrieval", "ranking"]
    assert out.recommendation_id.startswith("none:default:")


def test_variant_model_label_goes_to_both_models() -> None:
    client = FakeClient()
    rec, _ = recommender(client, data())
    run_experiment(rec, {"served": {"weight": 0}, "canary": {"model_label": "canary"}})
    run(rec)
    assert client.labels == ["canary", "canary"]


def test_variant_rule_set_replaces_the_rules() -> None:
    client = FakeClient()
    rec, _ = recommender(client, data())
    rec.api = rec.api.model_copy(
        update={"rule_sets": {"boost_t1": RulesConfig(item_boosts={"t1": 100.0})}}
    )
    run_experiment(rec, {"plain": {"weight": 0}, "boosted": {"rules": "boost_t1"}})
    out = run(rec)
    # ranking scores n1 20, r1 10, r2 9, r3 8, t1 6; +100 for t1 -> t1 first
    assert [i.item_id for i in out.items] == ["t1", "n1", "r1", "r2", "r3"]


def test_variant_candidate_sources_limit_the_pool_and_the_fill() -> None:
    client = FakeClient()
    rec, _ = recommender(client, data())
    run_experiment(rec, {"all": {"weight": 0}, "retrieval": {"candidate_sources": ["retrieval"]}})
    out = run(rec)
    # only retrieval results are ranked (no neighbour n1, no trending t1) and nothing fills
    assert list(client.calls[1][1]["candidate_ids"][0]) == ["r1", "r2", "r3"]
    assert [i.item_id for i in out.items] == ["r1", "r2", "r3"]

    client = FakeClient()
    rec, _ = recommender(client, data())
    run_experiment(
        rec, {"all": {"weight": 0}, "nb": {"candidate_sources": ["neighbours", "popular"]}}
    )
    out = run(rec)
    # no retrieval call; the pool is seen1's neighbour n1 (seen2 is seen); fill: popular only
    assert [c[0] for c in client.calls] == ["ranking"]
    assert [i.item_id for i in out.items] == ["n1", "pop1", "pop2"]


def test_without_the_batch_source_the_fallback_skips_to_session() -> None:
    rec, _ = recommender(FakeClient(fail="unavailable"), data())
    run_experiment(rec, {"all": {"weight": 0}, "nobatch": {"candidate_sources": ["session"]}})
    out = run(rec, k=3)
    assert out.source == "session" and [i.item_id for i in out.items] == ["n1"]


def test_holdout_gets_the_defaults_and_its_own_id() -> None:
    # sha256("holdout:v") starts with 213e74f1 -> 0.129... < 0.2: v is in the holdout;
    # sha256("holdout:u") starts with a6e549b3 -> 0.651... >= 0.2: u is not
    client = FakeClient()
    rec, _ = recommender(client, data())
    run_experiment(rec, {"on": {"weight": 0}, "off": {"ranking": False}}, holdout=0.2)
    out = run(rec, subject="v")
    assert out.recommendation_id.startswith("holdout:holdout:")
    assert [c[0] for c in client.calls] == ["retrieval", "ranking"]  # defaults: ranking on
    assert run(rec, subject="u").recommendation_id.startswith("e1:off:")


def test_targeting_by_platform_and_new_users() -> None:
    rec, _ = recommender(FakeClient(), data())
    run_experiment(
        rec, {"on": {"weight": 0}, "off": {"ranking": False}}, targeting={"platforms": ["ios"]}
    )
    assert run(rec, device="android").variant == "default"
    assert run(rec, device="iOS").variant == "off"  # platforms compare case-insensitively
    assert run(rec).variant == "default"  # no device: no platform to match

    rec, _ = recommender(FakeClient(), data())
    run_experiment(
        rec, {"on": {"weight": 0}, "off": {"ranking": False}}, targeting={"users": "new"}
    )
    assert run(rec).variant == "default"  # u has events: returning
    rec, _ = recommender(FakeClient(), data(features=UserFeatures(user="u")))
    run_experiment(
        rec, {"on": {"weight": 0}, "off": {"ranking": False}}, targeting={"users": "new"}
    )
    assert run(rec).variant == "off"


def test_every_request_is_observed_per_variant() -> None:
    seen: list[tuple[str, str, str]] = []
    rec, _ = recommender(FakeClient(), data())
    rec.observe = lambda e, v, outcome, s: seen.append((e, v, outcome))
    run(rec)
    run_experiment(rec, {"on": {"weight": 0}, "off": {"ranking": False}})
    run(rec)
    rec.models = GuardedModels(FakeClient(fail_ranking=True), 0.05, CircuitBreaker("m", 9, 60))
    run_experiment(rec, {"on": {"weight": 1}, "off": {"weight": 0}})
    run(rec)
    rec.models = GuardedModels(FakeClient(fail="crash"), 0.05, CircuitBreaker("m", 9, 60))
    with pytest.raises(RuntimeError):
        run(rec)
    assert seen == [
        ("none", "default", "ok"),
        ("e1", "off", "ok"),
        ("e1", "on", "degraded"),
        ("e1", "on", "error"),
    ]


def test_interleaving_merges_both_rankers_by_team_draft() -> None:
    client = FakeClient()
    rec, _ = recommender(client, data())
    run_experiment(
        rec,
        {"ranked": {"ranking": True}, "retrieval": {"ranking": False}},
        type="interleaving",
    )
    out = run(rec, k=5)
    # ranker "ranked": n1, r1, r2, r3, t1 (the first test); ranker "retrieval": the retrieval
    # order r1, r2, r3, then the fill t1, pop1
    ranked = ["n1", "r1", "r2", "r3", "t1"]
    retrieval = ["r1", "r2", "r3", "t1", "pop1"]
    assert sorted(c[0] for c in client.calls) == ["ranking", "retrieval", "retrieval"]
    assert (out.experiment, out.variant) == ("e1", "interleaved")
    ids = [i.item_id for i in out.items]
    teams = [i.team for i in out.items]
    assert len(ids) == 5 == len(set(ids)) and set(teams) <= {"ranked", "retrieval"}
    # each team's items keep their ranker's order, and the teams stay within one item
    for team, ranking in (("ranked", ranked), ("retrieval", retrieval)):
        mine = [i for i, t in zip(ids, teams, strict=True) if t == team]
        assert mine == [i for i in ranking if i in mine]
    assert abs(teams.count("ranked") - teams.count("retrieval")) <= 1
    assert ids[0] in ("n1", "r1")  # the first pick is one of the two rankers' best
