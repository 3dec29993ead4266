"""The collector's pure steps: body parsing, error messages, consent, records, status codes."""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest

from attune.config import EventTimesConfig
from attune.events import Event, StoredEvent, format_time
from attune.ingest.pipeline import (
    BatchProcessor,
    Rejection,
    RequestError,
    dead_letter_record,
    fast_format_time,
    parse_body,
    resolve_consent,
    response_status,
    stored_record,
)
from attune.secrets import Pseudonymizer

KEY = b"k" * 32
DEFAULT = {"analytics": True, "personalization": True, "marketing": False}
RECEIVED = datetime(2024, 5, 1, 12, 0, 0, 250000, tzinfo=UTC)


def pseudo(value: str) -> str:
    """The pseudonym computed independently of attune: HMAC-SHA256, first 32 hex digits."""
    return hmac.new(KEY, value.encode(), hashlib.sha256).hexdigest()[:32]


def ev(**fields: Any) -> dict[str, Any]:
    base = {
        "event_id": "e1",
        "type": "item_view",
        "user_id": "u1",
        "timestamp": "2024-05-01T11:59:00Z",
        "items": [{"item_id": "i1"}],
    }
    base.update(fields)
    return {k: v for k, v in base.items() if v is not None}


def processor() -> BatchProcessor:
    return BatchProcessor(Pseudonymizer(KEY), EventTimesConfig())


def plan(raw: list[dict[str, Any]], stored: dict | None = None, drop: bool = True) -> Any:
    batch = processor().validate(raw, RECEIVED)
    return batch, batch.plan(
        stored or {},
        default=DEFAULT,
        drop_without_analytics=drop,
        received_at=RECEIVED,
        source="web",
    )


# ----------------------------------------------------------------------------------------
# Body


def test_body_forms_one_event_array_and_batch() -> None:
    one = ev()
    assert parse_body(orjson.dumps(one), 10) == [one]
    assert parse_body(orjson.dumps([one, one]), 10) == [one, one]
    assert parse_body(orjson.dumps({"batch": [one]}), 10) == [one]


def test_invalid_json_reports_the_position() -> None:
    with pytest.raises(RequestError) as info:
        parse_body(b'[{"event_id": "e1",\n  "type": }]', 10)
    assert info.value.status == 400
    # The bad character '}' is on line 2, column 11 (byte 31 counting from 0).
    assert "line 2 column 11" in info.value.message
    assert "invalid JSON" in info.value.message


def test_batch_over_the_limit_is_413() -> None:
    with pytest.raises(RequestError) as info:
        parse_body(orjson.dumps([ev()] * 3), 2)
    assert info.value.status == 413
    assert "3 events" in info.value.message and "max_batch_events" in info.value.message


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"", "empty body"),
        (b"[]", "batch is empty"),
        (b'"hello"', "got a string"),
        (b'{"batch": {"a": 1}}', '"batch" must be a JSON array'),
        (b'{"batch": [], "extra": 1}', "remove extra"),
    ],
)
def test_bad_bodies_are_400_with_a_reason(body: bytes, needle: str) -> None:
    with pytest.raises(RequestError) as info:
        parse_body(body, 10)
    assert info.value.status == 400
    assert needle in info.value.message


# ----------------------------------------------------------------------------------------
# Validation messages


def _only_rejection(raw: dict[str, Any]) -> Rejection:
    batch = processor().validate([raw], RECEIVED)
    assert batch.valid == []
    (rejection,) = batch.rejections
    return rejection


def test_item_field_error_is_located() -> None:
    r = _only_rejection(ev(items=[{"item_id": ""}]))
    assert r.errors == [
        {"field": "items.0.item_id", "message": "String should have at least 1 character"}
    ]
    assert r.event_id == "e1" and r.index == 0


def test_missing_rating_names_the_field_from_the_error_context() -> None:
    r = _only_rejection(ev(type="rating"))
    assert [e["field"] for e in r.errors] == ["rating"]
    assert "a rating event needs rating" in r.errors[0]["message"]
    assert r.event_type == "rating"


def test_missing_items_and_rating_gives_one_entry_per_field() -> None:
    r = _only_rejection(ev(type="rating", items=None))
    assert [e["field"] for e in r.errors] == ["items", "rating"]


def test_unknown_type_lists_the_allowed_types() -> None:
    r = _only_rejection(ev(type="clik"))
    (err,) = r.errors
    assert err["field"] == "type"
    assert err["message"].startswith("unknown event type 'clik': expected one of page_view, ")
    assert "rating" in err["message"]
    assert r.event_type == "invalid"


def test_naive_timestamp_message_says_how_to_fix() -> None:
    r = _only_rejection(ev(timestamp="2024-05-01T11:59:00"))
    assert r.errors[0]["field"] == "timestamp"
    assert "needs a zone" in r.errors[0]["message"]


def test_event_time_outside_the_window_names_the_field_and_the_window() -> None:
    # RECEIVED is 2024-05-01T12:00:00.250Z; the default window runs from 2000-01-01T00:00Z to
    # RECEIVED + 1 day = 2024-05-02T12:00:00.250Z
    for sent, shown in [
        ("0001-01-01T00:00:00Z", "0001-01-01T00:00:00.000Z"),
        ("9999-01-01T00:00:00Z", "9999-01-01T00:00:00.000Z"),
        (0, "1970-01-01T00:00:00.000Z"),
    ]:
        r = _only_rejection(ev(timestamp=sent))
        assert r.errors == [
            {
                "field": "timestamp",
                "message": f"{shown} is outside the accepted window 2000-01-01T00:00:00.000Z to "
                "2024-05-02T12:00:00.250Z (from collector.event_times.earliest to "
                "collector.event_times.max_ahead after the server received it): send the time "
                "the event happened, with its zone",
            }
        ]
    # one bad time in a batch refuses that event only
    batch = processor().validate([ev(), ev(event_id="e2", timestamp=0)], RECEIVED)
    assert [v.index for v in batch.valid] == [0] and [r.index for r in batch.rejections] == [1]


def test_the_window_is_configured() -> None:
    times = EventTimesConfig(
        earliest=datetime(1995, 1, 1, tzinfo=UTC), max_ahead=timedelta(minutes=5)
    )
    own = BatchProcessor(Pseudonymizer(KEY), times)
    # 1997 is inside from 1995; RECEIVED + 4 min inside, + 6 min outside
    assert own.validate([ev(timestamp="1997-06-01T00:00:00Z")], RECEIVED).rejections == []
    assert own.validate([ev(timestamp="2024-05-01T12:04:00Z")], RECEIVED).rejections == []
    (r,) = own.validate([ev(timestamp="2024-05-01T12:06:00Z")], RECEIVED).rejections
    assert "to 2024-05-01T12:05:00.250Z" in r.errors[0]["message"]


def test_strict_type_errors_say_what_came_instead() -> None:
    r = _only_rejection(ev(type="consent_update", items=None, consent={"analytics": "yes"}))
    assert r.errors == [
        {"field": "consent.analytics", "message": "Input should be a valid boolean, got a string"}
    ]
    r = _only_rejection(ev(items=[{"item_id": "i1", "quantity": True}]))
    assert r.errors == [
        {"field": "items.0.quantity", "message": "Input should be a valid integer, got a boolean"}
    ]


def test_missing_ids_and_unknown_field() -> None:
    r = _only_rejection(ev(user_id=None))
    assert r.errors[0]["field"] == "user_id or anonymous_id"
    r = _only_rejection(ev(colour="red"))
    assert r.errors == [
        {"field": "colour", "message": "unknown field 'colour': see GET /v1/schema for the fields"}
    ]


def test_non_object_event_is_rejected_not_fatal() -> None:
    batch = processor().validate([ev(), 42], RECEIVED)
    assert len(batch.valid) == 1
    (r,) = batch.rejections
    assert r.index == 1 and r.event_id is None
    assert r.errors[0]["field"] == "(event)"
    assert "must be a JSON object" in r.errors[0]["message"]


# ----------------------------------------------------------------------------------------
# Consent


def _event(**fields: Any) -> Event:
    return Event.model_validate(ev(**fields))


@pytest.mark.parametrize(
    ("stored", "sent", "expected_analytics"),
    [
        ({}, None, True),  # nothing stored, nothing sent -> default (True)
        ({}, False, False),  # the event's flag applies when nothing is stored
        ({"analytics": False}, True, False),  # stored False cannot be overridden to True
        ({"analytics": True}, False, False),  # the event may narrow a stored True
        ({"analytics": True}, None, True),
        ({"analytics": False}, None, False),
    ],
)
def test_consent_resolution_table(
    stored: dict[str, bool], sent: bool | None, expected_analytics: bool
) -> None:
    consent = None if sent is None else {"analytics": sent}
    got = resolve_consent(stored, _event(consent=consent), DEFAULT)
    assert got == {"analytics": expected_analytics, "personalization": True, "marketing": False}


def test_consent_update_sets_flags_even_back_to_true() -> None:
    update = _event(type="consent_update", items=None, consent={"analytics": True})
    stored = {"analytics": False, "marketing": True}
    # analytics is set by the update; marketing keeps the stored value; personalization default.
    assert resolve_consent(stored, update, DEFAULT) == {
        "analytics": True,
        "personalization": True,
        "marketing": True,
    }


def test_consent_update_applies_to_later_events_of_the_batch() -> None:
    raw = [
        ev(event_id="a", type="item_view"),
        ev(event_id="b", type="consent_update", items=None, consent={"analytics": False}),
        ev(event_id="c", type="item_view"),
        ev(event_id="d", type="item_view", user_id="someone-else"),
    ]
    _, p = plan(raw)
    # a: before the update -> stored; b: the consent record is always stored; c: dropped;
    # d: another user, default consent -> stored.
    assert p.event_ids == ["a", "b", "d"]
    assert p.dropped == {"item_view": 1}
    assert p.accepted == {"item_view": 2, "consent_update": 1}
    assert p.consent_writes == {pseudo("u1"): {"analytics": False}}


def test_stored_withdrawal_drops_behaviour_unless_configured_to_keep() -> None:
    stored = {pseudo("u1"): {"analytics": False}}
    _, p = plan([ev(event_id="a")], stored)
    assert p.records == [] and p.dropped == {"item_view": 1}
    _, kept = plan([ev(event_id="a")], stored, drop=False)
    assert kept.event_ids == ["a"]
    assert orjson.loads(kept.records[0][1])["consent"]["analytics"] is False


# ----------------------------------------------------------------------------------------
# Records


def test_record_bytes_written_by_hand() -> None:
    _, p = plan([ev(event_id="e-7", type="rating", rating=8, session_id="s1")])
    ((key, value),) = p.records
    uid = pseudo("u1")
    assert key == uid.encode()
    expected = (
        '{"consent":{"analytics":true,"marketing":false,"personalization":true},'
        '"event_id":"e-7","items":[{"item_id":"i1"}],"rating":8.0,'
        '"received_at":"2024-05-01T12:00:00.250Z","schema_version":1,"session_id":"s1",'
        '"source":"web","timestamp":"2024-05-01T11:59:00.000Z","type":"rating",'
        f'"user_id":"{uid}"}}'
    ).encode()
    assert value == expected


FULL_EVENTS = [
    ev(),
    ev(type="search", items=None, query="  space opera  ", anonymous_id="anon-1"),
    ev(
        type="purchase",
        items=[
            {"item_id": "a", "quantity": 2, "price": 9.5, "category": "books"},
            {"item_id": "b", "position": 0},
        ],
        order_id="o-1",
        revenue=19,
        currency="EUR",
        context={"placement": "home", "device": "mobile", "locale": "en-GB"},
        recommendation_id="r-1",
        session_id="s",
        timestamp="2024-05-01T13:59:00.123456+02:00",
    ),
    ev(type="profile_update", items=None, traits={"plan": "pro"}, schema_version=1),
    ev(type="dwell", dwell_ms=1500, consent={"marketing": True}, user_id=None, anonymous_id="x"),
    ev(type="dismiss", reason="seen it", timestamp=1_700_000_000_123, session_id=None),
]


@pytest.mark.parametrize("raw", FULL_EVENTS)
def test_fast_record_is_byte_identical_to_stored_event(raw: dict[str, Any]) -> None:
    event = Event.model_validate(raw)
    uid = pseudo(event.user_id) if event.user_id else None
    aid = pseudo(event.anonymous_id) if event.anonymous_id else None
    consent = resolve_consent({}, event, DEFAULT)
    fast = orjson.dumps(
        stored_record(event, uid, aid, consent, format_time(RECEIVED), "web"),
        option=orjson.OPT_SORT_KEYS,
    )
    reference = StoredEvent(
        **{k: getattr(event, k) for k in Event.model_fields if k != "consent"}
        | {"user_id": uid, "anonymous_id": aid},
        consent=consent,
        received_at=RECEIVED,
        source="web",
    ).to_json()
    assert fast == reference


@pytest.mark.parametrize(
    "ts",
    [
        datetime(2013, 2, 28, 14, 38, 27, tzinfo=UTC),
        datetime(2013, 2, 28, 14, 38, 27, 999999, tzinfo=UTC),
        datetime(2024, 1, 1, 1, 0, 0, 1500, tzinfo=timezone(timedelta(hours=5, minutes=30))),
        datetime(999, 1, 1, tzinfo=UTC),
    ],
)
def test_fast_format_time_matches_format_time(ts: datetime) -> None:
    assert fast_format_time(ts) == format_time(ts)


def test_fast_format_time_examples() -> None:
    # .999999 s truncates to .999 (not rounded up); +05:30 is moved to UTC.
    assert fast_format_time(datetime(2013, 2, 28, 14, 38, 27, 999999, tzinfo=UTC)) == (
        "2013-02-28T14:38:27.999Z"
    )
    plus = timezone(timedelta(hours=5, minutes=30))
    assert fast_format_time(datetime(2024, 1, 1, 1, 0, 0, 1500, tzinfo=plus)) == (
        "2023-12-31T19:30:00.001Z"
    )


def test_dead_letter_record_pseudonymizes_ids_and_keeps_reasons() -> None:
    raw = {"event_id": "bad", "type": "clik", "user_id": "alice", "anonymous_id": 12345}
    batch = processor().validate([raw], RECEIVED)
    (rejection,) = batch.rejections
    record = dead_letter_record(raw, rejection, "web", "2024-05-01T12:00:00.250Z", pseudo)
    assert record["payload"]["user_id"] == pseudo("alice")
    assert record["payload"]["anonymous_id"] == pseudo("12345")  # non-string id: its JSON text
    assert "alice" not in orjson.dumps(record).decode()
    assert record["source"] == "web" and record["index"] == 0 and record["event_id"] == "bad"
    assert record["errors"][0]["field"] == "type"
    assert raw["user_id"] == "alice"  # the caller's dict is not modified


def test_oversize_event_is_rejected_after_validation() -> None:
    huge = ev(type="profile_update", items=None, traits={f"k{i}": "x" * 20_000 for i in range(60)})
    _, p = plan([huge, ev(event_id="ok")])
    assert p.event_ids == ["ok"]
    (r,) = p.rejections
    assert r.index == 0 and "byte limit" in r.errors[0]["message"]


@pytest.mark.parametrize(
    ("accepted", "dropped", "rejected", "status"),
    [(3, 0, 0, 200), (0, 2, 0, 200), (2, 0, 1, 207), (0, 1, 1, 207), (0, 0, 2, 400)],
)
def test_response_status(accepted: int, dropped: int, rejected: int, status: int) -> None:
    assert response_status(accepted, dropped, rejected) == status
