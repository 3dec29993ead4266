"""The Spark-free Delta reader of the dashboard (dashboards/delta.py) on logs written by hand.

``tests/integration/dashboards/test_dashboard_delta_spark.py`` checks it against tables that
Spark + Delta wrote.
"""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pytest

from dashboards.delta import UnsupportedTable, read_delta
from tests.unit.dashboards import world


def _sorted(rows: list[dict]) -> list[dict]:
    return sorted(rows, key=lambda r: (str(r.get("run_date")), str(r.get("check"))))


def test_no_table_is_none(tmp_path: Path) -> None:
    assert read_delta(tmp_path / "nothing") is None
    (tmp_path / "empty" / "_delta_log").mkdir(parents=True)
    assert read_delta(tmp_path / "empty") is None


def test_replaced_partition_and_typed_partition_column(tmp_path: Path) -> None:
    writer = world.DeltaWriter(tmp_path / "t", world.QUALITY_FIELDS, "run_date")
    writer.commit(world.quality_rows(date(2026, 12, 4), failed=False))
    writer.commit(world.quality_rows(date(2026, 12, 5), failed=False))
    writer.commit(world.quality_rows(date(2026, 12, 5), failed=True))  # replaces 12-05
    rows = read_delta(tmp_path / "t")
    assert rows is not None
    expected = world.quality_rows(date(2026, 12, 4), False) + world.quality_rows(
        date(2026, 12, 5), True
    )
    assert _sorted(rows) == _sorted(expected)  # 10 rows: the first write of 12-05 removed
    assert list(rows[0]) == [n for n, _ in world.QUALITY_FIELDS]  # the schema's order
    assert isinstance(rows[0]["run_date"], date)


def _checkpoint(table: Path, version: int) -> None:
    """A checkpoint of ``version`` with the table's state, as Delta writes one: one Parquet
    file of actions (a struct column per action type), named by ``_last_checkpoint``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    log = table / "_delta_log"
    state: dict[str, dict] = {}
    meta: dict = {}
    protocol: dict = {}
    for v in range(version + 1):
        for line in (log / f"{v:020d}.json").read_text().splitlines():
            action = json.loads(line)
            if "add" in action:
                state[action["add"]["path"]] = action["add"]
            elif "remove" in action:
                state.pop(action["remove"]["path"], None)
            elif "metaData" in action:
                meta = action["metaData"]
            elif "protocol" in action:
                protocol = action["protocol"]
    add_type = pa.struct(
        [
            ("path", pa.string()),
            ("partitionValues", pa.map_(pa.string(), pa.string())),
            ("size", pa.int64()),
            ("modificationTime", pa.int64()),
            ("dataChange", pa.bool_()),
        ]
    )
    meta_type = pa.struct(
        [
            ("id", pa.string()),
            ("schemaString", pa.string()),
            ("partitionColumns", pa.list_(pa.string())),
        ]
    )
    protocol_type = pa.struct([("minReaderVersion", pa.int32()), ("minWriterVersion", pa.int32())])
    schema = pa.schema([("add", add_type), ("metaData", meta_type), ("protocol", protocol_type)])
    rows = [
        {"add": None, "metaData": None, "protocol": protocol},
        {
            "add": None,
            "metaData": {k: meta[k] for k in ("id", "schemaString", "partitionColumns")},
            "protocol": None,
        },
    ] + [
        {
            "add": {**a, "partitionValues": list(a["partitionValues"].items())},
            "metaData": None,
            "protocol": None,
        }
        for a in state.values()
    ]
    pq.write_table(
        pa.Table.from_pylist(rows, schema=schema), log / f"{version:020d}.checkpoint.parquet"
    )
    (log / "_last_checkpoint").write_text(json.dumps({"version": version, "size": len(rows)}))


def test_checkpoint_then_later_commits(tmp_path: Path) -> None:
    table = tmp_path / "t"
    writer = world.DeltaWriter(table, world.QUALITY_FIELDS, "run_date")
    writer.commit(world.quality_rows(date(2026, 12, 3), failed=True))
    writer.commit(world.quality_rows(date(2026, 12, 4), failed=False))
    _checkpoint(table, 1)
    # the commits the checkpoint covers are not needed any more (Delta cleans them up): the
    # 12-04 rows, the schema and the protocol are known from the checkpoint alone
    for version in (0, 1):
        (table / "_delta_log" / f"{version:020d}.json").unlink()
    writer.commit(world.quality_rows(date(2026, 12, 3), failed=False))  # replaces 12-03
    rows = read_delta(table)
    assert rows is not None
    expected = world.quality_rows(date(2026, 12, 3), False) + world.quality_rows(
        date(2026, 12, 4), False
    )
    assert _sorted(rows) == _sorted(expected)


def test_features_it_cannot_read_are_refused(tmp_path: Path) -> None:
    table = tmp_path / "t"
    world.DeltaWriter(table, world.DRIFT_FIELDS, "as_of_date").commit(
        world.drift_rows(date(2026, 12, 5))
    )
    (table / "_delta_log" / f"{1:020d}.json").write_text(
        json.dumps(
            {
                "protocol": {
                    "minReaderVersion": 3,
                    "minWriterVersion": 7,
                    "readerFeatures": ["deletionVectors"],
                }
            }
        )
        + "\n"
    )
    with pytest.raises(UnsupportedTable, match="reader version 3 \\(deletionVectors\\)"):
        read_delta(table)
