"""The event envelope: derived schemas, validation messages and the canonical stored bytes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from attune.config import AttuneConfig
from attune.events import (
    EVENT_TYPES,
    Event,
    ResolvedConsent,
    StoredEvent,
    format_time,
    json_schema,
    spark_ddl,
    spark_schema,
)

ALL_TYPES = {
    "page_view",
    "item_view",
    "click",
    "search",
    "dwell",
    "add_to_cart",
    "remove_from_cart",
    "checkout",
    "purchase",
    "identify",
    "profile_update",
    "consent_update",
    "impression",
    "rec_click",
    "dismiss",
    "not_interested",
    "rating",
    "undo_feedback",
}


def _errors(raw: dict) -> list[dict]:
    with pytest.raises(ValidationError) as info:
        Event.model_validate(raw)
    return info.value.errors()


# ----------------------------------------------------------------------------------------
# Derived schemas


def test_json_schema_lists_every_event_type() -> None:
    schema = json_schema()
    # The 17 types of DESIGN.md (behavioural 5, transactional 4, profile 3, feedback 5) and
    # undo_feedback (feedback): 18.
    assert len(ALL_TYPES) == 18
    assert set(schema["x-event-types"]) == ALL_TYPES
    assert set(schema["properties"]["type"]["enum"]) == ALL_TYPES
    assert schema["x-event-types"]["rating"]["requires"] == ["items", "rating"]
    assert schema["x-event-types"]["purchase"]["category"] == "transactional"
    assert {"event_id", "type", "timestamp"} <= set(schema["required"])
    assert schema["x-event-types"]["undo_feedback"] == {
        "category": "feedback",
        "description": "The user took back an earlier dismiss / not_interested of these items; "
        "`reason` may name the action undone.",
        "requires": ["items"],
        "undoes": ["dismiss", "not_interested"],
    }
    # Only an undo lists what it undoes.
    assert "undoes" not in schema["x-event-types"]["dismiss"]


def test_spark_schema_fields_worked_out_by_hand() -> None:
    from pyspark.sql import types as T

    fields = {f.name: f for f in spark_schema().fields}
    # event_id: str, required -> string, not nullable.
    assert fields["event_id"].dataType == T.StringType()
    assert fields["event_id"].nullable is False
    # rating: float | None -> double, nullable.
    assert fields["rating"].dataType == T.DoubleType()
    assert fields["rating"].nullable is True
    # dwell_ms: int | None -> long (Python ints are 64-bit in attune's schema).
    assert fields["dwell_ms"].dataType == T.LongType()
    # timestamp / received_at: AwareDatetime -> timestamp, required.
    assert fields["timestamp"].dataType == T.TimestampType()
    assert fields["received_at"].nullable is False
    # items: list[Item] -> array<struct<item_id string, quantity long, price double,
    # position long, category string, team string>>, in the declaration order of Item.
    items = fields["items"].dataType
    assert isinstance(items, T.ArrayType)
    assert [(f.name, f.dataType) for f in items.elementType.fields] == [
        ("item_id", T.StringType()),
        ("quantity", T.LongType()),
        ("price", T.DoubleType()),
        ("position", T.LongType()),
        ("category", T.StringType()),
        ("team", T.StringType()),
    ]
    # consent: ResolvedConsent -> struct of three required booleans.
    consent = fields["consent"].dataType
    assert [(f.name, f.dataType, f.nullable) for f in consent.fields] == [
        ("analytics", T.BooleanType(), False),
        ("personalization", T.BooleanType(), False),
        ("marketing", T.BooleanType(), False),
    ]
    # traits: dict[str, str] | None -> map<string, string>.
    assert fields["traits"].dataType == T.MapType(T.StringType(), T.StringType(), False)


def test_spark_ddl_mentions_fields_with_their_types() -> None:
    ddl = spark_ddl()
    assert "`event_id` STRING NOT NULL" in ddl
    assert "`rating` DOUBLE" in ddl
    assert "`consent` STRUCT<`analytics`: BOOLEAN" in ddl


# ----------------------------------------------------------------------------------------
# Validation messages


BASE = {
    "event_id": "e1",
    "type": "item_view",
    "user_id": "u1",
    "timestamp": "2024-05-01T12:00:00Z",
    "items": [{"item_id": "i1"}],
}


def test_unknown_type_names_the_allowed_values() -> None:
    (err,) = _errors({**BASE, "type": "clik"})
    assert err["loc"] == ("type",)
    assert err["type"] == "literal_error"
    for name in ("'click'", "'item_view'", "'rating'"):
        assert name in err["msg"]


def test_rating_event_without_rating_names_the_field() -> None:
    (err,) = _errors({**BASE, "type": "rating"})
    assert err["type"] == "missing_for_type"
    assert err["ctx"]["fields"] == "rating"
    assert "a rating event needs rating" in err["msg"]


def test_naive_timestamp_is_refused() -> None:
    (err,) = _errors({**BASE, "timestamp": "2024-05-01T12:00:00"})
    assert err["loc"] == ("timestamp",)
    assert err["type"] == "timezone_aware"


def test_interleaved_items_carry_their_team() -> None:
    raw = {
        **BASE,
        "type": "impression",
        "recommendation_id": "rank_v2:interleaved:0123456789abcdefghij",
        "items": [
            {"item_id": "i1", "position": 0, "team": "control"},
            {"item_id": "i2", "position": 1, "team": "treatment"},
        ],
    }
    ev = Event.model_validate(raw)
    assert [(i.item_id, i.team) for i in ev.items] == [("i1", "control"), ("i2", "treatment")]
    # the published JSON Schema documents the field
    team = json_schema()["$defs"]["Item"]["properties"]["team"]
    assert team["description"] == "interleaving: the ranker (variant) that placed this item"
    assert team["anyOf"][0]["maxLength"] == 64
    # 65 characters: too long
    (err,) = _errors({**BASE, "items": [{"item_id": "i1", "team": "t" * 65}]})
    assert err["loc"] == ("items", 0, "team") and err["type"] == "string_too_long"


def test_event_without_any_id_is_refused() -> None:
    raw = {k: v for k, v in BASE.items() if k != "user_id"}
    (err,) = _errors(raw)
    assert err["type"] == "missing_for_type"
    assert err["ctx"]["fields"] == "user_id or anonymous_id"


def test_undo_feedback_needs_items_and_may_name_the_action() -> None:
    ev = Event.model_validate({**BASE, "type": "undo_feedback", "reason": "not_interested"})
    assert (ev.type, ev.reason, [i.item_id for i in ev.items]) == (
        "undo_feedback",
        "not_interested",
        ["i1"],
    )
    (err,) = _errors({**BASE, "type": "undo_feedback", "items": []})
    assert err["type"] == "missing_for_type"
    assert err["ctx"]["fields"] == "items"
    # "an" before a vowel, as the speed layer's parser says it (speed_layer/parsing.py)
    assert err["msg"].startswith("an undo_feedback event needs items: The user took back")


def test_epoch_milliseconds_are_utc() -> None:
    ev = Event.model_validate({**BASE, "timestamp": 1_700_000_000_123})
    # 1,700,000,000 s after the epoch is 2023-11-14 22:13:20 UTC; + 123 ms.
    assert ev.timestamp == datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=UTC)


# ----------------------------------------------------------------------------------------
# Canonical bytes


def test_format_time_is_utc_with_milliseconds() -> None:
    plus2 = timezone(timedelta(hours=2))
    assert format_time(datetime(2013, 2, 28, 16, 38, 27, 987654, tzinfo=plus2)) == (
        "2013-02-28T14:38:27.987Z"
    )


def test_stored_event_canonical_json_written_by_hand() -> None:
    stored = StoredEvent(
        event_id="e-1",
        type="rating",
        user_id="5bdcc146bf60754e6a042426089575c7",
        timestamp=datetime(2013, 2, 28, 14, 38, 27, tzinfo=UTC),
        items=[{"item_id": "0114369", "position": 2}],
        rating=9,
        consent=ResolvedConsent(analytics=True, personalization=True, marketing=False),
        received_at=datetime(2024, 5, 1, 12, 0, 0, 500000, tzinfo=UTC),
        source="web",
    )
    # Sorted keys, no nulls, no spaces; items keep only set fields (sorted too); the rating int
    # became a float; times in UTC with milliseconds; schema_version defaults to 1.
    expected = (
        b'{"consent":{"analytics":true,"marketing":false,"personalization":true},'
        b'"event_id":"e-1","items":[{"item_id":"0114369","position":2}],"rating":9.0,'
        b'"received_at":"2024-05-01T12:00:00.500Z","schema_version":1,"source":"web",'
        b'"timestamp":"2013-02-28T14:38:27.000Z","type":"rating",'
        b'"user_id":"5bdcc146bf60754e6a042426089575c7"}'
    )
    assert stored.to_json() == expected
    assert stored.key == "5bdcc146bf60754e6a042426089575c7"


def test_every_event_type_declares_a_known_category() -> None:
    assert set(EVENT_TYPES) == ALL_TYPES
    assert EVENT_TYPES["consent_update"].personalizes is False
    assert EVENT_TYPES["rec_click"].personalizes is True
    # An undo is feedback, but no signal of interest: it only takes a dismissal back.
    undo = EVENT_TYPES["undo_feedback"]
    assert undo.category == "feedback" and undo.personalizes is False
    assert undo.undoes == ("dismiss", "not_interested")
    assert EVENT_TYPES["dismiss"].personalizes is True and EVENT_TYPES["dismiss"].undoes == ()


def test_events_schema_command_prints_both_formats(capsys: pytest.CaptureFixture[str]) -> None:
    import argparse
    import json

    from attune.events_cli import cmd_schema

    assert cmd_schema(AttuneConfig(), argparse.Namespace(format="json")) == 0
    printed = json.loads(capsys.readouterr().out)
    assert set(printed["x-event-types"]) == ALL_TYPES
    assert cmd_schema(AttuneConfig(), argparse.Namespace(format="spark-ddl")) == 0
    assert "`received_at` TIMESTAMP NOT NULL" in capsys.readouterr().out
