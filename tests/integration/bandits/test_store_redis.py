"""The bandit store's update script against the real Redis: counts and linear statistics add up,
a replayed batch is skipped, a refused update changes nothing, and a decision's read is one
``HGETALL`` (sync or asyncio pipeline).

Keys live under this run's own key prefix in Redis db 3 and are deleted afterwards. The expected
sums are worked out by hand from the observations (see each test)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import redis
import redis.asyncio as aioredis

from attune.bandits.policies import (
    BetaState,
    FeatureLayout,
    LinearState,
    Observation,
    update_linear,
)
from attune.bandits.store import BanditStore, decode_beta_state, queue_read
from attune.config import AttuneConfig
from attune.keys import Keys
from tests.integration.bandits.conftest import REDIS_DB

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

ARMS = ("welcome", "drama_picks", "default")


@pytest.fixture
def store(client: redis.Redis, keys: Keys) -> BanditStore:
    return BanditStore(client, keys)


def test_counts_add_up_and_a_replayed_batch_is_skipped(store: BanditStore) -> None:
    policy = "slot:home_banner"
    assert store.apply(policy, BetaState(ARMS, (10, 0, 4), (1, 0, 0)), writer="q1", batch_id=0)
    assert store.apply(policy, BetaState(ARMS, (5, 2, 0), (0, 1, 1)), writer="q1", batch_id=1)
    # the speed layer restarts and replays batch 1: skipped, nothing counted twice
    assert not store.apply(policy, BetaState(ARMS, (5, 2, 0), (0, 1, 1)), writer="q1", batch_id=1)
    # another writer (a new checkpoint, so a new query id) starts its own numbering
    assert store.apply(policy, BetaState(ARMS, (1, 0, 0), (0, 0, 0)), writer="q2", batch_id=0)
    # without a writer every delivery counts (not idempotent)
    assert store.apply(policy, BetaState(ARMS, (0, 0, 1), (0, 0, 0)))
    state = store.read_beta(policy, ARMS)
    # welcome 10 + 5 + 1 = 16 imp., 1 click; drama_picks 0 + 2 = 2, 1; default 4 + 0 + 1 = 5, 0 + 1
    assert state.impressions == (16, 2, 5)
    assert state.clicks == (1, 1, 1)
    raw = store.read(policy)
    assert raw[b"batch:q1"] == b"1" and raw[b"batch:q2"] == b"0"


def test_linear_statistics_add_up_by_hand(store: BanditStore) -> None:
    layout = FeatureLayout(segments=("s1", "s2"))
    names = layout.names
    x1, x2 = layout.vector("s1"), layout.vector("s2")  # [1, 1, 0], [1, 0, 1]
    empty = LinearState.empty(ARMS, names)
    policy = "slot:home_banner"
    # impression of welcome for s1, its click later; an impression of welcome for s2
    store.apply(policy, update_linear(empty, [Observation("welcome", x1, 1, 0)]))
    store.apply(policy, update_linear(empty, [Observation("welcome", x1, 0, 1)]))
    store.apply(policy, update_linear(empty, [Observation("welcome", x2, 1, 0)]))
    # halves and quarters are exact in binary, so the stored doubles are exact too
    store.apply(
        policy, update_linear(empty, [Observation("default", np.array([0.5, 0.25, 0]), 1, 1)])
    )
    state = store.read_linear(policy, ARMS, names)
    # welcome: xx = x1 x1' + x2 x2' = [[2,1,1],[1,1,0],[1,0,1]]; xr = x1 = [1,1,0]
    assert state.xx[0].tolist() == [[2, 1, 1], [1, 1, 0], [1, 0, 1]]
    assert state.xr[0].tolist() == [1, 1, 0]
    # default: xx = [[.25,.125,0],[.125,.0625,0],[0,0,0]]; xr = [.5,.25,0]
    assert state.xx[2].tolist() == [[0.25, 0.125, 0], [0.125, 0.0625, 0], [0, 0, 0]]
    assert state.xr[2].tolist() == [0.5, 0.25, 0]
    assert not state.xx[1].any() and not state.xr[1].any()
    assert (state.impressions, state.clicks) == ((2, 0, 1), (1, 0, 1))


def test_another_feature_layout_is_refused_and_changes_nothing(store: BanditStore) -> None:
    policy = "messages"
    old = FeatureLayout(segments=("s1",))
    store.apply(
        policy,
        update_linear(
            LinearState.empty(ARMS, old.names), [Observation("welcome", old.vector("s1"))]
        ),
    )
    before = store.read(policy)
    new = FeatureLayout(segments=("s1", "s2"))
    delta = update_linear(
        LinearState.empty(ARMS, new.names), [Observation("welcome", new.vector("s1"))]
    )
    with pytest.raises(redis.ResponseError, match="feature layout changed"):
        store.apply(policy, delta)
    assert store.read(policy) == before  # not even the counts moved
    with pytest.raises(ValueError, match="feature layout changed"):
        store.read_linear(policy, ARMS, new.names)
    assert store.reset(policy)
    assert store.apply(policy, delta)
    assert store.read_linear(policy, ARMS, new.names).impressions == (1, 0, 0)


def test_apply_all_and_one_round_trip_reads(store: BanditStore, cfg: AttuneConfig) -> None:
    applied = store.apply_all(
        {
            "slot:a": BetaState(ARMS, (3, 0, 0), (1, 0, 0)),
            "slot:b": BetaState(ARMS, (0, 7, 0), (0, 2, 0)),
        },
        writer="q1",
        batch_id=5,
    )
    assert applied == {"slot:a": True, "slot:b": True}
    # the API's way: queued with the request's other reads, on the asyncio client
    keys = store.keys

    async def read() -> list:
        r = aioredis.Redis(host=cfg.redis.host, port=cfg.redis.port, db=REDIS_DB)
        try:
            pipe = r.pipeline(transaction=False)
            pipe.ping()
            queue_read(pipe, keys, "slot:b")
            return list(await pipe.execute())
        finally:
            await r.aclose()

    _, raw = asyncio.run(read())
    state = decode_beta_state(raw, ARMS)
    assert (state.impressions, state.clicks) == ((0, 7, 0), (0, 2, 0))
