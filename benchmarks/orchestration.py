"""Orchestration benchmark: the nightly batch + retraining through Airflow against the direct
path, on the demo's MovieTweetings 100K lake, same machine, same run.

    .venv/bin/python benchmarks/orchestration.py [--rounds 1] [--date YYYY-MM-DD --from YYYY-MM-DD]

Needs the stack up and the demo's bronze table (run ``make demo`` once). For each round, both
paths run on the same lake (every batch stage is idempotent over its date), each against a
model repository of its own (so each retraining publishes, awaits serving and smoke-tests a
first version: the same work on both paths), with its own model server and API:

* **direct**: ``attune batch run --date D --from F`` then ``attune models retrain``, each one
  process, as a person runs them by hand;
* **airflow**: ``attune_nightly`` triggered for D (``since`` F) on a local Airflow (``attune
  airflow up``, started once, not timed), followed until it ends, then the ``attune_retrain``
  run its gold Asset triggered, followed until it ends. Timed from the trigger to the end of
  the retraining; the per-task durations Airflow reports give how much of the wall time is work
  and how much is scheduling and task start-up.

The paths alternate (direct first in odd rounds) so that drift in the machine's load does not
favour one. Also measured: each DAG file's parse time (a fresh interpreter per file, best of
5). Prints a table, the load average before and after, and the overhead ratio
(airflow / direct wall time, target < 1.20), and writes ``benchmarks/results/orchestration.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from attune import supervisor  # noqa: E402
from attune.config import AttuneConfig, free_port, load_config, write_config  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "orchestration.json"
TARGET_OVERHEAD = 1.20
DAG_FILES = sorted(p for p in (ROOT / "dags").glob("attune_*.py") if p.name != "attune_common.py")


def say(message: str) -> None:
    print(f"bench: {message}", flush=True)


def dataset_days(cfg: AttuneConfig) -> tuple[date, date]:
    from attune.replay import read_ratings, resolve_dataset

    rows = read_ratings(resolve_dataset(cfg, "movietweetings").events_file, None)
    stamps = [ts for *_, ts in rows]
    return (
        datetime.fromtimestamp(min(stamps), UTC).date(),
        datetime.fromtimestamp(max(stamps), UTC).date(),
    )


def parse_times(repeats: int = 5) -> dict[str, float]:
    """Best-of-``repeats`` seconds to execute each DAG file in a fresh interpreter (Airflow's
    own import excluded, as it is paid once by the DAG processor)."""
    out = {}
    for path in DAG_FILES:
        probe = (
            "import runpy, sys, time\n"
            f"sys.path.insert(0, {str(path.parent)!r})\n"
            "import airflow.sdk\n"
            "t = time.perf_counter()\n"
            f"runpy.run_path({str(path)!r})\n"
            "print(time.perf_counter() - t)\n"
        )
        times = []
        for _ in range(repeats):
            done = subprocess.run(
                [sys.executable, "-c", probe], capture_output=True, text=True, check=True
            )
            times.append(float(done.stdout.strip().splitlines()[-1]))
        out[path.stem] = min(times)
    return out


def round_config(cfg: AttuneConfig, name: str) -> AttuneConfig:
    """``cfg`` with a model repository, model server and API of this path and round."""
    repo = cfg.paths.resolve(f"bench/orchestration/{name}/models")
    tree = cfg.model_copy(
        update={
            "models": cfg.models.model_copy(update={"repository_dir": repo}),
            "serving": cfg.serving.model_copy(
                update={"rest_port": free_port(), "grpc_port": free_port()}
            ),
            "api": cfg.api.model_copy(update={"port": free_port()}),
        }
    ).model_dump()
    return AttuneConfig.model_validate(tree)


def run_cli(cfg: AttuneConfig, args: list[str], log: Path) -> float:
    """``attune ARGS`` with ``cfg`` in a child (output to ``log``); returns its wall seconds."""
    cmd, env = supervisor.attune_command(cfg, args, "bench-orchestration")
    env["TF_USE_LEGACY_KERAS"] = "1"
    started = time.monotonic()
    with log.open("ab") as out:
        done = subprocess.run(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        raise SystemExit(f"`attune {' '.join(args)}` failed ({done.returncode}); see {log}")
    return time.monotonic() - started


def direct_path(cfg: AttuneConfig, day: date, since: date, log: Path) -> dict[str, Any]:
    batch = run_cli(
        cfg, ["batch", "run", "--date", day.isoformat(), "--from", since.isoformat()], log
    )
    say(f"direct: batch {batch:.0f} s")
    retrain = run_cli(cfg, ["models", "retrain", "--no-progress"], log)
    say(f"direct: retrain {retrain:.0f} s")
    return {"nightly_s": batch, "retrain_s": retrain, "total_s": batch + retrain}


def airflow_path(
    cfg: AttuneConfig, airflow_cfg: AttuneConfig, day: date, since: date
) -> dict[str, Any]:
    from attune.stack.airflow import airflow_paths
    from attune.stack.airflow_client import AirflowClient

    nightly, retrain = "attune_nightly", "attune_retrain"
    write_config(cfg, airflow_paths(airflow_cfg).task_config)  # this round's repository
    with AirflowClient.from_config(airflow_cfg) as client:
        client.wait_for_dags([nightly, retrain])
        for old in client.runs(nightly, limit=100):
            if (old.get("logical_date") or "").startswith(day.isoformat()):
                client.request("DELETE", f"/api/v2/dags/{nightly}/dagRuns/{old['dag_run_id']}")
        client.set_paused(retrain, False)
        before = {r["dag_run_id"] for r in client.runs(retrain, limit=100)}
        started = time.monotonic()
        run_id = client.trigger(nightly, day, {"since": since.isoformat()})
        first = client.wait_run(
            nightly, run_id, 7200, say=lambda m: say(f"airflow: {m}"), drop_scheduled=True
        )
        nightly_s = time.monotonic() - started
        if first.state != "success":
            raise SystemExit(f"{nightly} {first.state}: see the Airflow UI")
        retrain_id = client.next_run(retrain, before, timeout_s=300)
        second = client.wait_run(retrain, retrain_id, 7200, say=lambda m: say(f"airflow: {m}"))
        total = time.monotonic() - started
        if second.state != "success":
            raise SystemExit(f"{retrain} {second.state}: see the Airflow UI")
    tasks = {
        f"{r.dag_id}.{t.task_id}": round(t.seconds or 0.0, 1)
        for r in (first, second)
        for t in r.tasks
    }
    return {
        "nightly_s": nightly_s,
        "retrain_s": total - nightly_s,
        "total_s": total,
        "task_seconds": tasks,
        "task_sum_s": sum(tasks.values()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--date", help="batch date (default: the dataset's last day)")
    parser.add_argument("--from", dest="since", help="silver from (default: its first day)")
    args = parser.parse_args()

    from attune.api.keys import ensure_read_key
    from attune.api.process import start_api
    from attune.serving.process import start_model_server
    from attune.stack.airflow import airflow_up
    from spark.tables import Lake

    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    cfg = load_config(None)
    if not (Path(Lake.from_config(cfg).bronze) / "_delta_log").is_dir():
        raise SystemExit("no bronze table: run `make demo` once first")
    first, last = dataset_days(cfg)
    day = date.fromisoformat(args.date) if args.date else last
    since = date.fromisoformat(args.since) if args.since else first
    log = cfg.log_dir / "bench-orchestration.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    say(f"nightly for {day} (silver from {since}) + retrain; {args.rounds} round(s); log {log}")
    load_before = os.getloadavg()

    say("DAG parse times (fresh interpreter, best of 5)")
    parse = parse_times()
    for name, seconds in parse.items():
        say(f"  {name:<28} {seconds * 1000:7.1f} ms")

    airflow_cfg = AttuneConfig.model_validate(
        cfg.model_copy(
            update={
                "airflow": cfg.airflow.model_copy(
                    update={
                        "port": free_port(),
                        "log_server_port": free_port(),
                        "home": cfg.paths.resolve("bench/airflow"),
                    }
                )
            }
        ).model_dump()
    )
    started = time.monotonic()
    airflow_up(airflow_cfg)
    airflow_start_s = time.monotonic() - started

    rows: list[dict[str, Any]] = []
    for n in range(1, args.rounds + 1):
        order = ["direct", "airflow"] if n % 2 else ["airflow", "direct"]
        for path in order:
            rcfg = round_config(cfg, f"round{n}-{path}")
            ensure_read_key(rcfg, rcfg.models.retrain.smoke_read_key)
            models = start_model_server(rcfg, models=(), log_path=log)
            api = start_api(rcfg, log_path=log)
            try:
                say(f"round {n}: {path}")
                if path == "direct":
                    row = direct_path(rcfg, day, since, log)
                else:
                    row = airflow_path(rcfg, airflow_cfg, day, since)
            finally:
                api.stop()
                models.stop()
            row.update({"round": n, "path": path})
            rows.append(row)
            say(f"round {n} {path}: {row['total_s']:.0f} s")
    load_after = os.getloadavg()

    def mean(path: str, key: str) -> float:
        return statistics.mean(r[key] for r in rows if r["path"] == path)

    ratio = mean("airflow", "total_s") / mean("direct", "total_s")
    work = mean("airflow", "task_sum_s")
    print()
    print(f"{'round':>5}  {'path':<8} {'nightly s':>10} {'retrain s':>10} {'total s':>9}")
    for r in rows:
        print(
            f"{r['round']:>5}  {r['path']:<8} {r['nightly_s']:>10.1f} {r['retrain_s']:>10.1f} "
            f"{r['total_s']:>9.1f}"
        )
    print(
        f"overhead airflow / direct: {ratio:.3f} (target < {TARGET_OVERHEAD}); inside Airflow, "
        f"task time {work:.0f} s of {mean('airflow', 'total_s'):.0f} s wall"
    )
    print(
        f"load average before {load_before}, after {load_after}; "
        f"Airflow up in {airflow_start_s:.0f} s"
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
                "load_before": load_before,
                "load_after": load_after,
                "batch_date": day.isoformat(),
                "since": since.isoformat(),
                "dag_parse_seconds": parse,
                "airflow_start_seconds": airflow_start_s,
                "rounds": rows,
                "overhead_ratio": ratio,
                "target": TARGET_OVERHEAD,
            },
            indent=2,
        )
        + "\n"
    )
    say(f"wrote {RESULTS}")
    from attune.stack.airflow import airflow_down

    airflow_down(airflow_cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
