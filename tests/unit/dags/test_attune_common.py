"""The one way a DAG task does its work: run an ``attune`` command, map its exit code."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

DAGS = Path(__file__).resolve().parents[3] / "dags"


@pytest.fixture()
def common(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[object]:
    monkeypatch.syspath_prepend(str(DAGS))
    monkeypatch.setenv("ATTUNE__PATHS__VAR_DIR", str(tmp_path / "var"))
    from attune.config import free_port

    monkeypatch.setenv("ATTUNE__AIRFLOW__PORT", str(free_port()))
    import attune_common

    yield attune_common


def test_a_command_that_succeeds_returns_its_last_lines(common: object, capsys) -> None:  # type: ignore[no-untyped-def]
    lines = common.run_attune("events", "schema", "--format", "json")  # type: ignore[attr-defined]
    # the schema is a JSON document: its last line closes it
    assert lines[-1] == "}"
    out = capsys.readouterr().out
    assert "running `attune events schema --format json`" in out
    assert '"event_id"' in out  # the command's output reached the task log


def test_exit_codes_map_to_retry_fail_or_skip(common: object) -> None:
    from airflow.sdk.exceptions import (
        AirflowException,
        AirflowFailException,
        AirflowSkipException,
    )

    # argparse refuses an unknown stage with exit code 2: bad input, never retried
    with pytest.raises(AirflowFailException) as failed:
        common.run_attune("batch", "run", "--date", "2013-03-01", "--stage", "nope")  # type: ignore[attr-defined]
    assert "exited with 2" in str(failed.value) and "invalid choice: 'nope'" in str(failed.value)
    # the same code can mean "skip downstream" where the caller says so
    with pytest.raises(AirflowSkipException) as skipped:
        common.run_attune("batch", "run", "--stage", "nope", skip_on=2)  # type: ignore[attr-defined]
    assert "invalid choice: 'nope'" in str(skipped.value)  # the last line is the reason
    # any other failure (here: no Airflow answers on a free port, exit 1) goes to Airflow's
    # retries
    with pytest.raises(AirflowException) as retried:
        common.run_attune("airflow", "status")  # type: ignore[attr-defined]
    assert not isinstance(retried.value, AirflowFailException)
    assert "exited with 1" in str(retried.value)


def test_a_failure_is_written_with_what_to_do(common: object, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from airflow.sdk.exceptions import AirflowFailException

    with pytest.raises(AirflowFailException) as failed:
        common.run_attune("batch", "run", "--date", "2013-03-01", "--stage", "nope")  # type: ignore[attr-defined]
    ti = SimpleNamespace(
        dag_id="attune_nightly",
        task_id="build_silver",
        run_id="manual__x",
        try_number=1,
        log_url="http://127.0.0.1:8280/dags/attune_nightly/runs/manual__x",
    )
    common.record_failure({"ti": ti, "exception": failed.value})  # type: ignore[attr-defined]
    path = tmp_path / "var" / "reports" / "airflow" / "failures.jsonl"
    record = json.loads(path.read_text().splitlines()[-1])
    assert record["dag_id"] == "attune_nightly" and record["task_id"] == "build_silver"
    assert record["command"] == "attune batch run --date 2013-03-01 --stage nope"
    assert "invalid choice" in record["what_failed"]
    assert any("re-run by hand: `attune batch run" in step for step in record["what_to_do"])
    assert "attune task FAILED: attune_nightly.build_silver" in capsys.readouterr().out


def test_run_folders_are_safe_paths_under_var(common: object, tmp_path: Path) -> None:
    folder = common.run_folder("retrain", "asset_triggered__2026-12-06T07:20:56+00:00_Pg/x")  # type: ignore[attr-defined]
    assert folder == tmp_path / "var" / "runs" / "retrain" / (
        "asset_triggered__2026-12-06T07_20_56_00_00_Pg_x"
    )
    assert sys.executable in common.attune_argv("x")  # type: ignore[attr-defined]
