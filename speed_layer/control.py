"""``attune speed start | stop | status``: run the speed layer and see how far behind it is.

``start`` runs the queries in a detached process (its own session, pid in
``var/run/speed.pid``, output in ``var/log/speed.log``) and returns once they are running;
``start --foreground`` runs them in the calling process. ``stop`` sends SIGTERM (the queries stop
between batches) and SIGKILL after ``--timeout``. ``status`` shows each query's latest progress
(rows/s in and processed, batch duration) from ``var/run/speed-status.json``, and its consumer
lag per partition: the broker's end offsets (kafka-python) minus the offsets the query has
committed in its checkpoint (``<checkpoint>/offsets/<last committed batch>``), so the lag is
right even when the process is down.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from attune import supervisor
from attune.config import AttuneConfig
from speed_layer.job import (
    online_checkpoint_name,
    parse_query_names,
    run_speed_layer,
    speed_paths,
)

START_TIMEOUT_S = 180.0


@dataclass(frozen=True)
class PartitionLag:
    partition: int
    committed: int | None
    end: int
    lag: int


def committed_offsets(checkpoint: Path, topic: str) -> tuple[int | None, dict[int, int]]:
    """``(batch id, {partition: next offset})`` of the last batch committed in ``checkpoint``."""
    commits = checkpoint / "commits"
    if not commits.is_dir():
        return None, {}
    done = sorted(int(p.name) for p in commits.iterdir() if p.name.isdigit())
    if not done:
        return None, {}
    batch = done[-1]
    lines = (checkpoint / "offsets" / str(batch)).read_text().splitlines()
    for line in lines[2:]:
        try:
            offsets = json.loads(line)
        except ValueError:
            continue
        if isinstance(offsets, dict) and topic in offsets:
            return batch, {int(p): int(o) for p, o in offsets[topic].items()}
    return batch, {}


def end_offsets(cfg: AttuneConfig, topic: str) -> dict[int, int]:
    """The broker's end offset of each partition of ``topic``."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=cfg.kafka.bootstrap_servers,
        enable_auto_commit=False,
        request_timeout_ms=5000,
    )
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        return {tp.partition: off for tp, off in consumer.end_offsets(tps).items()}
    finally:
        consumer.close()


def consumer_lag(
    checkpoint: Path, topic: str, ends: dict[int, int]
) -> tuple[int | None, list[PartitionLag]]:
    batch, committed = committed_offsets(checkpoint, topic)
    rows = []
    for p, end in sorted(ends.items()):
        c = committed.get(p)
        rows.append(PartitionLag(p, c, end, end - (c if c is not None else 0)))
    return batch, rows


def _is_speed_layer(cmdline: str) -> bool:
    return "speed" in cmdline


def running_pid(cfg: AttuneConfig) -> int | None:
    """The pid of a live speed-layer process started from this ``var/``, else None."""
    record = supervisor.live_record(speed_paths(cfg).pid_file, _is_speed_layer)
    return record.pid if record is not None else None


def status_report(cfg: AttuneConfig) -> dict[str, Any]:
    """Everything ``attune speed status`` shows, as a dict."""
    paths = speed_paths(cfg)
    pid = running_pid(cfg)
    board: dict[str, Any] = {}
    if paths.status_file.exists():
        try:
            board = json.loads(paths.status_file.read_text())
        except ValueError:
            board = {}
    topic = cfg.kafka.topic("events").name
    try:
        ends: dict[int, int] | None = end_offsets(cfg, topic)
        kafka_error = None
    except Exception as exc:
        ends, kafka_error = None, f"{type(exc).__name__}: {exc}"
    queries = []
    for name, ckpt_name in (("bronze", "bronze"), ("online", online_checkpoint_name(cfg))):
        checkpoint = paths.checkpoint(ckpt_name)
        q = dict(board.get("queries", {}).get(name, {}))
        if not q and not checkpoint.exists():
            continue
        progress = q.get("progress") or {}
        entry: dict[str, Any] = {
            "name": name,
            "id": q.get("id"),
            "active": bool(pid and q.get("active")),
            "checkpoint": str(checkpoint),
            "exception": q.get("exception"),
            "last_progress": {
                "batch_id": progress.get("batchId"),
                "timestamp": progress.get("timestamp"),
                "input_rows": progress.get("numInputRows"),
                "input_rows_per_s": progress.get("inputRowsPerSecond"),
                "processed_rows_per_s": progress.get("processedRowsPerSecond"),
                "batch_duration_ms": (progress.get("durationMs") or {}).get("triggerExecution"),
            }
            if progress
            else None,
            "writer": q.get("writer"),
        }
        if ends is not None:
            batch, lag = consumer_lag(checkpoint, topic, ends)
            entry["committed_batch"] = batch
            entry["lag"] = [asdict(row) for row in lag]
            entry["total_lag"] = sum(row.lag for row in lag)
        queries.append(entry)
    return {
        "running": pid is not None,
        "pid": pid,
        "state": board.get("state") if pid else "stopped",
        "started_at": board.get("started_at") if pid else None,
        "trigger": board.get("trigger", cfg.speed.trigger),
        "topic": topic,
        "log": str(paths.log_file),
        "kafka_error": kafka_error,
        "queries": queries,
    }


def _fmt_rate(x: Any) -> str:
    return "-" if x is None else f"{float(x):,.1f}"


def format_status(report: dict[str, Any]) -> str:
    lines = []
    if report["running"]:
        lines.append(
            f"speed layer: {report['state']} (pid {report['pid']}, since {report['started_at']}, "
            f"online trigger {report['trigger']}), log {report['log']}"
        )
    else:
        lines.append(
            f"speed layer: not running (start it with `attune speed start`); log {report['log']}"
        )
    if report["kafka_error"]:
        lines.append(
            f"  Kafka: cannot read end offsets of {report['topic']}: {report['kafka_error']}"
        )
    if not report["queries"]:
        lines.append("  no query has run yet (no checkpoints)")
    for q in report["queries"]:
        state = "active" if q["active"] else "stopped"
        lines.append(f"  query {q['name']}: {state}, checkpoint {q['checkpoint']}")
        if q.get("exception"):
            lines.append(f"    failed: {q['exception'].splitlines()[0]}")
        p = q.get("last_progress")
        if p:
            lines.append(
                f"    last batch {p['batch_id']} at {p['timestamp']}: {p['input_rows']} rows, "
                f"{_fmt_rate(p['input_rows_per_s'])} rows/s in, "
                f"{_fmt_rate(p['processed_rows_per_s'])} rows/s processed, "
                f"{p['batch_duration_ms']} ms"
            )
        w = q.get("writer")
        if w:
            flat = {k: v for k, v in w.items() if not isinstance(v, dict)}
            lines.append("    writer: " + ", ".join(f"{k} {v}" for k, v in flat.items()))
            steps = w.get("last_step_ms")
            if isinstance(steps, dict) and steps:  # the totals are for benchmarks/freshness.py
                lines.append(
                    "    last batch's steps (ms): "
                    + ", ".join(f"{k} {v:g}" for k, v in steps.items())
                )
        if "lag" in q:
            lines.append(
                f"    consumer lag on {report['topic']} (committed batch "
                f"{q['committed_batch']}): total {q['total_lag']}"
            )
            lines.append("      partition  committed        end        lag")
            for row in q["lag"]:
                committed = "-" if row["committed"] is None else row["committed"]
                lines.append(
                    f"      {row['partition']:>9}  {committed:>9}  {row['end']:>9}  {row['lag']:>9}"
                )
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------
# CLI handlers


def cmd_start(cfg: AttuneConfig, args: argparse.Namespace) -> int:
    try:
        queries = parse_query_names(args.queries)
    except ValueError as exc:
        print(f"attune speed start: {exc}", file=sys.stderr)
        return 2
    paths = speed_paths(cfg)
    pid = running_pid(cfg)
    if pid is not None and pid != os.getpid():
        print(f"the speed layer is already running (pid {pid}); `attune speed stop` stops it")
        return 0 if not args.foreground else 1
    if args.foreground:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        for chatty in ("kafka", "py4j"):
            logging.getLogger(chatty).setLevel(logging.WARNING)
        supervisor.write_record(paths.pid_file, supervisor.PidRecord.of_this_process())
        try:
            return run_speed_layer(cfg, queries)
        finally:
            if running_pid(cfg) in (None, os.getpid()):
                paths.pid_file.unlink(missing_ok=True)
    return _start_detached(cfg, queries)


def _start_detached(cfg: AttuneConfig, queries: list[str]) -> int:
    log = speed_paths(cfg).log_file
    child = spawn_speed_layer(cfg, ["--queries", ",".join(queries)], log=log, config_name="speed")
    print(f"starting the speed layer (pid {child.pid}, log {log}) ...", flush=True)
    try:
        wait_running(cfg, child)
    except supervisor.NotReady as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"speed layer running: {', '.join(queries)} (`attune speed status`)")
    return 0


def spawn_speed_layer(
    cfg: AttuneConfig, args: Sequence[str], *, log: Path, config_name: str, nice: int = 0
) -> supervisor.Child:
    """Start ``attune speed start --foreground ARGS`` for ``cfg`` in its own session (so it
    outlives the caller), with its output appended to ``log``; ``nice`` > 0 lowers its CPU
    priority (its JVM and Python workers inherit it): the process's nice value, and, since a
    new session is a scheduling group of its own where the kernel groups by session
    (``sched_autogroup_enabled``; nice values then only rank processes within one group),
    its session's group's too."""
    speed_paths(cfg).status_file.unlink(missing_ok=True)
    # The child reads exactly this process's configuration (file, environment overrides and
    # any changes made in code, as tests and the demo make), not whatever its own
    # `--config` / `$ATTUNE_CONFIG` would give.
    cmd, env = supervisor.attune_command(
        cfg, ["speed", "start", "--foreground", *args], config_name
    )
    if nice:
        cmd = ["nice", "-n", str(nice), *cmd]
    child = supervisor.spawn(cmd, name="the speed layer", log=log, env=env, detached=True)
    if nice:
        _lower_autogroup(child.pid, nice)
    return child


def _lower_autogroup(pid: int, nice: int) -> None:
    """Give the session group of ``pid`` the weight of nice value ``nice`` (Linux autogroup);
    nothing where the kernel has no autogroups."""
    try:
        Path(f"/proc/{pid}/autogroup").write_text(str(nice))
    except OSError as exc:
        logging.getLogger(__name__).info(
            "could not lower the scheduling group of pid %s: %s", pid, exc
        )


def wait_running(
    cfg: AttuneConfig, child: supervisor.Child, timeout_s: float = START_TIMEOUT_S
) -> float:
    """Wait until ``child`` reports its queries running on the status board; raises
    :class:`attune.supervisor.NotReady` with its log when it fails, exits or takes too long."""
    status = speed_paths(cfg).status_file

    def probe() -> str | None:
        state = board_state(status)
        if state == "failed":
            raise supervisor.GaveUp(f"it reported a failure in {status}")
        return None if state == "running" else f"state {state or 'not reported yet'}"

    return child.wait_ready(probe, timeout_s, poll_s=0.5)


def board_state(path: Path) -> str | None:
    """The ``state`` on the speed layer's status board ``path`` (None before it is written)."""
    try:
        return str(json.loads(path.read_text()).get("state"))
    except (OSError, ValueError):
        return None


def stop_speed_layer(cfg: AttuneConfig, timeout_s: float = 60.0) -> bool:
    """Stop the detached speed layer: SIGTERM, then SIGKILL of its group after ``timeout_s``."""
    pid = running_pid(cfg)
    if pid is None:
        return False
    supervisor.stop(pid, "the speed layer", timeout_s, group=True)
    speed_paths(cfg).pid_file.unlink(missing_ok=True)
    return True


def cmd_stop(cfg: AttuneConfig, args: argparse.Namespace) -> int:
    pid = running_pid(cfg)
    if pid is None:
        print("the speed layer is not running")
        return 0
    print(f"stopping the speed layer (pid {pid}) ...", flush=True)
    stop_speed_layer(cfg, args.timeout)
    print("stopped")
    return 0


def cmd_status(cfg: AttuneConfig, args: argparse.Namespace) -> int:
    report = status_report(cfg)
    if args.json:
        print(json.dumps(report, indent=1, default=str))
    else:
        print(format_status(report))
    healthy = report["running"] and all(q["active"] for q in report["queries"])
    return 0 if healthy else 1
