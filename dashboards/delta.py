"""Read a small Delta table without Spark: the log replayed by hand, the files with pyarrow.

The data-quality report (``quality/report``) and the drift report (``quality/drift``) are Delta
tables of a few hundred rows that the nightly batch writes. Starting a JVM to show them would
make the dashboard slow and heavy, so this module reads them the way any Delta client does:

1. **Snapshot.** A table's state is its log, ``_delta_log/``: numbered JSON commits
   (``00000000000000000012.json``), each a list of actions, and every so often a checkpoint
   (``...10.checkpoint.parquet``, named by ``_last_checkpoint``) holding the state at that
   version. The current state is the latest checkpoint plus the commits after it, applied in
   order: an ``add`` action adds a data file, a ``remove`` takes one away, ``metaData`` gives the
   schema and the partition columns, ``protocol`` what a reader must understand.
2. **Files.** Each live file is a Parquet file read with pyarrow; the partition columns are not
   in the files but in the ``add`` action's ``partitionValues`` (strings), converted to the
   schema's type.

Only what these report tables use is supported: reader protocol 1 (no deletion vectors, no
column mapping), classic (not V2) checkpoints, local paths. Anything else raises
:class:`UnsupportedTable` saying which feature is missing, rather than returning wrong rows.
"""

from __future__ import annotations

import json
from datetime import date, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote

LOG_DIR = "_delta_log"


class UnsupportedTable(RuntimeError):
    """The table uses a Delta feature this reader does not implement; the message names it."""


def _version_of(name: str) -> int | None:
    stem = name.split(".", 1)[0]
    return int(stem) if stem.isdigit() else None


def _partition_value(raw: str | None, dtype: str) -> Any:
    """A partition value (always a string in the log) as the schema's type."""
    if raw is None:
        return None
    if dtype == "date":
        return date.fromisoformat(raw)
    if dtype == "timestamp":
        return datetime.fromisoformat(raw)
    if dtype in ("integer", "long", "short", "byte"):
        return int(raw)
    if dtype in ("double", "float"):
        return float(raw)
    if dtype == "boolean":
        return raw.lower() == "true"
    return raw


def _as_dict(value: Any) -> dict[str, Any]:
    """A map from the log: a dict in JSON, a list of (key, value) pairs from a Parquet map."""
    if value is None:
        return {}
    if isinstance(value, dict):
        return value
    return dict(value)


class _Snapshot:
    def __init__(self) -> None:
        self.files: dict[str, dict[str, Any]] = {}
        self.metadata: dict[str, Any] | None = None
        self.protocol: dict[str, Any] | None = None

    def apply(self, action: dict[str, Any]) -> None:
        if action.get("add"):
            add = action["add"]
            self.files[add["path"]] = add
        elif action.get("remove"):
            self.files.pop(action["remove"]["path"], None)
        elif action.get("metaData"):
            self.metadata = action["metaData"]
        elif action.get("protocol"):
            self.protocol = action["protocol"]


def _checkpoint(log: Path, snapshot: _Snapshot) -> int:
    """Apply the latest checkpoint named by ``_last_checkpoint``; its version (-1: none)."""
    pointer = log / "_last_checkpoint"
    if not pointer.exists():
        return -1
    info = json.loads(pointer.read_text())
    version = int(info["version"])
    if info.get("v2Checkpoint") or info.get("checkpointFormat") == "V2":
        raise UnsupportedTable(f"{log.parent}: V2 checkpoints are not supported by this reader")
    parts = info.get("parts")
    if parts:
        files = [
            log / f"{version:020d}.checkpoint.{i:010d}.{int(parts):010d}.parquet"
            for i in range(1, int(parts) + 1)
        ]
    else:
        files = [log / f"{version:020d}.checkpoint.parquet"]
    import pyarrow.parquet as pq

    for file in files:
        for row in pq.read_table(file).to_pylist():
            snapshot.apply({k: v for k, v in row.items() if v is not None})
    return version


def read_delta(path: str | Path) -> list[dict[str, Any]] | None:
    """Every row of the Delta table at ``path`` (current version), as dicts; None when there is
    no table there (no ``_delta_log``). Raises :class:`UnsupportedTable` for features this
    reader lacks, and ``OSError``/``ValueError`` for a damaged table."""
    root = Path(path)
    log = root / LOG_DIR
    if not log.is_dir():
        return None
    snapshot = _Snapshot()
    after = _checkpoint(log, snapshot)
    commits = sorted(
        (v, p) for p in log.glob("*.json") if (v := _version_of(p.name)) is not None and v > after
    )
    for _, commit in commits:
        for line in commit.read_text().splitlines():
            if line.strip():
                snapshot.apply(json.loads(line))
    if snapshot.metadata is None:
        return None  # an empty log: a table being created
    protocol = snapshot.protocol or {}
    if int(protocol.get("minReaderVersion", 1)) > 1:
        features = ", ".join(protocol.get("readerFeatures") or []) or "column mapping"
        raise UnsupportedTable(
            f"{root}: needs Delta reader version {protocol['minReaderVersion']} ({features}); "
            "this reader supports version 1 only"
        )
    schema = json.loads(snapshot.metadata["schemaString"])
    types = {f["name"]: f["type"] for f in schema["fields"]}
    columns = [f["name"] for f in schema["fields"]]
    partitions = list(snapshot.metadata.get("partitionColumns") or [])

    import pyarrow.parquet as pq

    rows: list[dict[str, Any]] = []
    for rel, add in sorted(snapshot.files.items()):
        if add.get("deletionVector"):
            raise UnsupportedTable(f"{root}: deletion vectors are not supported by this reader")
        values = _as_dict(add.get("partitionValues"))
        parts = {c: _partition_value(values.get(c), str(types.get(c))) for c in partitions}
        for row in pq.read_table(root / unquote(rel)).to_pylist():
            full = {**row, **parts}
            rows.append({c: full.get(c) for c in columns})
    return rows
