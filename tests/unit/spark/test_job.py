"""Arguments of ``attune batch run`` and ``attune privacy erase``."""

from __future__ import annotations

import time
from datetime import date
from types import SimpleNamespace
from typing import Any

import pytest

from attune.cli import build_parser
from attune.config import ConfigError
from spark.job import STAGES, ordered_stages, parse_date


def test_parse_date_says_how_to_write_it() -> None:
    assert parse_date("2013-03-01") == date(2013, 3, 1)
    with pytest.raises(ConfigError, match=r"--date '01/03/2013' is not a date: use YYYY-MM-DD"):
        parse_date("01/03/2013")


def test_stages_run_in_pipeline_order() -> None:
    assert ordered_stages(None) == list(STAGES)
    assert ordered_stages(["views", "silver"]) == ["silver", "views"]
    with pytest.raises(ConfigError, match="unknown stage 'bronze'"):
        ordered_stages(["bronze"])


def test_cli_wires_batch_run_and_privacy_erase() -> None:
    args = build_parser().parse_args(
        ["batch", "run", "--date", "2013-03-05", "--stage", "gold", "--from", "2013-03-01"]
    )
    assert (args.date, args.stage, args.since, args.json) == (
        "2013-03-05",
        ["gold"],
        "2013-03-01",
        False,
    )
    erase = build_parser().parse_args(["privacy", "erase", "--user", "alice", "--user", "bob"])
    assert erase.user == ["alice", "bob"] and erase.anonymous_id is None
    with pytest.raises(SystemExit):
        build_parser().parse_args(["batch", "run", "--date", "2013-03-05", "--stage", "bronze"])


def test_run_batch_says_each_stage_start_and_beats_while_it_runs(
    cfg: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No Spark: a stand-in session and two stand-in stages; the second runs long enough for
    heartbeats (every 0.05 s here, 10 s for real)."""
    import spark.job as job
    from spark.context import Stage

    tracker = SimpleNamespace(
        getActiveStageIds=lambda: [7],
        getStageInfo=lambda i: SimpleNamespace(numTasks=16, numCompletedTasks=4),
    )
    context = SimpleNamespace(setJobGroup=lambda *a: None, statusTracker=lambda: tracker)
    session = SimpleNamespace(sparkContext=context)

    def slow(ctx: Any, inputs: Any) -> dict[str, object]:
        time.sleep(0.3)
        return {}

    monkeypatch.setattr(
        job, "PIPELINE", (Stage("quick", lambda ctx, inputs: {"rows": 1}), Stage("slow", slow))
    )
    monkeypatch.setattr(job, "STAGES", ("quick", "slow"))
    monkeypatch.setattr(job, "HEARTBEAT_S", 0.05)
    lines: list[str] = []
    stand_in: Any = session
    report = job.run_batch(cfg, date(2013, 3, 1), spark=stand_in, say=lines.append)
    assert [s.stage for s in report.stages] == ["quick", "slow"]
    said = [line.split("] ", 1)[1] for line in lines]  # after "batch <date> [<elapsed> s]"
    said = [s for s in said if not s.startswith("quick: ")]  # a beat there: a loaded machine
    assert said[1] == "quick (stage 1/2) started"
    assert said[2].startswith("quick done in ")
    assert said[3] == "slow (stage 2/2) started"
    beats = said[4:-1]
    assert beats and all(
        b.startswith("slow: ")
        and b.endswith(
            "s elapsed (total unknown, no ETA); Spark tasks 4/16 of 1 running Spark stage(s)"
        )
        for b in beats
    ), beats
    assert said[-1].startswith("slow done in ")
