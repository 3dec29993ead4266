"""`make notebook` starts JupyterLab over notebooks/, and `make help` lists it.

The test runs the real target (set-up and jars are stamped, so they do nothing when current)
on a free port with a token of its own, asks the server's ``/api/status``, then stops the
process group it started. No stack needed: not marked ``integration``.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from attune.config import free_port

ROOT = Path(__file__).resolve().parents[3]

# set-up may have to sync .venv first when requirements.lock changed since the last run
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def test_make_help_lists_notebook() -> None:
    out = subprocess.run(
        ["make", "-s", "help"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert "make notebook" in out
    assert "NOTEBOOK_PORT=8888" in out


def test_make_notebook_starts_jupyterlab(tmp_path: Path) -> None:
    port, token = free_port(), secrets.token_hex(16)
    env = {
        **os.environ,
        "JUPYTER_TOKEN": token,
        # the server's runtime files (connection files, cookie secret) stay in the test's folder
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
    }
    log = tmp_path / "make-notebook.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["make", "-s", "notebook", f"NOTEBOOK_PORT={port}"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: make, then jupyter (exec'd)
        )
    try:
        status = None
        deadline = time.monotonic() + 420
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                reply = httpx.get(
                    f"http://127.0.0.1:{port}/api/status",
                    headers={"Authorization": f"token {token}"},
                    timeout=5,
                )
            except httpx.TransportError:
                time.sleep(0.5)
                continue
            if reply.status_code == 200:
                status = reply.json()
                break
            time.sleep(0.5)
        assert status is not None, f"JupyterLab did not answer; log:\n{log.read_text()[-3000:]}"
        assert "started" in status
        # the lab (not only a bare Jupyter server) serves over notebooks/
        lab = httpx.get(
            f"http://127.0.0.1:{port}/lab", headers={"Authorization": f"token {token}"}, timeout=10
        )
        assert lab.status_code == 200
        contents = httpx.get(
            f"http://127.0.0.1:{port}/api/contents",
            headers={"Authorization": f"token {token}"},
            timeout=10,
        ).json()
        names = {entry["name"] for entry in contents["content"]}
        assert {"01_explore_events.ipynb", "03_experiment_analysis.ipynb"} <= names
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # the group this test started, nothing else
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
