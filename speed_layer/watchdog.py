"""``attune speed watchdog``: is the speed layer alive, keeping up and making progress?

Meant to run every few minutes (an Airflow task): it reads what ``attune speed status`` shows
(:func:`speed_layer.control.status_report`: the process, its queries' latest progress, their
consumer lag from the checkpoints) and judges it against ``speed.watchdog``
(:func:`judge`, a pure function):

* **dead** - no speed-layer process: it is started (``speed.watchdog.restart``) with
  ``speed.watchdog.queries``, and the command waits until the queries run;
* **a query not active** while the process lives (it failed, or was never started);
* **not keeping up** - a query more than ``max_lag_events`` behind the end of the events topic;
* **stuck** - events wait for a query (lag > 0) and it has made no progress for
  ``max_staleness``. A query with nothing to read is idle, not stuck: Spark reports no progress
  for empty batches, so the age of the last progress alone says nothing.
* the lag cannot be measured (Kafka does not answer).

Exit codes: 0 healthy, or dead and restarted (the message says so); 1 anything else, the last
line saying what is wrong and how to fix it. A restart is not retried here: when the new process
fails, the log says why, and the next run tries again.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from attune import supervisor
from attune.config import AttuneConfig, WatchdogConfig

Action = Literal["none", "restart", "fail"]


@dataclass(frozen=True)
class Verdict:
    """What the watchdog concludes: ``action`` ``none`` (healthy), ``restart`` (dead) or
    ``fail``; ``problems`` say what is wrong and ``fixes`` what to do about it."""

    action: Action
    problems: list[str] = field(default_factory=list)
    fixes: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return self.action == "none"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "healthy": self.healthy}


def parse_time(text: str | None) -> datetime | None:
    """A timestamp of the status board (Spark's ``2026-01-01T00:00:00.000Z`` or ISO with an
    offset) as an aware datetime; None when absent or unreadable."""
    if not text:
        return None
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _ago(delta: timedelta) -> str:
    s = int(delta.total_seconds())
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    return f"{s / 3600:.1f} h"


def judge(report: dict[str, Any], wd: WatchdogConfig, now: datetime) -> Verdict:
    """Judge a :func:`speed_layer.control.status_report` at ``now`` (see the module docstring)."""
    log = report.get("log")
    queries = {q["name"]: q for q in report.get("queries", [])}
    if not report.get("running"):
        crashed = [
            f"query {n} ended with: {(q.get('exception') or '').strip().splitlines()[0]}"
            for n, q in queries.items()
            if q.get("exception") and (q.get("exception") or "").strip()
        ]
        problem = "the speed layer is not running" + (f" ({'; '.join(crashed)})" if crashed else "")
        if wd.restart:
            return Verdict("restart", [problem], notes=crashed)
        return Verdict(
            "fail",
            [problem],
            [f"start it: `attune speed start` (log {log}); speed.watchdog.restart is off"],
        )
    problems: list[str] = []
    fixes: list[str] = []
    notes: list[str] = []
    restart_fix = (
        f"read the log ({log}), then restart it: `attune speed stop` and `attune speed start`"
    )
    state = report.get("state")
    started = parse_time(report.get("started_at"))
    if state == "starting":
        if started is not None and now - started > wd.max_staleness:
            problems.append(
                f"the speed layer has been starting for {_ago(now - started)} "
                f"(> speed.watchdog.max_staleness {_ago(wd.max_staleness)})"
            )
            fixes.append(restart_fix)
        else:
            notes.append("the speed layer is starting")
        return Verdict("fail" if problems else "none", problems, fixes, notes)
    if state != "running":
        problems.append(f"the speed layer process (pid {report.get('pid')}) reports {state!r}")
        fixes.append(restart_fix)
    if report.get("kafka_error"):
        problems.append(
            f"cannot measure the consumer lag: Kafka does not answer ({report['kafka_error']})"
        )
        fixes.append("check Kafka: `attune stack status` (and `attune stack up` if it is down)")
    for name in wd.queries:
        q = queries.get(name)
        if q is None or not q.get("active"):
            why = (q or {}).get("exception")
            first = why.strip().splitlines()[0] if why and why.strip() else None
            problems.append(
                f"query {name} is not active" + (f" (it failed: {first})" if first else "")
            )
            if restart_fix not in fixes:
                fixes.append(restart_fix)
            continue
        lag = q.get("total_lag")
        if lag is None:
            continue  # not measurable: reported above (kafka_error)
        if lag > wd.max_lag_events:
            problems.append(
                f"query {name} is {lag:,} events behind the topic "
                f"(> speed.watchdog.max_lag_events {wd.max_lag_events:,})"
            )
            fixes.append(
                f"{name} does not keep up: give the speed layer more cores (spark.master), or "
                f"raise speed.{name}_max_offsets; `attune speed status` shows its rates"
            )
        progress = parse_time((q.get("last_progress") or {}).get("timestamp"))
        since = progress or started
        if lag > 0 and since is not None and now - since > wd.max_staleness:
            what = "no progress" if progress is not None else "no progress since it started"
            problems.append(
                f"query {name} has made {what} for {_ago(now - since)} while {lag:,} events "
                f"wait (> speed.watchdog.max_staleness {_ago(wd.max_staleness)})"
            )
            fixes.append(f"{name} is stuck: {restart_fix}")
        notes.append(
            f"{name}: lag {lag:,} events"
            + (f", last progress {_ago(now - progress)} ago" if progress else "")
        )
    return Verdict("fail" if problems else "none", problems, fixes, notes)


@contextmanager
def restart_lock(cfg: AttuneConfig) -> Iterator[bool]:
    """An exclusive, non-blocking lock so two watchdogs never start two speed layers; yields
    whether it was obtained."""
    path = cfg.run_dir / "speed-watchdog.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def restart(cfg: AttuneConfig) -> tuple[bool, str]:
    """Start the speed layer with ``speed.watchdog.queries`` and wait until it runs."""
    from speed_layer.control import running_pid, spawn_speed_layer, wait_running
    from speed_layer.job import speed_paths

    with restart_lock(cfg) as locked:
        if not locked:
            return False, (
                "another `attune speed watchdog` is starting the speed layer right now "
                f"(lock {cfg.run_dir / 'speed-watchdog.lock'}); the next run checks again"
            )
        pid = running_pid(cfg)
        if pid is not None:
            return True, f"the speed layer was started meanwhile (pid {pid})"
        log = speed_paths(cfg).log_file
        queries = ",".join(cfg.speed.watchdog.queries)
        child = spawn_speed_layer(cfg, ["--queries", queries], log=log, config_name="speed")
        try:
            seconds = wait_running(cfg, child)
        except supervisor.NotReady as exc:
            return False, f"the restart failed: {exc}"
        return True, f"restarted (pid {child.pid}, {queries}) and running after {seconds:.0f} s"


def cmd_watchdog(cfg: AttuneConfig, args: argparse.Namespace) -> int:
    """``attune speed watchdog [--json]``: 0 healthy (or restarted), 1 unhealthy."""
    from speed_layer.control import status_report

    wd = cfg.speed.watchdog
    report = status_report(cfg)
    verdict = judge(report, wd, datetime.now(UTC))
    restarted: str | None = None
    if verdict.action == "restart":
        print(
            f"speed watchdog: {verdict.problems[0]}: starting it ...", file=sys.stderr, flush=True
        )
        ok, message = restart(cfg)
        if not ok:
            verdict = Verdict(
                "fail",
                [*verdict.problems, message],
                [f"read the log ({report.get('log')}), fix the cause, then `attune speed start`"],
                verdict.notes,
            )
        else:
            restarted = message
            report = status_report(cfg)
            verdict = Verdict("none", notes=[*verdict.notes, verdict.problems[0], message])
    if args.json:
        print(json.dumps({"verdict": verdict.as_dict(), "status": report}, indent=1, default=str))
    if verdict.healthy:
        if restarted is not None:
            line = f"speed watchdog: was not running; {restarted}"
        else:
            line = f"speed watchdog: OK (pid {report.get('pid')}): " + "; ".join(verdict.notes)
        print(line, file=sys.stderr if args.json else sys.stdout)
        return 0
    print(
        "attune speed watchdog: UNHEALTHY: "
        + "; ".join(verdict.problems)
        + ". Fix: "
        + "; ".join(dict.fromkeys(verdict.fixes)),
        file=sys.stderr,
    )
    return 1
