"""The nightly run's silver and gold stages on a Spark standalone cluster equal the local run.

:mod:`attune.stack.spark_cluster` starts a master and one worker (2 cores) from pyspark's own
launcher. The hand-made world of ``test_batch_run`` (same events, same catalog) is written to
two lakes; ``attune batch run --stage silver --stage gold`` runs once in ``local[2]`` (in this
process) and once as a separate driver process whose only change is ``spark.master``, so the
executor in the worker's JVM writes the Delta tables. Every silver and gold table must hold the
same rows in both lakes, a few of them as worked out by hand, and the master must list the
finished application, whose executor left its log in the worker's work directory.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from attune import supervisor
from attune.config import AttuneConfig
from attune.stack.spark_cluster import SparkCluster, running_cluster, wait_for_completed_app
from spark.job import run_batch
from spark.tables import Lake
from tests.integration.spark.conftest import publish
from tests.integration.spark.test_batch_run import CATALOG, DAY, SINCE, World, _events
from tests.unit.spark.fixtures import write_bronze

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[3]
APP = "attune-batch"  # the application name of `attune batch run`


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[SparkCluster]:
    with running_cluster(tmp_path / "spark", workers=1, cores=2, memory="1g") as c:
        yield c


def _contents(spark: SparkSession, lake: Lake) -> dict[str, list[str]]:
    """Every silver and gold table's rows, sorted; ``*_version`` columns left out (they
    record Delta versions of other tables, which are the same here but need not be)."""
    from delta.tables import DeltaTable

    out: dict[str, list[str]] = {}
    for name, path in lake.tables().items():
        if not name.startswith(("silver_", "gold_")) or not DeltaTable.isDeltaTable(spark, path):
            continue
        df = spark.read.format("delta").load(path)
        df = df.drop(*[c for c in df.columns if c.endswith("_version")])
        out[name] = sorted(map(repr, df.collect()))
    return out


def test_silver_and_gold_on_a_standalone_cluster_equal_local_mode(
    world: AttuneConfig, spark: SparkSession, cluster: SparkCluster, tmp_path: Path
) -> None:
    from pyspark.testing import assertDataFrameEqual

    publish(world, CATALOG)
    local_cfg = world.model_copy(
        update={"lake": world.lake.model_copy(update={"root": str(tmp_path / "lake-local")})}
    )
    cluster_cfg = world.model_copy(
        update={
            "lake": world.lake.model_copy(update={"root": str(tmp_path / "lake-cluster")}),
            "spark": world.spark.model_copy(
                update={
                    "master": cluster.master_url,
                    "driver_memory": "1g",
                    "conf": {**world.spark.conf, **cluster.app_conf()},
                }
            ),
        }
    )
    w = World(local_cfg, spark)
    events = _events(w.alice, w.anon)
    local, on_cluster = Lake.from_config(local_cfg), Lake.from_config(cluster_cfg)
    write_bronze(spark, local.bronze, events)
    write_bronze(spark, on_cluster.bronze, events)

    run_batch(local_cfg, DAY, ["silver", "gold"], since=SINCE, spark=spark)

    name = f"test-spark-cluster-{uuid.uuid4().hex[:8]}"
    cmd, env = supervisor.attune_command(
        cluster_cfg,
        ["batch", "run", "--date", DAY.isoformat(), "--from", SINCE.isoformat(),
         "--stage", "silver", "--stage", "gold", "--json"],
        name,
    )  # fmt: skip
    try:
        proc = subprocess.run(
            cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False
        )
    finally:
        (cluster_cfg.run_dir / f"{name}.yaml").unlink(missing_ok=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report: dict[str, Any] = json.loads(proc.stdout)
    assert set(report["stages"]) == {"silver", "gold"}

    # it ran on the cluster: the master lists the finished application, and the worker's
    # work directory holds its executor's log
    app = wait_for_completed_app(cluster, APP)
    assert app["state"] == "FINISHED", app
    executor_logs = list(cluster.work_dir(0).glob(f"{app['id']}/*/stderr"))
    assert executor_logs, f"no executor log under {cluster.work_dir(0)}"

    # a few values by hand (see test_batch_run): silver keeps everything from 03-01 on minus
    # e08's retry and bot-1's 4 events in one minute (e00, 02-20, is before --from): e01-e18,
    # e20, e21; gold has 15 training examples
    assertDataFrameEqual(
        spark.read.format("delta").load(on_cluster.silver_events).select("event_id"),
        [(f"e{i:02d}",) for i in [*range(1, 19), 20, 21]],
    )
    assert spark.read.format("delta").load(on_cluster.gold_training_examples).count() == 15

    # and every silver and gold table equals the local run's, row for row
    expected, got = _contents(spark, local), _contents(spark, on_cluster)
    assert "silver_events" in expected and "gold_training_examples" in expected
    assert sorted(got) == sorted(expected)
    for table, rows in expected.items():
        assert got[table] == rows, table


def test_a_worker_that_cannot_start_is_reported_with_its_log(tmp_path: Path) -> None:
    from attune.stack.spark_cluster import start_cluster

    # "lots" is not a memory size: the worker's argument parser refuses it and exits
    with pytest.raises(supervisor.NotReady) as failure:
        start_cluster(tmp_path / "spark", workers=1, cores=1, memory="lots", timeout_s=120)
    message = str(failure.value)
    assert "Spark worker 0 exited with code" in message, message
    assert str(tmp_path / "spark" / "worker-0.log") in message, message
