"""The nightly batch in ``local[N]`` and on a Spark standalone cluster, on the same data.

    .venv/bin/python benchmarks/spark_cluster.py [--size 1M] [--cores 2] [--memory 4g] [--rounds 1]

The run is :func:`benchmarks.batch.run_size` (the synthetic history of ``--size`` events,
generated once under ``var/bench/batch/<size>/``, then every stage of the nightly run for its
last day, per stage; see ``benchmarks/batch.py``), done twice per round, each time in a fresh
driver process: once with ``spark.master=local[<cores>]``, once against a cluster of one master
and one worker of ``--cores`` cores started with :mod:`attune.stack.spark_cluster` (executor
memory = ``--memory``, the same as the driver's, so both runs have the same heap for the work).
Only ``spark.master`` and the executor settings differ.

It prints, per mode, the nightly run's wall seconds (the sum of the stages), the driver
process's wall seconds (JVM start and Spark context included), the CPU seconds of the driver
side during the stages (the driver, its JVM and Python workers: all the work in local mode) and
of the cluster during the whole driver process (master, worker, executor and its Python
workers), and the 1-minute load average before and after; then writes
``benchmarks/results/spark_cluster.json``. On one machine a cluster cannot be faster than
``local[N]`` with the same cores: what this measures is the overhead (executor start, task
serialization, shuffle and results through the network stack), and that the batch runs there.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results" / "spark_cluster.json"


def _batch() -> Any:
    """``benchmarks/batch.py`` (imported by name: mypy checks the benchmarks as loose files,
    and a ``from benchmarks.batch import`` would make it see that file under two names)."""
    import importlib

    return importlib.import_module("benchmarks.batch")


def _one(size: int, days: int, items: int) -> int:
    """In a child: one run_size with the configuration of the environment; JSON on stdout."""
    from attune.config import load_config

    result = _batch().run_size(load_config(None), size, days, items)
    print("RESULT " + json.dumps(result, default=str), flush=True)
    return 0


def _tree_cpu(pid: int) -> float:
    batch = _batch()
    return float(sum(batch._proc_cpu(p) for p in [pid, *batch._descendants(pid)]))


def run_mode(
    mode: str, env_overrides: dict[str, str], args: argparse.Namespace, cluster_pids: list[int]
) -> dict[str, Any]:
    env = {**os.environ, **env_overrides}
    cmd = [sys.executable, __file__, "--one", "--size", args.size, "--days", str(args.days),
           "--items", str(args.items)]  # fmt: skip
    load0 = os.getloadavg()
    cluster_cpu0 = sum(_tree_cpu(p) for p in cluster_pids)
    started = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    out: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        out.append(line)
        if not line.startswith("RESULT "):
            print(f"  {mode}: {line.rstrip()}", flush=True)
    proc.wait()
    wall = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"{mode}: the run failed (exit code {proc.returncode})")
    result = json.loads(next(x for x in out if x.startswith("RESULT "))[len("RESULT ") :])
    return {
        "mode": mode,
        "process_wall_s": round(wall, 1),
        "nightly_s": result["nightly_s"],
        "stages_s": result["stages_s"],
        # CPU during the nightly stages of the driver, its JVM and Python workers (all of the
        # work in local mode), and of the cluster's processes over the whole driver process
        # (executor start included)
        "driver_cpu_s": result["nightly_cpu_s"],
        "cluster_cpu_s": round(sum(_tree_cpu(p) for p in cluster_pids) - cluster_cpu0, 1),
        "events": result["events"],
        "load_avg_1m": [round(load0[0], 2), round(os.getloadavg()[0], 2)],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="1M", help="events, e.g. 1M or 500K")
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--cores", type=int, default=2, help="local[N] and the worker's cores")
    parser.add_argument("--memory", default="4g", help="the driver's and the executor's heap")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    size = _batch().parse_size(args.size)
    if args.one:
        return _one(size, args.days, args.items)

    from attune.stack.spark_cluster import running_cluster

    common = {"ATTUNE__SPARK__DRIVER_MEMORY": args.memory}
    rows: list[dict[str, Any]] = []
    with (
        tempfile.TemporaryDirectory(prefix="attune-spark-cluster-") as tmp,
        running_cluster(
            Path(tmp), workers=1, cores=args.cores, memory=args.memory, say=print
        ) as cluster,
    ):
        conf = cluster.app_conf()
        cluster_env = {
            **common,
            "ATTUNE__SPARK__MASTER": cluster.master_url,
            "ATTUNE__SPARK__CONF": json.dumps(conf),  # JSON is YAML
        }
        pids = [cluster.master.pid, *(w.pid for w in cluster.workers)]
        for r in range(args.rounds):
            local = {**common, "ATTUNE__SPARK__MASTER": f"local[{args.cores}]"}
            rows.append({"round": r, **run_mode(f"local[{args.cores}]", local, args, pids)})
            rows.append({"round": r, **run_mode("standalone", cluster_env, args, pids)})
        apps = [(a["name"], a["state"]) for a in cluster.state().get("completedapps", [])]
    print()
    print(f"{'mode':<12} {'nightly s':>9} {'process s':>9} {'driver CPU':>10} "
          f"{'cluster CPU':>11} {'load 1m':>11}  stages (s)")  # fmt: skip
    for row in rows:
        stages = " ".join(f"{k} {v:.0f}" for k, v in row["stages_s"].items())
        load = f"{row['load_avg_1m'][0]:.1f}-{row['load_avg_1m'][1]:.1f}"
        cpu = f"{row['driver_cpu_s']:>10.1f} {row['cluster_cpu_s']:>11.1f}"
        print(f"{row['mode']:<12} {row['nightly_s']:>9.1f} {row['process_wall_s']:>9.1f} "
              f"{cpu} {load:>11}  {stages}")  # fmt: skip
    local_rows = [x for x in rows if x["mode"] != "standalone"]
    cluster_rows = [x for x in rows if x["mode"] == "standalone"]
    ratio = sum(x["nightly_s"] for x in cluster_rows) / sum(x["nightly_s"] for x in local_rows)
    print(f"standalone / local nightly wall time: {ratio:.2f}; applications seen by the "
          f"master: {apps}")  # fmt: skip
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                "size": size,
                "cores": args.cores,
                "memory": args.memory,
                "rows": rows,
                "standalone_over_local": round(ratio, 2),
                "applications": apps,
            },
            indent=2,
        )
    )
    print(f"written {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
