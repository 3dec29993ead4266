"""The dashboard's Spark-free Delta reader against tables Spark + Delta Lake wrote.

The data-quality report is written the way :func:`spark.quality.flush` writes it (partition
overwrite with ``replaceWhere``, the same DDL), often enough that Delta writes a checkpoint;
:func:`dashboards.delta.read_delta` must return exactly the rows Spark reads back.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import pytest

from dashboards.delta import read_delta
from spark.quality import REPORT_DDL
from spark.tables import write_table

pytestmark = pytest.mark.integration


def _rows(day: date, stage: str, n: int, passed: bool) -> list[tuple[Any, ...]]:
    return [
        (day, stage, f"/lake/{stage}/events", f"check_{i}", float(i), 1.5, passed, f"detail {i}")
        for i in range(n)
    ]


def test_read_delta_returns_what_spark_reads(spark: Any, tmp_path: Path) -> None:
    path = str(tmp_path / "quality" / "report")
    day1, day2 = date(2026, 12, 4), date(2026, 12, 5)
    writes = [
        (_rows(day1, "bronze", 3, True), day1, "bronze"),
        (_rows(day1, "silver", 2, True), day1, "silver"),
        (_rows(day2, "bronze", 3, True), day2, "bronze"),
        (_rows(day2, "bronze", 4, False), day2, "bronze"),  # a re-run replaces the stage's rows
        (_rows(day2, "gold", 1, True), day2, "gold"),
    ]
    for i, (rows, day, stage) in enumerate(writes):
        write_table(
            spark.createDataFrame(rows, REPORT_DDL),
            path,
            partition_by="run_date",
            replace_where=f"run_date = DATE'{day.isoformat()}' AND stage = '{stage}'",
        )
        if i == 0:  # a checkpoint every 2 commits, so the reader has to start from one
            spark.sql(
                f"ALTER TABLE delta.`{path}` SET TBLPROPERTIES (delta.checkpointInterval = 2)"
            )
    log = Path(path) / "_delta_log"
    assert list(log.glob("*.checkpoint.parquet")), "expected Delta to have written a checkpoint"

    ours = read_delta(path)
    assert ours is not None
    theirs = [r.asDict() for r in spark.read.format("delta").load(path).collect()]

    def key(r: dict[str, Any]) -> tuple[str, ...]:
        return (str(r["run_date"]), r["stage"], r["check"])

    assert sorted(ours, key=key) == sorted(theirs, key=key)
    # 3 + 2 silver/bronze of day 1, day 2's bronze re-run (4 failed rows) and gold: 10 rows
    assert len(ours) == 3 + 2 + 4 + 1
    assert sum(not r["passed"] for r in ours) == 4
