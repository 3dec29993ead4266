"""How the online store names its keys to its scripts and decodes replies (no Redis; hand-made
replies). The key names themselves: tests/unit/test_keys.py."""

from __future__ import annotations

import math
import re

import orjson

from attune.keys import Keys
from attune.online_store import (
    AGG_SCRIPT,
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
    # bookkeeping; the feature keys deleted on a consent withdrawal are the first 7; the outbox
    # of what waits for the aggregates is the 11th.
    assert STORE.keys.online_user_keys("u1")[7] == "att:u:{u1}:undo"
    assert STORE.keys.online_user_keys("u1")[10] == "att:u:{u1}:outbox"
    assert "K_NEG, K_UNDO, K_APP, K_META, K_OUT =" in APPLY_SCRIPT
    assert "KEYS[7], KEYS[8], KEYS[9], KEYS[10],\n  KEYS[11]" in APPLY_SCRIPT
    assert "redis.call('DEL', K_RECENT, K_RMETA, K_AFF, K_CNT, K_SES, K_DIS, K_NEG)" in (
        APPLY_SCRIPT
    )


def test_the_scripts_do_not_spell_the_key_layout_out() -> None:
    # Every key name reaches the scripts from attune.keys, through KEYS or their parameters.
    for script in (APPLY_SCRIPT, AGG_SCRIPT, TRENDING_SCRIPT):
        for fragment in (":u:", ":i:", "{'", ":trend", ":popular", ":meta'", "prefix", "{agg}"):
            assert fragment not in script, fragment


def test_the_write_script_touches_only_keys_it_is_given() -> None:
    # Redis Cluster: the user's script names no key of its own making (no key(...) builder)
    # and reads no item meta key; every redis.call's key is one of its KEYS locals.
    assert "local function key(" not in APPLY_SCRIPT and "item_meta" not in APPLY_SCRIPT
    used = set(re.findall(r"redis\.call\('[A-Z]+', ([A-Za-z_\[\]0-9]+)", APPLY_SCRIPT))
    assert used <= {
        "K_RECENT",
        "K_RMETA",
        "K_AFF",
        "K_CNT",
        "K_SES",
        "K_DIS",
        "K_NEG",
        "K_UNDO",
        "K_APP",
        "K_META",
        "K_OUT",
        "KEYS[i]",
    }, used


def test_every_aggregate_key_shares_one_hash_slot() -> None:
    k = Keys("att")
    aggregates = [
        k.popular,
        k.meta,
        k.agg_seen,
        k.item_stats("m1"),
        k.trend_slice(3600, 17),
        k.trending(3600),
        k.experiment_live("2026-12-07"),
        k.experiment_live_users("2026-12-07", "e1", "b"),
    ]
    # Redis hashes the text between the first "{" and the next "}" when it is not empty
    assert {key.split("{", 1)[1].split("}", 1)[0] for key in aggregates} == {"agg"}
    assert k.item_stats("m1") == "att:{agg}:i:m1:stats"


def test_the_trending_keys_are_the_windows_last_slices() -> None:
    store = OnlineStore(trending_windows_s=(3600,), trending_slices=12)
    # 5-minute slices: t = 10 h + 7 min is in slice 120 + 1 = 121; the window is 110..121
    keys = store.trending_keys(10 * HOUR_MS + 7 * 60_000)
    assert keys[:3] == ["att:{agg}:meta", "att:{agg}:trending:3600", "att:{agg}:trend:3600:110"]
    assert keys[-1] == "att:{agg}:trend:3600:121" and len(keys) == 2 + 12


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
    # key(t, a, b) in the aggregate script is t[1] .. a .. t[2] (.. b .. t[3])
    assert params["k"] == {
        "item_stats": ["att:{agg}:i:", ":stats"],
        "trend_slice": ["att:{agg}:trend:", ":", ""],
        # today's live experiment counts: key(t, day) and key(t, day, experiment, variant)
        "exp_live": ["att:{agg}:exp:live:", ""],
        "exp_live_users": ["att:{agg}:exp:live:", ":users:", "|", ""],
    }
    assert params["live_ttl"] == 3 * 24 * 3600
    assert params["seen_ms"] == 600_000


def test_the_aggregate_keys_of_earlier_versions_are_recognised_by_name() -> None:
    from attune.online_store import legacy_aggregate_keys

    k = Keys("att")
    assert legacy_aggregate_keys("att:popular", k) == ("att:{agg}:popular", "zsum")
    assert legacy_aggregate_keys("att:meta", k) == ("att:{agg}:meta", "meta")
    assert legacy_aggregate_keys("att:trend:3600:42", k) == ("att:{agg}:trend:3600:42", "zsum")
    assert legacy_aggregate_keys("att:trending:3600", k) == ("att:{agg}:trending:3600", "derived")
    assert legacy_aggregate_keys("att:i:{a:b}:stats", k) == ("att:{agg}:i:a:b:stats", "hsum")
    assert legacy_aggregate_keys("att:exp:live:2026-12-06", k) == (
        "att:{agg}:exp:live:2026-12-06",
        "hsum",
    )
    assert legacy_aggregate_keys("att:exp:live:2026-12-06:users:e|v", k) == (
        "att:{agg}:exp:live:2026-12-06:users:e|v",
        "hll",
    )
    assert legacy_aggregate_keys("att:exp:state", k) == ("att:{exp}:state", "derived")
    assert legacy_aggregate_keys("att:exp:history", k) == ("att:{exp}:history", "derived")
    # not aggregates of an earlier version: user keys, the catalog mirror, other prefixes,
    # other families under the same words, and the new names themselves
    for key in (
        "att:u:{x}:meta",
        "att:i:{m1}:meta",
        "other:popular",
        "att:seg:s:popular",
        "att:exp:other",
        "att:trend:x:1",
        "att:{agg}:popular",
    ):
        assert legacy_aggregate_keys(key, k) is None, key


def test_apply_stats_add_up_their_step_times() -> None:
    from attune.online_store import ApplyStats

    total = ApplyStats(users=1, timings_ms={"users": 2.5})
    total.add(ApplyStats(users=2, timings_ms={"users": 1.0, "count": 0.5}))
    assert (total.users, total.timings_ms) == (3, {"users": 3.5, "count": 0.5})
