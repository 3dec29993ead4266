"""``attune experiments list | show | start | stop``: the declared experiments and their state.

``list [--json]``          every declared experiment with its status and allocation
``show ID [--json]``       one experiment: declaration, status, planned users per arm,
                           allocation (declared and recorded), history
``start ID [--force]``     record it as running (scheduled when its ``start`` is later)
``stop ID``                record it as stopped

Exit codes: 0 done (or nothing to do), 1 Redis not reachable, 2 unknown experiment or invalid
declarations/config, 3 refused: the request would harm a running experiment (its allocation
changed, it was stopped, its range overlaps another's, its planned stop passed) or there is
nothing to stop; the message says what and how to go on.

The handlers only parse, call the pure planning functions of :mod:`attune.experiments.state`
and print; ``now`` is read here, once per command.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from typing import Any

import yaml

from attune.config import AttuneConfig
from attune.events import format_time
from attune.experiments.spec import (
    ExperimentsFile,
    ExperimentSpec,
    experiments_of,
    experiments_path,
)
from attune.experiments.state import (
    Allocation,
    Refused,
    RunningState,
    StateStore,
    Transition,
    declared_allocations,
    mismatch,
    plan_start,
    plan_stop,
    status_of,
)

EXIT_REDIS = 1
EXIT_UNKNOWN = 2
EXIT_REFUSED = 3


def _err(message: str) -> None:
    print(f"attune: {message}", file=sys.stderr)


def _redis_problem(cfg: AttuneConfig, exc: Exception) -> str:
    return (
        f"Redis at {cfg.redis.host}:{cfg.redis.port} (db {cfg.redis.db}) is not reachable "
        f"({type(exc).__name__}: {exc}); the running state lives there: start the stack "
        "(`attune stack up`) or check the redis section of the config"
    )


def _read_states(cfg: AttuneConfig) -> tuple[dict[str, RunningState] | None, str | None]:
    import redis

    try:
        return StateStore.from_config(cfg).read(), None
    except redis.RedisError as exc:
        return None, _redis_problem(cfg, exc)


def _lookup(cfg: AttuneConfig, decls: ExperimentsFile, exp_id: str) -> ExperimentSpec | None:
    decl = decls.get(exp_id)
    if decl is None:
        where = experiments_path(cfg) or "(experiments.file is null)"
        known = ", ".join(decls.ids) or "none"
        _err(f"unknown experiment {exp_id!r}; declared in {where}: {known}")
    return decl


def _pct(x: float) -> str:
    return f"{100 * x:.4g}%"


def _split(alloc: Allocation) -> str:
    return ", ".join(f"{n} {_pct(s)}" for n, s in alloc.shares().items())


def _describe(alloc: Allocation) -> str:
    lo, hi = alloc.range
    return (
        f"layer {alloc.layer}, users [{lo:g}, {hi:g}) of the layer (traffic {alloc.traffic:g}), "
        f"split {_split(alloc)}"
    )


def _time(t: datetime | None) -> str | None:
    return None if t is None else format_time(t)


def _row(
    decl: ExperimentSpec,
    declared: Allocation,
    state: RunningState | None,
    states_known: bool,
    now: datetime,
) -> dict[str, Any]:
    changes = mismatch(decl, declared, state)
    return {
        "id": decl.id,
        "hypothesis": decl.hypothesis,
        "type": decl.type,
        "layer": decl.layer,
        "status": status_of(decl, state, now) if states_known else "unknown",
        "traffic": decl.traffic,
        "variants": decl.weights,
        "control": decl.control,
        "start": _time(decl.start),
        "stop": _time(decl.stop),
        "started_at": None if state is None else _time(state.started_at),
        "stopped_at": None if state is None else _time(state.stopped_at),
        "forced": None if state is None else state.forced,
        "declared_allocation": declared.to_json(),
        "recorded_allocation": None if state is None else state.allocation.to_json(),
        "allocation_changes": changes,
    }


def cmd_list(cfg: AttuneConfig, args: argparse.Namespace) -> int:
    """``attune experiments list [--json]``."""
    decls = experiments_of(cfg)
    states, problem = _read_states(cfg)
    now = datetime.now(UTC)
    declared = declared_allocations(decls)
    rows = [
        _row(e, declared[e.id], (states or {}).get(e.id), states is not None, now)
        for e in decls.experiments
    ]
    if getattr(args, "json", False):
        print(
            json.dumps(
                {
                    "file": None if experiments_path(cfg) is None else str(experiments_path(cfg)),
                    "holdout": {"share": decls.holdout.share},
                    "experiments": rows,
                },
                indent=2,
            )
        )
    else:
        print(_list_text(cfg, decls, rows))
    if problem:
        _err(problem)
        return EXIT_REDIS
    return 0


def _list_text(cfg: AttuneConfig, decls: ExperimentsFile, rows: list[dict[str, Any]]) -> str:
    path = experiments_path(cfg)
    if path is None:
        return "no experiments: experiments.file is null"
    if not rows:
        return f"no experiments declared in {path}"
    head = ("id", "type", "layer", "status", "traffic", "split", "window")
    table = [head]
    for r in rows:
        alloc = Allocation.from_json(r["declared_allocation"])
        window = f"{(r['start'] or 'on start')[:16]} .. {(r['stop'] or 'on stop')[:16]}"
        split = "both rankers" if r["type"] == "interleaving" else _split(alloc)
        status = r["status"] + (" (!)" if r["allocation_changes"] else "")
        table.append((r["id"], r["type"], r["layer"], status, f"{r['traffic']:g}", split, window))
    widths = [max(len(str(row[i])) for row in table) for i in range(len(head))]
    lines = [
        "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in table
    ]
    lines.append("")
    lines.append(
        f"holdout: {_pct(decls.holdout.share)} of all users"
        if decls.holdout.share
        else "holdout: none"
    )
    for r in rows:
        if r["allocation_changes"]:
            lines.append(
                f"(!) {r['id']} runs with the allocation it started with, not the file's: "
                f"{'; '.join(r['allocation_changes'])}. `attune experiments show {r['id']}` "
                "explains; `start --force` records the file's"
            )
    return "\n".join(lines)


def planned_users(decl: ExperimentSpec, alpha: float) -> tuple[int | None, str]:
    """(users per arm, how it was planned) for the primary metric, or (None, why not)."""
    from attune.experiments.spec import METRICS

    if decl.type == "interleaving":
        return None, "interleaving is planned by its preference test, not per arm"
    if decl.baseline is None:
        return None, "set baseline (the control's expected primary metric) to plan it"
    if METRICS[decl.primary_metric].kind not in ("binary", "ratio"):
        return None, f"{decl.primary_metric} is not a rate: no planning from a baseline rate"
    try:
        from attune.experiments.stats import required_users_per_arm
    except ImportError:  # the analysis library is optional for the CLI
        return None, "attune.experiments.stats is not available"
    n = required_users_per_arm(decl.baseline, decl.mde, alpha, decl.power)
    arms = len(decl.variants) - 1
    note = (
        f"{decl.primary_metric} {decl.baseline:g} -> {decl.baseline * (1 + decl.mde):g} "
        f"(+{_pct(decl.mde)}), alpha {alpha:g} two-sided, power {decl.power:g}, two-proportion "
        "z test"
    )
    if arms > 1:
        note += f"; {arms} treatment arms: consider alpha / {arms} for the correction"
    if METRICS[decl.primary_metric].kind == "ratio":
        note += (
            "; a ratio metric treated as a proportion (approximate: once data arrives, the "
            "report re-plans from the pooled, blinded per-user variance)"
        )
    return n, note


def cmd_show(cfg: AttuneConfig, args: argparse.Namespace) -> int:
    """``attune experiments show ID [--json]``."""
    decls = experiments_of(cfg)
    decl = _lookup(cfg, decls, args.id)
    if decl is None:
        return EXIT_UNKNOWN
    states, problem = _read_states(cfg)
    history: list[dict[str, Any]] = []
    if states is not None:
        import redis

        try:
            history = StateStore.from_config(cfg).history(decl.id)
        except redis.RedisError as exc:
            problem = _redis_problem(cfg, exc)
    now = datetime.now(UTC)
    declared = declared_allocations(decls)[decl.id]
    state = (states or {}).get(decl.id)
    row = _row(decl, declared, state, states is not None, now)
    alpha = decl.alpha_or(cfg.experiments.alpha)
    n, note = planned_users(decl, alpha)
    out = {
        **row,
        "declaration": decl.model_dump(mode="json"),
        "alpha": alpha,
        "planned_users_per_arm": n,
        "planning": note,
        "history": history,
    }
    if getattr(args, "json", False):
        print(json.dumps(out, indent=2))
    else:
        print(_show_text(decl, row, declared, state, n, note, history))
    if problem:
        _err(problem)
        return EXIT_REDIS
    return 0


def _show_text(
    decl: ExperimentSpec,
    row: dict[str, Any],
    declared: Allocation,
    state: RunningState | None,
    n: int | None,
    note: str,
    history: list[dict[str, Any]],
) -> str:
    status = row["status"]
    if state is not None and status in ("running", "scheduled"):
        status += f" (since {row['started_at']})" if status == "running" else ""
        status += f" (starts {row['started_at']})" if status == "scheduled" else ""
    elif state is not None and status == "stopped":
        status += f" (ran {row['started_at']} .. {row['stopped_at'] or row['stop']})"
    lines = [
        f"{decl.id}: {decl.hypothesis}",
        f"status: {status}",
        "",
        "declaration:",
        *(
            "  " + ln
            for ln in yaml.safe_dump(decl.model_dump(mode="json"), sort_keys=False)
            .rstrip()
            .splitlines()
        ),
        "",
        f"planned users per arm: {n:,} ({note})"
        if n is not None
        else f"planned users per arm: - ({note})",
        f"allocation in the file: {_describe(declared)}",
    ]
    if state is not None:
        lines.append(
            f"allocation recorded at start{' (forced)' if state.forced else ''}: "
            f"{_describe(state.allocation)}"
        )
    if row["allocation_changes"]:
        lines.append(
            "(!) the file's allocation differs from the recorded one, which the API keeps "
            f"using: {'; '.join(row['allocation_changes'])}. `attune experiments start "
            f"{decl.id} --force` records the file's (users between the boundaries change arm; "
            "the analysis mixes both allocations)"
        )
    if history:
        lines.append("")
        lines.append("history:")
        for h in history:
            changes = f": {'; '.join(h['changes'])}" if h.get("changes") else ""
            lines.append(f"  {h['at']}  {h['action']}{changes}")
    return "\n".join(lines)


def _apply(cfg: AttuneConfig, plan: Any, now: datetime) -> tuple[Transition | None, int | None]:
    import redis

    try:
        return StateStore.from_config(cfg).apply(plan, now), None
    except Refused as exc:
        _err(str(exc))
        return None, EXIT_REFUSED
    except redis.RedisError as exc:
        _err(_redis_problem(cfg, exc))
        return None, EXIT_REDIS


def cmd_start(cfg: AttuneConfig, args: argparse.Namespace) -> int:
    """``attune experiments start ID [--force]``."""
    decls = experiments_of(cfg)
    decl = _lookup(cfg, decls, args.id)
    if decl is None:
        return EXIT_UNKNOWN
    now = datetime.now(UTC)
    force = bool(getattr(args, "force", False))
    t, code = _apply(cfg, lambda states: plan_start(decls, states, decl.id, now, force=force), now)
    if code is not None:
        return code
    if t is None:
        print(f"{decl.id} is already running with the declared allocation; nothing to do")
        return 0
    alloc = _describe(t.state.allocation)
    started = format_time(t.state.started_at)
    if t.action == "force":
        print(
            f"{decl.id}: recorded the file's allocation (forced): {'; '.join(t.changes)}; "
            f"now {alloc}. Still running since {started}"
        )
    elif t.state.started_at > now:
        print(f"{decl.id} is scheduled: it starts at {started} ({alloc})")
    else:
        again = " again (forced)" if t.action == "restart" else ""
        print(f"{decl.id} started{again} at {started}: {alloc}")
    print(f"the API picks it up within experiments.refresh_s ({cfg.experiments.refresh_s:g} s)")
    return 0


def cmd_stop(cfg: AttuneConfig, args: argparse.Namespace) -> int:
    """``attune experiments stop ID``."""
    decls = experiments_of(cfg)
    decl = _lookup(cfg, decls, args.id)
    if decl is None:
        return EXIT_UNKNOWN
    now = datetime.now(UTC)
    t, code = _apply(cfg, lambda states: plan_stop(decls, states, decl.id, now), now)
    if code is not None:
        return code
    if t is None:
        print(f"{decl.id} is already stopped; nothing to do")
        return 0
    print(
        f"{decl.id} stopped at {format_time(t.state.stopped_at or now)} (it ran from "
        f"{format_time(t.state.started_at)}); its users get the defaults within "
        f"experiments.refresh_s ({cfg.experiments.refresh_s:g} s)"
    )
    return 0
