"""Where the JVM of an in-process Spark session writes: a log, or the console when asked."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from attune.spark_session import _output_to

CHILD = """
import sys
from pathlib import Path
from attune.config import load_config
from attune.spark_session import driver_log
cfg = load_config(sys.argv[1])
print(driver_log(cfg, "attune-x", console=sys.argv[2] == "console"))
"""


def _driver_log_in_child(
    tmp_path: Path, env: dict[str, str], stderr: int | None, console: bool = False
) -> str:
    config = tmp_path / "attune.yaml"
    config.write_text(f"paths:\n  var_dir: {tmp_path / 'var'}\n")
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(config), "console" if console else "server"],
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        env=env,
        check=True,
        timeout=60,
    )
    return done.stdout.strip()


def test_a_console_gets_a_log_a_file_or_verbose_keeps_the_output(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "ATTUNE_VERBOSE"}
    # stderr a pipe (a console, `make demo | tee`): the JVM writes to var/log/spark-<app>.log
    assert _driver_log_in_child(tmp_path, env, subprocess.PIPE) == str(
        tmp_path / "var" / "log" / "spark-attune-x.log"
    )
    # stderr already a file (a detached server's own log): the JVM keeps writing there
    with open(tmp_path / "server.log", "w") as log:
        assert _driver_log_in_child(tmp_path, env, log.fileno()) == "None"
        # ... unless it is a console program's transcript (`make demo > demo.log 2>&1`)
        assert _driver_log_in_child(tmp_path, env, log.fileno(), console=True) == str(
            tmp_path / "var" / "log" / "spark-attune-x.log"
        )
    # asked to be verbose
    assert _driver_log_in_child(tmp_path, {**env, "ATTUNE_VERBOSE": "1"}, subprocess.PIPE) == "None"
    with open(tmp_path / "demo.log", "w") as log:
        verbose = {**env, "ATTUNE_VERBOSE": "1"}
        assert _driver_log_in_child(tmp_path, verbose, log.fileno(), console=True) == "None"


def test_output_to_sends_children_to_the_log_and_restores_this_process(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "log" / "spark-x.log"
    with _output_to(log):
        subprocess.run(["sh", "-c", "echo child-out; echo child-err >&2"], check=True)
    print("mine")
    out, err = capfd.readouterr()
    assert out == "mine\n" and err == ""
    assert log.read_text().splitlines() == ["child-out", "child-err"]
