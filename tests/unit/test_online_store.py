"""How the online store names its keys to its scripts and decodes replies (no Redis; hand-made
replies). The key names themselves: tests/unit/test_keys.py."""

from __future__ import annotations

import math

import orjson

from attune.keys import Keys
from attune.online_store import (
    APPLY_SCRIPT,
    SCALE,
    TRENDING_SCRIPT,
    OnlineStore,
    decode_user_features,
    evaluate_affinities,
)

HOUR_MS = 3_600_000
STORE = OnlineStore(prefix="att", half_life_ms=HOUR_MS, ignore_min_impressions=3)


def test_the_store_names_its_keys_with_the_key_schema() -> None:
    assert STORE.keys == Keys("att")
    assert OnlineStore(prefix="x1").keys.user_key("u1", "undo") == "x1:u:{u1}:undo"


def test_undo_key_reaches_the_write_script() -> None:
    # The write script takes the keys by position: undo is its 8th, after neg, before the
    # bookkeeping; the feature keys deleted on a consent withdrawal are the first 7.
    assert STORE.keys.online_user_keys("u1")[7] == "att:u:{u1}:undo"
    assert "K_NEG, K_UNDO, K_APP, K_META =" in APPLY_SCRIPT
    assert "KEYS[7], KEYS[8], KEYS[9], KEYS[10]" in APPLY_SCRIPT
    assert "redis.call('DEL', K_RECENT, K_RMETA, K_AFF, K_CNT, K_SES, K_DIS, K_NEG)" in (
        APPLY_SCRIPT
    )


def test_the_scripts_do_not_spell_the_key_layout_out() -> None:
    # Every key name reaches the scripts from attune.keys, through KEYS or their parameters.
    for script in (APPLY_SCRIPT, TRENDING_SCRIPT):
        for fragment in (":u:", ":i:", "{'", ":trend", ":popular", ":meta'", "prefix"):
            assert fragment not in script, fragment


def test_affinity_units_evaluate_to_decayed_sums() -> None:
    # Bucket span = 16 h = 57,600,000 ms. One weight-1 interaction 2 h into bucket 10 is stored
    # as 2^20 * 2^2 units; as of that moment it is worth exactly 1, an hour later 1/2.
    t = 10 * 57_600_000 + 2 * HOUR_MS
    units = {"10:Drama": SCALE * 4}
    assert evaluate_affinities(units, t, STORE) == {"Drama": 1.0}
    assert evaluate_affinities(units, t + HOUR_MS, STORE) == {"Drama": 0.5}
    # A weight-3 interaction at the start of bucket 11 (16 h later): 3 * 2^20 units. As of 1 h
    # into bucket 11 the first is 15 half-lives old, the second one: 2^-15 + 3/2.
    units["11:Drama"] = 3 * SCALE
    got = evaluate_affinities(units, 11 * 57_600_000 + HOUR_MS, STORE)
    assert math.isclose(got["Drama"], 2**-15 + 1.5, rel_tol=1e-12)


def test_decode_user_features() -> None:
    t = 10 * 57_600_000 + 2 * HOUR_MS
    raw = [
        [(b"m2", float(t)), (b"m1", float(t - 60_000))],  # ZREVRANGE recent WITHSCORES
        {
            b"m2": orjson.dumps({"type": "purchase", "t": t, "i": "e4#0"}),
            b"m1": orjson.dumps({"type": "item_view", "t": t - 60_000, "i": "e1#0"}),
        },
        {b"10:Drama": str(SCALE * 4).encode(), b"10:Horror": str(-2 * SCALE * 4).encode()},
        {
            b"item_view": b"2",
            b"purchase": b"1",
            b"events": b"3",
            b"first_t": str(t - 60_000).encode(),
            b"last_t": str(t).encode(),
        },
        {
            b"id": b"s1",
            b"start_t": str(t - 60_000).encode(),
            b"last_t": str(t).encode(),
            b"events": b"3",
            b"n:item_view": b"2",
            b"n:purchase": b"1",
            b"last_item": b"m2",
            b"last_type": b"purchase",
        },
        [(b"m3", float(t - 30_000))],  # ZREVRANGE dismissed WITHSCORES
        {b"imp:Horror": b"3", b"imp:Drama": b"5", b"eng:Drama": b"1"},
        [],  # ZRANGE undo WITHSCORES
    ]
    f = decode_user_features("u1", raw, STORE)
    assert f.recent_item_ids == ["m2", "m1"]
    assert [r.type for r in f.recent] == ["purchase", "item_view"]
    # As of the last event (t): Drama = 4 units-worth * 2^-2 = 1, Horror = -2.
    assert f.as_of_ms == t
    assert f.affinities == {"Drama": 1.0, "Horror": -2.0}
    assert (f.views, f.carts, f.purchases) == (2, 0, 1)
    assert f.counters["events"] == 3 and "last_t" not in f.counters
    assert f.session is not None and f.session.session_id == "s1"
    assert f.session.by_type == {"item_view": 2, "purchase": 1}
    assert f.dismissed_items == ["m3"]
    # Horror: 3 impressions (threshold 3), no engagement -> ignored; Drama was engaged.
    assert f.ignored_genres == ["Horror"]


def test_empty_user() -> None:
    f = decode_user_features("nobody", [[], {}, {}, {}, {}, [], {}, []], STORE)
    assert f.is_empty and f.session is None and f.affinities == {} and f.as_of_ms is None


def test_dismissals_in_force_are_later_than_their_undo() -> None:
    t = 1_000_000
    dismissed = [(b"m4", float(t + 9)), (b"m3", float(t + 5)), (b"m2", float(t + 3))]
    dismissed += [(b"m1", float(t))]
    # m4: undone before it was dismissed again (+2 < +9): in force; m3: undone at the same
    # time (+5): not; m2: undone later (+4 > +3): not; m1: never undone: in force. m9's undo
    # has no dismissal to lift.
    undo = [(b"m4", float(t + 2)), (b"m2", float(t + 4)), (b"m3", float(t + 5))]
    undo += [(b"m9", float(t + 6))]
    f = decode_user_features("u1", [[], {}, {}, {}, {}, dismissed, {}, undo], STORE)
    assert f.dismissed_items == ["m4", "m1"]
    # Everything undone: nothing dismissed, and the user counts as empty.
    f = decode_user_features("u1", [[], {}, {}, {}, {}, dismissed[1:3], {}, undo], STORE)
    assert f.dismissed_items == [] and f.is_empty


def test_script_params() -> None:
    store = OnlineStore(trending_windows_s=(600,))
    params = orjson.loads(store.script_params())
    assert params["trend_ttl"] == {"600": 1200}
    # key(t, a, b) in the scripts is t[1] .. a .. t[2] (.. b .. t[3])
    assert params["k"] == {
        "item_meta": ["att:i:{", "}:meta"],
        "item_stats": ["att:i:{", "}:stats"],
        "trend_slice": ["att:trend:", ":", ""],
        "popular": "att:popular",
        "meta": "att:meta",
        # today's live experiment counts: key(t, day) and key(t, day, experiment, variant)
        "exp_live": ["att:exp:live:", ""],
        "exp_live_users": ["att:exp:live:", ":users:", "|", ""],
    }
    assert params["live_ttl"] == 3 * 24 * 3600
    assert orjson.loads(store.trending_params()) == {
        "meta": "att:meta",
        "trend_slice": ["att:trend:", ":", ""],
        "trending": ["att:trending:", ""],
    }
