"""Schema comparison of the data-quality checks."""

from __future__ import annotations

from pyspark.sql import types as T

from attune.lake import bronze_schema
from spark.context import CheckResult
from spark.quality import _rate_check, schema_problems


def test_schema_problems_name_missing_and_retyped_columns() -> None:
    expected = bronze_schema()
    fields = [f for f in expected.fields if f.name != "source"]
    fields = [T.StructField("rating", T.StringType()) if f.name == "rating" else f for f in fields]
    assert schema_problems(T.StructType(fields), expected) == [
        "column rating is string, expected double",
        "column source is missing",
    ]
    assert schema_problems(expected, expected) == []
    # nullability is not a difference (Delta relaxes it inside arrays and maps)
    relaxed = T.StructType([T.StructField(f.name, f.dataType, True) for f in expected.fields])
    assert schema_problems(relaxed, expected) == []


def test_rate_check_says_by_how_much_it_missed() -> None:
    failed = _rate_check("silver", "bronze", "duplicate_rate", 3, 20, 0.05, "dups")
    # 3 / 20 = 15 %, 10 points above 5 %
    assert failed == CheckResult(
        "silver",
        "bronze",
        "duplicate_rate",
        0.15,
        0.05,
        False,
        "dups: 3 of 20 rows = 15.00%, above the limit of 5.00% by 10.00% points",
    )
    assert failed.failure().startswith("data-quality check 'duplicate_rate' failed on bronze: ")
    assert _rate_check("s", "t", "c", 0, 0, 0.0, "x").passed  # an empty day is no failure here
