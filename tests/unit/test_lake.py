"""Additive schema evolution of the event tables (a field added to the event schema)."""

from __future__ import annotations

from pyspark.sql import types as T

from attune.events import spark_schema
from attune.lake import missing_columns


def _without(dtype: T.DataType, name: str) -> T.DataType:
    """``dtype`` with every field called ``name`` removed, at any depth."""
    if isinstance(dtype, T.StructType):
        return T.StructType(
            [
                T.StructField(f.name, _without(f.dataType, name), f.nullable)
                for f in dtype.fields
                if f.name != name
            ]
        )
    if isinstance(dtype, T.ArrayType):
        return T.ArrayType(_without(dtype.elementType, name), dtype.containsNull)
    return dtype


def test_a_field_added_to_items_is_found_inside_the_array() -> None:
    # A table of events written before Item.team existed lacks exactly items[].team; Delta's
    # ADD COLUMNS names a field of an array's structs `items`.element.`team`.
    new = spark_schema()
    old = _without(new, "team")
    assert isinstance(old, T.StructType)
    assert missing_columns(old, new) == [("`items`.element.`team`", T.StringType())]
    assert missing_columns(new, new) == []


def test_top_level_and_nested_struct_additions() -> None:
    have = T.StructType([T.StructField("a", T.StringType())])
    want = T.StructType(
        [
            T.StructField("a", T.StringType()),
            T.StructField("ctx", T.StructType([T.StructField("x", T.LongType())])),
        ]
    )
    assert missing_columns(have, want) == [("`ctx`", want["ctx"].dataType)]
    # a field only in the table is not reported (nothing to add), nor a changed type
    assert missing_columns(want, have) == []
    changed = T.StructType([T.StructField("a", T.LongType())])
    assert missing_columns(have, changed) == []
