"""Kafka records -> parsed events, or the reason they cannot be used.

Every record of the events topic comes out of :func:`parse_records` as one row with its Kafka
coordinates, the parsed ``event`` (the :func:`attune.events.spark_schema` struct) and a
``reason``: null for a valid event, else every problem found, separated by ``"; "``. Nothing is
dropped here; the bronze query stores valid events and quarantines the rest with the reason.

The checks are derived from :mod:`attune.events`, never restated: required fields are the
non-nullable fields of the schema (at any depth), the type must be one of
:data:`attune.events.EVENT_TYPES` and carry what that type requires, and a field that is present
in the JSON but did not parse into its schema type (``"rating": "five"``, a timestamp that is
not ISO 8601) is reported by name. Two checks are the speed layer's own: an event must name a
user or an anonymous visitor (its Kafka key), and its client time may not be more than
``max_future_skew`` after the collector received it (a wrong clock would otherwise create
partitions in the future and make the event "newest" forever).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING

from attune.events import EVENT_TYPES, SCHEMA_VERSION, spark_schema

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame
    from pyspark.sql.types import DataType, StructType

CORRUPT = "_corrupt_record"
UNEXPLAINED = "invalid event (the bronze query's quarantine has the reason)"
PARSED_COLUMNS = (
    "kafka_topic",
    "kafka_partition",
    "kafka_offset",
    "kafka_timestamp",
    "kafka_key",
    "value_text",
    "event",
    "reason",
)


def _type_name(dtype: DataType) -> str:
    return dtype.simpleString()


def _required_checks(prefix: str, struct: StructType, label: str) -> list[tuple[Column, str]]:
    """(condition that is true when broken, message) for non-nullable nested fields."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    checks: list[tuple[Column, str]] = []
    for f in struct.fields:
        path = f"{prefix}.{f.name}"
        name = f"{label}.{f.name}"
        if not f.nullable:
            checks.append(
                (
                    F.col(prefix).isNotNull() & F.col(path).isNull(),
                    f"field {name} is missing or not a {_type_name(f.dataType)}",
                )
            )
        if isinstance(f.dataType, T.StructType):
            checks.extend(_required_checks(path, f.dataType, name))
    return checks


def _element_field_is(name: str, predicate: str) -> Callable[[Column], Column]:
    """A lambda for ``exists(array, x -> ...)``: the element's field is null / empty."""
    from pyspark.sql import functions as F

    def check(x: Column) -> Column:
        return x[name].isNull() if predicate == "null" else F.length(x[name]) == 0

    return check


def _array_element_checks(column: str, element: StructType) -> list[tuple[Column, str]]:
    from pyspark.sql import functions as F

    label = column.split(".")[-1]
    checks: list[tuple[Column, str]] = []
    for f in element.fields:
        if f.nullable:
            continue
        broken = F.exists(F.col(column), _element_field_is(f.name, "null"))
        checks.append(
            (
                F.coalesce(broken, F.lit(False)),
                f"field {label}[].{f.name} is missing or not a {_type_name(f.dataType)}",
            )
        )
        if f.dataType.simpleString() == "string":
            empty = F.exists(F.col(column), _element_field_is(f.name, "empty"))
            checks.append((F.coalesce(empty, F.lit(False)), f"field {label}[].{f.name} is empty"))
    return checks


def validation_checks(max_future_skew: timedelta) -> list[tuple[Column, str | Column]]:
    """The checks of a record that parsed, as (broken condition, message) over ``event``.

    Only cheap expressions: they run on every record of every micro-batch of both queries.
    """
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    schema = spark_schema()
    checks: list[tuple[Column, str | Column]] = []
    for f in schema.fields:
        parsed = F.col(f"event.{f.name}")
        if not f.nullable:
            checks.append((parsed.isNull(), f"missing required field {f.name}"))
        if isinstance(f.dataType, T.StructType):
            checks.extend(_required_checks(f"event.{f.name}", f.dataType, f.name))
        if isinstance(f.dataType, T.ArrayType) and isinstance(f.dataType.elementType, T.StructType):
            checks.extend(_array_element_checks(f"event.{f.name}", f.dataType.elementType))

    etype = F.col("event.type")
    known = sorted(EVENT_TYPES)
    checks.append(
        (
            etype.isNotNull() & ~etype.isin(*known),
            F.concat(
                F.lit("unknown event type '"),
                etype,
                F.lit(f"': expected one of {', '.join(known)}"),
            ),
        )
    )
    checks.append((F.length("event.event_id") == 0, "field event_id is empty"))
    # What each type requires, as one CASE on the type (the condition) and one for the message.
    field_types = {f.name: f.dataType for f in schema.fields}
    broken: Column | None = None
    message: Column | None = None
    for name, spec in sorted(EVENT_TYPES.items()):
        missing_parts = []
        any_missing: Column | None = None
        for req in spec.requires:
            col = F.col(f"event.{req}")
            if isinstance(field_types[req], T.ArrayType | T.MapType):  # like pydantic: [] or {}
                missing = F.coalesce(F.size(col) <= 0, F.lit(True))
            else:
                missing = col.isNull()
            any_missing = missing if any_missing is None else any_missing | missing
            article = "an" if name[0] in "aeiou" else "a"
            missing_parts.append(
                F.when(missing, F.lit(f"{article} {name} event needs {req}: {spec.description}"))
            )
        if any_missing is None:
            continue
        text = F.concat_ws("; ", *missing_parts)
        is_type = etype == name
        broken = (
            F.when(is_type, any_missing) if broken is None else broken.when(is_type, any_missing)
        )
        message = F.when(is_type, text) if message is None else message.when(is_type, text)
    if broken is not None and message is not None:
        checks.append((F.coalesce(broken, F.lit(False)), message))
    checks.append(
        (
            F.col("event.user_id").isNull() & F.col("event.anonymous_id").isNull(),
            "an event needs user_id or anonymous_id",
        )
    )
    checks.append(
        (
            F.col("event.schema_version") > SCHEMA_VERSION,
            F.concat(
                F.lit("schema_version "),
                F.col("event.schema_version").cast("string"),
                F.lit(
                    f" is newer than this speed layer understands ({SCHEMA_VERSION}); "
                    "upgrade attune"
                ),
            ),
        )
    )
    skew_s = int(max_future_skew.total_seconds())
    ahead = F.unix_seconds("event.timestamp") - F.unix_seconds("event.received_at")
    checks.append(
        (
            ahead > skew_s,
            F.concat(
                F.lit("timestamp is "),
                ahead.cast("string"),
                F.lit(
                    f" s after received_at (more than speed.max_future_skew = {skew_s} s); "
                    "check the client's clock"
                ),
            ),
        )
    )
    return checks


def _leaf_paths(struct: StructType, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(variant path, column path, label, type) of every field, through nested structs."""
    from pyspark.sql import types as T

    out = []
    for f in struct.fields:
        label = f"{prefix}{f.name}"
        path = ".".join(f"`{p}`" for p in label.split("."))
        if isinstance(f.dataType, T.StructType):
            out.extend(_leaf_paths(f.dataType, f"{label}."))
        else:
            out.append((path, label, label, _type_name(f.dataType)))
    return out


def malformed_reason() -> Column:
    """Why a record ``from_json`` could not parse: not JSON, not an object, or which fields.

    Uses the VARIANT functions, which cost far more than parsing; it is only evaluated for the
    (rare) malformed records, and only by the bronze query, which writes the reason down.
    """
    from pyspark.sql import functions as F

    v = F.expr("try_parse_json(value_text)")
    kind = F.expr("schema_of_variant(try_parse_json(value_text))")
    wrong_fields = [
        F.when(
            F.expr(f"try_parse_json(value_text):{path} IS NOT NULL")
            & ~F.expr(f"is_variant_null(try_parse_json(value_text):{path})")
            & F.col(f"event.{column}").isNull(),
            F.lit(f"field {label} is not a valid {type_name}"),
        )
        for path, column, label, type_name in _leaf_paths(spark_schema())
    ]
    fields = F.nullif(F.concat_ws("; ", *wrong_fields), F.lit(""))
    return (
        F.when(v.isNull(), F.lit("value is not valid JSON"))
        .when(
            ~kind.startswith("OBJECT"),
            F.concat(F.lit("value is JSON but not an object (got "), kind, F.lit(")")),
        )
        .otherwise(F.coalesce(fields, F.lit("a field does not match its type in the event schema")))
    )


def parse_records(
    kafka_rows: DataFrame, max_future_skew: timedelta, explain: bool = True
) -> DataFrame:
    """Kafka source rows -> :data:`PARSED_COLUMNS` (``reason`` null when the event is valid).

    Whether a record is valid never depends on ``explain``; with ``explain=False`` a record
    that does not parse gets a short generic reason instead of the per-field one (the online
    query, which only keeps valid events, skips that cost).
    """
    from pyspark.sql import functions as F
    from pyspark.sql.types import StringType, StructField, StructType

    schema = StructType([*spark_schema().fields, StructField(CORRUPT, StringType())])
    base = kafka_rows.select(
        F.col("topic").alias("kafka_topic"),
        F.col("partition").alias("kafka_partition"),
        F.col("offset").alias("kafka_offset"),
        F.col("timestamp").alias("kafka_timestamp"),
        F.col("key").cast("string").alias("kafka_key"),
        F.col("value").cast("string").alias("value_text"),
    )
    event = F.from_json(
        "value_text", schema, {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": CORRUPT}
    )
    # The checks read ``event`` dozens of times. As a plain column the optimizer would inline
    # from_json into every reference (and push it into filters), parsing each record ~200
    # times; coming out of a generator (explode of a one-element array) it is computed once.
    parsed = base.select("*", F.explode(F.array(event)).alias("event"))
    checks = validation_checks(max_future_skew)
    if explain:
        problems = F.nullif(
            F.concat_ws(
                "; ",
                *[F.when(c, F.lit(m) if isinstance(m, str) else m) for c, m in checks],
            ),
            F.lit(""),
        )
        malformed = malformed_reason()
    else:
        # The same decision without building the messages: a smaller plan to optimize and run
        # on every micro-batch of the online query.
        any_broken = checks[0][0]
        for cond, _ in checks[1:]:
            any_broken = any_broken | cond
        problems = F.when(any_broken, F.lit(UNEXPLAINED))
        malformed = F.lit("value does not match the event schema")
    reason = (
        F.when(F.col("value_text").isNull(), F.lit("empty record (no value)"))
        .when(F.col("event").isNull(), F.lit("value is not valid JSON"))
        .when(F.col(f"event.{CORRUPT}").isNotNull(), malformed)
        .otherwise(problems)
    )
    # ``event`` keeps the corrupt-record field: dropping it here (dropFields) would make the
    # optimizer rebuild the struct from one from_json per field, i.e. parse every record ~200
    # times. valid_events and bronze_rows select the schema's fields by name instead.
    return parsed.withColumn("reason", reason).select(*PARSED_COLUMNS)


def valid_events(parsed: DataFrame) -> DataFrame:
    """The valid events, flattened to the columns of :func:`attune.events.spark_schema`."""
    from pyspark.sql import functions as F

    fields = [f"event.{name}" for name in spark_schema().fieldNames()]
    return parsed.where(F.col("reason").isNull()).select(*fields)
