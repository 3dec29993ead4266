"""The speed layer end to end: events posted through the collector -> Kafka -> Spark -> Redis
features and Delta bronze, with values worked out by hand; malformed records -> quarantine.

The speed layer runs in this process on the tests' Spark session; the collector is a real
``attune serve collector`` child process. Everything (topics, Redis db and key prefix, lake,
checkpoints) belongs to this module.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import pytest
import redis
from kafka import KafkaProducer

from attune.collector.process import collector_process
from attune.config import AttuneConfig
from attune.online_store import (
    OnlineStore,
    read_popular,
    read_trending,
    read_user_features,
)
from attune.replay import publish_catalog
from attune.secrets import create_write_key
from attune.stack import create_topics
from speed_layer.job import speed_paths
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

pytestmark = pytest.mark.integration

RUN = uuid.uuid4().hex[:8]
REDIS_DB = 10
T0 = "2013-03-01T12:00:00Z"
T0_MS = 1362139200000  # date -u -d 2013-03-01T12:00:00Z +%s, in ms
MIN = 60_000


def at(minutes: int) -> str:
    """T0 + ``minutes`` as ISO 8601 (T0 is 12:00, so this is plain clock arithmetic)."""
    total = 12 * 60 + minutes
    return f"2013-03-01T{total // 60:02d}:{total % 60:02d}:00Z"


@dataclass
class Env:
    cfg: AttuneConfig
    url: str
    key: str
    secret: bytes
    store: OnlineStore
    redis: redis.Redis
    spark: Any

    def post(self, events: list[dict[str, Any]]) -> dict[str, Any]:
        r = httpx.post(
            f"{self.url}/v1/events", json=events, headers={"X-Write-Key": self.key}, timeout=30
        )
        assert r.status_code == 200, r.text
        return r.json()  # type: ignore[no-any-return]

    def bronze(self) -> Any:
        return self.spark.read.format("delta").load(speed_paths(self.cfg).bronze)

    def quarantine(self) -> Any:
        return self.spark.read.format("delta").load(speed_paths(self.cfg).quarantine)


@pytest.fixture(scope="module", params=["redis", "redis-cluster"])
def env(
    cfg: AttuneConfig,
    spark: Any,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Iterator[Env]:
    """The whole loop (collector -> Kafka -> the speed layer in this process -> Redis), once on
    one Redis and once on a Redis Cluster of 3 masters (``redis_cluster``)."""
    cluster = request.param == "redis-cluster"
    test_cfg = speed_config(
        cfg,
        suffix=f"test-speed-{'c' if cluster else ''}{RUN}",
        var_dir=tmp_path_factory.mktemp("speed-var"),
        redis_db=REDIS_DB,
        features={
            "affinity_half_life": timedelta(hours=1),
            "ignore_min_impressions": 1,
        },
    )
    # two bandit slots (their impressions and clicks are counted for the policies, not the items)
    api = test_cfg.api.model_dump()
    api["content_slots"] = {
        "hero": [{"variant": "trailer", "max_events": 1000}, {"variant": "poster"}],
        "tile": [{"variant": "a", "max_events": 1000}, {"variant": "b"}],
    }
    api["bandits"] = {
        "hero": {"policy": "thompson"},
        "tile": {"policy": "linucb", "segments": ["new", "active"]},
    }
    test_cfg = AttuneConfig.model_validate({**test_cfg.model_dump(), "api": api})
    if cluster:
        seed = request.getfixturevalue("redis_cluster").redis
        test_cfg = test_cfg.model_copy(update={"redis": seed})
    secret = write_secret(test_cfg)
    key = create_write_key(test_cfg, "it-speed")
    create_topics(test_cfg)
    publish_catalog(
        test_cfg,
        [
            {"item_id": "m1", "title": "One", "year": 1999, "genres": ["Drama", "Comedy"]},
            {"item_id": "m2", "title": "Two", "year": 2001, "genres": ["Drama"]},
            {"item_id": "m3", "title": "Three", "year": 2003, "genres": ["Horror"]},
        ],
    )
    r = redis_client(test_cfg)
    store = OnlineStore.from_config(test_cfg)
    try:
        with collector_process(test_cfg) as url, speed_layer_thread(test_cfg, spark):
            yield Env(test_cfg, url, key, secret, store, r, spark)
    finally:
        delete_prefix(r, store.prefix)
        r.close()
        delete_topics(test_cfg)


def event(eid: str, etype: str, minutes: int, item: str | None, **extra: Any) -> dict[str, Any]:
    e: dict[str, Any] = {
        "event_id": f"{eid}-{RUN}",
        "type": etype,
        "user_id": f"alice-{RUN}",
        "timestamp": at(minutes),
        "session_id": "s1",
        **extra,
    }
    if item:
        e["items"] = [{"item_id": item}]
    return e


def test_scripted_session_reaches_redis_with_hand_computed_features(env: Env) -> None:
    session = [
        event("e1", "item_view", 0, "m1"),
        event("e2", "item_view", 30, "m2"),
        event("e3", "add_to_cart", 60, "m2"),
        event("e4", "purchase", 120, "m2", order_id="o1"),
        event("e5", "impression", 121, "m3"),
        event("e6", "dismiss", 122, "m3"),
    ]
    bob = {
        "event_id": f"b1-{RUN}",
        "type": "item_view",
        "user_id": f"bob-{RUN}",
        "timestamp": at(0),
        "items": [{"item_id": "m1"}],
        "consent": {"personalization": False},
    }
    assert env.post([*session, bob])["accepted"] == 7
    assert env.post([session[0]])["accepted"] == 1  # a client retry: the same event again
    late = event("e7", "item_view", -60, "m1")  # happened an hour before e1, arrives last
    assert env.post([late])["accepted"] == 1

    user = pseudo(env.secret, f"alice-{RUN}")
    f = wait_until(
        lambda: (
            (x := read_user_features(env.redis, user, env.store)).counters.get("events") == 7 and x
        ),
        180,
        "alice's 7 distinct events in Redis",
    )
    # Recency by event time: m2 last touched by the purchase at +120, m1 by e1 at +0 (the late
    # view at -60 is older); the impression and the dismissal of m3 are not interactions.
    assert f.recent_item_ids == ["m2", "m1"]
    assert [(r.type, r.event_ms) for r in f.recent] == [
        ("purchase", T0_MS + 120 * MIN),
        ("item_view", T0_MS),
    ]
    # Affinities as of alice's last event (+122 min), half-life 60 min, default weights
    # (item_view 1, add_to_cart 3, purchase 5, dismiss -2, impression 0):
    #   Drama  = e1 2^(-122/60) + e2 2^(-92/60) + 3 e3 2^(-62/60) + 5 e4 2^(-2/60) + e7 2^(-182/60)
    #   Comedy = e1 2^(-122/60) + e7 2^(-182/60)
    #   Horror = -2 (the dismissal, at as-of time)
    drama = 2 ** (-122 / 60) + 2 ** (-92 / 60) + 3 * 2 ** (-62 / 60) + 5 * 2 ** (-2 / 60)
    drama += 2 ** (-182 / 60)
    comedy = 2 ** (-122 / 60) + 2 ** (-182 / 60)
    assert f.as_of_ms == T0_MS + 122 * MIN
    assert set(f.affinities) == {"Drama", "Comedy", "Horror"}
    assert math.isclose(f.affinities["Drama"], drama, rel_tol=1e-6)  # ~ 6.90
    assert math.isclose(f.affinities["Comedy"], comedy, rel_tol=1e-6)  # ~ 0.37
    assert math.isclose(f.affinities["Horror"], -2.0, rel_tol=1e-6)
    # Counters: 3 views (e1, e2, e7; the retry of e1 is not counted twice), 1 cart, 1 purchase.
    assert (f.views, f.carts, f.purchases) == (3, 1, 1)
    assert f.counters == {
        "item_view": 3,
        "add_to_cart": 1,
        "purchase": 1,
        "impression": 1,
        "dismiss": 1,
        "events": 7,
    }
    assert (f.first_event_ms, f.last_event_ms) == (T0_MS - 60 * MIN, T0_MS + 122 * MIN)
    assert f.session is not None
    assert (f.session.session_id, f.session.events) == ("s1", 7)
    assert (f.session.start_ms, f.session.last_ms) == (T0_MS - 60 * MIN, T0_MS + 122 * MIN)
    assert (f.session.last_item, f.session.last_type) == ("m3", "dismiss")
    # Negative feedback: m3 dismissed; Horror shown once, never engaged with (threshold 1).
    assert f.dismissed_items == ["m3"]
    assert f.ignored_genres == ["Horror"]
    assert f.engagements_by_genre == {"Drama": 5, "Comedy": 2}
    # bob did not consent to personalization: nothing about him in Redis, nothing counted.
    assert read_user_features(env.redis, pseudo(env.secret, f"bob-{RUN}"), env.store).is_empty
    # Popularity: m2 viewed, carted, bought (3); m1 viewed twice by alice (bob's view is out).
    assert read_popular(env.redis, env.store) == [("m2", 3), ("m1", 2)]
    # Trending, as of the latest event (+122 min). 1 h window of 5-min slices: the slices after
    # +60 (+122 is in slice 24 after T0's, the window is 13..24): only the purchase (slice 24).
    wait_until(lambda: read_trending(env.redis, env.store, 3600), 30, "trending refresh")
    assert read_trending(env.redis, env.store, 3600) == [("m2", 1)]
    # 24 h window of 2 h slices: all of it.
    assert read_trending(env.redis, env.store, 86400) == [("m2", 3), ("m1", 2)]
    # The catalog mirror the personalization API reads.
    meta = env.redis.hgetall(env.store.keys.item_meta("m1"))
    assert meta == {b"title": b"One", b"year": b"1999", b"genres": b'["Drama","Comedy"]'}

    # Bronze: every distinct accepted event once (8: alice's 7 and bob's), bob's included
    # (speed.no_personalization_consent: store) with his pseudonym, partitioned by event date.
    def bronze_ids() -> list[str]:
        rows = env.bronze().where(f"event_id LIKE '%-{RUN}'").collect()
        return sorted(r["event_id"] for r in rows)

    expected_ids = sorted([f"e{i}-{RUN}" for i in range(1, 8)] + [f"b1-{RUN}"])
    wait_until(lambda: bronze_ids() == expected_ids, 120, "8 bronze rows")
    time.sleep(3)  # one more bronze batch: still no duplicate of e1
    assert bronze_ids() == expected_ids
    dates = {r["event_date"].isoformat() for r in env.bronze().select("event_date").collect()}
    assert dates == {"2013-03-01"}


def test_malformed_record_is_quarantined_and_the_query_keeps_running(env: Env) -> None:
    topic = env.cfg.kafka.topic("events").name
    producer = KafkaProducer(bootstrap_servers=env.cfg.kafka.bootstrap_servers)
    try:
        meta = producer.send(topic, key=b"intruder", value=b'{"event_id": "x", oops').get(30)
    finally:
        producer.close()

    def quarantined() -> list[Any]:
        return (
            env.quarantine()
            .where(f"kafka_partition = {meta.partition} AND kafka_offset = {meta.offset}")
            .collect()
        )

    (row,) = wait_until(quarantined, 120, "the malformed record in quarantine")
    assert row["reason"] == "value is not valid JSON"
    assert row["value_text"] == '{"event_id": "x", oops'
    assert row["kafka_key"] == "intruder"
    # Both queries are still running: a valid event posted now reaches Redis and bronze.
    after = event("after", "item_view", 200, "m1", user_id=f"carol-{RUN}")
    env.post([after])
    carol = pseudo(env.secret, f"carol-{RUN}")
    wait_until(
        lambda: read_user_features(env.redis, carol, env.store).recent_item_ids == ["m1"],
        120,
        "carol's view in Redis",
    )
    wait_until(
        lambda: env.bronze().where(f"event_id = 'after-{RUN}'").count() == 1,
        120,
        "carol's view in bronze",
    )


def test_live_experiment_counts_and_interleaving_teams(env: Env) -> None:
    from attune.experiments.live import read_live_counts

    dana, erin = f"dana-{RUN}", f"erin-{RUN}"
    shown = [
        {"item_id": "m1", "position": 0, "team": "control"},
        {"item_id": "m2", "position": 1, "team": "ranker2"},
    ]
    rid_d, rid_e = f"x{RUN}:interleaved:r1", f"x{RUN}:interleaved:r2"
    events = [
        event("l1", "impression", 300, None, user_id=dana, recommendation_id=rid_d, items=shown),
        event("l2", "rec_click", 301, "m2", user_id=dana, recommendation_id=rid_d),
        event("l3", "purchase", 302, "m2", user_id=dana, recommendation_id=rid_d, order_id="o"),
        event("l4", "impression", 303, None, user_id=erin, recommendation_id=rid_e, items=shown),
        # no personalization consent: the online store never sees it, so it is not counted
        {
            **event("l5", "impression", 304, None, user_id=f"frank-{RUN}", items=shown),
            "recommendation_id": f"x{RUN}:interleaved:r3",
            "consent": {"personalization": False},
        },
    ]
    assert env.post(events)["accepted"] == 5
    assert env.post([events[0]])["accepted"] == 1  # a client retry: counted once
    # Worked out: impressions l1 and l4 (2, by dana and erin), the click l2, the purchase l3.
    want = {"impressions": 2, "clicks": 1, "purchases": 1, "users": 2}
    got = wait_until(
        lambda: (
            (c := read_live_counts(env.redis, env.store.keys, "2013-03-01"))
            .get(f"x{RUN}", {})
            .get("interleaved")
            == want
            and c
        ),
        120,
        "the live counts of the interleaving experiment",
    )
    assert set(got[f"x{RUN}"]) == {"interleaved"}
    # Bronze keeps each shown item's team (the event schema's Item.team).
    wait_until(
        lambda: env.bronze().where(f"event_id = 'l1-{RUN}'").count() == 1, 120, "l1 in bronze"
    )
    (row,) = env.bronze().where(f"event_id = 'l1-{RUN}'").collect()
    assert [(i["item_id"], i["team"]) for i in row["items"]] == [
        ("m1", "control"),
        ("m2", "ranker2"),
    ]


def test_bandit_impressions_and_clicks_reach_the_policy_state_once(env: Env) -> None:
    """The API's slot impressions (the arm as the one item, placement ``slot:<slot>``) and the
    app's clicks on them update the policies' state in Redis; a client retry counts once;
    the arms stay out of the item features (a clicked banner variant is no trending title)."""
    from attune.bandits.store import decode_beta_state, decode_history, decode_linear_state

    gina, hank = f"gina-{RUN}", f"hank-{RUN}"
    # the batch layer's segment of gina (what the API decided with): the LinUCB context
    env.redis.hset(env.store.keys.user_batch(pseudo(env.secret, gina)), "segment", "active")

    def slot(eid: str, etype: str, minutes: int, user: str, arm: str, s: str) -> dict[str, Any]:
        return event(
            eid,
            etype,
            minutes,
            None,
            user_id=user,
            items=[{"item_id": arm, "position": 0, "propensity": 0.5}],
            recommendation_id=f"d-{eid}",
            context={"placement": f"slot:{s}"},
        )

    events = [
        slot("b1", "impression", 400, gina, "trailer", "hero"),
        slot("b2", "impression", 401, hank, "poster", "hero"),
        slot("b3", "rec_click", 402, gina, "trailer", "hero"),
        slot("b4", "impression", 403, gina, "a", "tile"),
        slot("b5", "rec_click", 404, gina, "a", "tile"),
        slot("b6", "impression", 405, hank, "b", "tile"),
    ]
    assert env.post(events)["accepted"] == 6
    assert env.post([events[2]])["accepted"] == 1  # a client retry of the click: counted once
    keys = env.store.keys

    def hero() -> Any:
        return decode_beta_state(env.redis.hgetall(keys.bandit("slot:hero")), ("trailer", "poster"))

    state = wait_until(
        lambda: (s := hero()).impressions == (1, 1) and s.clicks == (1, 0) and s,
        120,
        "the hero slot's impressions and click in Redis",
    )
    names = ("bias", "segment=new", "segment=active")
    tile = wait_until(
        lambda: (
            (
                t := decode_linear_state(
                    env.redis.hgetall(keys.bandit("slot:tile")), ("a", "b"), names
                )
            ).impressions
            == (1, 1)
            and t
        ),
        60,
        "the tile slot's statistics",
    )
    # gina is "active": x = [1, 0, 1]; hank has no segment: x = [1, 0, 0]
    assert tile.clicks == (1, 0)
    assert tile.xx[0].tolist() == [[1, 0, 1], [0, 0, 0], [1, 0, 1]]
    assert tile.xr[0].tolist() == [1, 0, 1]
    assert tile.xx[1].tolist() == [[1, 0, 0], [0, 0, 0], [0, 0, 0]]
    # the hour of T0 + 400 min = 18:40 is 18:00 = T0 + 6 h
    history = decode_history(env.redis.hgetall(keys.bandit_history("slot:hero")))
    assert {(h - T0_MS, a): (c.impressions, c.clicks) for (h, a), c in history.items()} == {
        (6 * 3_600_000, "trailer"): (1, 1),
        (6 * 3_600_000, "poster"): (1, 0),
    }
    time.sleep(3)  # another online batch or two: the retry must not have counted
    assert hero() == state
    # arms are no catalog items: not in gina's recent items, not trending, not popular
    feats = read_user_features(env.redis, pseudo(env.secret, gina), env.store)
    assert not {"trailer", "a"} & set(feats.recent_item_ids)
    assert not {"trailer", "a"} & {i for i, _ in read_popular(env.redis, env.store, 100)}
