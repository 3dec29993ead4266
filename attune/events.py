"""The event envelope and every event type attune understands, defined once.

Apps send events in the *envelope* below (JSON). The collector validates an incoming envelope
(:class:`Event`), pseudonymizes its user ids, stamps the receive time and the effective consent,
and writes the result, a :class:`StoredEvent`, to Kafka as canonical JSON
(:func:`StoredEvent.to_json`). Everything downstream is derived from these models and never
restated by hand:

* :func:`json_schema` -> the JSON Schema published at ``GET /v1/schema`` for app developers;
* :func:`spark_schema` -> the Spark ``StructType`` the speed and batch layers parse with
  (and its DDL, for Delta tables);
* :data:`EVENT_TYPES` -> which fields each type needs, used by validation and the docs.

Times have one format end to end. Apps send :data:`EventTime`: an RFC 3339 time with a zone
(``2024-05-01T12:00:00Z``, ``2024-05-01T14:00:00.250+02:00``, four-digit year, ``T``, seconds)
or an integer of epoch milliseconds; attune writes every time as :func:`format_time` does
(``2024-05-01T12:00:00.000Z``), which is an :data:`EventTime` too, so whatever was written
parses back. Requests are strict: a boolean is ``true`` or ``false`` (not ``"yes"``), an integer
is a JSON integer (not ``true``, not ``"10"``).

A server also refuses event times outside a plausible :class:`TimeWindow` (by default from
2000-01-01 to one day after the server received the event): a year-1 or year-9999 time is a
client bug, and passing it on would poison every reader's time arithmetic. The window is given
to validation in its context (:data:`TIME_WINDOW`); without it (reading stored events back) no
window applies.

Event types fall into four categories:

behavioural
    page_view, item_view, click, search, dwell
transactional
    add_to_cart, remove_from_cart, checkout, purchase
profile
    identify, profile_update, consent_update
feedback
    impression, rec_click, dismiss, not_interested, rating, undo_feedback

``undo_feedback`` takes back earlier ``dismiss`` / ``not_interested`` events of its items: a
dismissal is in force only while it is later than the item's latest undo (by event time). It
lifts the item's dismissal whichever of the two made it (the features keep one set of dismissed
items); ``reason`` may name the action undone, as the API does (``"dismiss"`` or
``"not_interested"``), for the record. An undo is a correction, not a signal of interest: it is
not an interaction, has no affinity weight and is not counted (see :mod:`attune.features`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from types import UnionType
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union, get_args, get_origin

import orjson
from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import PydanticCustomError

if TYPE_CHECKING:  # pyspark is heavy; only the Spark jobs pay for importing it
    from pyspark.sql.types import DataType, StructType

SCHEMA_VERSION = 1


class Category(StrEnum):
    BEHAVIOURAL = "behavioural"
    TRANSACTIONAL = "transactional"
    PROFILE = "profile"
    FEEDBACK = "feedback"


@dataclass(frozen=True)
class EventType:
    """One kind of event: its category, what it means and which envelope fields it needs."""

    name: str
    category: Category
    description: str
    requires: tuple[str, ...] = ()
    undoes: tuple[str, ...] = ()
    """The types whose effect on the same items this type takes back (an undo)."""

    @property
    def personalizes(self) -> bool:
        """Whether this type is a signal of interest that may feed personalization features.

        An undo is not: it only takes back an earlier signal.
        """
        return not self.undoes and self.category in (
            Category.BEHAVIOURAL,
            Category.TRANSACTIONAL,
            Category.FEEDBACK,
        )


_B, _T, _P, _F = Category.BEHAVIOURAL, Category.TRANSACTIONAL, Category.PROFILE, Category.FEEDBACK

EVENT_TYPES: dict[str, EventType] = {
    t.name: t
    for t in (
        EventType("page_view", _B, "A page or screen was shown.", ("context",)),
        EventType("item_view", _B, "An item's detail page was viewed.", ("items",)),
        EventType("click", _B, "An item link was clicked (outside recommendations).", ("items",)),
        EventType("search", _B, "A search was run; `query` holds the text.", ("query",)),
        EventType("dwell", _B, "Time spent on an item, in `dwell_ms`.", ("items", "dwell_ms")),
        EventType("add_to_cart", _T, "Items were added to the cart.", ("items",)),
        EventType("remove_from_cart", _T, "Items were removed from the cart.", ("items",)),
        EventType("checkout", _T, "Checkout started for the listed items.", ("items",)),
        EventType("purchase", _T, "An order was placed.", ("items", "order_id")),
        EventType("identify", _P, "An anonymous visitor logged in as `user_id`.", ("user_id",)),
        EventType("profile_update", _P, "Profile attributes changed, in `traits`.", ("traits",)),
        EventType("consent_update", _P, "The user's consent choices changed.", ("consent",)),
        EventType(
            "impression",
            _F,
            "Items were shown; `items[].position` gives their slots.",
            ("items",),
        ),
        EventType(
            "rec_click",
            _F,
            "A recommended item was clicked.",
            ("items", "recommendation_id"),
        ),
        EventType("dismiss", _F, "The user dismissed shown items.", ("items",)),
        EventType("not_interested", _F, "The user said they do not want these items.", ("items",)),
        EventType("rating", _F, "An explicit rating of an item, in `rating`.", ("items", "rating")),
        EventType(
            "undo_feedback",
            _F,
            "The user took back an earlier dismiss / not_interested of these items; `reason` may "
            "name the action undone.",
            ("items",),
            undoes=("dismiss", "not_interested"),
        ),
    )
}

EventTypeName = Literal[
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
]


# ----------------------------------------------------------------------------------------
# Times


TIME_WINDOW = "event_time_window"
"""Key of the :class:`TimeWindow` in a validation context (``model_validate(..., context=)``)."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2})"
)
_RFC3339_NAIVE = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]+)?)?"
)
_KINDS = {bool: "a boolean", float: "a number with a fraction", list: "an array", dict: "an object"}
_TIME_HELP = (
    "send an ISO 8601 time with a zone, e.g. 2024-05-01T12:00:00Z or "
    "2024-05-01T14:00:00.250+02:00, or epoch milliseconds as an integer"
)


def _kind_of(value: Any) -> str:
    """What a client sent instead of a time. ``5.0`` and ``5e3`` are integral numbers written
    as decimals (JSON Schema counts them as integers; these models' strict types do not), and
    so are integers beyond 64 bits once parsed: saying "with a fraction" would mislead."""
    if isinstance(value, float) and value.is_integer():
        return f"{value!r}, a number written with a decimal point or an exponent"
    return _KINDS.get(type(value), type(value).__name__)


def parse_time(value: Any) -> datetime:
    """An :data:`EventTime` as an aware UTC ``datetime``, or a ``PydanticCustomError``.

    Accepts an RFC 3339 string with a zone (four-digit year, ``T``, seconds, up to nine
    fractional digits, ``Z`` or ``+HH:MM``), an integer of epoch milliseconds (not a boolean,
    not a float, not a string of digits) or, from Python, an aware ``datetime``.
    """
    if isinstance(value, datetime):
        if value.utcoffset() is None:
            raise PydanticCustomError("timezone_aware", "the time needs a zone: " + _TIME_HELP)
        ts = value
    elif isinstance(value, int) and not isinstance(value, bool):
        try:
            ts = _EPOCH + timedelta(milliseconds=value)
        except OverflowError:
            raise PydanticCustomError(
                "time_range",
                "{value} epoch milliseconds is out of range: " + _TIME_HELP,
                {"value": value},
            ) from None
    elif isinstance(value, str):
        if _RFC3339.fullmatch(value) is None:
            if _RFC3339_NAIVE.fullmatch(value):
                raise PydanticCustomError("timezone_aware", "the time needs a zone: " + _TIME_HELP)
            raise PydanticCustomError(
                "time_format", "'{value}' is not a time: " + _TIME_HELP, {"value": value[:64]}
            )
        try:  # (Python 3.11's fromisoformat cuts fractions beyond microseconds)
            ts = datetime.fromisoformat(value)
        except ValueError as exc:
            raise PydanticCustomError(
                "time_format",
                "'{value}' is not a valid time ({reason}): " + _TIME_HELP,
                {"value": value, "reason": str(exc)},
            ) from None
    else:
        raise PydanticCustomError(
            "time_type",
            "expected a time, got {kind}: " + _TIME_HELP,
            {"kind": _kind_of(value)},
        )
    if ts.tzinfo is UTC:  # the usual case ("...Z", epoch milliseconds)
        return ts
    try:
        return ts.astimezone(UTC)
    except (OverflowError, ValueError):  # e.g. 0001-01-01T00:00:00+01:00 is in year 0 in UTC
        raise PydanticCustomError(
            "time_range", "the time is out of range in UTC: " + _TIME_HELP
        ) from None


@dataclass(frozen=True)
class TimeWindow:
    """The event times a server accepts at one moment: from ``earliest`` to ``latest``.

    Made per request by :meth:`around` from the server's receive time (never the client's
    clock), and passed to validation in its context under :data:`TIME_WINDOW`.
    """

    earliest: datetime
    latest: datetime
    rule: str = ""
    """How the window is configured, for the error message (e.g. which config keys)."""

    @classmethod
    def around(
        cls, received_at: datetime, *, earliest: datetime, max_ahead: timedelta, rule: str = ""
    ) -> TimeWindow:
        return cls(earliest, received_at + max_ahead, rule)

    def check(self, ts: datetime) -> None:
        if self.earliest <= ts <= self.latest:
            return
        raise PydanticCustomError(
            "time_window",
            "{time} is outside the accepted window {earliest} to {latest}{rule}: send the time "
            "the event happened, with its zone",
            {
                "time": format_time(ts),
                "earliest": format_time(self.earliest),
                "latest": format_time(self.latest),
                "rule": f" ({self.rule})" if self.rule else "",
            },
        )


def _event_time(value: Any, info: ValidationInfo) -> datetime:
    """:func:`parse_time`, then the context's :class:`TimeWindow` (if any) checks the time."""
    ts = parse_time(value)
    context = info.context
    if context:
        window = context.get(TIME_WINDOW)
        if window is not None:
            window.check(ts)
    return ts


EventTime = Annotated[
    AwareDatetime,
    BeforeValidator(_event_time),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "format": "date-time", "pattern": f"^{_RFC3339.pattern}$"},
                {"type": "integer", "description": "epoch milliseconds"},
            ]
        }
    ),
]
"""A time as apps send it and attune stores it (see the module docstring)."""


# ----------------------------------------------------------------------------------------
# The envelope


class _Model(BaseModel):
    # strict: no coercion of what apps send ("yes" is no boolean, "10" and true no integer)
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True, strict=True)


class Item(_Model):
    """An item the event is about (a product, a movie, an article)."""

    item_id: str = Field(min_length=1, max_length=256)
    quantity: int | None = Field(None, ge=1, le=10_000)
    price: float | None = Field(None, ge=0)
    position: int | None = Field(None, ge=0, le=10_000, description="Slot where it was shown.")
    category: str | None = Field(None, max_length=256)
    team: str | None = Field(
        None,
        max_length=64,
        description="interleaving: the ranker (variant) that placed this item",
    )
    propensity: float | None = Field(
        None,
        gt=0,
        le=1,
        description="bandits: the probability the policy had of showing this item here, for "
        "off-policy evaluation",
    )


class Context(_Model):
    """Where and on what the event happened."""

    placement: str | None = Field(None, max_length=128, description="e.g. home_carousel")
    page: str | None = Field(None, max_length=2048)
    device: str | None = Field(None, max_length=64, description="e.g. mobile, desktop, tv")
    locale: str | None = Field(None, max_length=35, description="BCP 47, e.g. en-GB")
    referrer: str | None = Field(None, max_length=2048)


class ConsentFlags(_Model):
    """What the user allows. Omitted flags fall back to the user's last consent_update."""

    analytics: bool | None = None
    personalization: bool | None = None
    marketing: bool | None = None


class ResolvedConsent(_Model):
    analytics: bool
    personalization: bool
    marketing: bool


class _EnvelopeFields(_Model):
    event_id: str = Field(
        min_length=1, max_length=64, description="Client-made unique id; duplicates are dropped."
    )
    type: EventTypeName
    session_id: str | None = Field(None, max_length=128)
    timestamp: EventTime = Field(
        description="When the event happened: ISO 8601 with a zone, e.g. 2024-05-01T12:00:00Z, "
        "or epoch milliseconds; within the server's plausible window (by default from "
        "2000-01-01 to one day after it receives the event)."
    )
    items: list[Item] = Field(default_factory=list, max_length=500)
    context: Context | None = None
    recommendation_id: str | None = Field(
        None, max_length=64, description="Set on events caused by a recommendation."
    )
    query: str | None = Field(None, max_length=1024)
    rating: float | None = Field(None, ge=0, le=10)
    dwell_ms: int | None = Field(None, ge=0, le=24 * 3600 * 1000)
    order_id: str | None = Field(None, max_length=128)
    revenue: float | None = Field(None, ge=0)
    currency: str | None = Field(None, pattern=r"^[A-Z]{3}$")
    reason: str | None = Field(None, max_length=256)
    traits: dict[str, str] | None = Field(None, max_length=100)
    schema_version: int = Field(SCHEMA_VERSION, ge=1, le=SCHEMA_VERSION)

    @model_validator(mode="after")
    def _check_type_requirements(self) -> Any:
        etype = EVENT_TYPES[self.type]
        missing = [f for f in etype.requires if getattr(self, f) in (None, [], {})]
        if missing:
            raise PydanticCustomError(
                "missing_for_type",
                "{article} {type} event needs {fields}: {description} (see GET /v1/schema)",
                {
                    "article": "an" if self.type[0] in "aeiou" else "a",
                    "type": self.type,
                    "fields": ", ".join(missing),
                    "description": etype.description,
                },
            )
        return self


class Event(_EnvelopeFields):
    """An event as an app sends it to ``POST /v1/events``."""

    user_id: str | None = Field(None, min_length=1, max_length=256)
    anonymous_id: str | None = Field(None, min_length=1, max_length=256)
    consent: ConsentFlags | None = None

    @model_validator(mode="after")
    def _check_identity(self) -> Any:
        if self.user_id is None and self.anonymous_id is None:
            raise PydanticCustomError(
                "missing_for_type",
                "an event needs {fields} (or both)",
                {"fields": "user_id or anonymous_id"},
            )
        return self


class StoredEvent(_EnvelopeFields):
    """An accepted event as written to Kafka: ids pseudonymized, receive time and consent set."""

    user_id: str | None = Field(None, description="HMAC pseudonym of the app's user id.")
    anonymous_id: str | None = Field(None, description="HMAC pseudonym of the anonymous id.")
    consent: ResolvedConsent
    received_at: EventTime = Field(description="Server receive time.")
    source: str = Field(description="Name of the write key's source.")

    @property
    def key(self) -> str:
        """The Kafka record key: the pseudonymized user, else the pseudonymized anonymous id."""
        return self.user_id or self.anonymous_id or ""

    def to_json(self) -> bytes:
        """Canonical JSON: sorted keys, no nulls, times as ISO 8601 UTC with milliseconds."""
        return orjson.dumps(to_jsonable(self), option=orjson.OPT_SORT_KEYS)


def format_time(ts: datetime) -> str:
    """``2013-02-28T14:38:27.000Z``: the one time format attune writes (an :data:`EventTime`).

    The year always has four digits (``strftime("%Y")`` writes year 1 as ``1``, which no
    reader parses back).
    """
    ts = ts.astimezone(UTC)
    return (
        f"{ts.year:04d}-{ts.month:02d}-{ts.day:02d}T{ts.hour:02d}:{ts.minute:02d}:"
        f"{ts.second:02d}.{ts.microsecond // 1000:03d}Z"
    )


def to_jsonable(model: BaseModel) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in type(model).model_fields:
        value = getattr(model, name)
        if value is None:
            continue
        out[name] = _jsonable_value(value)
    return out


def _jsonable_value(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return to_jsonable(value)
    if isinstance(value, datetime):
        return format_time(value)
    if isinstance(value, list):
        return [_jsonable_value(v) for v in value]
    return value


# ----------------------------------------------------------------------------------------
# Derived schemas


def json_schema() -> dict[str, Any]:
    """JSON Schema of what apps send (one event), with the per-type requirements attached."""
    schema = Event.model_json_schema()
    schema["title"] = "attune event"
    schema["description"] = (
        'One event; POST /v1/events takes one event, a JSON array of events, or {"batch": [...]}.'
    )
    schema["x-event-types"] = {
        name: {
            "category": t.category.value,
            "description": t.description,
            "requires": list(t.requires),
            **({"undoes": list(t.undoes)} if t.undoes else {}),
        }
        for name, t in EVENT_TYPES.items()
    }
    return schema


def spark_schema() -> StructType:
    """The Spark ``StructType`` of a :class:`StoredEvent` (what the events topic holds)."""
    return _spark_struct(StoredEvent)


def spark_ddl() -> str:
    """The same schema as a Spark DDL column list, for ``CREATE TABLE`` and docs."""
    return ", ".join(
        f"`{f.name}` {ddl_type(f.dataType)}{'' if f.nullable else ' NOT NULL'}"
        for f in spark_schema().fields
    )


def ddl_type(dtype: DataType) -> str:
    """A Spark type as DDL (``ARRAY<STRUCT<`item_id`: STRING, ...>>``)."""
    from pyspark.sql import types as T

    if isinstance(dtype, T.StructType):
        inner = ", ".join(f"`{f.name}`: {ddl_type(f.dataType)}" for f in dtype.fields)
        return f"STRUCT<{inner}>"
    if isinstance(dtype, T.ArrayType):
        return f"ARRAY<{ddl_type(dtype.elementType)}>"
    if isinstance(dtype, T.MapType):
        return f"MAP<{ddl_type(dtype.keyType)}, {ddl_type(dtype.valueType)}>"
    return dtype.simpleString().upper()


def _spark_struct(model: type[BaseModel]) -> StructType:
    from pyspark.sql.types import StructField, StructType

    fields = []
    for name, info in model.model_fields.items():
        nullable = not info.is_required() or _is_optional(info.annotation)
        fields.append(StructField(name, _spark_type(info.annotation), nullable=nullable))
    return StructType(fields)


def _is_optional(annotation: Any) -> bool:
    return get_origin(annotation) in (Union, UnionType) and type(None) in get_args(annotation)


def _spark_type(annotation: Any) -> DataType:
    from pyspark.sql import types as T

    origin = get_origin(annotation)
    if origin in (Union, UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"cannot map union {annotation} to a Spark type")
        return _spark_type(args[0])
    if origin is list:
        (inner,) = get_args(annotation)
        return T.ArrayType(_spark_type(inner), containsNull=False)
    if origin is dict:
        key, value = get_args(annotation)
        return T.MapType(_spark_type(key), _spark_type(value), valueContainsNull=False)
    if origin is Literal:
        return T.StringType()
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return _spark_struct(annotation)
    simple: dict[Any, DataType] = {
        str: T.StringType(),
        int: T.LongType(),
        float: T.DoubleType(),
        bool: T.BooleanType(),
        datetime: T.TimestampType(),
        AwareDatetime: T.TimestampType(),
    }
    for py_type, spark_type in simple.items():
        if annotation is py_type:
            return spark_type
    raise TypeError(f"no Spark type for {annotation!r}; extend attune.events._spark_type")


if set(get_args(EventTypeName)) != set(EVENT_TYPES):  # pragma: no cover - a coding error
    raise RuntimeError("EventTypeName and EVENT_TYPES disagree; keep them in step")
if any(u not in EVENT_TYPES for t in EVENT_TYPES.values() for u in t.undoes):  # pragma: no cover
    raise RuntimeError("an event type undoes a type that does not exist")
