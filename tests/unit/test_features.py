"""The feature functions on small hand-made event sets; every expected value worked out by hand.

Parameters used throughout: half-life 1 h (3,600,000 ms), so an affinity bucket spans 16 h
(57,600,000 ms); trending windows 1 h and 24 h in 12 slices (5 min and 2 h); weights from the
default config (item_view 1, add_to_cart 3, rating 2, dismiss -2, impression 0).
"""

from __future__ import annotations

import pytest
from pyspark.sql import Row
from pyspark.testing import assertDataFrameEqual

from attune import features as F
from tests.unit.speed_layer.events import T0_MS, events_df, minutes, stored
from tests.unit.titles import TRICKY_TITLES

HOUR_MS = 3_600_000

PARAMS = F.FeatureParams(
    half_life_ms=HOUR_MS,
    affinity_weights={
        "item_view": 1.0,
        "add_to_cart": 3.0,
        "purchase": 5.0,
        "rating": 2.0,
        "dismiss": -2.0,
    },
    rating_neutral=5.0,
    trending_windows_s=(3600, 86400),
    trending_slices=12,
    recent_items=2,
    dismissed_items=10,
    session_gap_ms=30 * 60 * 1000,
    ignore_min_impressions=2,
)


@pytest.fixture
def catalog(spark):  # type: ignore[no-untyped-def]
    return spark.createDataFrame(
        [
            ("m1", ["Drama", "Comedy", "Drama"]),
            ("m2", ["Drama"]),
            ("m3", ["Horror"]),
            ("m5", []),
        ],
        F.CATALOG_DDL,
    )


def rows(spark, events, catalog):  # type: ignore[no-untyped-def]
    return F.feature_rows(events_df(spark, events), catalog, PARAMS)


def test_interactions_one_row_per_item_and_one_for_itemless_events(spark) -> None:  # type: ignore[no-untyped-def]
    events = [
        stored("e1", "item_view", minutes(0), ["m1", "m2"]),
        stored("e2", "search", minutes(1), query="dune"),
    ]
    got = F.interactions(events_df(spark, events)).select(
        "user", "iid", "type", "ts_ms", "item_id", "event_row", "forget"
    )
    # e1 has two items: two rows, only the first carries the event-level updates; e2 has none.
    expected = [
        Row("alice", "e1#0", "item_view", T0_MS, "m1", True, False),
        Row("alice", "e1#1", "item_view", T0_MS, "m2", False, False),
        Row("alice", "e2#0", "search", T0_MS + 60_000, None, True, False),
    ]
    assertDataFrameEqual(got, spark.createDataFrame(expected, got.schema))


def test_weights_and_affinity_units(spark) -> None:  # type: ignore[no-untyped-def]
    events = [
        stored("e1", "item_view", minutes(0), ["m1"]),
        stored("e2", "rating", minutes(60), ["m1"], rating=8.0),
        stored("e3", "dismiss", minutes(0), ["m3"]),
        stored("e4", "search", minutes(0), query="x"),
    ]
    df = F.with_affinity_units(
        F.with_weights(F.interactions(events_df(spark, events)), PARAMS.affinity_weights, 5.0),
        HOUR_MS,
    ).select("iid", "weight", "aff_bucket", "aff_units")
    # T0 = 1,362,139,200,000 ms; the 16 h bucket is floor(T0 / 57,600,000) = 23648, starting at
    # 1,362,124,800,000, so T0 is 14,400,000 ms = 4 half-lives into it and T0 + 60 min is 5.
    # item_view (1):      round(1 * 2^20 * 2^4)   = 16,777,216
    # rating 8 (2*3/5 = 1.2): round(1.2 * 2^20 * 2^5) = round(40,265,318.4) = 40,265,318
    # dismiss (-2):       round(-2 * 2^20 * 2^4)  = -33,554,432
    # search (no item):   weight 0, units 0
    expected = [
        Row("e1#0", 1.0, 23648, 16_777_216),
        Row("e2#0", 1.2, 23648, 40_265_318),
        Row("e3#0", -2.0, 23648, -33_554_432),
        Row("e4#0", 0.0, 23648, 0),
    ]
    assertDataFrameEqual(df, spark.createDataFrame(expected, df.schema), rtol=1e-12)


def test_genre_affinities_decay_from_the_latest_event(spark, catalog) -> None:  # type: ignore[no-untyped-def]
    events = [
        stored("e1", "item_view", minutes(0), ["m1"]),  # Drama, Comedy; weight 1
        stored("e2", "add_to_cart", minutes(60), ["m2"]),  # Drama; weight 3
        stored("e3", "dismiss", minutes(120), ["m3"]),  # Horror; weight -2
    ]
    r = rows(spark, events, catalog)
    # As of the latest event (T0 + 120 min): e1 is 2 half-lives old, e2 one, e3 none.
    # Drama = 1 * 1/4 + 3 * 1/2 = 1.75; Comedy = 1/4; Horror = -2.
    got = F.genre_affinities(r, HOUR_MS)
    expected = [("alice", "Comedy", 0.25), ("alice", "Drama", 1.75), ("alice", "Horror", -2.0)]
    assertDataFrameEqual(got, spark.createDataFrame(expected, got.schema), rtol=1e-9)
    # One hour later every value halves.
    later = F.genre_affinities(r, HOUR_MS, as_of_ms=T0_MS + 3 * HOUR_MS)
    expected = [("alice", "Comedy", 0.125), ("alice", "Drama", 0.875), ("alice", "Horror", -1.0)]
    assertDataFrameEqual(later, spark.createDataFrame(expected, later.schema), rtol=1e-9)


def test_recent_items_latest_interaction_per_item(spark, catalog) -> None:  # type: ignore[no-untyped-def]
    events = [
        stored("e1", "item_view", minutes(0), ["m1"]),
        stored("e2", "item_view", minutes(10), ["m2"]),
        stored("e3", "add_to_cart", minutes(20), ["m1"]),
        stored("e4", "impression", minutes(30), ["m3"]),  # shown, not interacted with
        stored("e5", "item_view", minutes(5), ["m5"]),  # arrives late, by event time
    ]
    got = F.recent_items(rows(spark, events, catalog), 2)
    # Latest per item: m1 add_to_cart at +20, m2 at +10, m5 at +5; N = 2 keeps m1, m2.
    expected = [
        ("alice", 1, "m1", "add_to_cart", T0_MS + 20 * 60_000),
        ("alice", 2, "m2", "item_view", T0_MS + 10 * 60_000),
    ]
    assertDataFrameEqual(got, spark.createDataFrame(expected, got.schema))


def test_counters_activity_and_sessions(spark, catalog) -> None:  # type: ignore[no-untyped-def]
    events = [
        stored("e1", "item_view", minutes(0), ["m1", "m2"]),  # one event, two items
        stored("e2", "item_view", minutes(10), ["m2"]),
        stored("e3", "add_to_cart", minutes(50), ["m2"]),  # 40 min gap: a new session
        stored("e4", "search", minutes(60), query="x"),
    ]
    r = rows(spark, events, catalog)
    counters = F.user_counters(r)
    expected = [("alice", "add_to_cart", 1), ("alice", "item_view", 2), ("alice", "search", 1)]
    assertDataFrameEqual(counters, spark.createDataFrame(expected, counters.schema))
    activity = F.user_activity(r)
    expected_activity = [("alice", 4, T0_MS, T0_MS + 60 * 60_000)]
    assertDataFrameEqual(activity, spark.createDataFrame(expected_activity, activity.schema))
    # No session ids: the 40 min gap (> 30) starts the latest session at +50 min, named
    # "t" + its start in ms: 1,362,139,200,000 + 3,000,000.
    sessions = F.session_state(r, PARAMS.session_gap_ms)
    expected_session = [("alice", "t1362142200000", T0_MS + 50 * 60_000, T0_MS + 60 * 60_000, 2)]
    assertDataFrameEqual(sessions, spark.createDataFrame(expected_session, sessions.schema))


def test_sessions_by_session_id(spark, catalog) -> None:  # type: ignore[no-untyped-def]
    events = [
        stored("e1", "item_view", minutes(0), ["m1"], session_id="s1"),
        stored("e2", "item_view", minutes(5), ["m1"], session_id="s2"),
        stored("e3", "item_view", minutes(8), ["m2"], session_id="s2"),
    ]
    got = F.session_state(rows(spark, events, catalog), PARAMS.session_gap_ms)
    expected = [("alice", "s2", T0_MS + 5 * 60_000, T0_MS + 8 * 60_000, 2)]
    assertDataFrameEqual(got, spark.createDataFrame(expected, got.schema))


def test_negative_feedback(spark, catalog) -> None:  # type: ignore[no-untyped-def]
    events = [
        stored("e1", "impression", minutes(0), ["m3", "m2"]),  # Horror, Drama shown
        stored("e2", "impression", minutes(1), ["m3"]),  # Horror shown again
        stored("e3", "item_view", minutes(2), ["m2"]),  # Drama engaged
        stored("e4", "dismiss", minutes(3), ["m3"]),
        stored("e5", "not_interested", minutes(4), ["m1"]),
    ]
    r = rows(spark, events, catalog)
    dismissed = F.dismissed_items(r, 10)
    expected = [
        ("alice", 1, "m1", T0_MS + 4 * 60_000),
        ("alice", 2, "m3", T0_MS + 3 * 60_000),
    ]
    assertDataFrameEqual(dismissed, spark.createDataFrame(expected, dismissed.schema))
    exposure = F.genre_exposure(r)
    # Horror: 2 impressions, 0 engagements; Drama: 1 impression, 1 engagement (e3).
    expected_exposure = [("alice", "Drama", 1, 1), ("alice", "Horror", 2, 0)]
    assertDataFrameEqual(exposure, spark.createDataFrame(expected_exposure, exposure.schema))
    ignored = F.ignored_genres(exposure, 2)
    assertDataFrameEqual(ignored, spark.createDataFrame([("alice", "Horror")], ignored.schema))


def test_trending_and_popularity(spark, catalog) -> None:  # type: ignore[no-untyped-def]
    events = [
        stored("e1", "item_view", minutes(0), ["m1"]),
        stored("e2", "item_view", minutes(5), ["m1"], user="bob"),
        stored("e3", "item_view", minutes(30), ["m2"]),
        stored("e4", "add_to_cart", minutes(59), ["m2"]),
        stored("e5", "impression", minutes(40), ["m3"]),  # not an engagement
    ]
    r = rows(spark, events, catalog)
    # 5-min slices; as of T0 + 60 min the last slice is T0's + 12, so the 1 h window is slices
    # T0+1 .. T0+12: e1 (slice T0+0) is out, e2 (+1), e3 (+6), e4 (+11) are in.
    got = F.trending(r, 3600, 12, T0_MS + HOUR_MS)
    assertDataFrameEqual(got, spark.createDataFrame([("m1", 1), ("m2", 2)], got.schema))
    pop = F.popularity(r)
    assertDataFrameEqual(pop, spark.createDataFrame([("m1", 2), ("m2", 2)], pop.schema))


def test_consent(spark, catalog) -> None:  # type: ignore[no-untyped-def]
    events = [
        stored("e1", "item_view", minutes(0), ["m1"]),
        stored("e2", "consent_update", minutes(10), personalization=False),
        stored("e3", "item_view", minutes(20), ["m2"], personalization=False),
        stored("e4", "item_view", minutes(30), ["m3"]),  # consent given again
        stored("e5", "item_view", minutes(40), ["m2"], user="bob", personalization=False),
    ]
    r = rows(spark, events, catalog)
    # e3 and e5 never count; the withdrawal (e2) forgets e1; only e4 is left.
    recent = F.recent_items(r, 10)
    expected = [("alice", 1, "m3", "item_view", T0_MS + 30 * 60_000)]
    assertDataFrameEqual(recent, spark.createDataFrame(expected, recent.schema))
    counters = F.user_counters(r)
    assertDataFrameEqual(
        counters, spark.createDataFrame([("alice", "item_view", 1)], counters.schema)
    )


def test_genres_from_catalog_else_category(spark, catalog) -> None:  # type: ignore[no-untyped-def]
    events = [
        stored("e1", "item_view", minutes(0), ["m1"]),
        stored("e2", "item_view", minutes(1), ["m5"]),  # in the catalog without genres
        stored("e3", "item_view", minutes(2), [{"item_id": "m9", "category": "Books"}]),
    ]
    got = F.with_genres(F.interactions(events_df(spark, events)), catalog).select("iid", "genres")
    expected = [("e1#0", ["Drama", "Comedy"]), ("e2#0", []), ("e3#0", ["Books"])]
    assertDataFrameEqual(got, spark.createDataFrame(expected, got.schema))


def test_online_rows_payload(spark) -> None:  # type: ignore[no-untyped-def]
    events = [stored("e1", "item_view", minutes(0), ["m1"], session_id="s1")]
    got = F.online_rows(events_df(spark, events), PARAMS).collect()
    # Bucket 23648 and units 16,777,216 as in test_weights_and_affinity_units; trending slices
    # T0 / 300,000 = 4,540,464 and T0 / 7,200,000 = 189,186; nulls are left out.
    assert [tuple(r) for r in got] == [
        (
            "alice",
            T0_MS,
            "e1#0",
            '{"i":"e1#0","t":1362139200000,"y":"item_view","x":1,"s":"s1","it":"m1",'
            '"b":23648,"a":"16777216","r":1,"n":1,"tr":["3600:4540464","86400:189186"]}',
        )
    ]


def test_online_rows_carry_the_recommendation_id_for_live_counts(spark) -> None:  # type: ignore[no-untyped-def]
    rid = "ranking_v1:control:abc"
    events = [
        stored("e1", "impression", minutes(0), ["m1", "m2"], recommendation_id=rid),
        stored("e2", "dismiss", minutes(1), ["m1"], recommendation_id=rid),
    ]
    got = {
        r["iid"]: r["payload"] for r in F.online_rows(events_df(spark, events), PARAMS).collect()
    }
    # Only the impression's event row (position 0) carries "rc": one count per event; the
    # second item's row and a dismissal (not a live count) do not.
    assert got["e1#0"].endswith(',"m":1,"rc":"ranking_v1:control:abc"}')
    assert '"rc"' not in got["e1#1"] and '"rc"' not in got["e2#0"]


# (event id, type, minutes after T0, items, reason): dismiss -> undo -> dismiss and friends.
UNDO_SEQUENCE = [
    ("e1", "dismiss", 0, ["m1"], None),
    ("e2", "undo_feedback", 1, ["m1"], "dismiss"),
    ("e3", "dismiss", 2, ["m1"], None),  # dismissed again after the undo: in force
    ("e4", "not_interested", 3, ["m2"], None),
    ("e5", "undo_feedback", 4, ["m2"], "not_interested"),  # undone
    ("e6", "dismiss", 5, ["m3"], None),
    ("e7", "undo_feedback", 5, ["m3"], "dismiss"),  # same time: undone
    ("e8", "dismiss", 1, ["m5"], None),
    ("e9", "undo_feedback", 6, ["m5"], None),  # undone (no reason: undoes either)
    ("e10", "dismiss", 6, ["m7"], None),
    ("e11", "undo_feedback", 7, ["m6", "m7"], "dismiss"),  # m7 undone; m6 not dismissed yet
    ("e12", "dismiss", 8, ["m6"], None),  # later than m6's undo: in force
]


def _undo_events(user: str, order: list[int]):  # type: ignore[no-untyped-def]
    out = []
    for i in order:
        event_id, etype, minute, items, reason = UNDO_SEQUENCE[i]
        extra = {"reason": reason} if reason else {}
        out.append(stored(event_id, etype, minutes(minute), items, user=user, **extra))
    return out


def test_dismissals_in_force_after_undos_in_any_order(spark, catalog) -> None:  # type: ignore[no-untyped-def]
    n = len(UNDO_SEQUENCE)
    events = (
        _undo_events("alice", list(range(n)))  # as they happened
        + _undo_events("bob", list(reversed(range(n))))  # newest first
        # interleaved, and every event twice (a replay): maxima do not care
        + _undo_events("carol", [5, 11, 0, 6, 2, 9, 4, 10, 1, 7, 3, 8] * 2)
    )
    r = rows(spark, events, catalog)
    # Per item, latest dismissal vs latest undo: m1 2 > 1 (in force), m2 3 < 4, m3 5 = 5
    # (undone: a tie goes to the undo), m5 1 < 6, m7 6 < 7, m6 8 > 7 (in force).
    got = F.dismissed_items(r, 10)
    expected = [
        (user, rank, item, T0_MS + minute * 60_000)
        for user in ("alice", "bob", "carol")
        for rank, item, minute in ((1, "m6", 8), (2, "m1", 2))
    ]
    assertDataFrameEqual(got, spark.createDataFrame(expected, got.schema))
    # N = 2, as the online store keeps it: the 2 newest dismissals are m6 (+8) and m7 (+6), the
    # 2 newest undos m7 and m6 (both +7; ties by item id, descending); m7 is undone, m1 (+2)
    # is not among the last 2 dismissals: only m6 is left.
    two = F.dismissed_items(r.where("user = 'alice'"), 2)
    assertDataFrameEqual(
        two, spark.createDataFrame([("alice", 1, "m6", T0_MS + 8 * 60_000)], two.schema)
    )


def test_an_undo_is_no_interaction_and_no_activity(spark, catalog) -> None:  # type: ignore[no-untyped-def]
    r = rows(spark, _undo_events("alice", list(range(len(UNDO_SEQUENCE)))), catalog)
    flags = r.where("type = 'undo_feedback'").select(
        "iid", "event_row", "weight", "is_recent", "is_engagement", "is_negative", "is_undo"
    )
    # e11 has two items; no undo row carries event-level updates or weighs anything.
    expected = [
        Row(iid, False, 0.0, False, False, False, True)
        for iid in ("e2#0", "e5#0", "e7#0", "e9#0", "e11#0", "e11#1")
    ]
    assertDataFrameEqual(flags, spark.createDataFrame(expected, flags.schema))
    # Counters: the 6 dismiss and 1 not_interested events, no undo_feedback; activity: those 7
    # events, first at T0 (e1), last at T0 + 8 min (e12).
    counters = F.user_counters(r)
    expected_counters = [("alice", "dismiss", 6), ("alice", "not_interested", 1)]
    assertDataFrameEqual(counters, spark.createDataFrame(expected_counters, counters.schema))
    activity = F.user_activity(r)
    expected_activity = [("alice", 7, T0_MS, T0_MS + 8 * 60_000)]
    assertDataFrameEqual(activity, spark.createDataFrame(expected_activity, activity.schema))
    assert F.recent_items(r, 10).count() == 0


def test_online_rows_payload_of_an_undo(spark) -> None:  # type: ignore[no-untyped-def]
    events = [stored("u1", "undo_feedback", minutes(0), ["m1"], reason="dismiss")]
    got = F.online_rows(events_df(spark, events), PARAMS).collect()
    # Only the undo flag: no "x" (no counters, no session), no affinity units, no other flag.
    assert [tuple(r) for r in got] == [
        (
            "alice",
            T0_MS,
            "u1#0",
            '{"i":"u1#0","t":1362139200000,"y":"undo_feedback","it":"m1","u":1}',
        )
    ]


def test_feedback_types_agree_with_the_event_types() -> None:
    from attune.events import EVENT_TYPES

    assert tuple(n for n, t in EVENT_TYPES.items() if t.undoes) == F.UNDO_TYPES
    for undo in F.UNDO_TYPES:
        assert EVENT_TYPES[undo].undoes == F.NEGATIVE_TYPES


# ----------------------------------------------------------------------------------------
# Item content: one rule, the Python reference (what the models build their item table with)
# and the Spark expression (gold/items), checked against tokens written by hand
# (tests/unit/titles.py; tests/unit/models/test_models_encoders.py checks the models' table).


@pytest.mark.parametrize(("title", "tokens"), TRICKY_TITLES)
def test_title_tokens_reference(title: str | None, tokens: list[str]) -> None:
    assert F.title_tokens(title) == tokens


def test_title_tokens_in_spark_are_the_reference_tokens(spark) -> None:  # type: ignore[no-untyped-def]
    df = spark.createDataFrame(
        [(i, t) for i, (t, _) in enumerate(TRICKY_TITLES)], "i INT, t STRING"
    )
    got = {
        r["i"]: r["tokens"]
        for r in df.select("i", F.title_tokens_column("t").alias("tokens")).collect()
    }
    assert got == {i: tokens for i, (_, tokens) in enumerate(TRICKY_TITLES)}


def test_the_year_of_a_title_is_its_trailing_parenthesised_year() -> None:
    def year(title: str) -> str | None:
        m = F.TITLE_YEAR.search(title)
        return m.group(1) if m else None

    assert year("Heat (1995)") == "1995"
    assert year("Heat (1995) ") == "1995"
    assert year("The Year (1999) of Living") is None
    assert year("Heat 1995") is None


def test_whitespace_is_what_python_strips() -> None:
    import re
    import sys

    everything = (chr(c) for c in range(sys.maxunicode + 1) if not 0xD800 <= c <= 0xDFFF)
    spaces = {c for c in everything if c.isspace()}
    assert set(F.WHITESPACE) == spaces
    assert {c for c in spaces if re.fullmatch(F.WHITESPACE_CLASS, c)} == spaces


CLEAN_CASES: list[tuple[str | None, str | None]] = [
    (None, None),
    ("", None),
    ("  ", None),
    (" Drama ", "Drama"),
    ("\tSci-Fi\u00a0\n", "Sci-Fi"),  # tab, no-break space, newline: Spark's trim keeps them
    ("Film Noir", "Film Noir"),  # inner whitespace stays
]


@pytest.mark.parametrize(("raw", "clean"), CLEAN_CASES)
def test_clean_text_reference(raw: str | None, clean: str | None) -> None:
    assert F.clean_text(raw) == clean


def test_clean_text_and_labels_in_spark_are_the_reference(spark) -> None:  # type: ignore[no-untyped-def]
    df = spark.createDataFrame(
        [(i, raw) for i, (raw, _) in enumerate(CLEAN_CASES)], "i INT, v STRING"
    )
    got = {r["i"]: r["c"] for r in df.select("i", F.clean_text_column("v").alias("c")).collect()}
    assert got == {i: clean for i, (_, clean) in enumerate(CLEAN_CASES)}

    labels = [" Drama", "Comedy", None, "", "Drama ", "\tHorror", "Comedy"]
    assert F.clean_labels(labels) == ("Drama", "Comedy", "Horror")  # first of each, in order
    arrays = spark.createDataFrame([(labels,), (None,), ([],)], "g ARRAY<STRING>")
    got_labels = [r["g"] for r in arrays.select(F.clean_labels_column("g").alias("g")).collect()]
    assert got_labels == [["Drama", "Comedy", "Horror"], None, []]
