"""attune's Redis clients against a real Redis Cluster of three masters (``redis_cluster``, see
:mod:`tests.integration.redis_cluster`), and the same scripts against a plain Redis of this
module's own, started like ``attune stack up`` starts one (:mod:`tests.integration.private_redis`).

What is checked: the factory makes cluster clients; one user's keys share one hash slot (the
``{user}`` hash tag) while different users spread over all three masters, as the server itself
computes the slots (``CLUSTER KEYSLOT``) and as the node that holds each key shows; a
non-transactional pipeline spans slots; every Lua script outside the online store's gives on the
cluster exactly the result it gives on a plain Redis; SCAN finds keys on every master.

Neither needs the shared stack: the cluster and the plain Redis are this run's own. Keys live
under a key prefix of each test's own. Expected values are worked out by hand in each test.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from typing import Any, cast

import orjson
import pytest
import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster
from redis.exceptions import RedisClusterException

from attune.api.store import ApiStore
from attune.bandits.feedback import BanditFeedback
from attune.bandits.policies import BetaState
from attune.bandits.store import BanditStore, decode_history
from attune.config import AttuneConfig, BanditConfig
from attune.experiments.live import read_live_counts
from attune.ingest.consent import ConsentStore, migrate_legacy_consent
from attune.keys import Keys
from attune.online_store import OnlineStore, delete_user, user_key_names
from attune.redis_connect import connect, connect_async, is_cluster
from attune.stack.redis_cluster import RedisClusterLayout
from tests.integration.private_redis import private_redis, with_private_redis

pytestmark = pytest.mark.timeout(120)

HOUR = 3_600_000
T0 = 1_362_139_200_000  # 2013-03-01T12:00:00Z, an hour start
USERS = [f"user-{n}" for n in range(30)]


def _with_prefix(cfg: AttuneConfig, prefix: str) -> AttuneConfig:
    online = cfg.speed.online_store.model_copy(update={"key_prefix": prefix})
    speed = cfg.speed.model_copy(update={"online_store": online})
    return cfg.model_copy(update={"speed": speed})


@pytest.fixture(scope="module")
def plain(cfg: AttuneConfig, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AttuneConfig]:
    """A plain (standalone) Redis of this module's own, to compare the scripts' results with."""
    var = tmp_path_factory.mktemp("plain-redis-var")
    own = cfg.model_copy(update={"paths": cfg.paths.model_copy(update={"var_dir": var})})
    with private_redis(with_private_redis(own)) as c:
        yield c


@pytest.fixture
def prefix() -> str:
    return f"tc{uuid.uuid4().hex[:8]}"


def _node(layout: RedisClusterLayout, port: int) -> redis.Redis:
    return redis.Redis(host=layout.host, port=port, decode_responses=True)


def _slot_owner(layout: RedisClusterLayout) -> Callable[[int], int]:
    """``slot -> port of the master serving it``, from the server's ``CLUSTER SLOTS``."""
    node = _node(layout, layout.ports[0])
    try:
        ranges = node.execute_command("CLUSTER SLOTS")
    finally:
        node.close()
    table = [(int(r[0]), int(r[1]), int(r[2][1])) for r in ranges]

    def owner(slot: int) -> int:
        return next(port for lo, hi, port in table if lo <= slot <= hi)

    return owner


def _server_slot(layout: RedisClusterLayout, key: str) -> int:
    node = _node(layout, layout.ports[0])
    try:
        return int(node.execute_command("CLUSTER KEYSLOT", key))
    finally:
        node.close()


# -- the factory -------------------------------------------------------------------------------


def test_the_factory_makes_cluster_clients_that_see_three_masters(
    redis_cluster: AttuneConfig, redis_cluster_layout: RedisClusterLayout
) -> None:
    assert redis_cluster.redis.cluster and redis_cluster.redis.db == 0
    client = connect(redis_cluster.redis, socket_timeout=5.0)
    try:
        assert isinstance(client, RedisCluster) and is_cluster(client)
        primaries = sorted(n.port for n in client.get_primaries())
        assert primaries == sorted(redis_cluster_layout.ports)
        assert client.cluster_info()["cluster_state"] == "ok"
    finally:
        client.close()

    async def ping() -> bool:
        aclient = connect_async(redis_cluster.redis, socket_timeout=5.0)
        try:
            assert isinstance(aclient, AsyncRedisCluster) and is_cluster(aclient)
            return bool(await aclient.ping())
        finally:
            await aclient.aclose()

    assert asyncio.run(ping())


# -- hash slots ------------------------------------------------------------------------------


def test_one_users_keys_share_a_slot_and_users_spread_over_every_master(
    redis_cluster: AttuneConfig, redis_cluster_layout: RedisClusterLayout, prefix: str
) -> None:
    layout = redis_cluster_layout
    # the server's own slots of the examples in the CLUSTER KEYSLOT documentation
    assert _server_slot(layout, "somekey") == 11058
    assert _server_slot(layout, "foo{hash_tag}") == 2515
    keys = Keys(prefix)
    owner = _slot_owner(layout)
    masters_of_users = set()
    client = connect(redis_cluster.redis)
    try:
        for user in USERS:
            names = [
                *keys.user_keys(user),
                keys.message_cap(user, "welcome"),
                keys.user_experiment_variant(user, "exp1"),
            ]
            slots = {_server_slot(layout, k) for k in names}
            # a hash tag: every key of the user is in the slot of the bare user id
            assert slots == {_server_slot(layout, user)}, user
            masters_of_users.add(owner(slots.pop()))
            client.set(keys.consent(user), user)
        # each key is on the master that serves its slot, and on no other
        for user in USERS:
            key = keys.consent(user)
            home = owner(_server_slot(layout, key))
            for port in layout.ports:
                node = _node(layout, port)
                try:
                    if port == home:
                        assert node.get(key) == user
                    else:
                        # the other masters redirect to it: MOVED <slot> <host>:<port>
                        moved_to = f"^{_server_slot(layout, key)} {layout.host}:{home}$"
                        with pytest.raises(redis.exceptions.MovedError, match=moved_to):
                            node.get(key)
                finally:
                    node.close()
    finally:
        for user in USERS:
            client.delete(keys.consent(user))
        client.close()
    assert masters_of_users == set(layout.ports)
    # a bandit policy's three keys share the policy's slot
    policy = "slot:hero"
    assert {
        _server_slot(layout, k)
        for k in (keys.bandit(policy), keys.bandit_seen(policy), keys.bandit_history(policy))
    } == {_server_slot(layout, policy)}


def test_a_pipeline_spans_slots_but_a_transaction_does_not(
    redis_cluster: AttuneConfig, prefix: str
) -> None:
    keys = Keys(prefix)
    client = connect(redis_cluster.redis)
    try:
        pipe = client.pipeline(transaction=False)
        for n, user in enumerate(USERS):
            pipe.hset(keys.user_batch(user), "segment", f"s{n % 3}")
            pipe.expire(keys.user_batch(user), 600)
        assert pipe.execute() == [1, True] * len(USERS)
        pipe = client.pipeline(transaction=False)
        for user in USERS:
            pipe.hget(keys.user_batch(user), "segment")
        assert pipe.execute() == [f"s{n % 3}".encode() for n in range(len(USERS))]
        with pytest.raises(RedisClusterException):
            tx = client.pipeline(transaction=True)
            tx.get(keys.user_batch(USERS[0]))
            tx.get(keys.user_batch(USERS[1]))
            tx.execute()
    finally:
        for user in USERS:
            client.delete(keys.user_batch(user))
        client.close()


# -- the scripts: the same results on the cluster as on a plain Redis ----------------------------


def _both(redis_cluster: AttuneConfig, plain: AttuneConfig) -> list[AttuneConfig]:
    return [redis_cluster, plain]


def test_the_api_scripts_cap_and_remember_give_the_same_results(
    redis_cluster: AttuneConfig, plain: AttuneConfig, prefix: str
) -> None:
    async def run(cfg: AttuneConfig) -> tuple[list[bool], list[bytes]]:
        store = ApiStore(_with_prefix(cfg, prefix))
        try:
            assert is_cluster(store.client) == cfg.redis.cluster
            caps = []
            # cap 2 in a 1000 ms window: two showings fit, the third not; 1000 ms later the
            # first two have left the window, so one fits again
            for now, showing in ((T0, "a"), (T0 + 10, "b"), (T0 + 20, "c"), (T0 + 1011, "d")):
                caps.append(await store.take_message_slot("u1", "welcome", now, 1000, 2, showing))
            # another user's cap is counted apart
            caps.append(await store.take_message_slot("u2", "welcome", T0 + 20, 1000, 2, "x"))
            variants = [
                await store.remember_variant("u1", "exp1", b'{"v":"A"}'),
                await store.remember_variant("u1", "exp1", b'{"v":"B"}'),  # A was first
                await store.remember_variant("u2", "exp1", b'{"v":"B"}'),
            ]
            return caps, variants
        finally:
            await store.close()

    expected = (
        [True, True, False, True, True],
        [b'{"v":"A"}', b'{"v":"A"}', b'{"v":"B"}'],
    )
    for cfg in _both(redis_cluster, plain):
        assert asyncio.run(run(cfg)) == expected, cfg.redis


ARMS = ("welcome", "drama_picks", "default")


def test_the_bandit_update_script_gives_the_same_state_alone_and_pipelined(
    redis_cluster: AttuneConfig, plain: AttuneConfig, prefix: str
) -> None:
    results = []
    for cfg in _both(redis_cluster, plain):
        client = connect(cfg.redis)
        try:
            # a fresh script cache: the pipelined EVALSHA must still find the script
            client.script_flush()
            store = BanditStore(client, Keys(prefix))
            done = store.apply_all(
                {
                    "slot:a": BetaState(ARMS, (10, 0, 4), (1, 0, 0)),
                    "slot:b": BetaState(ARMS, (1, 1, 1), (0, 1, 0)),
                    "slot:c": BetaState(ARMS, (0, 0, 2), (0, 0, 2)),
                },
                writer="q1",
                batch_id=0,
            )
            assert done == {"slot:a": True, "slot:b": True, "slot:c": True}
            later = BetaState(ARMS, (5, 2, 0), (0, 1, 1))
            assert store.apply("slot:a", later, writer="q1", batch_id=1)
            assert not store.apply("slot:a", later, writer="q1", batch_id=1)  # a replay
            a = store.read_beta("slot:a", ARMS)
            b = store.read_beta("slot:b", ARMS)
            results.append((a.impressions, a.clicks, b.impressions, b.clicks))
        finally:
            client.close()
    # slot:a: (10 + 5, 0 + 2, 4 + 0) impressions, (1 + 0, 0 + 1, 0 + 1) clicks; the replay skipped
    assert results == [((15, 2, 4), (1, 1, 1), (1, 1, 1), (0, 1, 0))] * 2


def _row(iid: str, t: int, etype: str, arm: str, policy: str) -> tuple[str, int, str, str]:
    payload = {"i": iid, "t": t, "y": etype, "x": 1, "ar": arm, "pl": policy}
    return ("u1", t, iid, orjson.dumps(payload).decode())


def test_the_bandit_feedback_script_gives_the_same_counts(
    redis_cluster: AttuneConfig, plain: AttuneConfig, prefix: str
) -> None:
    hero, tile = "slot:hero", "slot:tile"
    batch = [
        _row("e1#0", T0, "impression", "trailer", hero),
        _row("e2#0", T0 + 1000, "impression", "poster", hero),
        _row("e3#0", T0 + 2000, "rec_click", "trailer", hero),
        _row("e4#0", T0 + 3000, "impression", "trailer", tile),
    ]
    results = []
    for cfg in _both(redis_cluster, plain):
        client = connect(cfg.redis)
        try:
            client.script_flush()
            keys = Keys(prefix)
            policies = {hero: BanditConfig(policy="thompson"), tile: BanditConfig()}
            fb = BanditFeedback(client, keys, policies, HOUR, 3)
            first = fb.apply(batch)
            again = fb.apply([*batch, _row("e5#0", T0 + 5000, "impression", "poster", hero)])
            raw = client.hgetall(keys.bandit(hero))
            counts = {k.decode(): int(v) for k, v in raw.items() if k[:2] in (b"n:", b"c:")}
            history = decode_history(client.hgetall(keys.bandit_history(hero)))
            results.append(
                (
                    (first.applied, first.duplicates, first.too_late),
                    (again.applied, again.duplicates, again.too_late),
                    counts,
                    {(h, arm): (c.impressions, c.clicks) for (h, arm), c in history.items()},
                    client.zcard(keys.bandit_seen(hero)),
                )
            )
        finally:
            client.close()
    # 4 events, then the same 4 again (duplicates) and one new; hero: trailer 1 imp. + 1 click,
    # poster 2 imp.; hero's seen set holds e1, e2, e3, e5
    expected = (
        (4, 0, 0),
        (1, 4, 0),
        {"n:trailer": 1, "c:trailer": 1, "n:poster": 2},
        {(T0, "trailer"): (1, 1), (T0, "poster"): (2, 0)},
        4,
    )
    assert results == [expected, expected]


def test_the_consent_migration_and_reads_give_the_same_results(
    redis_cluster: AttuneConfig, plain: AttuneConfig, prefix: str
) -> None:
    keys = Keys(prefix)
    # `consent:<subject>` is not under the prefix: subjects of this test's own
    run = uuid.uuid4().hex[:8]
    moved, kept, ttl, odd = (f"{name}-{run}" for name in ("moved", "kept", "ttl", "odd"))

    async def run_on(cfg: AttuneConfig) -> tuple[Any, ...]:
        client = connect_async(cfg.redis)
        try:
            await client.set(keys.legacy_consent(moved), b'{"analytics":false}')
            await client.set(keys.legacy_consent(kept), b'{"marketing":true}')
            await client.set(keys.consent(kept), b'{"marketing":false}')  # newer state
            await client.set(keys.legacy_consent(ttl), b'{"personalization":false}', px=600_000)
            await client.sadd(keys.legacy_consent(odd), "not ours")  # not a string: left alone
            # both Redis are this run's own: no other legacy consent keys
            result = await migrate_legacy_consent(client, keys)
            left = [await client.exists(keys.legacy_consent(s)) for s in (moved, kept, ttl, odd)]
            pttl = await client.pttl(keys.consent(ttl))
            store = ConsentStore(client, keys)
            store._migrated = True  # migrated above
            await store.write_many({f"w{n}-{run}": {"analytics": n % 2 == 0} for n in range(6)})
            states = await store.read_many(
                [moved, kept, ttl, odd, *(f"w{n}-{run}" for n in range(6))]
            )
            for s in (moved, kept, ttl, odd, *(f"w{n}-{run}" for n in range(6))):
                await client.delete(keys.consent(s))
            await client.delete(keys.legacy_consent(odd))
            return (result.moved, result.superseded, result.skipped), left, pttl, states
        finally:
            await client.aclose()  # type: ignore[attr-defined]

    for cfg in _both(redis_cluster, plain):
        counts, left, pttl, states = asyncio.run(run_on(cfg))
        assert counts == (2, 1, 1), cfg.redis  # moved, ttl moved; kept superseded; odd skipped
        assert left == [0, 0, 0, 1]
        assert 590_000 < pttl <= 600_000  # the TTL moved with the value
        assert states == {
            moved: {"analytics": False},
            kept: {"marketing": False},
            ttl: {"personalization": False},
            **{f"w{n}-{run}": {"analytics": n % 2 == 0} for n in range(6)},
        }


# -- SCAN ------------------------------------------------------------------------------------


def test_scan_finds_the_keys_on_every_master(
    redis_cluster: AttuneConfig, redis_cluster_layout: RedisClusterLayout, prefix: str
) -> None:
    layout = redis_cluster_layout
    keys = Keys(prefix)
    client = connect(redis_cluster.redis)
    try:
        pipe = client.pipeline(transaction=False)
        for user in USERS:
            pipe.set(keys.consent(user), b"{}")
            pipe.set(keys.message_cap(user, "m1"), b"x")
        pipe.execute()
        expected = {keys.consent(u) for u in USERS} | {keys.message_cap(u, "m1") for u in USERS}
        found = {k.decode() for k in client.scan_iter(match=f"{prefix}:*", count=7)}
        assert found == expected
        per_node = {}
        for port in layout.ports:
            node = _node(layout, port)
            try:
                per_node[port] = len(list(node.scan_iter(match=f"{prefix}:*", count=7)))
            finally:
                node.close()
        assert all(n > 0 for n in per_node.values()) and sum(per_node.values()) == 60
        # erasure's and the privacy export's names of one user's keys: its cap is found
        names = user_key_names(client, USERS[0], keys)
        assert keys.message_cap(USERS[0], "m1") in names
        # the cheaper form for a cluster: scan only the master of the user's slot
        home = cast(RedisCluster, client).get_node_from_key(keys.user_prefix(USERS[0]))
        on_home = {
            k.decode() for k in client.scan_iter(match=keys.user_glob(USERS[0]), target_nodes=home)
        }
        assert on_home == {keys.consent(USERS[0]), keys.message_cap(USERS[0], "m1")}
        # erasure: one DEL over the user's slot and the old consent key's (redis-py splits it)
        client.set(keys.legacy_consent(USERS[0]), b"{}")
        store = OnlineStore.from_config(_with_prefix(redis_cluster, prefix))
        assert delete_user(client, USERS[0], store) == 3  # consent, the cap, the old consent
        assert not any(client.exists(k) for k in user_key_names(client, USERS[0], keys))
    finally:
        for k in expected:
            client.delete(k)
        client.close()

    async def scan_async() -> set[str]:
        aclient: aioredis.Redis = connect_async(redis_cluster.redis)
        try:
            await aclient.set(keys.consent("a"), b"{}")
            await aclient.set(keys.consent("b"), b"{}")
            await aclient.set(keys.consent("c"), b"{}")
            got = {k.decode() async for k in aclient.scan_iter(match=f"{prefix}:*")}
            for s in "abc":
                await aclient.delete(keys.consent(s))
            return got
        finally:
            await aclient.aclose()  # type: ignore[attr-defined]

    assert asyncio.run(scan_async()) == {keys.consent(s) for s in "abc"}


def test_the_api_feedback_transaction_runs_in_the_users_slot(
    redis_cluster: AttuneConfig, plain: AttuneConfig, prefix: str
) -> None:
    async def run(cfg: AttuneConfig) -> tuple[Any, ...]:
        store = ApiStore(_with_prefix(cfg, prefix))
        try:
            # the client's first command is the MULTI (a new cluster client has no slot map)
            await store.write_feedback("u1", "dismiss", ["i1", "i2"], T0, False)
            await store.write_feedback("u1", "dismiss", ["i2"], T0 + 5, False)
            await store.write_feedback("u1", "dismiss", ["i1"], T0 + 9, True)  # undo i1
            keys = store.keys
            dismissed = await store.client.zrange(
                keys.user_key("u1", "dismissed"), 0, -1, withscores=True
            )
            undone = await store.client.zrange(keys.user_key("u1", "undo"), 0, -1, withscores=True)
            return dismissed, undone
        finally:
            await store.close()

    # i2 dismissed again later (GT keeps the later time); the undo of i1 is recorded apart
    expected = ([(b"i1", float(T0)), (b"i2", float(T0 + 5))], [(b"i1", float(T0 + 9))])
    for cfg in _both(redis_cluster, plain):
        assert asyncio.run(run(cfg)) == expected, cfg.redis


def test_the_experiment_state_keys_share_a_slot(
    redis_cluster_layout: RedisClusterLayout, prefix: str
) -> None:
    keys = Keys(prefix)
    layout = redis_cluster_layout
    assert _server_slot(layout, keys.experiments_state) == _server_slot(
        layout, keys.experiments_history
    )


def test_the_live_experiment_counts_read_the_same(
    redis_cluster: AttuneConfig, plain: AttuneConfig, prefix: str
) -> None:
    keys, day = Keys(prefix), "2013-03-01"
    results = []
    for cfg in _both(redis_cluster, plain):
        client = connect(cfg.redis)
        try:
            client.hset(
                keys.experiment_live(day),
                mapping={"e1|A|impressions": 5, "e1|A|clicks": 2, "e1|B|impressions": 4},
            )
            client.pfadd(keys.experiment_live_users(day, "e1", "A"), "u1", "u2", "u3", "u1")
            client.pfadd(keys.experiment_live_users(day, "e1", "B"), "u4")
            results.append(read_live_counts(client, keys, day))
        finally:
            client.delete(keys.experiment_live(day))
            client.delete(keys.experiment_live_users(day, "e1", "A"))
            client.delete(keys.experiment_live_users(day, "e1", "B"))
            client.close()
    # A: 3 distinct users of 4 additions; B: 1; counts never written are 0
    expected = {
        "e1": {
            "A": {"impressions": 5, "clicks": 2, "purchases": 0, "users": 3},
            "B": {"impressions": 4, "clicks": 0, "purchases": 0, "users": 1},
        }
    }
    assert results == [expected, expected]
