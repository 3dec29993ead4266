"""The same batch job, unchanged, on a Spark standalone cluster started from pyspark.

A master and one worker (1 core, 1 GiB) are started with ``bin/spark-class`` from the pyspark
installation; ``attune batch run --stage silver`` runs as a separate process (one SparkContext
per process) with only ``spark.master`` pointed at the cluster; then both are stopped.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from attune import supervisor
from attune.config import AttuneConfig, free_port
from spark.tables import Lake
from tests.integration.spark.conftest import publish
from tests.unit.spark.fixtures import at, ev, write_bronze

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

# a few Spark runs each; generous timeouts for a loaded 2-core machine
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[3]


def _spark_class(*args: str, log: Path) -> supervisor.Child:
    import pyspark

    home = Path(pyspark.__file__).parent
    env = {**os.environ, "SPARK_HOME": str(home), "SPARK_DAEMON_MEMORY": "256m"}
    name = "the Spark " + args[0].rsplit(".", 1)[-1].lower()  # "the Spark master"
    cmd = [str(home / "bin" / "spark-class"), *args]
    return supervisor.spawn(cmd, name=name, log=log, env=env, detached=True)


def _master_state(ui_port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{ui_port}/json/", timeout=5) as resp:
        return dict(json.load(resp))


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[str, int]]:
    """``(master URL, master web UI port)`` of a running master with one alive worker."""
    port, ui, worker_ui = free_port(), free_port(), free_port()
    master = _spark_class(
        "org.apache.spark.deploy.master.Master",
        "--host", "127.0.0.1", "--port", str(port), "--webui-port", str(ui),
        log=tmp_path / "master.log",
    )  # fmt: skip
    url = f"spark://127.0.0.1:{port}"
    worker = _spark_class(
        "org.apache.spark.deploy.worker.Worker",
        url,
        "--host", "127.0.0.1", "--cores", "1", "--memory", "1g",
        "--webui-port", str(worker_ui), "--work-dir", str(tmp_path / "work"),
        log=tmp_path / "worker.log",
    )  # fmt: skip

    def worker_alive() -> str | None:
        try:
            state = _master_state(ui)
        except OSError as exc:
            return f"master web UI: {exc}"
        if any(w.get("state") == "ALIVE" for w in state.get("workers", [])):
            return None
        return "no ALIVE worker yet"

    try:
        master.wait_ready(worker_alive, 120, poll_s=1)
        yield url, ui
    finally:
        worker.stop(20)
        master.stop(20)


def _env(cfg: AttuneConfig, master: str) -> dict[str, str]:
    """The isolated config as ATTUNE__ overrides, plus the cluster as spark.master."""
    return {
        **os.environ,
        "ATTUNE__SPARK__MASTER": master,
        "ATTUNE__SPARK__DRIVER_MEMORY": "1g",
        "ATTUNE__SPARK__SHUFFLE_PARTITIONS": "2",
        "ATTUNE__SPARK__CONF": "{spark.executor.memory: 512m, spark.cores.max: '1'}",
        "ATTUNE__LAKE__ROOT": cfg.lake.root,
        "ATTUNE__KAFKA__TOPICS__CATALOG__NAME": cfg.kafka.topic("catalog").name,
        "ATTUNE__PRIVACY__PSEUDONYM_KEY_FILE": str(cfg.privacy.pseudonym_key_file),
        "ATTUNE__PRIVACY__PROFILE_KEY_FILE": str(cfg.privacy.profile_key_file),
        "ATTUNE__SPEED__ONLINE_STORE__KEY_PREFIX": cfg.speed.online_store.key_prefix,
    }


def test_silver_stage_runs_unchanged_on_a_standalone_cluster(
    world: AttuneConfig, spark: SparkSession, cluster: tuple[str, int]
) -> None:
    from pyspark.testing import assertDataFrameEqual

    master, ui = cluster
    lake = Lake.from_config(world)
    publish(world, [("i1", {"item_id": "i1", "title": "Heat", "genres": ["Crime"]})])
    write_bronze(
        spark,
        lake.bronze,
        [
            ev("s1", "item_view", "u1", at(4), ["i1"]),
            ev("s1", "item_view", "u1", at(4), ["i1"], received=at(4, 13)),  # a retry
            ev("s2", "item_view", "u1", at(5), ["i1"]),
        ],
    )
    proc = subprocess.run(
        [sys.executable, "-m", "attune.cli", "batch", "run", "--date", "2013-03-05",
         "--stage", "silver", "--json"],
        cwd=ROOT, env=_env(world, master), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["stages"]["silver"]["events"]["rows"] == 2  # one copy of s1, and s2
    assert report["stages"]["silver"]["events"]["duplicates_removed"] == 1
    # it ran on the cluster: the master lists the finished application (once the driver's JVM,
    # which may outlive the command by a moment, has said goodbye)
    deadline = time.monotonic() + 60
    apps: list[str] = []
    while "attune-batch" not in apps and time.monotonic() < deadline:
        time.sleep(0.5)
        apps = [a["name"] for a in _master_state(ui).get("completedapps", [])]
    assert "attune-batch" in apps, _master_state(ui)
    assertDataFrameEqual(
        spark.read.format("delta").load(lake.silver_events).select("event_id", "event_date"),
        [("s1", date(2013, 3, 4)), ("s2", date(2013, 3, 5))],
    )
