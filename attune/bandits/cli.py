"""``attune bandits evaluate``: off-policy evaluation of a slate policy on logged bandit data.

``attune bandits evaluate --policy NAME|FILE --logs open-bandit|PATH [--out DIR]
[--bootstrap N] [--seed S] [--n-sim N] [--folds K] [--obp-runs R] [--json]``

Prints one row per estimator (DM, IPW, SNIPW, DR): the estimated click rate of the policy, its
95 % percentile-bootstrap interval, and, when the truth is known, the relative error
``|estimate - truth| / truth``; writes the same as JSON and a PNG plot to ``--out`` (default
``<paths.var_dir>/reports/bandits``).

``--policy``
    ``bts``     the Bernoulli Thompson sampling policy of the Open Bandit Dataset (ZOZOTOWN's
                prior, ALL campaign; its slate distribution simulated with ``--n-sim`` draws)
    ``random``  uniform over the items at every position
    ``FILE``    the policy's probabilities, JSON or CSV (see :func:`read_policy_file`)
``--logs``
    ``open-bandit``      the uniform-random logs, ``<paths.data_dir>/open-bandit/random``
    ``open-bandit-bts``  the Bernoulli-TS logs, ``<paths.data_dir>/open-bandit/bts``
    ``PATH``             a folder in the Open Bandit layout (``all.csv``, ``item_context.csv``)

The truth is known when the logs are one of the Open Bandit folders and the policy is ``bts``
or ``random``: the on-policy mean click of that policy's own logs.

Exit codes: 0 done; 2 bad input (unknown policy, missing file, wrong columns or shapes), with
a message that says what was wrong and how to fix it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from attune.bandits.evaluation import (
    ErrorSummary,
    Evaluation,
    PolicyError,
    evaluate_policy,
    obp_protocol_errors,
)
from attune.bandits.ope import OPEInputError, rate_reporter
from attune.bandits.open_bandit import BanditLogs, LogsError, load_open_bandit
from attune.bandits.slate import thompson_slate_distribution, zozotown_bts_prior
from attune.config import AttuneConfig

EXIT_BAD_INPUT = 2
NAMED_POLICIES = ("bts", "random")
NAMED_LOGS = {"open-bandit": "random", "open-bandit-random": "random", "open-bandit-bts": "bts"}
DEFAULT_OUT = "reports/bandits"

OBP_PUBLISHED = {"dm": 0.157, "ipw": 0.311, "snipw": 0.312, "dr": 0.292}
"""obp's published relative errors for Bernoulli TS estimated from the random logs (the small
samples, ALL campaign): the mean over bootstrap runs of the logs, see docs/bandits.md."""


def _err(message: str) -> None:
    print(f"attune: {message}", file=sys.stderr)


def _progress_line(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------
# Policies


def read_policy_file(path: Path, logs: BanditLogs) -> NDArray[np.float64]:
    """A policy's action distribution from a file: ``(n_actions, positions)`` or per round.

    JSON: ``{"name": "...", "probabilities": P}`` with ``P[item][position]`` (positions in
    order, the top slot first) for one distribution used in every round, or
    ``P[round][item][position]`` with one per logged round (round = data row of ``all.csv``).

    CSV: a header with ``item_id,position,probability`` (position counted from 1), one row per
    item and position; an optional ``round`` column (0-based data row of ``all.csv``) makes
    it per round. Missing (item, position) pairs have probability 0.

    Every position's probabilities must sum to 1 over the items.
    """
    if not path.is_file():
        raise PolicyError(
            f"policy file {path} not found: --policy takes {' or '.join(NAMED_POLICIES)} or a "
            "JSON/CSV file of action probabilities (see `attune bandits evaluate --help`)"
        )
    suffix = path.suffix.lower()
    if suffix == ".json":
        try:
            raw = json.loads(path.read_text())
            probs = np.asarray(raw["probabilities"], dtype=np.float64)
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise PolicyError(
                f'{path}: expected JSON {{"probabilities": [[p(item 0, position 1), ...], '
                f"...]}} with one row per item and one column per position ({exc})"
            ) from exc
        return probs
    if suffix == ".csv":
        import pandas as pd

        try:
            table = pd.read_csv(path)
        except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
            raise PolicyError(f"{path}: not a CSV file with a header ({exc})") from exc
        needed = ["item_id", "position", "probability"]
        missing = [c for c in needed if c not in table.columns]
        if missing:
            raise PolicyError(
                f"{path} lacks column(s) {', '.join(missing)}; a policy CSV needs item_id, "
                "position (1 = top slot), probability, and optionally round"
            )
        item = table["item_id"].to_numpy()
        pos = table["position"].to_numpy() - 1
        if (
            not np.issubdtype(item.dtype, np.integer)
            or not np.issubdtype(pos.dtype, np.integer)
            or item.min() < 0
            or item.max() >= logs.n_actions
            or pos.min() < 0
            or pos.max() >= logs.len_list
        ):
            raise PolicyError(
                f"{path}: item_id must be in 0..{logs.n_actions - 1} and position in "
                f"1..{logs.len_list} (the logs' items and positions)"
            )
        prob = table["probability"].to_numpy(dtype=np.float64)
        if "round" in table.columns:
            rnd = table["round"].to_numpy()
            if rnd.min() < 0 or rnd.max() >= logs.n_rounds:
                raise PolicyError(f"{path}: round must be in 0..{logs.n_rounds - 1}")
            dist = np.zeros((logs.n_rounds, logs.n_actions, logs.len_list))
            dist[rnd, item, pos] = prob
            return dist
        flat = np.zeros((logs.n_actions, logs.len_list))
        flat[item, pos] = prob
        return flat
    raise PolicyError(f"{path}: unknown policy file type {suffix!r}; use .json or .csv")


def policy_distribution(
    spec: str, logs: BanditLogs, *, n_sim: int, seed: int
) -> tuple[str, NDArray[np.float64]]:
    """``(name, action_dist)`` for ``--policy``: a named policy or a file."""
    if spec == "random":
        return "random", np.full((logs.n_actions, logs.len_list), 1.0 / logs.n_actions)
    if spec == "bts":
        prior = zozotown_bts_prior()
        if logs.n_actions != prior.alpha.shape[0]:
            raise PolicyError(
                f"the bts policy has {prior.alpha.shape[0]} items (the Open Bandit ALL "
                f"campaign) but the logs have {logs.n_actions}: evaluate bts on Open Bandit "
                "logs, or give the policy as a file"
            )
        report = rate_reporter("simulating Thompson-sampling slates", _progress_line, unit="slates")
        dist = thompson_slate_distribution(
            prior.alpha, prior.beta, logs.len_list, n_sim=n_sim, seed=seed, progress=report
        )
        return "bts", dist
    path = Path(spec)
    if not path.suffix and not path.exists():
        raise PolicyError(
            f"unknown policy {spec!r}: use {' or '.join(NAMED_POLICIES)}, or the path of a "
            "JSON/CSV file of action probabilities"
        )
    return path.stem, read_policy_file(path, logs)


# ----------------------------------------------------------------------------------------
# Logs


def resolve_logs(cfg: AttuneConfig, spec: str) -> tuple[str, Path, str | None]:
    """``(name, folder, logging policy)`` for ``--logs`` (the policy is None for a PATH)."""
    if spec in NAMED_LOGS:
        behaviour = NAMED_LOGS[spec]
        folder = cfg.paths.data_dir.absolute() / "open-bandit" / behaviour
        if not folder.is_dir():
            raise LogsError(
                f"{folder} not found: set paths.data_dir to the folder holding open-bandit/ "
                f"(now {cfg.paths.data_dir})"
            )
        return f"open-bandit-{behaviour}", folder, behaviour
    return Path(spec).name or spec, Path(spec), None


def ground_truth(cfg: AttuneConfig, logs_behaviour: str | None, policy: str) -> float | None:
    """The on-policy mean click of ``policy``'s own Open Bandit logs, if there are some."""
    if logs_behaviour is None or policy not in NAMED_POLICIES:
        return None
    own = load_open_bandit(cfg.paths.data_dir.absolute() / "open-bandit" / policy)
    return own.on_policy_value()


# ----------------------------------------------------------------------------------------
# Output


def report_dict(
    *,
    policy: str,
    logs_name: str,
    logs: BanditLogs,
    evaluation: Evaluation,
    truth: float | None,
    obp_runs: list[ErrorSummary] | None,
    settings: dict[str, Any],
) -> dict[str, Any]:
    """The JSON document of one evaluation (what ``--json`` prints and the file holds)."""
    benchmark = policy == "bts" and logs_name == "open-bandit-random"
    rows = []
    for res in evaluation.results:
        row: dict[str, Any] = {
            "estimator": res.estimator,
            "estimate": res.value,
            "ci_low": res.low,
            "ci_high": res.high,
        }
        if truth is not None:
            row["relative_error"] = res.relative_error(truth)
        if benchmark:
            row["obp_published_relative_error"] = OBP_PUBLISHED[res.estimator]
        rows.append(row)
    doc: dict[str, Any] = {
        "policy": policy,
        "logs": logs_name,
        "logs_path": logs.source,
        "rounds": logs.n_rounds,
        "clicks": int(logs.reward.sum()),
        "truth": truth,
        "truth_definition": (
            f"on-policy mean click of the {policy} logs" if truth is not None else None
        ),
        "confidence": 1 - 0.05,
        "reward_model": {
            "kind": "L2 logistic regression: position + item one-hots + user-item affinity",
            "l2": evaluation.l2,
            "folds": evaluation.folds,
            "out_of_fold_log_loss": evaluation.q_logged_log_loss,
        },
        "settings": settings,
        "estimates": rows,
    }
    if obp_runs is not None:
        doc["obp_protocol"] = {
            "description": "mean (sd) relative error over bootstrap samples of the logs, "
            "reward model refitted in each (obp's examples/obd protocol)",
            "runs": obp_runs[0].runs if obp_runs else 0,
            "relative_error": {e.estimator: {"mean": e.mean, "sd": e.std} for e in obp_runs},
        }
    return doc


def format_table(doc: dict[str, Any]) -> str:
    """The human-readable table of :func:`report_dict`'s document."""
    truth = doc["truth"]
    lines = [
        f"policy {doc['policy']} on {doc['logs']} ({doc['rounds']:,} rounds, "
        f"{doc['clicks']} clicks)",
    ]
    if truth is not None:
        lines.append(f"truth: {doc['truth_definition']} = {truth:.6f}")
    obp = doc.get("obp_protocol")
    header = f"{'estimator':<10} {'estimate':>9}  {'95% CI':<21}"
    if truth is not None:
        header += f" {'rel.err':>7}"
    if obp:
        header += f" {'runs mean':>9}"
    if any("obp_published_relative_error" in r for r in doc["estimates"]):
        header += f" {'obp':>6}"
    lines.append(header)
    for row in doc["estimates"]:
        ci = f"[{row['ci_low']:.6f}, {row['ci_high']:.6f}]"
        line = f"{row['estimator'].upper():<10} {row['estimate']:>9.6f}  {ci:<21}"
        if truth is not None:
            line += f" {row['relative_error']:>7.3f}"
        if obp:
            line += f" {obp['relative_error'][row['estimator']]['mean']:>9.3f}"
        if "obp_published_relative_error" in row:
            line += f" {row['obp_published_relative_error']:>6.3f}"
        lines.append(line)
    model = doc["reward_model"]
    lines.append(
        f"reward model: l2={model['l2']:g}, {model['folds']}-fold cross-fitted, out-of-fold "
        f"log loss {model['out_of_fold_log_loss']:.5f}"
    )
    if obp:
        lines.append(
            f"runs mean: mean relative error over {obp['runs']} bootstrap samples of the logs "
            "(obp's protocol); obp: obp's published figure for the same protocol"
        )
    elif any("obp_published_relative_error" in r for r in doc["estimates"]):
        lines.append(
            "obp: obp's published mean relative error over 30 bootstrap samples of the logs, "
            "not one estimate's; add --obp-runs 30 for the comparable figure"
        )
    return "\n".join(lines)


def write_plot(doc: dict[str, Any], path: Path) -> None:
    """Estimates with their intervals, and the on-policy value as a vertical line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = doc["estimates"]
    names = [r["estimator"].upper() for r in rows]
    ys = np.arange(len(rows))[::-1]
    est = np.array([r["estimate"] for r in rows])
    lo = np.array([r["ci_low"] for r in rows])
    hi = np.array([r["ci_high"] for r in rows])
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.errorbar(est, ys, xerr=[est - lo, hi - est], fmt="o", capsize=4, label="estimate, 95% CI")
    if doc["truth"] is not None:
        ax.axvline(doc["truth"], color="tab:red", linestyle="--", label="on-policy click rate")
    ax.set_yticks(ys, names)
    ax.set_xlabel("click rate")
    ax.set_title(f"policy {doc['policy']} estimated from {doc['logs']} logs")
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------------------
# The command


def cmd_evaluate(cfg: AttuneConfig, args: argparse.Namespace) -> int:
    started = time.monotonic()
    if args.bootstrap < 0 or args.n_sim < 1 or args.folds < 2 or args.obp_runs < 0:
        _err("--bootstrap and --obp-runs must be >= 0, --n-sim >= 1 and --folds >= 2")
        return EXIT_BAD_INPUT
    try:
        logs_name, folder, behaviour = resolve_logs(cfg, args.logs)
        logs = load_open_bandit(folder)
        policy, dist = policy_distribution(args.policy, logs, n_sim=args.n_sim, seed=args.seed)
        truth = ground_truth(cfg, behaviour, policy)
        evaluation = evaluate_policy(
            logs,
            dist,
            folds=args.folds,
            n_bootstrap=args.bootstrap,
            seed=args.seed,
            progress=rate_reporter(
                "bootstrap (reward model refitted)", _progress_line, unit="resamples"
            ),
        )
        obp_runs = None
        if args.obp_runs and truth is not None:
            obp_runs = obp_protocol_errors(
                logs,
                dist,
                truth,
                runs=args.obp_runs,
                folds=args.folds,
                l2=evaluation.l2,
                progress=rate_reporter("obp protocol runs", _progress_line, unit="runs"),
            )
    except (LogsError, PolicyError, OPEInputError) as exc:
        _err(str(exc))
        return EXIT_BAD_INPUT
    settings = {
        "bootstrap": args.bootstrap,
        "seed": args.seed,
        "n_sim": args.n_sim if policy == "bts" else None,
        "folds": args.folds,
        "obp_runs": args.obp_runs,
    }
    doc = report_dict(
        policy=policy,
        logs_name=logs_name,
        logs=logs,
        evaluation=evaluation,
        truth=truth,
        obp_runs=obp_runs,
        settings=settings,
    )
    out = Path(args.out) if args.out else cfg.paths.resolve(DEFAULT_OUT)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"evaluate-{policy}-{logs_name}"
    json_path, png_path = out / f"{stem}.json", out / f"{stem}.png"
    doc["wall_seconds"] = round(time.monotonic() - started, 1)
    json_path.write_text(json.dumps(doc, indent=2) + "\n")
    write_plot(doc, png_path)
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(format_table(doc))
        print(f"wrote {json_path} and {png_path} ({doc['wall_seconds']} s)")
    return 0
