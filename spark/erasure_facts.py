"""The pure facts the erasure commands share: a Delta commit of a table's history (which
commits delete rows, which complete a VACUUM), what ``privacy verify`` found, and how a retention
is printed. Kept apart from :mod:`spark.privacy` (the commands, with their I/O) so that its rule
modules (:mod:`spark.erasure_status`) can use them without importing the commands.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any


@dataclass(frozen=True)
class Commit:
    """One row of a Delta table's history (``DESCRIBE HISTORY``)."""

    version: int
    timestamp: datetime
    operation: str
    parameters: Mapping[str, str] = field(default_factory=dict)
    metrics: Mapping[str, str] = field(default_factory=dict)


def _metric(commit: Commit, name: str) -> int:
    try:
        return int(commit.metrics.get(name) or 0)
    except ValueError:
        return 0


def deletes_rows(commit: Commit) -> bool:
    """Whether ``commit`` deleted rows: a MERGE that deleted some (how an erasure deletes), or a
    DELETE (retention, a manual erasure) that deleted rows or removed files."""
    if commit.operation == "MERGE":
        return _metric(commit, "numTargetRowsDeleted") > 0
    if commit.operation == "DELETE":
        return _metric(commit, "numDeletedRows") > 0 or _metric(commit, "numRemovedFiles") > 0
    return False


def completed_vacuum(commit: Commit) -> bool:
    """Whether ``commit`` is the end of a VACUUM that completed (Delta logs START and END)."""
    status = str(commit.parameters.get("status") or "COMPLETED").upper()
    return commit.operation == "VACUUM END" and status == "COMPLETED"


def duration_text(d: timedelta) -> str:
    seconds = int(d.total_seconds())
    if seconds % 86400 == 0 and seconds:
        return f"{seconds // 86400} d"
    if seconds % 3600 == 0 and seconds:
        return f"{seconds // 3600} h"
    return f"{seconds} s"


@dataclass
class Verification:
    """What ``privacy verify`` found (see the module docstring); ``ok`` when nothing is left."""

    checked_at: str
    requests_applied: int
    requests_pending: int
    pseudonyms: int
    tables: dict[str, dict[str, Any]]
    redis: dict[str, Any]
    failures: list[str]
    stores: list[dict[str, Any]] = field(default_factory=list)
    """Every store that can hold an erased user, with its state and the time by which it is
    clean (:func:`spark.erasure_status.store_rows`)."""
    warnings: list[str] = field(default_factory=list)
    all_clean_by: str | None = None
    """When every store is clean (None: not known, a store waits for an unscheduled event or
    holds data)."""

    @property
    def ok(self) -> bool:
        return not self.failures

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}
