"""Hyper-parameter search for the retrieval model, on the validation split only.

``attune models tune`` carves the same validation split as ``attune models evaluate`` (the
training period's tail for a temporal split, a share of each user's interactions for a
user-stratified one; the test split is never read), then trains the retrieval model once per
*trial* and scores it there (NDCG@k, full ranking, training items excluded).

Trial 0 is always the configured ``models.retrieval`` (the reference); the others are drawn
at random, without repetition, from :data:`SEARCH_SPACE` (embedding dimension, temperature,
learning rate, epochs, sequence encoder, uniform negatives), or a space given with ``--param``.
Every trial is recorded in the report (parameters, metrics, training seconds, whether it
stayed within the training budget); the best trial within the budget is printed as a YAML
snippet for ``models.retrieval``. A trial over the budget (``--budget-s``, the issue's
5 minutes for retrieval and ranking together, by default half of it for retrieval) is
recorded but never chosen.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from attune.config import AttuneConfig, RetrievalConfig
from attune.progress import RateEta

SEARCH_SPACE: dict[str, tuple[Any, ...]] = {
    "embedding_dim": (32, 64, 128),
    "temperature": (0.05, 0.1, 0.2, 0.5),
    "learning_rate": (0.003, 0.01, 0.03),
    "epochs": (1, 2, 3),
    "sequence_encoder": ("mean", "gru", "attention"),
    "uniform_negatives": (0, 256),
}
"""The values a random trial draws from, per ``models.retrieval`` key."""


def parse_param(text: str) -> tuple[str, tuple[Any, ...]]:
    """``"temperature=0.1,0.2"`` -> ``("temperature", (0.1, 0.2))``, values typed like the
    configuration field (int, float, str); raises ``ValueError`` naming the fix."""
    name, sep, values = text.partition("=")
    name = name.strip()
    fields = RetrievalConfig.model_fields
    if not sep or not values.strip():
        raise ValueError(f"--param {text!r}: expected NAME=V1,V2,... e.g. temperature=0.1,0.2")
    if name not in fields:
        raise ValueError(
            f"--param {text!r}: {name!r} is not a models.retrieval key; expected one of "
            f"{', '.join(sorted(fields))}"
        )
    out = []
    for raw in values.split(","):
        value: Any = raw.strip()
        try:
            checked = RetrievalConfig.model_validate({name: value})
        except Exception as exc:
            raise ValueError(
                f"--param {text!r}: {value!r} is not valid for {name}: {exc}"
            ) from None
        out.append(getattr(checked, name))
    return name, tuple(out)


def draw_trials(
    base: RetrievalConfig,
    space: Mapping[str, Sequence[Any]],
    n_trials: int,
    seed: int,
) -> list[dict[str, Any]]:
    """``n_trials`` parameter updates: ``{}`` (the configured model) first, then distinct
    random points of ``space`` (fewer when the space is smaller); deterministic in ``seed``."""
    rng = random.Random(seed)
    names = sorted(space)
    configured = {name: getattr(base, name) for name in names}
    seen = {tuple(configured[n] for n in names)}
    trials: list[dict[str, Any]] = [{}]
    size = 1
    for name in names:
        size *= len(space[name])
    attempts = 0
    while len(trials) < n_trials and len(seen) < size + 1 and attempts < 100 * n_trials:
        attempts += 1
        point = {name: rng.choice(list(space[name])) for name in names}
        key = tuple(point[n] for n in names)
        if key in seen:
            continue
        seen.add(key)
        trials.append({n: v for n, v in point.items() if v != configured[n]})
    return trials


def best_trial(trials: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The trial with the highest NDCG within the budget (ties: the earlier trial)."""
    ok = [t for t in trials if t["within_budget"] and t["ndcg"] == t["ndcg"]]
    if not ok:
        return None
    return max(ok, key=lambda t: (t["ndcg"], -t["trial"]))


def yaml_snippet(params: Mapping[str, Any]) -> str:
    """The chosen values as a ``models.retrieval`` YAML block."""
    lines = ["models:", "  retrieval:"]
    if not params:
        lines.append("    {}  # the configured values won")
    for name, value in params.items():
        lines.append(f"    {name}: {json.dumps(value)}")
    return "\n".join(lines)


def run_search(
    cfg: AttuneConfig,
    dataset: Any,
    *,
    split_kind: str,
    trials: int,
    seed: int,
    space: Mapping[str, Sequence[Any]] = SEARCH_SPACE,
    max_users: int | None = None,
    budget_s: float = 150.0,
    progress: bool = False,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the search (see the module docstring); returns the report."""
    from models.data import choose_positives
    from models.evaluate import prepare
    from models.features import TrainingData
    from models.retrieval import train_retrieval
    from models.scoring import build_eval_task, score_model

    mc = cfg.models
    positives = choose_positives(dataset.interactions, mc.positive_threshold, "config")
    threshold = positives.threshold
    prep = prepare(cfg, dataset, split_kind, mc.test_fraction, threshold, mc.k, seed, say)
    data = TrainingData(prep.validation.train, dataset.items, threshold)
    task = build_eval_task(data, prep.validation.test, max_users=max_users, seed=seed)
    if len(task.users) == 0:
        raise ValueError(
            "no validation user has both training history and a positive interaction; use "
            "more data or a lower models.positive_threshold"
        )
    say(
        f"{split_kind} validation split: {len(data.interactions)} training interactions, "
        f"{len(task.users)} users scored; {trials} trials"
    )
    records = []
    drawn = draw_trials(mc.retrieval, space, trials, seed)
    # a trial takes minutes: a line after each one (every=0), with the ETA of the rest
    meter = RateEta("  trials", len(drawn), "trials", say=say, every=0.0, min_seconds=0.0)
    for i, update in enumerate(drawn):
        params = mc.retrieval.model_copy(update=update)
        t0 = time.monotonic()
        trained = train_retrieval(data, params, prep.prior_half_life_days, seed, progress=progress)
        metrics = score_model(trained, task, mc.k, progress=progress)
        record = {
            "trial": i,
            "update": update,
            "params": {name: getattr(params, name) for name in space},
            "ndcg": metrics["ndcg"],
            "recall": metrics["recall"],
            "coverage": metrics["coverage"],
            "fit_seconds": round(trained.seconds, 2),
            "seconds": round(time.monotonic() - t0, 2),
            "within_budget": trained.seconds <= budget_s,
        }
        records.append(record)
        say(
            f"  trial {i:>2}: NDCG@{mc.k} {record['ndcg']:.4f}  Recall@{mc.k} "
            f"{record['recall']:.4f}  fit {record['fit_seconds']:.1f} s  "
            f"{update or '(configured)'}"
        )
        meter.update(1)
    meter.finish(always=True)
    best = best_trial(records)
    return {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "data": dataset.version.as_dict(),
        "split": {**prep.validation.describe(), "kind": split_kind, "evaluated_on": "validation"},
        "k": mc.k,
        "positive_threshold": threshold,
        "seed": seed,
        "prior_half_life_days": prep.prior_half_life_days,
        "budget_seconds": budget_s,
        "space": {k: list(v) for k, v in space.items()},
        "base": mc.retrieval.model_dump(),
        "trials": records,
        "best": best,
        "best_yaml": yaml_snippet(best["update"]) if best else None,
    }


def cmd_tune(cfg: AttuneConfig, args: argparse.Namespace) -> int:
    """``attune models tune``: 0 on success, 2 on bad options or data (message on stderr)."""
    import logging
    import sys

    from models.data import DataError
    from models.evaluate import clean_json, load_from_args

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        space: dict[str, tuple[Any, ...]] = dict(SEARCH_SPACE)
        if args.param:
            space = dict(parse_param(p) for p in args.param)
        dataset = load_from_args(cfg, args)
        report = run_search(
            cfg,
            dataset,
            split_kind=args.split,
            trials=args.trials,
            seed=cfg.models.seed if args.seed is None else args.seed,
            space=space,
            max_users=args.max_users,
            budget_s=args.budget_s,
            progress=not args.no_progress,
        )
    except (DataError, ValueError) as exc:
        print(f"attune models tune: {exc}", file=sys.stderr)
        return 2
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    out = (
        Path(args.json)
        if args.json
        else cfg.paths.resolve("reports") / f"tune-{args.split}-{stamp}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(clean_json(report), indent=2))
    print(f"report: {out}")
    if report["best"] is None:
        print("no trial trained within the budget; raise --budget-s or shrink the space")
        return 0
    print(
        f"best trial {report['best']['trial']} (NDCG@{report['k']} {report['best']['ndcg']:.4f}):"
    )
    print(report["best_yaml"])
    return 0
