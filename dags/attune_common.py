"""What attune's DAGs share: default arguments, the gold training-set Asset, and the one way a
task does its work, :func:`run_attune`, which runs an ``attune`` command.

Tasks are thin on purpose: each runs the same entry point a person runs by hand (``attune batch
run --date D --stage silver``), with the configuration ``attune airflow up`` was given
(``ATTUNE_CONFIG``), in a child process whose output streams into the task log. So nothing heavy
(Spark, TensorFlow) is imported by this module, by the DAG files or by the task process itself,
and a DAG file parses in milliseconds.

Exit codes carry the kind of failure: 0 success; 2 (bad input or configuration) and 3 (a
data-quality check, a gate) are not fixed by retrying, so the task fails at once; anything else
(a crash, a broker that did not answer) is retried with exponential backoff. When a task fails
for good, :func:`record_failure` writes what failed and what to do, and the command that
re-runs it by hand, to the task log and to ``var/reports/airflow/failures.jsonl``.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from collections import deque
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import Asset  # noqa: TID253
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException  # noqa: TID253

OWNER = "attune"
START_DATE = datetime(2000, 1, 1, tzinfo=UTC)
"""Before any data attune accepts (a run gets no task whose start date is after its logical
date, and a backfill or the demo's 2013 data must run); catchup is off, so nothing runs for
the years between."""
NOT_RETRIED = (2, 3)
"""Exit codes a retry cannot fix: bad input or config (2), a check or gate that said no (3)."""

TRAINING_SET = Asset(
    name="attune_gold_training_set",
    uri="attune://lake/gold/training_examples",
    group="attune",
    extra={"table": "gold/training_examples", "written_by": "attune_nightly.build_gold"},
)
"""The gold training examples: updated by the nightly's gold task, it schedules the retraining."""

_last_command: list[str] = []


def attune_argv(*args: str) -> list[str]:
    """The command line of ``attune ARGS`` in this interpreter (Airflow's, attune's venv)."""
    return [sys.executable, "-m", "attune.cli", *args]


def run_attune(*args: str, skip_on: int | None = None, tail_lines: int = 25) -> list[str]:
    """Run ``attune ARGS``, stream its output into the task log, return its last lines.

    ``skip_on``: an exit code meaning "nothing to do downstream" (the task is skipped with the
    command's last line as the reason, so the run says why). Other non-zero codes fail the task:
    at once for :data:`NOT_RETRIED`, else through Airflow's retries.
    """
    argv = attune_argv(*args)
    _last_command[:] = ["attune", *args]
    print(f"attune task: running `attune {shlex.join(args)}`", flush=True)
    started = time.monotonic()
    tail: deque[str] = deque(maxlen=tail_lines)
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            print(line, flush=True)
            if line.strip():
                tail.append(line)
        code = proc.wait()
    except BaseException:  # the task was stopped: do not leave the command running
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        raise
    seconds = time.monotonic() - started
    last = tail[-1] if tail else "(no output)"
    if code == 0:
        print(f"attune task: `attune {shlex.join(args)}` done in {seconds:.1f} s", flush=True)
        return list(tail)
    if skip_on is not None and code == skip_on:
        raise AirflowSkipException(last)
    message = f"`attune {shlex.join(args)}` exited with {code} after {seconds:.0f} s: {last}"
    if code in NOT_RETRIED:
        raise AirflowFailException(message)
    raise AirflowException(message)


def attune_config() -> Any:
    """The configuration the tasks run with (``ATTUNE_CONFIG``, set by ``attune airflow up``)."""
    from attune.config import load_config

    return load_config(None)


def run_folder(kind: str, run_id: str) -> Path:
    """``var/runs/<kind>/<run id>``: where the steps of one DAG run hand files to each other."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in run_id)
    folder: Path = attune_config().paths.resolve(f"runs/{kind}/{safe}")
    return folder


def record_failure(context: Any) -> None:
    """``on_failure_callback``: say what failed and what to do, in the task log and in
    ``var/reports/airflow/failures.jsonl`` (one JSON object per failure)."""
    ti = context["ti"]
    exc = context.get("exception")
    what = str(exc) if exc is not None else "the task failed"
    command = shlex.join(_last_command) if _last_command else None
    log_url = getattr(ti, "log_url", None)
    todo = [
        "read the reason above (attune's last line says how to fix it)",
        f"re-run by hand: `{command}`" if command else "re-run the task",
        f"then clear the task in the UI to resume the run ({log_url})"
        if log_url
        else "then clear the task in the UI to resume the run",
    ]
    record = {
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "dag_id": ti.dag_id,
        "task_id": ti.task_id,
        "run_id": ti.run_id,
        "try_number": ti.try_number,
        "what_failed": what,
        "command": command,
        "what_to_do": todo,
    }
    print(
        f"attune task FAILED: {ti.dag_id}.{ti.task_id} ({ti.run_id}): {what}\n"
        + "\n".join(f"  - {step}" for step in todo),
        flush=True,
    )
    try:
        path = attune_config().paths.resolve("reports/airflow/failures.jsonl")
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
    except Exception as err:  # the report must not hide the failure it reports
        print(f"attune task: could not write the failure report: {err}", flush=True)


def default_args(retries: int = 2, timeout: timedelta = timedelta(hours=2)) -> dict[str, Any]:
    """Owner, retries with exponential backoff, a time limit and the failure report."""
    return {
        "owner": OWNER,
        "retries": retries,
        "retry_delay": timedelta(seconds=30),
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": timedelta(minutes=10),
        "execution_timeout": timeout,
        "on_failure_callback": record_failure,
    }
