"""The online writer's per-step timings on the status board (``attune speed status``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from attune.online_store import ApplyStats
from speed_layer.job import OnlineBatchWriter, StatusBoard


def _board(tmp_path: Path) -> StatusBoard:
    return StatusBoard(tmp_path / "speed-status.json", {})


def _on_disk(board: StatusBoard) -> dict[str, Any]:
    return dict(json.loads(board.path.read_text())["queries"])


class _Rows:
    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows

    def collect(self) -> list[dict[str, Any]]:
        return self.rows


class _Catalog:
    def __init__(self) -> None:
        self.items: dict[str, Any] = {}
        self.malformed = 0

    def refresh_if_due(self) -> None:
        pass


class _TimedWriter:
    def apply(self, rows: Any) -> ApplyStats:
        return ApplyStats(users=1, applied=1, timings_ms={"users": 5.0, "count": 1.5})

    def refresh_trending(self) -> None:
        pass


def test_the_board_shows_the_last_batchs_steps_and_their_totals(tmp_path: Path) -> None:
    board = _board(tmp_path)
    fake_writer: Any = _TimedWriter()
    fake_catalog: Any = _Catalog()
    batch = OnlineBatchWriter(fake_writer, fake_catalog, board)
    rows: Any = _Rows([{"user": "u1", "ts_ms": 1, "iid": "e1#0", "payload": "{}"}])
    batch(rows, 1)
    batch(rows, 2)
    writer = _on_disk(board)["online"]["writer"]
    assert writer["batches"] == 2 and writer["last_batch_id"] == 2
    assert set(writer["last_step_ms"]) == {"users", "count", "trending", "bandits"}
    assert writer["last_step_ms"]["users"] == 5.0
    # two batches of 5.0 and 1.5 ms; spark (collect) is timed too
    assert (writer["step_ms_total"]["users"], writer["step_ms_total"]["count"]) == (10.0, 3.0)
    assert set(writer["step_ms_total"]) == {"spark", "users", "count", "trending", "bandits"}
