"""The event envelope: derived schemas, validation messages and the canonical stored bytes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from attune.config import AttuneConfig
from attune.events import (
    EVENT_TYPES,
    TIME_WINDOW,
    Event,
    ResolvedConsent,
    StoredEvent,
    TimeWindow,
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
    # position long, category string, team string, propensity double>>, in the declaration
    # order of Item.
    items = fields["items"].dataType
    assert isinstance(items, T.ArrayType)
    assert [(f.name, f.dataType) for f in items.elementType.fields] == [
        ("item_id", T.StringType()),
        ("quantity", T.LongType()),
        ("price", T.DoubleType()),
        ("position", T.LongType()),
        ("category", T.StringType()),
        ("team", T.StringType()),
        ("propensity", T.DoubleType()),
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


def test_a_written_time_of_any_year_parses_back() -> None:
    # strftime("%Y") wrote year 1 as "1-01-01T...", which no reader parsed back (a poison
    # record); the year always has four digits now.
    assert format_time(datetime(1, 1, 1, tzinfo=UTC)) == "0001-01-01T00:00:00.000Z"
    assert format_time(datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)) == (
        "9999-12-31T23:59:59.999Z"
    )
    for year in (1, 999, 2024, 9999):
        stored = StoredEvent(
            event_id="e-1",
            type="item_view",
            user_id="p",
            timestamp=datetime(year, 1, 1, tzinfo=UTC),
            items=[{"item_id": "i1"}],
            consent=ResolvedConsent(analytics=True, personalization=True, marketing=False),
            received_at=datetime(2024, 5, 1, tzinfo=UTC),
            source="web",
        )
        again = StoredEvent.model_validate_json(stored.to_json())
        assert again.timestamp == datetime(year, 1, 1, tzinfo=UTC)
        assert again.to_json() == stored.to_json()


@pytest.mark.parametrize(
    ("sent", "expected"),
    [
        ("2024-05-01T12:00:00Z", datetime(2024, 5, 1, 12, tzinfo=UTC)),
        # 14:00:00.250 at +02:00 is 12:00:00.250 UTC
        ("2024-05-01T14:00:00.250+02:00", datetime(2024, 5, 1, 12, 0, 0, 250000, tzinfo=UTC)),
        # nanoseconds are cut to microseconds
        ("2024-05-01T12:00:00.123456789Z", datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)),
        # 1,714,564,800,000 ms = 19844 days * 86,400,000 + 12 h: 2024-05-01T12:00:00Z
        (1_714_564_800_000, datetime(2024, 5, 1, 12, tzinfo=UTC)),
    ],
)
def test_event_times_in_the_one_format_are_accepted(sent: object, expected: datetime) -> None:
    ev = Event.model_validate({**BASE, "timestamp": sent})
    assert ev.timestamp == expected and ev.timestamp.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    "sent",
    [
        "1-01-01T00:00:00.000Z",  # what attune used to write for year 1
        "2024-05-01 12:00:00Z",  # a space, not T
        "2024-05-01T12:00Z",  # no seconds
        "20240501T120000Z",  # ISO 8601 basic format
        "1714564800000",  # digits in a string
        1_714_564_800_000.5,  # a float
        True,  # a boolean is no epoch
        "2024-02-30T12:00:00Z",  # no such day
    ],
)
def test_other_time_formats_are_refused(sent: object) -> None:
    (err,) = _errors({**BASE, "timestamp": sent})
    assert err["loc"] == ("timestamp",)
    assert "2024-05-01T12:00:00Z" in err["msg"]  # the message shows the format to send
    assert "{" not in err["msg"]  # every placeholder filled in


def test_a_time_message_says_what_was_sent() -> None:
    (err,) = _errors({**BASE, "timestamp": "2024-05-01 12:00:00Z"})
    assert err["msg"].startswith("'2024-05-01 12:00:00Z' is not a time: send an ISO 8601 time")
    (err,) = _errors({**BASE, "timestamp": 1.5})
    assert err["msg"].startswith("expected a time, got a number with a fraction: ")


def test_event_times_outside_the_window_name_the_window() -> None:
    received = datetime(2024, 5, 1, 12, tzinfo=UTC)
    window = TimeWindow.around(
        received, earliest=datetime(2000, 1, 1, tzinfo=UTC), max_ahead=timedelta(days=1)
    )
    context = {TIME_WINDOW: window}
    # the edges are inside: 2000-01-01T00:00Z and received + 1 day = 2024-05-02T12:00Z
    for inside in ("2000-01-01T00:00:00Z", "2024-05-02T12:00:00Z"):
        Event.model_validate({**BASE, "timestamp": inside}, context=context)
    for outside, shown in [
        ("0001-01-01T00:00:00Z", "0001-01-01T00:00:00.000Z"),
        ("9999-12-31T23:59:59Z", "9999-12-31T23:59:59.000Z"),
        (0, "1970-01-01T00:00:00.000Z"),  # epoch 0
        ("1999-12-31T23:59:59.999Z", "1999-12-31T23:59:59.999Z"),  # 1 ms before earliest
        ("2024-05-02T12:00:00.001Z", "2024-05-02T12:00:00.001Z"),  # 1 ms after the latest
    ]:
        with pytest.raises(ValidationError) as info:
            Event.model_validate({**BASE, "timestamp": outside}, context=context)
        (err,) = info.value.errors()
        assert err["loc"] == ("timestamp",) and err["type"] == "time_window"
        assert err["msg"].startswith(
            f"{shown} is outside the accepted window 2000-01-01T00:00:00.000Z to "
            "2024-05-02T12:00:00.000Z"
        )
    # without a window (reading stored events back) any four-digit year parses
    Event.model_validate({**BASE, "timestamp": "0001-01-01T00:00:00Z"})


@pytest.mark.parametrize(
    ("field", "value", "loc"),
    [
        ("consent", {"analytics": "yes"}, ("consent", "analytics")),
        ("consent", {"analytics": 1}, ("consent", "analytics")),
        ("items", [{"item_id": "i1", "quantity": "2"}], ("items", 0, "quantity")),
        ("items", [{"item_id": "i1", "quantity": True}], ("items", 0, "quantity")),
        ("items", [{"item_id": "i1", "position": 1.0}], ("items", 0, "position")),
        ("items", [{"item_id": 7}], ("items", 0, "item_id")),
        ("dwell_ms", "100", ("dwell_ms",)),
        ("rating", True, ("rating",)),
        ("rating", "4.5", ("rating",)),
        ("schema_version", "1", ("schema_version",)),
    ],
)
def test_types_are_strict(field: str, value: object, loc: tuple[object, ...]) -> None:
    (err,) = _errors({**BASE, field: value})
    assert err["loc"] == loc


def test_strict_still_takes_json_numbers_for_floats() -> None:
    # a rating of 9 (a JSON integer) is the float 9.0, as before
    ev = Event.model_validate({**BASE, "type": "rating", "rating": 9})
    assert ev.rating == 9.0 and isinstance(ev.rating, float)


def test_the_published_schema_shows_the_time_format() -> None:
    timestamp = json_schema()["properties"]["timestamp"]
    string, integer = timestamp["anyOf"]
    assert string["format"] == "date-time" and integer == {
        "type": "integer",
        "description": "epoch milliseconds",
    }


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


def test_a_bandit_impression_carries_the_propensity_of_what_it_showed() -> None:
    ev = Event.model_validate(
        {
            **BASE,
            "type": "impression",
            "items": [{"item_id": "drama_picks", "position": 0, "propensity": 0.8125}],
        }
    )
    assert ev.items[0].propensity == 0.8125
    # a probability: above 0 (off-policy evaluation divides by it) and at most 1
    for bad in (0, 1.5, -0.1):
        (err,) = _errors({**BASE, "items": [{"item_id": "i1", "propensity": bad}]})
        assert err["loc"][-1] == "propensity", err
