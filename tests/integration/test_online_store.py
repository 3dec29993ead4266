"""The online store's write script against a real Redis: idempotent, order-independent, exact.

Rows are written by hand in the payload format :func:`attune.features.online_rows`
produces (see ``APPLY_SCRIPT`` in :mod:`attune.online_store`). Half-life 1 h; bucket 100 starts
at 100 * 57,600,000 ms = 5,760,000,000 ms, called B below.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import orjson
import pytest
import redis

from attune.config import AttuneConfig
from attune.online_store import (
    SCALE,
    OnlineStore,
    OnlineStoreWriter,
    delete_user,
    read_popular,
    read_trending,
    read_user_features,
)

pytestmark = pytest.mark.integration

REDIS_DB = 12
HOUR = 3_600_000
MIN = 60_000
B = 100 * 57_600_000  # start of affinity bucket 100


@pytest.fixture(params=["redis", "redis-cluster"])
def client(cfg: AttuneConfig, request: pytest.FixtureRequest) -> Iterator[redis.Redis]:
    """One Redis (the stack's, db 12), or a Redis Cluster of 3 masters (``redis_cluster``):
    every test runs on both."""
    from attune.redis_connect import connect

    if request.param == "redis-cluster":
        r = connect(request.getfixturevalue("redis_cluster").redis)
    else:
        r = redis.Redis(host=cfg.redis.host, port=cfg.redis.port, db=REDIS_DB)
    yield r
    r.close()


@pytest.fixture
def store(client: redis.Redis) -> Iterator[OnlineStore]:
    s = OnlineStore(
        prefix=f"t{uuid.uuid4().hex[:8]}",
        half_life_ms=HOUR,
        recent_items=3,
        dismissed_items=2,
        dedup_per_user=10,
        trending_windows_s=(3600,),
        trending_slices=12,
        ignore_min_impressions=2,
    )
    yield s
    keys = list(client.scan_iter(match=f"{s.prefix}:*", count=1000))
    if keys:
        client.delete(*keys)


def row(
    iid: str,
    t: int,
    typ: str,
    item: str | None = None,
    *,
    weight: float = 0.0,
    event_row: bool = True,
    session: str | None = None,
    category: str | None = None,
    forget: bool = False,
) -> tuple[str, int, str, str]:
    """One interaction of user ``alice`` as (user, t, iid, payload)."""
    payload: dict[str, Any] = {"i": iid, "t": t, "y": typ}
    if event_row and typ != "undo_feedback":  # an undo has no event-level updates
        payload["x"] = 1
    if session:
        payload["s"] = session
    if item:
        payload["it"] = item
    if category:
        payload["ca"] = category
    if weight:
        bucket = t // (16 * HOUR)
        payload["b"] = bucket
        payload["a"] = str(round(weight * SCALE * 2 ** ((t - bucket * 16 * HOUR) / HOUR)))
    if item and typ in ("item_view", "add_to_cart", "purchase", "rating"):
        payload["r"] = 1
    if item and typ in ("item_view", "add_to_cart", "purchase"):
        payload["n"] = 1
        payload["tr"] = [f"3600:{t // (5 * MIN)}"]
    if item and typ == "impression":
        payload["m"] = 1
    if item and typ in ("dismiss", "not_interested"):
        payload["d"] = 1
    if item and typ == "undo_feedback":
        payload["u"] = 1
    if forget:
        payload["c"] = 1
    return ("alice", t, iid, orjson.dumps(payload).decode())


def dump(r: redis.Redis, prefix: str) -> dict[str, Any]:
    """Every key under ``prefix`` with its full content (not its TTL). Of the aggregates' seen
    set, the ids only: its scores are arrival times, different in two equal passes."""
    out: dict[str, Any] = {}
    for key in sorted(r.scan_iter(match=f"{prefix}:*", count=1000)):
        kind = r.type(key)
        if key.endswith(b":{agg}:seen"):
            out[key] = sorted(r.zrange(key, 0, -1))
        elif kind == b"zset":
            out[key] = r.zrange(key, 0, -1, withscores=True)
        elif kind == b"hash":
            out[key] = r.hgetall(key)
        else:
            out[key] = r.get(key)
    return out


SESSION = [
    row("e1#0", B + 2 * HOUR, "item_view", "m1", weight=1, session="s1"),
    row("e2#0", B + 3 * HOUR, "add_to_cart", "m2", weight=3, session="s1"),
    row("e3#0", B + 4 * HOUR, "impression", "m3", session="s1"),
    row("e3#1", B + 4 * HOUR, "impression", "m2", event_row=False, session="s1"),
    row("e4#0", B + 4 * HOUR, "dismiss", "m3", weight=-2, session="s1"),
    row("e5#0", B + 1 * HOUR, "item_view", "m4", weight=1, session="s1", category="Books"),
]


@pytest.fixture
def writer(client: redis.Redis, store: OnlineStore) -> OnlineStoreWriter:
    w = OnlineStoreWriter(client, store)
    w.write_item_metadata(
        {
            "m1": {"title": "One", "year": 1999, "genres": ["Drama", "Comedy"]},
            "m2": {"title": "Two", "genres": ["Drama"]},
            "m3": {"title": "Three", "genres": ["Horror"]},
        }
    )
    return w


def test_features_of_a_session(
    client: redis.Redis, store: OnlineStore, writer: OnlineStoreWriter
) -> None:
    stats = writer.apply(SESSION)
    assert (stats.users, stats.applied, stats.duplicates) == (1, 6, 0)
    f = read_user_features(client, "alice", store)
    # Recent (N = 3) by event time: m2 (+3 h), m1 (+2 h), m4 (+1 h, arrived last); impressions and
    # dismissals are not interactions.
    assert f.recent_item_ids == ["m2", "m1", "m4"]
    assert [r.type for r in f.recent] == ["add_to_cart", "item_view", "item_view"]
    # As of the latest event (+4 h): m1 view 2 h old (Drama, Comedy: 1/4 each), m2 cart 1 h old
    # (Drama: 3/2), m4 view 3 h old (not in the catalog: its category, Books: 1/8), dismiss of
    # m3 now (Horror: -2).
    assert f.as_of_ms == B + 4 * HOUR
    expected = {"Drama": 1.75, "Comedy": 0.25, "Horror": -2.0, "Books": 0.125}
    assert f.affinities.keys() == expected.keys()
    for genre, value in expected.items():
        assert math.isclose(f.affinities[genre], value, rel_tol=1e-6), genre
    assert f.counters == {
        "item_view": 2,
        "add_to_cart": 1,
        "impression": 1,
        "dismiss": 1,
        "events": 5,
    }
    assert f.session is not None
    assert (f.session.session_id, f.session.events) == ("s1", 5)
    assert (f.session.start_ms, f.session.last_ms) == (B + HOUR, B + 4 * HOUR)
    assert f.dismissed_items == ["m3"]
    # Impressions: Horror (m3), Drama (m2); engagements: Drama (m1, m2), Comedy, Books.
    assert f.impressions_by_genre == {"Horror": 1, "Drama": 1}
    assert f.engagements_by_genre == {"Drama": 2, "Comedy": 1, "Books": 1}
    assert read_popular(client, store) == [("m4", 1), ("m2", 1), ("m1", 1)]


def test_replaying_changes_nothing(
    client: redis.Redis, store: OnlineStore, writer: OnlineStoreWriter
) -> None:
    writer.apply(SESSION)
    writer.refresh_trending()
    before = dump(client, store.prefix)
    again = writer.apply(SESSION + SESSION[:2])
    writer.refresh_trending()
    assert (again.applied, again.duplicates) == (0, 8)
    assert dump(client, store.prefix) == before


def test_batching_and_order_do_not_matter(
    client: redis.Redis, store: OnlineStore, writer: OnlineStoreWriter
) -> None:
    writer.apply(SESSION)
    writer.refresh_trending()
    one_pass = dump(client, store.prefix)
    for key in client.scan_iter(match=f"{store.prefix}:*"):
        if b":meta" not in key or b":i:" not in key:  # keep the catalog mirror
            client.delete(key)
    # The same interactions in other micro-batches, newest first, one crash-like repeat.
    for batch in ([SESSION[4]], [SESSION[5], SESSION[3]], [SESSION[0], SESSION[4]], SESSION[1:3]):
        writer.apply(batch)
    writer.refresh_trending()
    assert dump(client, store.prefix) == one_pass


def test_forgotten_ids_are_not_applied_twice(
    client: redis.Redis, store: OnlineStore, writer
) -> None:  # type: ignore[no-untyped-def]
    views = [row(f"v{i:02d}#0", B + i * MIN, "item_view", "m1", weight=1) for i in range(12)]
    writer.apply(views)
    before = dump(client, store.prefix)
    # dedup_per_user = 10: v00 and v01 were forgotten; replaying them must change nothing.
    stats = writer.apply(views[:2])
    assert (stats.applied, stats.too_late) == (0, 2)
    assert dump(client, store.prefix) == before
    assert read_user_features(client, "alice", store).views == 12


def test_consent_withdrawal_forgets_the_user(
    client: redis.Redis, store: OnlineStore, writer
) -> None:  # type: ignore[no-untyped-def]
    writer.apply(SESSION)
    writer.apply([row("c1#0", B + 5 * HOUR, "consent_update", forget=True)])
    assert read_user_features(client, "alice", store).is_empty
    # Earlier events arriving late stay out; later ones (consent given again) count.
    stats = writer.apply(
        [
            row("late#0", B + 4 * HOUR + MIN, "item_view", "m1", weight=1),
            row("new#0", B + 6 * HOUR, "item_view", "m2", weight=1),
        ]
    )
    assert (stats.applied, stats.too_late) == (1, 1)
    f = read_user_features(client, "alice", store)
    assert f.recent_item_ids == ["m2"] and f.counters == {"item_view": 1, "events": 1}


def test_trending_window(
    client: redis.Redis, store: OnlineStore, writer: OnlineStoreWriter
) -> None:
    writer.apply(SESSION)
    writer.refresh_trending()
    # Latest event at B + 4 h; 5-min slices; the 1 h window holds the slices after B + 3 h
    # (B is a multiple of 5 min), so the cart of m2 at exactly B + 3 h is out, and so are the
    # views at +1 h and +2 h: nothing is trending.
    assert read_trending(client, store, 3600) == []
    writer.apply([row("e6#0", B + 4 * HOUR - 10 * MIN, "purchase", "m2", weight=5)])
    writer.refresh_trending()
    assert read_trending(client, store, 3600) == [("m2", 1)]


# dismiss -> undo -> dismiss of m1 (in force), an undone not_interested of m2, and a dismissal of
# m3 undone at the same time (a tie goes to the undo). (A session id, so that the session does
# not depend on arrival order, as in SESSION.)
UNDOS = [
    row("d1#0", B + 1 * MIN, "dismiss", "m1", weight=-2, session="s1"),
    row("u1#0", B + 2 * MIN, "undo_feedback", "m1"),
    row("d2#0", B + 3 * MIN, "dismiss", "m1", weight=-2, session="s1"),
    row("d3#0", B + 4 * MIN, "not_interested", "m2", weight=-3, session="s1"),
    row("u2#0", B + 5 * MIN, "undo_feedback", "m2"),
    row("d4#0", B + 6 * MIN, "dismiss", "m3", weight=-2, session="s1"),
    row("u3#0", B + 6 * MIN, "undo_feedback", "m3"),
]


def test_undo_lifts_earlier_dismissals(
    client: redis.Redis, store: OnlineStore, writer: OnlineStoreWriter
) -> None:
    roomy = replace(store, dismissed_items=10)  # same keys; no cap in the way
    w = OnlineStoreWriter(client, roomy)
    stats = w.apply(UNDOS)
    assert (stats.applied, stats.duplicates) == (7, 0)
    f = read_user_features(client, "alice", roomy)
    # m1: dismissed at +3 min, after its undo at +2; m2 (+4 < +5) and m3 (+6 = +6) are undone.
    assert f.dismissed_items == ["m1"]
    # The store keeps both maxima per item; the reader compares them.
    dismissed = client.zrange(roomy.keys.user_key("alice", "dismissed"), 0, -1, withscores=True)
    assert dismissed == [(b"m1", B + 3.0 * MIN), (b"m2", B + 4.0 * MIN), (b"m3", B + 6.0 * MIN)]
    undo = client.zrange(roomy.keys.user_key("alice", "undo"), 0, -1, withscores=True)
    assert undo == [(b"m1", B + 2.0 * MIN), (b"m2", B + 5.0 * MIN), (b"m3", B + 6.0 * MIN)]
    # The undos are no events: 3 dismiss + 1 not_interested, nothing recent.
    assert f.counters == {"dismiss": 3, "not_interested": 1, "events": 4}
    assert f.recent_item_ids == [] and f.session is not None and f.session.events == 4
    # Replaying changes nothing; a late dismissal of m2 from before its undo changes nothing
    # the reader returns.
    before = dump(client, roomy.prefix)
    assert w.apply(UNDOS).duplicates == 7
    assert dump(client, roomy.prefix) == before
    w.apply([row("d0#0", B + 4 * MIN + 30_000, "dismiss", "m2", weight=-2, session="s1")])
    assert read_user_features(client, "alice", roomy).dismissed_items == ["m1"]
    # A dismissal after the undo is in force again.
    w.apply([row("d5#0", B + 7 * MIN, "dismiss", "m2", weight=-2, session="s1")])
    assert read_user_features(client, "alice", roomy).dismissed_items == ["m2", "m1"]


MORE_UNDOS = [
    *UNDOS,
    row("d5#0", B + 7 * MIN, "dismiss", "m2", weight=-2, session="s1"),
    row("u9#0", B + 9 * MIN, "undo_feedback", "m9"),
    row("d9#0", B + 8 * MIN, "dismiss", "m9", weight=-2, session="s1"),
]


def test_undos_do_not_depend_on_order_or_batching(
    client: redis.Redis, store: OnlineStore, writer: OnlineStoreWriter
) -> None:
    writer.apply(MORE_UNDOS)
    one_pass = dump(client, store.prefix)
    # dismissed_items = 2 keeps the 2 newest of each: dismissals m9 (+8), m2 (+7); undos m9
    # (+9), m3 (+6). m9 is undone; m2's undo (+5) is cut, but +7 is later anyway.
    assert read_user_features(client, "alice", store).dismissed_items == ["m2"]
    for key in client.scan_iter(match=f"{store.prefix}:*"):
        if b":meta" not in key or b":i:" not in key:  # keep the catalog mirror
            client.delete(key)
    # One row per batch, newest first (each undo before the dismissal it undoes), then replays.
    for r in reversed(MORE_UNDOS):
        writer.apply([r])
    writer.apply([MORE_UNDOS[1], MORE_UNDOS[0], MORE_UNDOS[-1]])
    assert dump(client, store.prefix) == one_pass


def test_the_apis_feedback_writes_are_the_streams(
    client: redis.Redis, store: OnlineStore, writer: OnlineStoreWriter
) -> None:
    # The API writes a dismissal and its undo straight into Redis (attune.api.store:
    # ZADD GT) before their events reach the speed layer; the stream then changes nothing.
    writer.apply(UNDOS[:2])
    stream_only = dump(client, store.prefix)
    for key in client.scan_iter(match=f"{store.prefix}:u:*"):
        client.delete(key)
    client.zadd(store.keys.user_key("alice", "dismissed"), {"m1": B + 1 * MIN}, gt=True)
    client.zadd(store.keys.user_key("alice", "undo"), {"m1": B + 2 * MIN}, gt=True)
    assert read_user_features(client, "alice", store).dismissed_items == []
    writer.apply(UNDOS[:2])
    assert dump(client, store.prefix) == stream_only


def test_consent_withdrawal_forgets_undos(
    client: redis.Redis, store: OnlineStore, writer: OnlineStoreWriter
) -> None:
    writer.apply(UNDOS)
    writer.apply([row("c1#0", B + 5 * MIN + 30_000, "consent_update", forget=True)])
    # The undos up to the withdrawal are gone (m2's at +5 min; m1's was cut by the cap of 2);
    # m3's at +6 min stays.
    undo = client.zrange(store.keys.user_key("alice", "undo"), 0, -1, withscores=True)
    assert undo == [(b"m3", float(B + 6 * MIN))]
    assert read_user_features(client, "alice", store).dismissed_items == []


def test_erasure_deletes_every_key_under_the_user_and_nothing_else(
    client: redis.Redis, store: OnlineStore, writer: OnlineStoreWriter
) -> None:
    writer.apply(SESSION)
    _, t, iid, payload = row("b#0", B + HOUR, "item_view", "m9", weight=1)
    writer.apply([("bob", t, iid, payload)])
    # keys other parts keep under the user's prefix (the API's, the batch views', consent)
    extra = [f"{store.prefix}:u:{{alice}}:suppressed", f"{store.prefix}:u:{{alice}}:msg:welcome"]
    for key in extra:
        client.zadd(key, {"x": 1})
    consent = f"{store.prefix}:u:{{alice}}:consent"
    client.set(consent, b'{"analytics":false}')
    client.set("consent:alice", b'{"marketing":false}')  # an older collector's, not migrated
    client.set(f"{store.prefix}:u:{{bob}}:consent", b'{"marketing":false}')
    alice_keys = set(client.scan_iter(match=f"{store.prefix}:u:{{alice}}:*"))
    assert {k.decode() for k in alice_keys} >= {*extra, consent} and len(alice_keys) > 3

    assert delete_user(client, "alice", store) == len(alice_keys) + 1  # + the old consent key
    assert list(client.scan_iter(match=f"{store.prefix}:u:{{alice}}:*")) == []
    assert client.exists("consent:alice") == 0
    assert read_user_features(client, "bob", store).recent_item_ids == ["m9"]
    assert client.get(f"{store.prefix}:u:{{bob}}:consent") == b'{"marketing":false}'


class _FailsOnce:
    """Makes one step of a writer raise a lost connection the first time it runs."""

    def __init__(self, step: Any) -> None:
        self.step, self.failed = step, False

    def __call__(self, *args: Any) -> None:
        if not self.failed:
            self.failed = True
            raise redis.ConnectionError("connection lost (test)")
        self.step(*args)


def _aggregates(client: redis.Redis, store: OnlineStore) -> tuple[Any, ...]:
    k = store.keys
    return (
        sorted(read_popular(client, store)),
        client.hgetall(k.item_stats("m2")),
        client.hgetall(k.user_key("alice", "outbox")),
    )


@pytest.mark.parametrize("failing_step", ["_count", "_clear"])
def test_a_writer_failing_between_the_user_and_the_aggregates_counts_once_on_retry(
    client: redis.Redis, store: OnlineStore, writer: OnlineStoreWriter, failing_step: str
) -> None:
    # SESSION's engagements (by hand): views of m1 and m4, a cart of m2; nothing else counts.
    expected = ([("m1", 1), ("m2", 1), ("m4", 1)], {b"add_to_cart": b"1"}, {})
    flaky = _FailsOnce(getattr(writer, failing_step))
    setattr(writer, failing_step, flaky)
    with pytest.raises(redis.ConnectionError):
        writer.apply(SESSION)
    # The user's features are in; what the aggregates lack waits in the outbox.
    assert read_user_features(client, "alice", store).views == 2
    outbox = client.hgetall(store.keys.user_key("alice", "outbox"))
    assert sorted(outbox) == [b"e1#0", b"e2#0", b"e5#0"]
    again = writer.apply(SESSION)  # the retry: every interaction is a duplicate now
    assert (again.applied, again.duplicates) == (0, 6)
    assert _aggregates(client, store) == expected
    writer.apply(SESSION)  # and a third pass changes nothing
    assert _aggregates(client, store) == expected


def test_the_aggregate_script_refuses_a_key_it_was_not_given(
    client: redis.Redis, store: OnlineStore, writer: OnlineStoreWriter
) -> None:
    from attune.online_store import AGG_SCRIPT

    entry = orjson.dumps({"t": B, "it": "m1", "y": "item_view"}).decode()
    script = client.register_script(AGG_SCRIPT)
    k = store.keys
    with pytest.raises(redis.ResponseError, match=r"undeclared key .*:i:m1:stats"):
        script(
            keys=[k.agg_seen, k.meta, k.popular],  # m1's stats key left out
            args=[store.script_params(), orjson.dumps([{"i": "x#0", "u": "a", "e": entry}]), ""],
        )
    # the script checks every key before its first write
    assert not client.exists(k.item_stats("m1"), k.popular, k.agg_seen)


def test_the_aggregates_of_an_earlier_version_move_to_their_new_names(
    client: redis.Redis, store: OnlineStore, writer: OnlineStoreWriter
) -> None:
    from attune.online_store import has_legacy_aggregates, migrate_aggregate_keys

    p, k = store.prefix, store.keys
    # What an earlier version left (old names), and what this version counted meanwhile.
    client.zadd(f"{p}:popular", {"m1": 5, "m2": 2})
    client.hset(f"{p}:meta", mapping={"max_t": B + 9 * HOUR, "trending:3600:as_of": B})
    client.zadd(f"{p}:trend:3600:7", {"m1": 3})
    client.expire(f"{p}:trend:3600:7", 7200)
    client.zadd(f"{p}:trending:3600", {"m1": 3})
    client.hset(f"{p}:i:{{m1}}:stats", mapping={"item_view": 4, "purchase": 1})
    client.hset(f"{p}:exp:live:2026-12-06", mapping={"e|a|impressions": 10})
    client.pfadd(f"{p}:exp:live:2026-12-06:users:e|a", "u1", "u2")
    client.hset(f"{p}:exp:state", "e", '{"id": "e"}')
    writer.apply([row("n1#0", B + 2 * HOUR, "item_view", "m1", weight=1)])
    client.hset(k.experiment_live("2026-12-06"), "e|a|impressions", 1)
    client.pfadd(k.experiment_live_users("2026-12-06", "e", "a"), "u2", "u3")

    assert has_legacy_aggregates(client, k)
    if isinstance(client, redis.RedisCluster):  # old names sit in other slots: refused, saying how
        with pytest.raises(ValueError, match="migrate-keys` on one Redis before moving"):
            migrate_aggregate_keys(client, k)
        return
    assert migrate_aggregate_keys(client, k) == 8
    # by hand: sums of old and new; the later max_t; the HyperLogLog's union has 3 users
    assert sorted(read_popular(client, store)) == [("m1", 6), ("m2", 2)]
    assert client.hgetall(k.item_stats("m1")) == {b"item_view": b"5", b"purchase": b"1"}
    assert client.hget(k.meta, "max_t") == str(B + 9 * HOUR).encode()
    assert client.zrange(k.trend_slice(3600, 7), 0, -1, withscores=True) == [(b"m1", 3.0)]
    assert 7000 < client.ttl(k.trend_slice(3600, 7)) <= 7200
    assert client.zrange(k.trending(3600), 0, -1, withscores=True) == [(b"m1", 3.0)]
    assert client.hgetall(k.experiment_live("2026-12-06")) == {b"e|a|impressions": b"11"}
    assert client.pfcount(k.experiment_live_users("2026-12-06", "e", "a")) == 3
    assert client.hgetall(k.experiments_state) == {b"e": b'{"id": "e"}'}
    old = [key for key in client.scan_iter(match=f"{p}:*") if not re.search(rb"{agg}|{exp}", key)]
    assert all(b":u:{" in key or b"}:meta" in key for key in old), old
    assert migrate_aggregate_keys(client, k) == 0  # again: nothing left to move
    assert not has_legacy_aggregates(client, k)
