"""Arguments of ``attune batch run`` and ``attune privacy erase``."""

from __future__ import annotations

from datetime import date

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
