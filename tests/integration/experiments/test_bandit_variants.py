"""Bandit-allocated experiment variants on the real Redis: the stored variant is read in the
request's one round trip, a first request decides and stores it, later requests keep it, two
concurrent first requests agree on what the set-if-absent script kept, and erasure deletes it.

Keys live under this module's own key prefix in Redis db 8 and are deleted afterwards.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta

import orjson
import pytest
import redis
import redis.asyncio as aioredis

from attune.api.recommender import Recommender, RecRequest
from attune.api.store import ApiStore
from attune.config import AttuneConfig
from attune.experiments.assignment import Assigner
from attune.experiments.bandit import StoredVariant, policy_name
from attune.experiments.spec import ExperimentsFile, parse_experiments
from attune.experiments.state import RunningState, declared_allocations
from attune.online_store import OnlineStore, delete_user, user_key_names

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

REDIS_DB = 8  # shared with test_state_redis; the key prefix is this run's own
NOW_S = 1_764_892_800.0  # 2025-12-05T00:00:00Z


def declarations(epsilon: float = 0.1, policy: str = "thompson") -> ExperimentsFile:
    return parse_experiments(
        {
            "experiments": [
                {
                    "id": "arms",
                    "hypothesis": "h",
                    "layer": "recs",
                    "variants": {"control": {}, "treatment": {"ranking": False}},
                    "allocation": {"bandit": {"epsilon": epsilon, "policy": policy}},
                }
            ]
        }
    )


def running(d: ExperimentsFile) -> dict[str, RunningState]:
    since = datetime.fromtimestamp(NOW_S, UTC) - timedelta(days=1)
    return {"arms": RunningState("arms", "running", since, declared_allocations(d)["arms"])}


@pytest.fixture
def test_cfg(cfg: AttuneConfig) -> Iterator[AttuneConfig]:
    prefix = f"tb{uuid.uuid4().hex[:8]}"
    out = AttuneConfig.model_validate(
        cfg.model_copy(
            update={
                "redis": cfg.redis.model_copy(update={"db": REDIS_DB}),
                "speed": cfg.speed.model_copy(
                    update={
                        "online_store": cfg.speed.online_store.model_copy(
                            update={"key_prefix": prefix}
                        )
                    }
                ),
            }
        ).model_dump()
    )
    yield out
    r = redis.Redis(host=out.redis.host, port=out.redis.port, db=REDIS_DB)
    found = list(r.scan_iter(match=f"{prefix}:*", count=1000))
    if found:
        r.delete(*found)
    r.close()


def make(test_cfg: AttuneConfig, d: ExperimentsFile) -> tuple[Recommender, ApiStore]:
    r = test_cfg.redis
    store = ApiStore(test_cfg, aioredis.Redis(host=r.host, port=r.port, db=r.db))
    rec = Recommender(test_cfg, store, None, clock=lambda: NOW_S)  # type: ignore[arg-type]
    rec.set_experiments(Assigner(d, running(d)))
    return rec, store


def run_closing(
    scenario: Callable[[], Awaitable[None]], store: ApiStore, *clients: redis.Redis
) -> None:
    """Run ``scenario`` in a new event loop, then close the API store's client (in that loop)
    and ``clients``, however it ended."""

    async def main() -> None:
        try:
            await scenario()
        finally:
            await store.close()

    try:
        asyncio.run(main())
    finally:
        for client in clients:
            client.close()


async def resolve(rec: Recommender, subject: str) -> tuple[str, list[tuple[str, StoredVariant]]]:
    """What one request of ``subject`` does: the one read, then the assignment."""
    wanted = rec.assigner.bandit_experiments(subject)
    data = await rec.store.read_request(subject, int(NOW_S * 1000), wanted)
    _, assignments, first = await rec.assign(RecRequest(subject, True, 5), data, NOW_S)
    (a,) = assignments
    assert a.experiment == "arms" and a.variant_config is not None
    return a.variant, first


def test_the_first_request_decides_and_stores_and_later_ones_keep_it(
    test_cfg: AttuneConfig,
) -> None:
    # control clicked 500 of 1,000 times, treatment 10 of 1,000: Beta(501, 501) and
    # Beta(11, 991) do not overlap, so Thompson sampling picks control with probability 1;
    # with epsilon = 0.1 over the 2 variants, by hand: control 0.1 / 2 + 0.9 = 0.95,
    # treatment 0.1 / 2 = 0.05.
    d = declarations()
    rec, store = make(test_cfg, d)
    keys = store.keys
    sync = redis.Redis(host=test_cfg.redis.host, port=test_cfg.redis.port, db=REDIS_DB)
    sync.hset(
        keys.bandit(policy_name("arms")),
        mapping={"n:control": 1000, "c:control": 500, "n:treatment": 1000, "c:treatment": 10},
    )

    async def scenario() -> None:
        for i in range(6):
            user = f"u{i}"
            variant, first = await resolve(rec, user)
            (exp, decided) = first[0]
            assert len(first) == 1 and exp == "arms" and decided.variant == variant
            expected = {"control": 0.95, "treatment": 0.05}[variant]
            assert decided.propensity == pytest.approx(expected, abs=1e-6)
            assert decided.first_ms == int(NOW_S * 1000)
            raw = sync.get(keys.user_experiment_variant(user, "arms"))
            assert raw is not None
            assert orjson.loads(raw) == {
                "v": variant,
                "p": decided.propensity,
                "d": decided.decision_id,
                "t": int(NOW_S * 1000),
            }
            ttl = sync.pttl(keys.user_experiment_variant(user, "arms"))
            assert 0 < ttl <= 90 * 86_400_000  # the user TTL (speed.online_store.user_ttl)
            # the bandit's state flips to treatment: the stored variant does not move
            sync.hset(
                keys.bandit(policy_name("arms")),
                mapping={"c:control": 10, "c:treatment": 500},
            )
            for _ in range(3):
                again, first_again = await resolve(rec, user)
                assert (again, first_again) == (variant, [])
            sync.hset(
                keys.bandit(policy_name("arms")),
                mapping={"c:control": 500, "c:treatment": 10},
            )

    run_closing(scenario, store, sync)


def test_a_linucb_experiment_learns_from_list_clicks_by_segment_and_decides_by_it(
    test_cfg: AttuneConfig,
) -> None:
    # The speed layer's feedback script counts the experiment's list impressions and clicks
    # with each user's segment (read from the batch hash): active users clicked control's
    # lists 5 times in 10 and treatment's 0 times in 10, new users the reverse. Both arms then
    # hold the same impressions (the same A = I + sum x x', the same confidence bonus), and
    # the estimates differ by 5 x' A^-1 (x_active - x_new): > 0 for an active user and < 0 for
    # a new one (equal A^-1 norms by the segments' symmetry, then Cauchy-Schwarz). So, by hand,
    # with epsilon 0.1 over 2 variants, an active user's decision gives control 0.95 and
    # treatment 0.05, a new user's the reverse, whichever variant the draw then shows.
    from attune.bandits.feedback import BanditFeedback

    d = declarations(policy="linucb")
    spec = d.experiments[0].bandit
    assert spec is not None
    rec, store = make(test_cfg, d)
    keys = store.keys
    sync = redis.Redis(host=test_cfg.redis.host, port=test_cfg.redis.port, db=REDIS_DB)
    t0 = int(NOW_S * 1000) - 60_000
    rows: list[tuple[str, int, str, str]] = []
    for segment, clicked in (("active", "control"), ("new", "treatment")):
        for i in range(10):
            user = f"learn-{segment}-{i}"
            sync.hset(keys.user_batch(user), "segment", segment)
            for variant in ("control", "treatment"):
                rc = f"arms:{variant}:{user}"
                kinds = ["impression"] + (["rec_click"] if variant == clicked and i < 5 else [])
                for kind in kinds:
                    iid = f"{user}-{variant}-{kind}#0"
                    payload = {"i": iid, "t": t0 + i, "y": kind, "x": 1, "rc": rc, "it": "m1"}
                    rows.append((user, t0 + i, iid, orjson.dumps(payload).decode()))
    fb = BanditFeedback(sync, keys, {policy_name("arms"): spec.bandit_config()}, 3_600_000, 3)
    stats = fb.apply(rows)
    assert (stats.applied, stats.duplicates, stats.too_late) == (50, 0, 0)  # 40 + 10 clicks
    state = sync.hgetall(keys.bandit(policy_name("arms")))
    assert {k: int(v) for k, v in state.items() if k[:2] in (b"n:", b"c:")} == {
        b"n:control": 20,
        b"n:treatment": 20,
        b"c:control": 5,
        b"c:treatment": 5,
    }

    async def scenario() -> None:
        for segment, best in (("active", "control"), ("new", "treatment")):
            for i in range(4):
                user = f"decide-{segment}-{i}"
                sync.hset(keys.user_batch(user), "segment", segment)
                variant, first = await resolve(rec, user)
                ((_, decided),) = first
                assert decided.variant == variant
                expected = 0.95 if variant == best else 0.05
                assert decided.propensity == pytest.approx(expected, abs=1e-9)

    run_closing(scenario, store, sync)


def test_two_concurrent_first_requests_agree(test_cfg: AttuneConfig) -> None:
    # no counts: each variant 1/2, so two independent decisions differ half the time; 20 users
    # whose two first requests run concurrently still end with one variant each, and exactly
    # one of the two requests (the one whose write won) reports the first exposure
    d = declarations()
    rec, store = make(test_cfg, d)

    async def scenario() -> None:
        direct = await asyncio.gather(
            store.remember_variant("race", "arms", b"first"),
            store.remember_variant("race", "arms", b"second"),
        )
        # both get the value whose write reached Redis first (either may: the two calls
        # can go out on two pooled connections, so their order at Redis is not theirs)
        assert direct[0] == direct[1] and direct[0] in (b"first", b"second")
        for i in range(20):
            user = f"r{i}"
            wanted = rec.assigner.bandit_experiments(user)
            data = await store.read_request(user, int(NOW_S * 1000), wanted)
            req = RecRequest(user, True, 5)
            (_, a1, f1), (_, a2, f2) = await asyncio.gather(
                rec.assign(req, data, NOW_S), rec.assign(req, data, NOW_S)
            )
            assert a1[0].variant == a2[0].variant
            assert len(f1) + len(f2) == 1
            (_, won) = (f1 or f2)[0]
            assert won.variant == a1[0].variant
            assert won.propensity == pytest.approx(0.5)

    run_closing(scenario, store)


def test_erasure_deletes_the_stored_variant(test_cfg: AttuneConfig) -> None:
    d = declarations()
    rec, store = make(test_cfg, d)

    async def scenario() -> None:
        await resolve(rec, "erase-me")

    run_closing(scenario, store)
    sync = redis.Redis(host=test_cfg.redis.host, port=test_cfg.redis.port, db=REDIS_DB)
    online = OnlineStore.from_config(test_cfg)
    key = online.keys.user_experiment_variant("erase-me", "arms")
    try:
        assert sync.exists(key)
        assert key in user_key_names(sync, "erase-me", online.keys)
        assert delete_user(sync, "erase-me", online) >= 1
        assert not sync.exists(key)
    finally:
        sync.close()
