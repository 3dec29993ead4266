"""``attune speed`` helpers without services: checkpoint offsets, lag, status text, arguments."""

from __future__ import annotations

from pathlib import Path

import pytest

from speed_layer.control import PartitionLag, committed_offsets, consumer_lag, format_status
from speed_layer.job import parse_query_names


def _checkpoint(root: Path) -> Path:
    """A checkpoint as Spark writes it: batch 7 committed, batch 8 planned but not committed."""
    (root / "offsets").mkdir(parents=True)
    (root / "commits").mkdir()
    meta = '{"batchWatermarkMs":0,"batchTimestampMs":1700000000000,"conf":{}}'
    (root / "offsets" / "7").write_text(f'v1\n{meta}\n{{"events.t":{{"1":40,"0":25}}}}\n')
    (root / "offsets" / "8").write_text(f'v1\n{meta}\n{{"events.t":{{"1":60,"0":30}}}}\n')
    (root / "commits" / "7").write_text('v1\n{"nextBatchWatermarkMs":0}\n')
    return root


def test_committed_offsets_are_those_of_the_last_committed_batch(tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path / "ckpt")
    assert committed_offsets(ckpt, "events.t") == (7, {0: 25, 1: 40})
    assert committed_offsets(ckpt, "other") == (7, {})
    assert committed_offsets(tmp_path / "none", "events.t") == (None, {})


def test_lag_per_partition(tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path / "ckpt")
    batch, lag = consumer_lag(ckpt, "events.t", {0: 31, 1: 40, 2: 5})
    # end - committed: 31 - 25, 40 - 40, and partition 2 was never read: 5 - 0.
    assert batch == 7
    assert lag == [
        PartitionLag(0, 25, 31, 6),
        PartitionLag(1, 40, 40, 0),
        PartitionLag(2, None, 5, 5),
    ]


def test_status_text() -> None:
    report = {
        "running": True,
        "pid": 4242,
        "state": "running",
        "started_at": "2026-01-01T00:00:00+00:00",
        "trigger": "microbatch",
        "topic": "attune.events",
        "log": "var/log/speed.log",
        "kafka_error": None,
        "queries": [
            {
                "name": "online",
                "active": True,
                "checkpoint": "var/checkpoints/speed/online",
                "exception": None,
                "last_progress": {
                    "batch_id": 12,
                    "timestamp": "2026-01-01T00:01:00.000Z",
                    "input_rows": 40,
                    "input_rows_per_s": 1000.0,
                    "processed_rows_per_s": 2500.5,
                    "batch_duration_ms": 160,
                },
                "writer": None,
                "committed_batch": 12,
                "lag": [{"partition": 0, "committed": 10, "end": 12, "lag": 2}],
                "total_lag": 2,
            }
        ],
    }
    text = format_status(report)
    assert "speed layer: running (pid 4242" in text
    assert (
        "last batch 12 at 2026-01-01T00:01:00.000Z: 40 rows, 1,000.0 rows/s in, "
        "2,500.5 rows/s processed, 160 ms"
    ) in text
    assert "consumer lag on attune.events (committed batch 12): total 2" in text
    assert "              0         10         12          2" in text
    # the writer's counters on one line, the last batch's steps on the next, totals left out
    report["queries"][0]["writer"] = {
        "batches": 3,
        "rows": 120,
        "last_step_ms": {"genres": 2.5, "users": 80.0},
        "step_ms_total": {"genres": 7.5, "users": 240.0},
    }
    lines = format_status(report).splitlines()
    at = lines.index("    writer: batches 3, rows 120")
    assert lines[at + 1] == "    last batch's steps (ms): genres 2.5, users 80"
    assert not any("step_ms_total" in line for line in lines)


def test_query_names() -> None:
    assert parse_query_names("online") == ["online"]
    assert parse_query_names("bronze, online") == ["bronze", "online"]
    with pytest.raises(ValueError, match=r"unknown speed-layer queries \['gold'\]"):
        parse_query_names("online,gold")
