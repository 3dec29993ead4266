"""The lake tables that one layer writes and another reads: their contracts, written once.

``bronze`` (``<lake>/<speed.bronze_table>``)
    written by the speed layer, read by the nightly batch (whose first data-quality check is
    that bronze has exactly :func:`bronze_schema`): every accepted event once, with the columns
    of :func:`attune.events.spark_schema`, ``event_date`` (the UTC date of the event's own
    ``timestamp``, the partition) and its Kafka coordinates (:data:`KAFKA_COLUMNS_DDL`).

``gold/training_examples`` and ``gold/items``
    written by the batch layer, read by the models (which also turn interaction files into the
    same columns): :data:`INTERACTION_FIELDS` and :data:`ITEM_FIELDS`, each field with its
    Spark SQL type and whether it may be null. The gold tables carry more columns than these;
    these are the ones the models rely on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from attune.events import ddl_type, spark_schema

if TYPE_CHECKING:
    from pyspark.sql import SparkSession
    from pyspark.sql.types import DataType, StructType

# ----------------------------------------------------------------------------------------
# Bronze

KAFKA_COLUMNS_DDL = "kafka_partition INT, kafka_offset BIGINT, kafka_timestamp TIMESTAMP"
"""Where each bronze row came from in the events topic."""


def _nullable_inside_collections(dtype: DataType, inside: bool = False) -> DataType:
    """Delta cannot enforce NOT NULL inside arrays and maps: relax those (parsing checks them)."""
    from pyspark.sql import types as T

    if isinstance(dtype, T.StructType):
        return T.StructType(
            [
                T.StructField(
                    f.name,
                    _nullable_inside_collections(f.dataType, inside),
                    nullable=f.nullable or inside,
                )
                for f in dtype.fields
            ]
        )
    if isinstance(dtype, T.ArrayType):
        return T.ArrayType(_nullable_inside_collections(dtype.elementType, True), True)
    if isinstance(dtype, T.MapType):
        return T.MapType(dtype.keyType, _nullable_inside_collections(dtype.valueType, True), True)
    return dtype


def bronze_schema() -> StructType:
    """The bronze table's schema: the event schema, ``event_date`` and the Kafka columns."""
    from pyspark.sql.types import DateType, StructField, StructType

    events = _nullable_inside_collections(spark_schema())
    assert isinstance(events, StructType)
    extra = StructType.fromDDL(KAFKA_COLUMNS_DDL)
    assert isinstance(extra, StructType)
    return StructType([*events.fields, StructField("event_date", DateType(), False), *extra.fields])


# ----------------------------------------------------------------------------------------
# Additive schema evolution


def missing_columns(have: StructType, want: StructType) -> list[tuple[str, DataType]]:
    """The fields of ``want`` that ``have`` lacks, as Delta ``ADD COLUMNS`` paths and types.

    Looks inside structs and arrays of structs (``items.element.team``), so a field added to
    :class:`attune.events.Item` is found. Only additions are reported: a field whose type
    changed is not (Delta cannot change it in place; that is a migration, not an evolution).
    """
    from pyspark.sql import types as T

    out: list[tuple[str, DataType]] = []

    def walk(h: DataType, w: DataType, path: str) -> None:
        if isinstance(h, T.ArrayType) and isinstance(w, T.ArrayType):
            walk(h.elementType, w.elementType, f"{path}.element")
        elif isinstance(h, T.StructType) and isinstance(w, T.StructType):
            fields = {f.name: f for f in h.fields}
            for f in w.fields:
                name = f"{path}.`{f.name}`" if path else f"`{f.name}`"
                if f.name not in fields:
                    out.append((name, f.dataType))
                else:
                    walk(fields[f.name].dataType, f.dataType, name)

    walk(have, want, "")
    return out


def add_missing_columns(spark: SparkSession, path: str, schema: StructType) -> list[str]:
    """Add to the Delta table at ``path`` the (nullable) columns of ``schema`` it lacks.

    When the event schema gains an optional field, tables written before keep their old
    schema, and Delta refuses appends and partition overwrites with the new one (a metadata
    mismatch). The writers of the event tables (bronze, silver) call this first: existing rows
    read the new column as null. Returns the columns added.
    """
    table = spark.read.format("delta").load(path)
    added = missing_columns(table.schema, schema)
    if added:
        columns = ", ".join(f"{name} {ddl_type(dtype)}" for name, dtype in added)
        spark.sql(f"ALTER TABLE delta.`{path}` ADD COLUMNS ({columns})")
    return [name.replace("`", "") for name, _ in added]


# ----------------------------------------------------------------------------------------
# Training data (gold -> models)


@dataclass(frozen=True)
class ContractField:
    """One column of a table contract."""

    name: str
    type: str
    """Spark SQL type (``STRING``, ``TIMESTAMP``, ``DOUBLE``, ``INT``, ``ARRAY<STRING>``)."""
    nullable: bool
    description: str


INTERACTION_FIELDS: tuple[ContractField, ...] = (
    ContractField("user_id", "STRING", False, "Pseudonymized user id."),
    ContractField("item_id", "STRING", False, "Item id, as in the catalog."),
    ContractField("timestamp", "TIMESTAMP", False, "Event time."),
    ContractField("event_type", "STRING", False, "An attune.events event type, e.g. rating."),
    ContractField("rating", "DOUBLE", True, "Explicit rating 0-10, when the event has one."),
    ContractField("device", "STRING", True, "Request context: device (mobile, desktop, tv)."),
    ContractField("placement", "STRING", True, "Request context: where recommendations showed."),
    ContractField("segment", "STRING", True, "The user's segment at event time."),
)
"""``gold/training_examples``: one row per user-item interaction."""

ITEM_FIELDS: tuple[ContractField, ...] = (
    ContractField("item_id", "STRING", False, "Item id."),
    ContractField("title", "STRING", True, "Title text."),
    ContractField("genres", "ARRAY<STRING>", True, "Genres or categories."),
    ContractField("year", "INT", True, "Release year."),
    ContractField("price", "DOUBLE", True, "Price, in the catalog's currency."),
)
"""``gold/items``: one row per catalog item."""
