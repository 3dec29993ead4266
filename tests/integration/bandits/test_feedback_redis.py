"""The speed layer's bandit feedback script against the real Redis: each impression and click
counts once (replays, retries, duplicates), events older than the dedup window are refused,
a clock running ahead cannot push that floor, LinUCB's statistics come from the user's
segment, and the hourly history is kept and trimmed.

Rows are built as the online query builds them (``(user, ts_ms, iid, payload)`` with ``y``,
``ar``, ``pl``). Keys live under this run's own prefix in Redis db 3 and are deleted
afterwards. Expected values are worked out by hand in each test.
"""

from __future__ import annotations

import time

import orjson
import pytest
import redis

from attune.bandits.feedback import BanditFeedback
from attune.bandits.store import decode_history, decode_linear_state
from attune.config import BanditConfig
from attune.keys import Keys

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

HOUR = 3_600_000
T0 = 1_362_139_200_000  # 2013-03-01T12:00:00Z: an hour start (1362139200 = 378372 * 3600)
HERO, TILE = "slot:hero", "slot:tile"


def row(
    iid: str, t: int, etype: str, arm: str, policy: str = HERO, user: str = "u1"
) -> tuple[str, int, str, str]:
    payload = {"i": iid, "t": t, "y": etype, "x": 1, "ar": arm, "pl": policy}
    return (user, t, iid, orjson.dumps(payload).decode())


def feedback(
    client: redis.Redis, keys: Keys, window_ms: int = HOUR, hours: int = 3
) -> BanditFeedback:
    policies = {
        HERO: BanditConfig(policy="thompson"),
        TILE: BanditConfig(policy="linucb", segments=["new", "active"]),
    }
    return BanditFeedback(client, keys, policies, window_ms, hours)


def counts(client: redis.Redis, keys: Keys, policy: str) -> dict[str, int]:
    raw = client.hgetall(keys.bandit(policy))
    return {k.decode(): int(v) for k, v in raw.items() if k[:2] in (b"n:", b"c:")}


def test_each_impression_and_click_counts_once(client: redis.Redis, keys: Keys) -> None:
    fb = feedback(client, keys)
    batch = [
        row("e1#0", T0, "impression", "trailer"),
        row("e2#0", T0 + 1000, "impression", "poster", user="u2"),
        row("e3#0", T0 + 2000, "rec_click", "trailer"),
        row("e4#0", T0 + 3000, "dismiss", "poster"),  # not a reward of the policy: skipped
        row("e5#0", T0 + 4000, "impression", "trailer", policy="slot:unknown"),  # not ours
        ("u3", T0, "e6#0", orjson.dumps({"y": "impression", "it": "m1"}).decode()),  # no bandit
    ]
    s = fb.apply(batch)
    assert (s.applied, s.duplicates, s.too_late) == (3, 0, 0)
    # the same micro-batch again (a replay after a crash) and a retried event in a later one
    s = fb.apply([*batch[:3], row("e7#0", T0 + 5000, "impression", "trailer")])
    assert (s.applied, s.duplicates, s.too_late) == (1, 3, 0)
    assert counts(client, keys, HERO) == {"n:trailer": 2, "n:poster": 1, "c:trailer": 1}
    assert not client.exists(keys.bandit("slot:unknown"))
    history = decode_history(client.hgetall(keys.bandit_history(HERO)))
    assert {(h, a): (c.impressions, c.clicks) for (h, a), c in history.items()} == {
        (T0, "trailer"): (2, 1),
        (T0, "poster"): (1, 0),
    }


def test_events_older_than_the_window_are_refused_and_a_fast_clock_cannot_push_the_floor(
    client: redis.Redis, keys: Keys
) -> None:
    fb = feedback(client, keys, window_ms=10 * 60_000)
    fb.apply([row("a#0", T0 + 30 * 60_000, "impression", "trailer")])
    # floor = T0 + 30 min - 10 min = T0 + 20 min: an event at T0 + 15 min is too late,
    # one at T0 + 25 min still counts
    s = fb.apply(
        [
            row("b#0", T0 + 15 * 60_000, "impression", "trailer"),
            row("c#0", T0 + 25 * 60_000, "impression", "poster"),
        ]
    )
    assert (s.applied, s.too_late) == (1, 1)
    # an event a day ahead of Redis's clock: the floor moves to now - 10 min at most, so an
    # event stamped 5 minutes ago still counts
    now = int(time.time() * 1000)
    fb.apply([row("d#0", now + 86_400_000, "impression", "trailer")])
    floor = int(client.hget(keys.bandit(HERO), "seen_floor") or 0)
    assert now - 10 * 60_000 - 1000 <= floor <= now - 10 * 60_000 + 5000
    s = fb.apply([row("e#0", now - 5 * 60_000, "impression", "poster")])
    assert s.applied == 1
    # ids at or below the floor are no longer kept
    seen = {m.decode() for m in client.zrange(keys.bandit_seen(HERO), 0, -1)}
    assert seen == {"d#0", "e#0"}


def test_linucb_statistics_come_from_the_users_segment(client: redis.Redis, keys: Keys) -> None:
    fb = feedback(client, keys)
    client.hset(keys.user_batch("u1"), "segment", "active")
    client.hset(keys.user_batch("u2"), "segment", "new")
    fb.apply(
        [
            row("t1#0", T0, "impression", "a", TILE, "u1"),
            row("t2#0", T0 + 1, "rec_click", "a", TILE, "u1"),
            row("t3#0", T0 + 2, "impression", "a", TILE, "u2"),
            row("t4#0", T0 + 3, "impression", "b", TILE, "u3"),  # no segment: bias only
        ]
    )
    names = ("bias", "segment=new", "segment=active")
    state = decode_linear_state(client.hgetall(keys.bandit(TILE)), ("a", "b"), names)
    # x(u1) = [1, 0, 1], x(u2) = [1, 1, 0], x(u3) = [1, 0, 0]
    # a: xx = x1 x1' + x2 x2' = [[2,1,1],[1,1,0],[1,0,1]], xr = x1 = [1,0,1]
    assert state.xx[0].tolist() == [[2, 1, 1], [1, 1, 0], [1, 0, 1]]
    assert state.xr[0].tolist() == [1, 0, 1]
    # b: xx = [[1,0,0],[0,0,0],[0,0,0]], xr = 0
    assert state.xx[1].tolist() == [[1, 0, 0], [0, 0, 0], [0, 0, 0]]
    assert not state.xr[1].any()
    assert (state.impressions, state.clicks) == ((2, 1), (1, 0))


def test_history_keeps_the_configured_hours(client: redis.Redis, keys: Keys) -> None:
    fb = feedback(client, keys, window_ms=10 * HOUR, hours=3)
    for h in range(5):  # hours T0 .. T0 + 4 h, one impression each
        fb.apply([row(f"h{h}#0", T0 + h * HOUR + 60_000, "impression", "trailer")])
    history = decode_history(client.hgetall(keys.bandit_history(HERO)))
    # the newest hour is T0 + 4 h; 3 hours kept: T0 + 2 h, + 3 h, + 4 h
    assert sorted(h for h, _ in history) == [T0 + 2 * HOUR, T0 + 3 * HOUR, T0 + 4 * HOUR]
    assert counts(client, keys, HERO) == {"n:trailer": 5}  # the state itself forgets nothing
