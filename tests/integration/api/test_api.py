"""The personalization API end to end, against the real thing: events posted to a real
collector go through Kafka and the speed layer (Spark, in this process) into Redis; a tiny
TFRS model trained on MovieTweetings-mini is served by ``attune serve models`` (a child
process, gRPC); ``attune serve api`` (a child process) answers.

Everything (topics, Redis db and key prefix, var dir, ports) belongs to this module. The batch
layer's views (precomputed recommendations, co-occurrence neighbours) are written here with
the key names the batch layer uses (:class:`attune.keys.Keys`), as the nightly run would.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis
import yaml

from attune.api.keys import create_read_key
from attune.api.process import api_url, start_api
from attune.collector.process import collector_process
from attune.config import (
    AttuneConfig,
    BanditConfig,
    ContentRule,
    MessageConfig,
    PinConfig,
    RateLimitConfig,
    free_port,
)
from attune.experiments.assignment import assign_variant
from attune.experiments.spec import load_experiments
from attune.experiments.state import StateStore, plan_start
from attune.online_store import OnlineStore, delete_user, wait_for_item
from attune.replay import publish_catalog, read_catalog
from attune.secrets import create_write_key, ensure_admin_key
from attune.serving.process import start_model_server
from attune.stack import create_topics
from attune.supervisor import Child
from tests.integration.speed_layer.helpers import (
    delete_prefix,
    delete_topics,
    pseudo,
    redis_client,
    speed_config,
    speed_layer_thread,
    wait_until,
    write_secret,
)

# the module fixture trains a model and starts Spark, two servers and a collector
pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

RUN = uuid.uuid4().hex[:8]
REDIS_DB = 9
K = 10
CAP = 2  # api.rules.max_per_category in this module
PIN = "1790885"  # Zero Dark Thirty (Drama|History|Thriller), pinned at position 0 on "home"


@dataclass
class Env:
    cfg: AttuneConfig
    collector: str
    write_key: str
    read_key: str
    tight_key: str
    secret: bytes
    store: OnlineStore
    redis: redis.Redis
    models: list[Child]  # the model server (replaced when a test restarts it)
    api: Child
    catalog: dict[str, list[str]]  # item -> genres
    titles: dict[str, str]

    @property
    def url(self) -> str:
        return self.api.url

    def one_redis_only(self, why: str) -> None:
        """Skip the Redis Cluster run of a test that reads nothing a cluster changes (its
        plain-Redis run covers it): the suite's time goes to what the cluster can break."""
        if self.cfg.redis.cluster:
            pytest.skip(f"run on one Redis only: {why}")

    def post_events(self, events: list[dict[str, Any]]) -> None:
        r = httpx.post(
            f"{self.collector}/v1/events",
            json=events,
            headers={"X-Write-Key": self.write_key},
            timeout=30,
        )
        assert r.status_code == 200, r.text

    def recommend(self, key: str | None = None, **body: Any) -> httpx.Response:
        return httpx.post(
            f"{self.url}/v1/recommendations",
            json=body,
            headers={"Authorization": f"Bearer {key or self.read_key}"},
            timeout=30,
        )

    def call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        headers = {"X-Read-Key": self.read_key, **kw.pop("headers", {})}
        return httpx.request(method, f"{self.url}{path}", headers=headers, timeout=30, **kw)

    def user(self, name: str) -> str:
        return pseudo(self.secret, name)


def now_iso(offset_s: float = 0.0) -> str:
    return (datetime.now(UTC) + timedelta(seconds=offset_s)).isoformat()


def view(user: str, item: str, etype: str = "item_view", **extra: Any) -> dict[str, Any]:
    return {
        "event_id": uuid.uuid4().hex,
        "type": etype,
        "user_id": user,
        "timestamp": now_iso(),
        "items": [{"item_id": item}],
        **extra,
    }


def mini(cfg: AttuneConfig) -> Path:
    return cfg.paths.data_dir.absolute() / "movietweetings-mini"


def train_tiny_model(cfg: AttuneConfig, secret: bytes) -> dict[str, int]:
    """Retrieval + ranking on MovieTweetings-mini with pseudonymized user ids (as gold would
    hold them), published and promoted into the module's model repository. Small on purpose:
    one epoch, 16-dim embeddings (about 30 s here, most of it importing TensorFlow)."""
    from models.data import load_csv
    from models.train import run_training

    mc = cfg.models
    small = cfg.model_copy(
        update={
            "models": mc.model_copy(
                update={
                    "prior_half_life_days": 7.0,
                    "retrieval": mc.retrieval.model_copy(
                        update={"epochs": 1, "embedding_dim": 16, "query_hidden": 0}
                    ),
                    "ranking": mc.ranking.model_copy(
                        update={"epochs": 1, "embedding_dim": 8, "deep_layers": [16]}
                    ),
                }
            )
        }
    )
    ds = load_csv(mini(cfg) / "ratings.csv", mini(cfg) / "movies.csv")
    ds.interactions["user_id"] = [pseudo(secret, u) for u in ds.interactions["user_id"]]
    result = run_training(small, ds, progress=False, say=lambda m: None)
    assert all(d.promoted for d in result.decisions), result.decisions
    return result.versions


@pytest.fixture(scope="module", params=["redis", "redis-cluster"])
def env(
    cfg: AttuneConfig,
    spark: Any,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Iterator[Env]:
    """The API with its collector, speed layer and model server: every test runs once on one
    Redis and once on a Redis Cluster of 3 masters (``redis_cluster``)."""
    cluster = request.param == "redis-cluster"
    base = speed_config(
        cfg,
        suffix=f"test-api-{'c' if cluster else ''}{RUN}",
        var_dir=tmp_path_factory.mktemp("api-var"),
        redis_db=REDIS_DB,
    )
    api = base.api
    # one running A/B experiment "recs" over every user: control ranks, retrieval_only does not
    experiments_file = base.paths.var_dir / "experiments.yaml"
    experiments_file.write_text(
        yaml.safe_dump(
            {
                "experiments": [
                    {
                        "id": "recs",
                        "hypothesis": "ranking helps",
                        "layer": "recs",
                        "variants": {
                            "control": {"weight": 1.0},
                            "retrieval_only": {"weight": 1.0, "ranking": False},
                        },
                    }
                ]
            }
        )
    )
    test_api = api.model_copy(
        update={
            "port": free_port(),
            "catalog_refresh_s": 1.0,
            "key_rate_limits": {"tight": RateLimitConfig(rate_per_s=1.0, burst=2)},
            "model_server": api.model_server.model_copy(
                update={
                    "timeout_ms": 5000.0,  # a shared 2-core machine: no spurious fallbacks
                    "breaker": api.model_server.breaker.model_copy(
                        update={"failure_threshold": 2, "reset_timeout_s": 1.0}
                    ),
                }
            ),
            "rules": api.rules.model_copy(
                update={
                    "max_per_category": CAP,
                    "pins": {"home": [PinConfig(item_id=PIN, position=0)]},
                }
            ),
            # a slot whose three variants a Thompson-sampling bandit chooses between
            "content_slots": {
                **api.content_slots,
                "hero": [ContentRule(variant=v) for v in ("trailer", "top_picks", "default")],
            },
            "bandits": {"hero": BanditConfig(policy="thompson", epsilon=0.06)},
        }
    )
    serving = base.serving.model_copy(
        update={"rest_port": free_port(), "grpc_port": free_port(), "poll_interval_s": 0.5}
    )
    experiments = base.experiments.model_copy(update={"file": experiments_file})
    test_cfg = AttuneConfig.model_validate(
        base.model_copy(
            update={"api": test_api, "serving": serving, "experiments": experiments}
        ).model_dump()
    )
    if cluster:
        test_cfg = test_cfg.model_copy(
            update={"redis": request.getfixturevalue("redis_cluster").redis}
        )
    secret = write_secret(test_cfg)
    write_key = create_write_key(test_cfg, "it-api")
    read_key = create_read_key(test_cfg, "it")
    tight_key = create_read_key(test_cfg, "tight")
    create_topics(test_cfg)
    movies = read_catalog(mini(test_cfg) / "movies.csv")
    publish_catalog(test_cfg, movies)
    train_tiny_model(test_cfg, secret)
    r = redis_client(test_cfg)
    store = OnlineStore.from_config(test_cfg)
    models: list[Child] = []
    try:
        with collector_process(test_cfg) as url, speed_layer_thread(test_cfg, spark, ("online",)):
            # the speed layer mirrors the catalog into Redis; the API reads that mirror
            wait_until(
                lambda: r.exists(store.keys.item_meta(PIN)), 60, "the catalog mirror in Redis"
            )
            models.append(start_model_server(test_cfg))
            decls = load_experiments(experiments_file)
            started = datetime.now(UTC)
            StateStore.from_config(test_cfg).apply(
                lambda states: plan_start(decls, states, "recs", started), started
            )
            child = start_api(test_cfg)
            try:
                yield Env(
                    test_cfg,
                    url,
                    write_key,
                    read_key,
                    tight_key,
                    secret,
                    store,
                    r,
                    models,
                    child,
                    {m["item_id"]: m["genres"] for m in movies},
                    {m["item_id"]: m["title"] for m in movies},
                )
            finally:
                child.stop()
                for m in models:
                    m.stop()
    finally:
        delete_prefix(r, store.prefix)
        r.close()
        delete_topics(test_cfg)


def items_of(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [i["item_id"] for i in response.json()["items"]]


def history(env: Env, user: str, items: list[str], **extra: Any) -> None:
    """Post item views of ``items`` (oldest first) and wait until the last one is in Redis."""
    env.post_events([view(user, i, **extra) for i in items])
    pseudonym = env.user(user) if "anonymous_id" not in extra else env.user(extra["anonymous_id"])
    assert wait_for_item(env.redis, pseudonym, items[-1], env.store, timeout_s=90), (
        f"{items[-1]} of {user} did not reach Redis"
    )


def kafka_events(env: Env, match: Any, timeout_s: float = 30.0) -> list[dict[str, Any]]:
    """Events of the module's events topic for which ``match(event)`` holds."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        env.cfg.kafka.topic("events").name,
        bootstrap_servers=env.cfg.kafka.bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=2000,
    )
    found: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and not found:
            for record in consumer:
                event = orjson.loads(record.value)
                if match(event):
                    found.append(event)
    finally:
        consumer.close()
    return found


def warm_up_impressions(
    env: Env, url: str, path: str = "/v1/recommendations", timeout_s: float = 120.0
) -> None:
    """Wait until a newly started API's impressions reach Kafka: until its producer has
    connected, impressions are dropped (and counted), so call ``path`` for throwaway users until
    the impression of one answer (found by its recommendation or decision id) arrives."""
    deadline = time.monotonic() + timeout_s
    for i in range(1000):
        warm = f"warm{i}-{uuid.uuid4().hex[:6]}"
        body: dict[str, Any] = {"user_id": warm}
        if path == "/v1/recommendations":
            body["k"] = 1
        r = httpx.post(f"{url}{path}", json=body, headers={"X-Read-Key": env.read_key}, timeout=30)
        assert r.status_code == 200, r.text
        rid = r.json().get("recommendation_id") or r.json().get("decision_id") or "-"
        user = env.user(warm)
        if kafka_events(
            env,
            lambda e, rid=rid, user=user: (
                e.get("recommendation_id") == rid or e.get("user_id") == user
            ),
            10.0,
        ):
            return
        assert time.monotonic() < deadline, f"no impression of the API at {url} reached Kafka"


# ----------------------------------------------------------------------------------------


DRAMAS = ["0443272", "0453562", "0975645", "1707386"]  # Lincoln, 42, Hitchcock, Les Miserables
BOUGHT = "1045658"  # Silver Linings Playbook (Comedy|Drama|Romance)
DISMISSED = "0816711"  # World War Z
NOT_INTERESTED = "1288558"  # Evil Dead (Horror): hides every Horror item
EXCLUDED = "0770828"  # Man of Steel, excluded by the request


def test_a_request_returns_k_items_that_obey_every_rule(env: Env) -> None:
    alice = f"alice-{RUN}"
    history(env, alice, DRAMAS)
    env.post_events([view(alice, BOUGHT, "purchase", order_id=f"o-{RUN}")])
    assert wait_for_item(env.redis, env.user(alice), BOUGHT, env.store, timeout_s=60)
    for action, item in (("dismiss", DISMISSED), ("not_interested", NOT_INTERESTED)):
        r = env.call(
            "POST", "/v1/feedback", json={"user_id": alice, "action": action, "items": [item]}
        )
        assert r.status_code == 200, r.text
        assert r.json() == {
            "applied": True,
            "action": action,
            "undo": False,
            "items": [item],
            "logged": True,
        }

    r = env.recommend(
        user_id=alice,
        k=K,
        context={"placement": "home", "device": "mobile"},
        filters={"exclude_items": [EXCLUDED]},
    )
    got = items_of(r)
    body = r.json()
    assert len(got) == K and len(set(got)) == K
    assert body["source"] == "model", body
    assert body["variant"] in ("control", "retrieval_only")
    assert body["recommendation_id"].startswith(f"recs:{body['variant']}:")
    assert r.headers["cache-control"] == "private, no-store"
    assert "retrieval;dur=" in r.headers["server-timing"]
    # the experiment runs (its state was recorded in Redis before the API started), and the
    # request was measured under its variant (the guardrails' latency and error rate)
    assert httpx.get(f"{env.url}/readyz", timeout=10).json()["experiments"] == {
        "declared": 1,
        "running": ["recs"],
    }
    admin = {"X-Admin-Key": ensure_admin_key(env.cfg, "it")}  # /metrics needs an admin key
    metrics = httpx.get(f"{env.url}/metrics", timeout=10, headers=admin).text
    variant_label = f'experiment="recs",outcome="ok",variant="{body["variant"]}"'
    assert f"attune_api_variant_requests_total{{{variant_label}}}" in metrics
    # the pin is first; nothing seen, bought, dismissed, excluded or of a hidden category
    assert got[0] == PIN and body["items"][0]["reason"] == "featured"
    forbidden = set(DRAMAS) | {BOUGHT, DISMISSED, NOT_INTERESTED, EXCLUDED}
    assert not forbidden & set(got)
    assert all("Horror" not in env.catalog[i] for i in got)
    # at most CAP items per primary category (the pin does not count)
    primaries = [env.catalog[i][0] for i in got[1:]]
    assert max(primaries.count(p) for p in set(primaries)) <= CAP
    assert all(item["reason"] for item in body["items"])
    assert [item["position"] for item in body["items"]] == list(range(K))

    # the impression reached Kafka with the recommendation id and the positions
    rec_id = body["recommendation_id"]
    impressions = kafka_events(
        env, lambda e: e.get("type") == "impression" and e.get("recommendation_id") == rec_id
    )
    assert len(impressions) == 1
    imp = impressions[0]
    assert imp["user_id"] == env.user(alice) and imp["source"] == "api"
    assert [(i["item_id"], i["position"]) for i in imp["items"]] == list(
        zip(got, range(K), strict=True)
    )
    # and so did the feedback, keyed and pseudonymized like any collected event
    dismissals = kafka_events(
        env, lambda e: e.get("type") == "dismiss" and e.get("user_id") == env.user(alice)
    )
    assert [d["items"][0]["item_id"] for d in dismissals] == [DISMISSED]


def test_a_click_posted_to_the_collector_changes_the_next_response(env: Env) -> None:
    bob = f"bob-{RUN}"
    history(env, bob, ["1663662", "1430132"])  # Pacific Rim, The Wolverine
    before = items_of(env.recommend(user_id=bob, k=K))
    clicked = before[0]
    env.post_events([view(bob, clicked, "click")])
    acked = time.monotonic()
    after = wait_until(
        lambda: (lambda got: got if clicked not in got else None)(
            items_of(env.recommend(user_id=bob, k=K))
        ),
        60,
        f"{clicked} (clicked) to leave bob's recommendations",
        poll_s=0.05,
    )
    print(f"click -> changed recommendation: {time.monotonic() - acked:.2f} s")
    assert after != before and clicked not in after and len(after) == K


def test_dismissal_counts_at_once_and_undo_brings_the_item_back(env: Env) -> None:
    erin = f"erin-{RUN}"
    history(env, erin, ["0481499", "1323594"])  # The Croods, Despicable Me
    first = items_of(env.recommend(user_id=erin, k=K))
    top = first[0]

    def feedback(undo: bool) -> None:
        r = env.call(
            "POST",
            "/v1/feedback",
            json={"user_id": erin, "action": "dismiss", "items": [top], "undo": undo},
        )
        # both go to Kafka: the dismissal as a dismiss event, the undo as undo_feedback
        assert r.status_code == 200 and r.json()["logged"] is True, r.text

    feedback(undo=False)
    # no waiting: the API wrote the dismissal to Redis before answering
    assert top not in items_of(env.recommend(user_id=erin, k=K))
    feedback(undo=True)
    assert items_of(env.recommend(user_id=erin, k=K))[0] == top


def test_anonymous_visitors_get_popular_then_session_based_items(env: Env) -> None:
    visitor = f"visitor-{RUN}"
    r = env.recommend(anonymous_id=visitor, k=5)
    assert r.status_code == 200 and r.json()["source"] == "popular"
    assert len(items_of(r)) == 5
    env.post_events(
        [
            {
                "event_id": uuid.uuid4().hex,
                "type": "item_view",
                "anonymous_id": visitor,
                "timestamp": now_iso(),
                "items": [{"item_id": "1853728"}],  # Django Unchained
            }
        ]
    )
    assert wait_for_item(env.redis, env.user(visitor), "1853728", env.store, timeout_s=60)
    r = env.recommend(anonymous_id=visitor, k=5)
    assert r.json()["source"] == "model" and "1853728" not in items_of(r)


def test_rest_and_grpc_clients_get_the_same_answer(env: Env) -> None:
    env.one_redis_only("it compares the model server's two protocols")
    import asyncio

    import numpy as np

    from attune.api.model_client import GrpcModelClient, RestModelClient

    query = {
        "user_id": np.array([env.user(f"alice-{RUN}")], dtype=object),
        "recent_items": np.array([DRAMAS[::-1]], dtype=object),
        "recent_times": np.array([[1_700_000_000 - 60 * i for i in range(len(DRAMAS))]]),
        "request_time": np.array([1_700_000_000], dtype=np.int64),
        "device": np.array(["mobile"], dtype=object),
        "placement": np.array(["home"], dtype=object),
        "segment": np.array([""], dtype=object),
    }
    s = env.cfg.serving

    async def both() -> list[dict[str, Any]]:
        grpc_client = GrpcModelClient(f"127.0.0.1:{s.grpc_port}")
        rest_client = RestModelClient(f"http://127.0.0.1:{s.rest_port}")
        try:
            out = []
            for client in (grpc_client, rest_client):
                retrieved = await client.predict("retrieval", query, timeout_s=30)
                cands = np.array([list(retrieved["item_ids"][0][:20])], dtype=object)
                ranked = await client.predict(
                    "ranking", {**query, "candidate_ids": cands}, timeout_s=30
                )
                out.append({**retrieved, "ranking": ranked["scores"]})
            return out
        finally:
            await grpc_client.close()
            await rest_client.close()

    via_grpc, via_rest = asyncio.run(both())
    assert via_grpc["item_ids"].shape == (1, 99)  # top_k 100, but the catalog has 99 items
    assert list(via_grpc["item_ids"][0]) == list(via_rest["item_ids"][0])
    # float32 on gRPC; REST writes float32 in shortest round-trip form, read back as float64
    np.testing.assert_allclose(via_grpc["scores"], via_rest["scores"], rtol=1e-6)
    np.testing.assert_allclose(via_grpc["ranking"], via_rest["ranking"], rtol=1e-6)


def test_the_api_over_rest_answers_from_the_model(env: Env) -> None:
    env.one_redis_only("it compares the API's two model-server protocols")
    # a user in the variant that ranks, so both models are called over REST
    weights = {"control": 1.0, "retrieval_only": 1.0}
    user = next(
        name
        for name in (f"rest{i}-{RUN}" for i in range(100))
        if assign_variant("recs", env.user(name), weights) == "control"
    )
    history(env, user, ["1663662", "1430132"])  # Pacific Rim, The Wolverine
    ms = env.cfg.api.model_server.model_copy(update={"protocol": "rest"})
    rest_cfg = env.cfg.model_copy(
        update={"api": env.cfg.api.model_copy(update={"port": free_port(), "model_server": ms})}
    )
    child = start_api(rest_cfg)
    try:
        body: dict[str, Any] = {"user_id": user, "k": K, "context": {"placement": "home"}}
        grpc_items = items_of(env.recommend(**body))
        r = httpx.post(
            f"{api_url(rest_cfg)}/v1/recommendations",
            json=body,
            headers={"X-Read-Key": env.read_key},
            timeout=30,
        )
        assert r.json()["variant"] == "control"
        assert r.json()["source"] == "model" and "degraded" not in r.json(), r.json()
        # The popularity prior is evaluated at the request time (seconds apart here), so close
        # scores may swap; the pin and most of the list must agree.
        rest_items = items_of(r)
        assert rest_items[0] == grpc_items[0] == PIN
        assert len(set(rest_items) & set(grpc_items)) >= K - 3
    finally:
        child.stop()


def test_read_keys_and_rate_limit(env: Env) -> None:
    env.one_redis_only("keys and rate-limit buckets live in the API process")
    body = {"anonymous_id": f"rl-{RUN}", "k": 1}
    r = httpx.post(f"{env.url}/v1/recommendations", json=body, timeout=30)
    assert r.status_code == 401 and "read key" in r.json()["error"]
    assert env.recommend(key="rk_wrong", **body).status_code == 401
    # "tight": 1 request/s, burst 2 -> two pass, the third (within milliseconds) waits ~1 s
    codes = [env.recommend(key=env.tight_key, **body) for _ in range(3)]
    assert [c.status_code for c in codes] == [200, 200, 429]
    assert codes[2].headers["retry-after"] == "1"
    assert "'tight'" in codes[2].json()["error"]
    time.sleep(1.1)
    assert env.recommend(key=env.tight_key, **body).status_code == 200


def test_non_personalized_responses_are_cacheable(env: Env) -> None:
    item = "1853728"
    views = env.store.keys
    env.redis.zadd(views.item_similar(item), {"1212450": 0.8, "1024648": 0.5})
    r = env.call("GET", f"/v1/similar/{item}", params={"k": 5})
    assert r.status_code == 200, r.text
    assert [i["item_id"] for i in r.json()["items"]] == ["1212450", "1024648"]
    assert r.json()["title"] == "Django Unchained"
    assert r.headers["cache-control"] == "public, max-age=300"
    etag = r.headers["etag"]
    again = env.call("GET", f"/v1/similar/{item}", params={"k": 5}, headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == etag
    env.redis.zadd(views.item_similar(item), {"1024648": 0.9})  # the nightly run changed it
    changed = env.call(
        "GET", f"/v1/similar/{item}", params={"k": 5}, headers={"If-None-Match": etag}
    )
    assert changed.status_code == 200 and changed.headers["etag"] != etag
    t = env.call("GET", "/v1/trending", params={"k": 3})
    assert t.status_code == 200 and t.headers["cache-control"] == "public, max-age=60"
    assert len(t.json()["items"]) == 3
    t304 = env.call(
        "GET", "/v1/trending", params={"k": 3}, headers={"If-None-Match": t.headers["etag"]}
    )
    assert t304.status_code in (200, 304)  # 200 only if an event landed in between


def test_content_slot_and_capped_messages(env: Env) -> None:
    dave = f"dave-{RUN}"
    r = env.call("POST", "/v1/content/home_banner", json={"user_id": dave})
    assert r.json() == {"slot": "home_banner", "variant": "welcome", "rule": 0, "segment": None}
    assert env.call("POST", "/v1/content/nope", json={"user_id": dave}).status_code == 404
    first = env.call("POST", "/v1/messages", json={"user_id": dave})
    assert first.json()["messages"] == [
        {"id": "rate_more", "text": "Rate a few more titles to sharpen your recommendations."}
    ]
    second = env.call("POST", "/v1/messages", json={"user_id": dave})
    assert second.json() == {"messages": [], "capped": ["rate_more"]}  # cap 1 per day
    bad = env.call("POST", "/v1/messages", json={"user": dave})
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "user"


def test_a_bandit_slot_shows_its_choice_with_the_propensity_it_logs(env: Env) -> None:
    # Stored state: trailer clicked 500 of 1,000 times, the two others 10 of 1,000. Their
    # Beta(501, 501) and Beta(11, 991) posteriors do not overlap, so Thompson sampling picks
    # trailer with probability 1; with the floor epsilon = 0.06 over 3 arms, by hand:
    # trailer 0.06 / 3 + 0.94 * 1 = 0.96, the others 0.06 / 3 = 0.02 each.
    key = env.store.keys.bandit("slot:hero")
    env.redis.hset(
        key,
        mapping={"n:trailer": 1000, "c:trailer": 500, "n:top_picks": 1000, "c:top_picks": 10}
        | {"n:default": 1000, "c:default": 10},
    )
    erin = f"erin-{RUN}"
    warm_up_impressions(env, env.url, "/v1/content/hero")  # run alone, the API just started
    answers = [
        env.call("POST", "/v1/content/hero", json={"user_id": erin}).json() for _ in range(3)
    ]
    for a in answers:
        assert a["policy"] == "thompson" and a["slot"] == "hero"
        assert a["arms"] == pytest.approx({"trailer": 0.96, "top_picks": 0.02, "default": 0.02})
        assert a["propensity"] == pytest.approx(a["arms"][a["variant"]])
    assert len({a["decision_id"] for a in answers}) == 3
    # every choice reached Kafka as an impression: the arm, its propensity, the policy
    ids = {a["decision_id"]: a for a in answers}
    impressions = kafka_events(
        env, lambda e: e.get("type") == "impression" and e.get("recommendation_id") in ids
    )
    deadline = time.monotonic() + 30
    while len(impressions) < 3 and time.monotonic() < deadline:
        impressions = kafka_events(
            env, lambda e: e.get("type") == "impression" and e.get("recommendation_id") in ids
        )
    assert len(impressions) == 3
    for imp in impressions:
        answer = ids[imp["recommendation_id"]]
        assert imp["context"]["placement"] == "slot:hero"
        assert imp["user_id"] == env.user(erin)
        (item,) = imp["items"]
        assert (item["item_id"], item["position"]) == (answer["variant"], 0)
        assert item["propensity"] == pytest.approx(answer["propensity"])


def test_killing_the_model_server_switches_to_the_fallback(env: Env) -> None:
    carol = f"carol-{RUN}"
    history(env, carol, ["1300854", "1535108"])  # Iron Man 3, Elysium
    batch = [
        "1408101",
        "1343092",
        "1670345",
    ]  # Star Trek Into Darkness, The Great Gatsby, Now You See Me
    env.redis.zadd(
        env.store.keys.user_recs(env.user(carol)),
        {batch[0]: 3, batch[1]: 2, batch[2]: 1},
    )
    assert env.recommend(user_id=carol, k=5).json()["source"] == "model"

    env.models[0].kill()
    first = env.recommend(user_id=carol, k=5)
    assert first.status_code == 200
    assert first.json()["source"] == "batch" and first.json()["degraded"] == "retrieval unavailable"
    assert items_of(first)[:3] == batch
    env.recommend(user_id=carol, k=5)  # second consecutive failure: the breaker opens
    third = env.recommend(user_id=carol, k=5).json()
    assert third["source"] == "batch" and third["degraded"] == "retrieval circuit_open"
    ready = httpx.get(f"{env.url}/readyz", timeout=10).json()
    assert ready["ready"] is True and ready["model_server"]["breaker"] in ("open", "half_open")
    # a user without batch recommendations still gets an answer
    nobody = env.recommend(anonymous_id=f"ghost-{RUN}", k=3)
    assert nobody.status_code == 200 and len(items_of(nobody)) == 3

    env.models[0] = start_model_server(env.cfg)
    wait_until(
        lambda: env.recommend(user_id=carol, k=5).json()["source"] == "model",
        60,
        "the API to use the restarted model server (half-open trial, then closed)",
    )
    assert httpx.get(f"{env.url}/readyz", timeout=10).json()["model_server"]["breaker"] == "closed"


def test_a_message_bandit_shows_one_message_with_the_propensity_it_logs(env: Env) -> None:
    # A second API over the same stores, with api.message_bandit (the module's API answers
    # messages without one: test_content_slot_and_capped_messages). Three messages for anyone:
    # m_capped was shown an hour ago (cap 1 per day): capped, no arm. m_bad has two showings
    # from two days ago, outside its 1-day window (cap 3): still an arm, so the window is
    # counted as the cap script counts it. m_good clicked 500 of 1,000 times, m_bad 10 of
    # 1,000: Beta(501, 501) and Beta(11, 991) do not overlap, so Thompson sampling picks m_good
    # with probability 1; with the floor epsilon = 0.1 over the 2 arms, by hand: m_good
    # 0.1 / 2 + 0.9 * 1 = 0.95, m_bad 0.1 / 2 = 0.05.
    messages = [
        MessageConfig(id="m_capped", text="capped", priority=2, cap=1),
        MessageConfig(id="m_good", text="good", priority=1, cap=10),
        MessageConfig(id="m_bad", text="bad", cap=3),
    ]
    cfg = env.cfg.model_copy(
        update={
            "api": env.cfg.api.model_copy(
                update={
                    "port": free_port(),
                    "messages": messages,
                    "message_bandit": BanditConfig(policy="thompson", epsilon=0.1),
                }
            )
        }
    )
    frank = f"frank-{RUN}"
    keys = env.store.keys
    now_ms = int(time.time() * 1000)
    env.redis.zadd(keys.message_cap(env.user(frank), "m_capped"), {"s0": now_ms - 3_600_000})
    two_days_ago = now_ms - 2 * 86_400_000
    env.redis.zadd(keys.message_cap(env.user(frank), "m_bad"), {"s1": two_days_ago, "s2": 1})
    env.redis.hset(
        keys.bandit("messages"),
        mapping={"n:m_good": 1000, "c:m_good": 500, "n:m_bad": 1000, "c:m_bad": 10},
    )
    child = start_api(cfg)
    try:
        warm_up_impressions(env, child.url, "/v1/messages")
        answers = []
        for _ in range(3):
            r = httpx.post(
                f"{child.url}/v1/messages",
                json={"user_id": frank, "max": 3},
                headers={"X-Read-Key": env.read_key},
                timeout=30,
            )
            assert r.status_code == 200, r.text
            answers.append(r.json())
    finally:
        child.stop()
    texts = {"m_good": "good", "m_bad": "bad"}
    for a in answers:
        assert a["policy"] == "thompson" and a["capped"] == ["m_capped"]
        assert a["arms"] == pytest.approx({"m_good": 0.95, "m_bad": 0.05})
        (shown,) = a["messages"]  # one message, though max is 3
        assert shown["text"] == texts[shown["id"]]
        assert a["propensity"] == pytest.approx(a["arms"][shown["id"]])
    assert len({a["decision_id"] for a in answers}) == 3
    # the cap was taken for the chosen message only: one showing per answer in the last day
    chosen = [a["messages"][0]["id"] for a in answers]
    for m in ("m_good", "m_bad", "m_capped"):  # m_capped: its seeded showing is older
        key = keys.message_cap(env.user(frank), m)
        assert env.redis.zcount(key, now_ms - 1000, "+inf") == chosen.count(m)
    # every choice reached Kafka as an impression: the message, its propensity, the policy
    ids = {a["decision_id"]: a for a in answers}

    def ours(e: dict[str, Any]) -> bool:
        return e.get("type") == "impression" and e.get("recommendation_id") in ids

    impressions = kafka_events(env, ours)
    deadline = time.monotonic() + 30
    while len(impressions) < 3 and time.monotonic() < deadline:
        impressions = kafka_events(env, ours)
    assert len(impressions) == 3
    for imp in impressions:
        answer = ids[imp["recommendation_id"]]
        assert imp["context"]["placement"] == "messages"
        assert imp["user_id"] == env.user(frank)
        (item,) = imp["items"]
        assert (item["item_id"], item["position"]) == (answer["messages"][0]["id"], 0)
        assert item["propensity"] == pytest.approx(answer["propensity"])


def test_a_bandit_experiment_keeps_each_users_variant_and_logs_its_first_decision(
    env: Env, tmp_path: Path
) -> None:
    # A second API over the same stores whose experiments file holds one experiment, "arms",
    # whose variants a Thompson-sampling bandit allocates (allocation.bandit, epsilon 0.1).
    # Stored state: control clicked 500 of 1,000 times, treatment 10 of 1,000: Beta(501, 501)
    # and Beta(11, 991) do not overlap, so the bandit picks control with probability 1; with
    # the floor over the 2 variants, by hand: control 0.1 / 2 + 0.9 = 0.95, treatment 0.05.
    exp_file = tmp_path / "experiments.yaml"
    exp_file.write_text(
        yaml.safe_dump(
            {
                "experiments": [
                    {
                        "id": "arms",
                        "hypothesis": "a bandit finds the better variant sooner",
                        "layer": "banner",
                        "variants": {"control": {}, "treatment": {"ranking": False}},
                        "allocation": {"bandit": {"epsilon": 0.1}},
                    }
                ]
            }
        )
    )
    cfg = AttuneConfig.model_validate(
        env.cfg.model_copy(
            update={
                "api": env.cfg.api.model_copy(update={"port": free_port()}),
                "experiments": env.cfg.experiments.model_copy(update={"file": exp_file}),
            }
        ).model_dump()
    )
    keys = env.store.keys
    env.redis.hset(
        keys.bandit("experiment:arms"),
        mapping={"n:control": 1000, "c:control": 500, "n:treatment": 1000, "c:treatment": 10},
    )
    started = datetime.now(UTC)
    decls = load_experiments(exp_file)
    state = StateStore.from_config(cfg)
    state.apply(lambda states: plan_start(decls, states, "arms", started), started)
    gina = f"gina-{RUN}"
    sticky = keys.user_experiment_variant(env.user(gina), "arms")
    child = start_api(cfg)

    def recommend(user: str) -> dict[str, Any]:
        r = httpx.post(
            f"{child.url}/v1/recommendations",
            json={"user_id": user, "k": 5},
            headers={"X-Read-Key": env.read_key},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    try:
        warm_up_impressions(env, child.url)
        answers = [recommend(gina) for _ in range(2)]
    finally:
        child.stop()
        env.redis.hdel(keys.experiments_state, "arms")
    first, second = answers
    variant = first["variant"]
    assert variant in ("control", "treatment") and first["experiment"] == "arms"
    # the second request got the stored variant; both lists name the experiment and variant
    assert second["variant"] == variant
    for a in answers:
        assert a["recommendation_id"].startswith(f"arms:{variant}:")
    stored = orjson.loads(env.redis.get(sticky) or b"{}")
    expected = {"control": 0.95, "treatment": 0.05}[variant]
    assert stored["v"] == variant and stored["p"] == pytest.approx(expected, abs=1e-6)

    # one decision impression, at the first exposure: the variant with its propensity, the
    # policy as the placement, the decision id as the recommendation id
    def decisions(e: dict[str, Any]) -> bool:
        return (
            e.get("type") == "impression"
            and e.get("user_id") == env.user(gina)
            and (e.get("context") or {}).get("placement") == "experiment:arms"
        )

    def lists(e: dict[str, Any]) -> bool:
        return (
            e.get("type") == "impression"
            and e.get("recommendation_id") == (second["recommendation_id"])
        )

    found = kafka_events(env, decisions)
    deadline = time.monotonic() + 30
    while not found and time.monotonic() < deadline:
        found = kafka_events(env, decisions)
    if second["items"]:  # the second request's own impression is in, so any decision of it too
        assert kafka_events(env, lists)
    else:
        time.sleep(3)
    found = kafka_events(env, decisions)
    assert len(found) == 1, found
    (imp,) = found
    assert imp["recommendation_id"] == stored["d"]
    (item,) = imp["items"]
    assert (item["item_id"], item["position"]) == (variant, 0)
    assert item["propensity"] == pytest.approx(expected, abs=1e-6)
    # erasure deletes the stored variant with the user's other keys
    assert delete_user(env.redis, env.user(gina), env.store) >= 1
    assert not env.redis.exists(sticky)
