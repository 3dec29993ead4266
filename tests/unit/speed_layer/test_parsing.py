"""Kafka records -> parsed events or the reason they cannot be used (the texts written by hand)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from speed_layer.parsing import parse_records, valid_events

GOOD = (
    '{"consent":{"analytics":true,"marketing":false,"personalization":true},"event_id":"e1",'
    '"items":[{"item_id":"i1"}],"received_at":"2024-01-01T00:00:00.000Z","source":"demo",'
    '"timestamp":"2024-01-01T00:00:00.000Z","type":"item_view","user_id":"u1"}'
)

CASES = [
    (GOOD, None),
    (
        GOOD.replace('"item_view"', '"clik"'),
        "unknown event type 'clik': expected one of add_to_cart, checkout, click, "
        "consent_update, dismiss, dwell, identify, impression, item_view, not_interested, "
        "page_view, profile_update, purchase, rating, rec_click, remove_from_cart, search, "
        "undo_feedback",
    ),
    (
        GOOD.replace('"items":[{"item_id":"i1"}],', ""),
        "an item_view event needs items: An item's detail page was viewed.",
    ),
    (
        GOOD.replace('"2024-01-01T00:00:00.000Z","type"', '"2024-01-02T00:00:00.000Z","type"'),
        "timestamp is 86400 s after received_at (more than speed.max_future_skew = 3600 s); "
        "check the client's clock",
    ),
    (GOOD.replace('"user_id":"u1"', '"rating":"five"'), "field rating is not a valid double"),
    (
        GOOD.replace('"item_view"', '"undo_feedback"').replace('{"item_id":"i1"}', ""),
        "an undo_feedback event needs items: The user took back an earlier dismiss / "
        "not_interested of these items; `reason` may name the action undone.",
    ),
    (
        GOOD.replace('"analytics":true', '"analytics":"yes"'),
        "field consent.analytics is not a valid boolean",
    ),
    (GOOD.replace('"item_id":"i1"', '"item_id":""'), "field items[].item_id is empty"),
    (GOOD.replace('"user_id":"u1"', '"query":"x"'), "an event needs user_id or anonymous_id"),
    ("not json", "value is not valid JSON"),
    ("[1, 2]", "value is JSON but not an object (got ARRAY<BIGINT>)"),
    (None, "empty record (no value)"),
    (
        '{"type": "search", "query": "x"}',
        "missing required field event_id; missing required field timestamp; missing required "
        "field consent; missing required field received_at; missing required field source; "
        "an event needs user_id or anonymous_id",
    ),
]


@pytest.fixture(scope="module")
def parsed(spark):  # type: ignore[no-untyped-def]
    rows = [
        ("events", 0, offset, datetime(2024, 1, 1, tzinfo=UTC), b"u1", v and v.encode())
        for offset, (v, _) in enumerate(CASES)
    ]
    raw = spark.createDataFrame(
        rows,
        "topic string, partition int, offset long, timestamp timestamp, key binary, value binary",
    )
    return parse_records(raw, timedelta(hours=1))


def test_reasons(parsed) -> None:  # type: ignore[no-untyped-def]
    got = {r["kafka_offset"]: r["reason"] for r in parsed.collect()}
    assert got == {offset: reason for offset, (_, reason) in enumerate(CASES)}


def test_only_the_valid_event_comes_through_flattened(parsed) -> None:  # type: ignore[no-untyped-def]
    events = valid_events(parsed).collect()
    assert [(e["event_id"], e["type"], e["items"][0]["item_id"]) for e in events] == [
        ("e1", "item_view", "i1")
    ]


def test_validity_does_not_depend_on_explaining(spark) -> None:  # type: ignore[no-untyped-def]
    rows = [
        ("events", 0, offset, datetime(2024, 1, 1, tzinfo=UTC), b"u1", v and v.encode())
        for offset, (v, _) in enumerate(CASES)
    ]
    raw = spark.createDataFrame(
        rows,
        "topic string, partition int, offset long, timestamp timestamp, key binary, value binary",
    )
    brief = parse_records(raw, timedelta(hours=1), explain=False)
    valid = [r["kafka_offset"] for r in brief.collect() if r["reason"] is None]
    assert valid == [0]
    # The malformed records get a short reason instead of the per-field one.
    rating = brief.where("kafka_offset = 4").first()
    assert rating is not None and rating["reason"] == "value does not match the event schema"
