"""Today's live experiment counts: the pure parts (parsing, what is counted, reading)."""

from __future__ import annotations

import orjson

from attune.experiments.live import (
    event_day,
    live_fields,
    parse_live_hash,
    parse_recommendation_id,
    read_live_counts,
)
from attune.keys import Keys
from attune.online_store import live_payload

T0_MS = 1_362_139_200_000  # 2013-03-01T12:00:00Z = 15,765 days * 86,400,000 + 12 h


def test_parse_recommendation_id_like_the_batch() -> None:
    assert parse_recommendation_id("ranking_v1:treatment:abc123") == ("ranking_v1", "treatment")
    assert parse_recommendation_id("none:default:0f9a") == ("none", "default")
    # no match (no second colon): both "none", as gold's regexp_extract + nullif does
    assert parse_recommendation_id("legacy-id") == ("none", "none")
    assert parse_recommendation_id("") == ("none", "none")
    # another pattern: "<experiment>/<variant>/..." ; an optional empty group -> "none"
    assert parse_recommendation_id("exp/v2/x", r"^([^/]+)/([^/]+)/") == ("exp", "v2")
    assert parse_recommendation_id("exp//x", r"^([^/]+)/([^/]*)/") == ("exp", "none")
    # search, not match (Spark's regexp_extract finds the pattern anywhere)
    assert parse_recommendation_id("id=e1:v1:", r"=([^:]+):([^:]+):") == ("e1", "v1")


def test_event_day_is_the_utc_date() -> None:
    assert event_day(T0_MS) == "2013-03-01"
    assert event_day(T0_MS + 12 * 3_600_000 - 1) == "2013-03-01"  # 23:59:59.999
    assert event_day(T0_MS + 12 * 3_600_000) == "2013-03-02"  # midnight UTC


def test_what_is_counted() -> None:
    rid = "ranking_v1:control:abc"
    assert live_fields(rid, "impression", T0_MS) == {
        "xd": "2013-03-01",
        "xe": "ranking_v1",
        "xv": "control",
        "xk": "impressions",
    }
    assert live_fields(rid, "rec_click", T0_MS)["xk"] == "clicks"  # type: ignore[index]
    assert live_fields(rid, "click", T0_MS)["xk"] == "clicks"  # type: ignore[index]
    assert live_fields(rid, "purchase", T0_MS)["xk"] == "purchases"  # type: ignore[index]
    assert live_fields(rid, "add_to_cart", T0_MS) is None  # not a live count
    assert live_fields(None, "impression", T0_MS) is None
    assert live_fields("", "impression", T0_MS) is None


def test_the_writer_swaps_the_id_for_the_counted_fields() -> None:
    payload = '{"i":"e1#0","t":1362139200000,"y":"impression","x":1,"it":"m1","m":1,"rc":"ex:b:1"}'
    got = orjson.loads(live_payload(payload, r"^([^:]+):([^:]+):"))
    assert got == {
        "i": "e1#0",
        "t": T0_MS,
        "y": "impression",
        "x": 1,
        "it": "m1",
        "m": 1,
        "xd": "2013-03-01",
        "xe": "ex",
        "xv": "b",
        "xk": "impressions",
    }
    # a type that is not counted just loses the id
    other = '{"i":"e2#0","t":1362139200000,"y":"dismiss","rc":"ex:b:1"}'
    assert orjson.loads(live_payload(other, r"^([^:]+):([^:]+):")) == {
        "i": "e2#0",
        "t": T0_MS,
        "y": "dismiss",
    }


def test_parse_live_hash() -> None:
    raw = {
        b"ranking_v1|control|impressions": b"10",
        b"ranking_v1|control|clicks": b"2",
        b"ranking_v1|treatment|purchases": b"1",
        b"none|default|impressions": b"4",
        b"junk": b"1",  # not written by this module: skipped
        b"a|b|unknown": b"1",
    }
    assert parse_live_hash(raw) == {
        "ranking_v1": {
            "control": {"impressions": 10, "clicks": 2, "purchases": 0},
            "treatment": {"impressions": 0, "clicks": 0, "purchases": 1},
        },
        "none": {"default": {"impressions": 4, "clicks": 0, "purchases": 0}},
    }


class _FakePipe:
    def __init__(self, hll: dict[str, int]) -> None:
        self.hll, self.queued = hll, []  # type: ignore[var-annotated]

    def pfcount(self, key: str) -> None:
        self.queued.append(key)

    def execute(self) -> list[int]:
        return [self.hll.get(k, 0) for k in self.queued]


class _FakeRedis:
    def __init__(self, hashes: dict[str, dict[bytes, bytes]], hll: dict[str, int]) -> None:
        self.hashes, self.hll = hashes, hll

    def hgetall(self, key: str) -> dict[bytes, bytes]:
        return self.hashes.get(key, {})

    def pipeline(self, transaction: bool = False) -> _FakePipe:
        return _FakePipe(self.hll)


def test_read_live_counts_reads_the_keys_of_the_key_schema() -> None:
    keys = Keys("att")
    assert keys.experiment_live("2013-03-01") == "att:{agg}:exp:live:2013-03-01"
    assert (
        keys.experiment_live_users("2013-03-01", "e", "v")
        == "att:{agg}:exp:live:2013-03-01:users:e|v"
    )
    fake = _FakeRedis(
        {"att:{agg}:exp:live:2013-03-01": {b"e|v|impressions": b"3", b"e|v|clicks": b"1"}},
        {"att:{agg}:exp:live:2013-03-01:users:e|v": 2},
    )
    want = {"e": {"v": {"impressions": 3, "clicks": 1, "purchases": 0, "users": 2}}}
    assert read_live_counts(fake, keys, "2013-03-01") == want  # type: ignore[arg-type]
    from datetime import date

    assert read_live_counts(fake, keys, date(2013, 3, 1)) == want  # type: ignore[arg-type]
    assert read_live_counts(fake, keys, "2013-03-02") == {}  # type: ignore[arg-type]


def test_counted_types_are_event_types() -> None:
    from attune.events import EVENT_TYPES
    from attune.experiments.live import COUNT_NAMES, LIVE_COUNTS

    assert set(LIVE_COUNTS) <= set(EVENT_TYPES)
    assert set(LIVE_COUNTS.values()) == set(COUNT_NAMES)
