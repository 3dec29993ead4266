"""Silver's pure functions on hand-made events: dedup, bots, erasure, catalog, users."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

import pytest

from spark.silver import (
    bot_days,
    cleanse_events,
    decrypt_traits,
    deduplicate,
    latest_items,
    users_dimension,
    without_erased,
)
from tests.unit.spark.fixtures import at, bronze_frame, ev

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

KEY = bytes(range(32))


def test_deduplicate_keeps_the_first_received_copy(spark: SparkSession) -> None:
    from pyspark.testing import assertDataFrameEqual

    bronze = bronze_frame(
        spark,
        [
            ev("e1", "item_view", "u1", at(3), ["i1"]),
            ev("e2", "item_view", "u1", at(3, 13), ["i2"]),
            # a client retry of e1 half an hour later, past the stream's watermark
            ev("e1", "item_view", "u1", at(3), ["i1"], received=at(3, 12, 30)),
        ],
    )
    # offsets are 0, 1, 2 in list order: e1's first copy (offset 0) wins
    assertDataFrameEqual(
        deduplicate(bronze).select("event_id", "kafka_offset"),
        [("e1", 0), ("e2", 1)],
    )


def test_bot_days_flags_rate_per_day_and_per_minute(spark: SparkSession) -> None:
    from pyspark.sql import Row
    from pyspark.testing import assertDataFrameEqual

    events = [
        # b1: 3 events in the minute 12:00 on the 3rd -> peak 3 > 2 per minute
        *[ev(f"b1-{s}", "item_view", "b1", at(3, 12, 0, s), ["i1"]) for s in (1, 2, 3)],
        # b1 on the 4th: one event, a normal day
        ev("b1-4", "item_view", "b1", at(4), ["i1"]),
        # b2: 5 events on the 4th, each in its own minute -> 5 > 4 per day, peak 1
        *[ev(f"b2-{m}", "item_view", "b2", at(4, 9, m), ["i1"]) for m in range(5)],
        # h: 2 in one minute and 2 that day: within both limits
        *[ev(f"h-{s}", "item_view", "h", at(3, 8, 0, s), ["i1"]) for s in (1, 2)],
        # an anonymous visitor counts under the anonymous id
        *[ev(f"a-{s}", "item_view", None, at(3, 7, 0, s), ["i1"], anonymous="a") for s in range(3)],
    ]
    flagged = bot_days(bronze_frame(spark, events), max_per_day=4, max_per_minute=2)
    d3, d4 = at(3).date(), at(4).date()
    assertDataFrameEqual(
        flagged,
        [
            Row(
                user="a",
                event_date=d3,
                events=3,
                peak_per_minute=3,
                reason="3 events in one minute > 2",
            ),
            Row(
                user="b1",
                event_date=d3,
                events=3,
                peak_per_minute=3,
                reason="3 events in one minute > 2",
            ),
            Row(
                user="b2",
                event_date=d4,
                events=5,
                peak_per_minute=1,
                reason="5 events in a day > 4",
            ),
        ],
    )


def test_cleanse_drops_the_bot_day_and_keeps_the_rest(spark: SparkSession) -> None:
    from pyspark.testing import assertDataFrameEqual

    events = [
        *[ev(f"b1-{s}", "item_view", "b1", at(3, 12, 0, s), ["i1"]) for s in (1, 2, 3)],
        ev("b1-4", "item_view", "b1", at(4), ["i1"]),
        ev("h-1", "item_view", "h", at(3), ["i2"]),
        ev("h-1", "item_view", "h", at(3), ["i2"], received=at(3, 14)),
    ]
    out = cleanse_events(bronze_frame(spark, events), None, max_per_day=10, max_per_minute=2)
    # b1's three events of the 3rd go (peak 3 > 2); its 4th-day event and h's single copy stay
    assertDataFrameEqual(out.events.select("event_id"), [("b1-4",), ("h-1",)])
    assert out.events.columns[-1] == "event_date" and "kafka_offset" not in out.events.columns


def test_erasure_removes_events_received_up_to_the_request(spark: SparkSession) -> None:
    from pyspark.testing import assertDataFrameEqual

    events = [
        ev("x1", "item_view", "px", at(3), ["i1"]),
        ev("x2", "item_view", None, at(3, 13), ["i1"], anonymous="pa"),
        ev("x3", "item_view", "px", at(5), ["i1"]),  # received after the request: new data
        ev("y1", "item_view", "py", at(3), ["i1"]),
    ]
    requests = spark.createDataFrame(
        [("r1", "px", "user", at(4)), ("r1", "pa", "linked", at(4))],
        "request_id STRING, pseudonym STRING, id_kind STRING, requested_at TIMESTAMP",
    )
    kept = without_erased(bronze_frame(spark, events), requests)
    assertDataFrameEqual(kept.select("event_id"), [("x3",), ("y1",)])


def _records(spark: SparkSession, rows: list[tuple[str | None, str | None, int]]):  # type: ignore[no-untyped-def]
    """Kafka-connector-shaped records: key/value as binary, partition 0, given offsets."""
    from pyspark.sql import functions as F

    df = spark.createDataFrame(rows, "k STRING, v STRING, offset BIGINT")
    return df.select(
        F.col("k").cast("binary").alias("key"),
        F.col("v").cast("binary").alias("value"),
        F.lit(0).alias("partition"),
        "offset",
        (F.lit(1_362_000_000) + F.col("offset")).cast("timestamp").alias("timestamp"),
    )


def test_latest_items_from_catalog_records(spark: SparkSession) -> None:
    from pyspark.sql import Row
    from pyspark.testing import assertDataFrameEqual

    records = _records(
        spark,
        [
            ("i1", '{"item_id": "i1", "title": "Old", "year": 1999, "genres": ["Drama"]}', 0),
            ("i1", '{"item_id": "i1", "title": "New", "genres": ["Drama", " ", "Drama"]}', 1),
            ("i2", '{"item_id": "i2", "title": "Gone", "genres": []}', 2),
            ("i2", None, 3),  # tombstone: i2 is deleted
            ("i3", '{"title": "Keyed", "price": 9.5, "tags": ["cult"]}', 4),  # id from the key
            ("bad", "{not json", 5),
            ("arr", "[1, 2]", 6),
            (None, '{"title": "no id anywhere"}', 7),
        ],
    )
    items, malformed = latest_items(records)
    assertDataFrameEqual(
        items,
        [
            Row(item_id="i1", title="New", year=None, genres=["Drama"], price=None, tags=[]),
            Row(item_id="i3", title="Keyed", year=None, genres=[], price=9.5, tags=["cult"]),
        ],
    )
    # malformed: invalid JSON, a JSON array, an object with no id and no key
    assert sorted(r["offset"] for r in malformed.collect()) == [5, 6, 7]


def _profile_events() -> list:  # type: ignore[type-arg]
    return [
        ev("p1", "item_view", None, at(3, 9), ["i1"], anonymous="a1"),
        ev("p2", "identify", "u1", at(3, 10), anonymous="a1"),
        ev(
            "p3",
            "profile_update",
            "u1",
            at(3, 11),
            traits={"city": "Lyon", "plan": "free"},
            context={"device": "mobile", "locale": "fr-FR"},
        ),
        ev("p4", "profile_update", "u1", at(4, 11), traits={"plan": "pro"}),
        ev(
            "p5",
            "purchase",
            "u1",
            at(4, 12),
            [{"item_id": "i1", "price": 20.0}],
            order_id="o1",
            revenue=20.0,
            context={"device": "desktop"},
        ),
        ev("p6", "item_view", None, at(5), ["i2"], anonymous="a2"),
    ]


def test_users_dimension_with_encrypted_traits(spark: SparkSession) -> None:
    from pyspark.sql import Row
    from pyspark.testing import assertDataFrameEqual

    events = cleanse_events(bronze_frame(spark, _profile_events()), None, 100, 100).events
    users = users_dimension(events, KEY).cache()
    # by hand: u1 has p2..p5 (4 events, 1 purchase of 20.0, latest device desktop from p5,
    # locale null on p5); a1 alone on p1 stays a separate (anonymous) user, linked to u1
    # through p2; a2 is anonymous only
    assertDataFrameEqual(
        users.select(
            "user",
            "is_anonymous",
            "anonymous_ids",
            "events",
            "purchases",
            "revenue",
            "last_device",
            "last_locale",
            "traits_updated_at",
        ),
        [
            Row(
                user="u1",
                is_anonymous=False,
                anonymous_ids=["a1"],
                events=4,
                purchases=1,
                revenue=20.0,
                last_device="desktop",
                last_locale=None,
                traits_updated_at=at(4, 11).replace(tzinfo=None),
            ),
            Row(
                user="a1",
                is_anonymous=True,
                anonymous_ids=[],
                events=1,
                purchases=0,
                revenue=0.0,
                last_device=None,
                last_locale=None,
                traits_updated_at=None,
            ),
            Row(
                user="a2",
                is_anonymous=True,
                anonymous_ids=[],
                events=1,
                purchases=0,
                revenue=0.0,
                last_device=None,
                last_locale=None,
                traits_updated_at=None,
            ),
        ],
    )
    encrypted = {r["user"]: r["traits_encrypted"] for r in users.collect()}
    # the latest value of each trait: city from p3, plan from p4
    decrypted = {r["user"]: r["traits"] for r in decrypt_traits(users, KEY).collect()}
    assert decrypted == {"u1": {"city": "Lyon", "plan": "pro"}, "a1": None, "a2": None}
    blob = bytes(encrypted["u1"])
    assert b"Lyon" not in blob and b"pro" not in blob
    # 12-byte IV + ciphertext of '{"city":"Lyon","plan":"pro"}' (28 bytes) + 16-byte tag
    assert len(blob) == 12 + 28 + 16
    again = {r["user"]: r["traits_encrypted"] for r in users_dimension(events, KEY).collect()}
    assert bytes(again["u1"]) == blob  # synthetic IV: a re-run writes the same bytes


def test_traits_cannot_be_read_with_another_key_or_moved_to_another_user(
    spark: SparkSession,
) -> None:
    from pyspark.sql import functions as F

    events = cleanse_events(bronze_frame(spark, _profile_events()), None, 100, 100).events
    users = users_dimension(events, KEY).where("user = 'u1'").cache()
    with pytest.raises(Exception, match=r"(?i)decrypt|AES|tag"):
        decrypt_traits(users, bytes(32)).collect()
    moved = users.withColumn("user", F.lit("a2"))  # the user id is the AES-GCM associated data
    with pytest.raises(Exception, match=r"(?i)decrypt|AES|tag"):
        decrypt_traits(moved, KEY).collect()


def test_event_dates_are_utc_dates_of_event_time(spark: SparkSession) -> None:
    late = ev(
        "z", "item_view", "u", at(3, 23, 59), ["i"], received=at(3, 23, 59) + timedelta(days=2)
    )
    row = bronze_frame(spark, [late]).select("event_date").first()
    assert row is not None and row[0] == at(3).date()  # the day it happened, not received
