"""The Redis key schema: every name written out by hand (a running system's data must still be
found under these names, so a change here is a migration, not a refactoring)."""

from __future__ import annotations

import pytest

from attune.config import load_config
from attune.keys import (
    ONLINE_FEATURE_KEYS,
    ONLINE_USER_KEYS,
    Keys,
    KeyTemplate,
    glob_escape,
)

K = Keys("att")


def test_online_store_keys_of_a_user() -> None:
    assert K.user_key("u1", "recent") == "att:u:{u1}:recent"
    # the write script's KEYS, in this order (APPLY_SCRIPT takes them by position)
    assert K.online_user_keys("u1") == [
        "att:u:{u1}:recent",
        "att:u:{u1}:recent_meta",
        "att:u:{u1}:aff",
        "att:u:{u1}:counters",
        "att:u:{u1}:session",
        "att:u:{u1}:dismissed",
        "att:u:{u1}:neg",
        "att:u:{u1}:undo",
        "att:u:{u1}:applied",
        "att:u:{u1}:meta",
        "att:u:{u1}:outbox",
    ]
    # a consent withdrawal deletes the first seven: the features, not undo or bookkeeping
    assert ONLINE_USER_KEYS[:7] == ONLINE_FEATURE_KEYS and "undo" not in ONLINE_FEATURE_KEYS
    with pytest.raises(ValueError, match="unknown user key 'recents'"):
        K.user_key("u1", "recents")


def test_every_other_key_of_a_user_is_under_the_same_prefix() -> None:
    assert K.user_recs("u1") == "att:u:{u1}:recs"
    assert K.user_batch("u1") == "att:u:{u1}:batch"
    assert K.suppressed("u1") == "att:u:{u1}:suppressed"
    assert K.message_cap("u1", "welcome") == "att:u:{u1}:msg:welcome"
    assert K.consent("abc") == "att:u:{abc}:consent"
    assert K.user_keys("u1")[11:] == [
        "att:u:{u1}:recs",
        "att:u:{u1}:batch",
        "att:u:{u1}:suppressed",
        "att:u:{u1}:consent",
    ]
    assert K.user_prefix("u1") == "att:u:{u1}:"
    assert all(k.startswith("att:u:{u1}:") for k in K.user_keys("u1"))
    # erasure's SCAN pattern: the id's glob characters are literal
    assert K.user_glob("u1") == "att:u:{u1}:*"
    assert K.user_glob("a*b?[c]\\") == "att:u:{a\\*b\\?\\[c\\]\\\\}:*"


def test_consent_of_older_versions_sat_outside_every_prefix() -> None:
    assert Keys.legacy_consent("abc") == "consent:abc"
    assert Keys("other").legacy_consent("abc") == "consent:abc"


def test_item_and_global_keys() -> None:
    # the aggregates share the {agg} hash tag (one Redis Cluster slot)
    assert K.item_stats("tt01") == "att:{agg}:i:tt01:stats"
    assert K.item_meta("tt01") == "att:i:{tt01}:meta"
    assert K.item_similar("tt01") == "att:i:{tt01}:similar"
    assert K.item_bought_with("tt01") == "att:i:{tt01}:bought_with"
    assert K.popular == "att:{agg}:popular"
    assert K.meta == "att:{agg}:meta"
    assert K.agg_seen == "att:{agg}:seen"
    assert K.trend_slice(3600, 42) == "att:{agg}:trend:3600:42"
    assert K.trending(86400) == "att:{agg}:trending:86400"
    assert K.segment_popular("loyal") == "att:seg:loyal:popular"
    assert K.views_meta == "att:views"


def test_the_prefix_comes_from_the_config() -> None:
    cfg = load_config(None)
    assert Keys.from_config(cfg) == Keys("att")  # the embedded default
    other = cfg.model_copy(
        update={
            "speed": cfg.speed.model_copy(
                update={
                    "online_store": cfg.speed.online_store.model_copy(update={"key_prefix": "x1"})
                }
            )
        }
    )
    assert Keys.from_config(other).consent("s") == "x1:u:{s}:consent"


def test_templates_trace_the_builders() -> None:
    meta = KeyTemplate.of(K.item_meta)
    assert meta.parts == ("att:i:{", "}:meta")
    assert meta.key("tt01") == "att:i:{tt01}:meta"
    assert meta.glob() == "att:i:{*}:meta"
    assert meta.id_of("att:i:{tt01}:meta") == "tt01"
    assert meta.id_of(b"att:i:{a:b}:meta") == "a:b"
    assert meta.id_of("att:i:{tt01}:stats") is None
    assert meta.id_of("att:i:{") is None
    trend = KeyTemplate.of(K.trend_slice, 2)
    assert trend.parts == ("att:{agg}:trend:", ":", "")
    assert trend.key("3600", "42") == "att:{agg}:trend:3600:42"
    assert KeyTemplate.of(K.segment_popular).glob() == "att:seg:*:popular"
    assert KeyTemplate.of(Keys.legacy_consent).parts == ("consent:", "")
    assert KeyTemplate.of(lambda u: K.message_cap(u, "m*1")).glob() == "att:u:{*}:msg:m\\*1"
    with pytest.raises(ValueError, match="does not put each of its 1 id"):
        KeyTemplate.of(lambda _: K.popular)
    with pytest.raises(ValueError, match="takes 2 id"):
        trend.key("3600")


def test_glob_escape() -> None:
    assert glob_escape("plain:{x}") == "plain:{x}"
    assert glob_escape("*?[]\\") == "\\*\\?\\[\\]\\\\"
