"""One evaluation run: every baseline and the TFRS models on the same split, side by side.

``attune models evaluate`` (:func:`cmd_evaluate`) loads an interactions file (MovieTweetings, any
CSV through a column mapping, or a Delta table), splits it, and then, in one run:

1. carves a validation split out of the training data (same kind of split, as many
   interactions as the test set) and picks, on it only, the knobs of the baselines (the
   half-life of recent popularity, the neighbourhood size of item-kNN); the chosen half-life is
   also the one of the TFRS models' popularity prior;
2. trains every model on the training data: popularity, recent popularity, item-kNN, Spark
   MLlib ALS (implicit), the TFRS retrieval model, and retrieval followed by the TFRS ranking
   model;
3. ranks the whole catalog for every test user with the same exclusions and computes
   Recall/NDCG/MAP/HitRate@k, catalog coverage, and the same metrics on cold items
   (:mod:`models.scoring`);
4. prints a table and writes a JSON report and a plot.

``--evaluate-on validation`` runs the same on the validation split: the mode used to tune the
TFRS hyper-parameters, so the test set is looked at once, for the final numbers.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from attune.config import AttuneConfig, RetrievalConfig
from models.baselines import ALSParams, ItemKNN, Popularity, Recommender, SparkALS
from models.data import Dataset, load_dataset
from models.features import TrainingData
from models.scoring import EvalTask, build_eval_task, score_model
from models.splits import Split, make_split

log = logging.getLogger(__name__)

BASELINES: tuple[str, ...] = ("popularity", "recent-popularity", "item-knn", "als")
# The baselines the issue names; recent popularity is an extra, stronger one (see the report).
REQUIRED_BASELINES: tuple[str, ...] = ("popularity", "item-knn", "als")
TFRS_MODELS: tuple[str, ...] = ("tfrs-retrieval", "tfrs-retrieval+ranking")
ALL_MODELS: tuple[str, ...] = BASELINES + TFRS_MODELS


@dataclass
class Prepared:
    """A split with its validation split and the knobs chosen on validation."""

    split: Split
    validation: Split
    prior_half_life_days: float
    knn_neighbours: int
    selection: dict[str, Any]


def validation_fraction(cfg: AttuneConfig, test_fraction: float) -> float:
    """As many validation interactions as test interactions, unless configured."""
    if cfg.models.validation_fraction is not None:
        return cfg.models.validation_fraction
    return min(0.5, test_fraction / (1.0 - test_fraction))


def prepare(
    cfg: AttuneConfig,
    dataset: Dataset,
    split_kind: str,
    test_fraction: float,
    threshold: float,
    k: int,
    seed: int,
    say: Callable[[str], None] = print,
) -> Prepared:
    """Split, carve the validation split, choose the baselines' knobs on validation."""
    split = make_split(split_kind, dataset.interactions, test_fraction, seed)
    validation = make_split(
        split_kind, split.train, validation_fraction(cfg, test_fraction), seed + 1
    )
    val_data = TrainingData(validation.train, dataset.items, threshold)
    val_task = build_eval_task(val_data, validation.test)
    selection: dict[str, Any] = {"validation": validation.describe(), "tried": {}}
    mc = cfg.models
    if mc.prior_half_life_days is not None:
        half_life = mc.prior_half_life_days
        selection["tried"]["prior_half_life_days"] = {"configured": half_life}
    else:
        tried = {}
        for h in mc.prior_half_life_grid:
            tried[h] = score_model(Popularity(h).fit(val_data), val_task, k, progress=False)["ndcg"]
        half_life = max(tried, key=lambda h: (_finite(tried[h]), -h))
        selection["tried"]["prior_half_life_days"] = tried
    tried_knn = {}
    for n in mc.knn_neighbours_grid:
        tried_knn[n] = score_model(ItemKNN(n).fit(val_data), val_task, k, progress=False)["ndcg"]
    neighbours = max(tried_knn, key=lambda n: (_finite(tried_knn[n]), -n))
    selection["tried"]["knn_neighbours"] = tried_knn
    say(
        f"validation ({len(val_task.users)} users): prior half-life {half_life} days, "
        f"item-kNN neighbours {neighbours}"
    )
    return Prepared(split, validation, half_life, neighbours, selection)


def _finite(value: float) -> float:
    """NaN (nothing to measure, e.g. no validation user) ranks below every measured value."""
    return value if value == value else -1.0


def _retrieval_without(params: RetrievalConfig, group: str) -> RetrievalConfig:
    """``params`` without a feature group. Without the prior, popularity must come from the
    training loss instead, so the log-Q correction is switched on (weight 1): otherwise the
    ablation would measure a model that never sees popularity at all."""
    update: dict[str, Any] = {"features": [g for g in params.features if g != group]}
    if group == "prior" and params.logq_weight == 0:
        update["logq_weight"] = 1.0
    return params.model_copy(update=update)


def run_evaluation(
    cfg: AttuneConfig,
    dataset: Dataset,
    *,
    split_kind: str = "temporal",
    test_fraction: float | None = None,
    threshold: float | None = None,
    k: int | None = None,
    seed: int | None = None,
    models: Sequence[str] = ALL_MODELS,
    evaluate_on: str = "test",
    ablation: bool = False,
    max_users: int | None = None,
    progress: bool = True,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train and score ``models`` on one split; returns the report (see module docstring)."""
    from models.ranking import TwoStage, train_ranking
    from models.retrieval import train_retrieval

    mc = cfg.models
    test_fraction = mc.test_fraction if test_fraction is None else test_fraction
    threshold = mc.positive_threshold if threshold is None else threshold
    k = mc.k if k is None else k
    seed = mc.seed if seed is None else seed
    unknown = [m for m in models if m not in ALL_MODELS]
    if unknown:
        raise ValueError(f"unknown model {unknown[0]!r}: expected some of {', '.join(ALL_MODELS)}")
    if evaluate_on not in ("test", "validation"):
        raise ValueError("evaluate_on must be test or validation")
    started = time.monotonic()
    prep = prepare(cfg, dataset, split_kind, test_fraction, threshold, k, seed, say)
    scored = prep.split if evaluate_on == "test" else prep.validation
    data = TrainingData(scored.train, dataset.items, threshold)
    task = build_eval_task(data, scored.test, max_users=max_users, seed=seed)
    if len(task.users) == 0:
        raise ValueError(
            "no test user has both training history and a positive test interaction; use a "
            "larger --test-fraction, a lower --positive-threshold, or more data"
        )
    say(
        f"{split_kind} split, evaluated on {evaluate_on}: {len(scored.train)} training and "
        f"{len(scored.test)} test interactions; {len(task.users)} users, {task.n_items} items "
        f"({int(task.cold_items.sum())} cold)"
    )
    results: dict[str, dict[str, Any]] = {}

    def run(model: Recommender, fit: Callable[[], Any] | None, kind: str) -> None:
        t0 = time.monotonic()
        if fit is None:
            model.fit(data)
        else:
            fit()
        fit_seconds = time.monotonic() - t0
        metrics = score_model(model, task, k, progress=progress)
        metrics["fit_seconds"] = round(fit_seconds, 2)
        metrics["kind"] = kind
        results[model.name] = metrics
        say(
            f"  {model.name:<24} NDCG@{k} {metrics['ndcg']:.4f}  Recall@{k} "
            f"{metrics['recall']:.4f}  (fit {fit_seconds:.1f} s)"
        )

    if "popularity" in models:
        run(Popularity(), None, "baseline")
    if "recent-popularity" in models:
        run(Popularity(prep.prior_half_life_days), None, "baseline")
    if "item-knn" in models:
        run(ItemKNN(prep.knn_neighbours), None, "baseline")
    if "als" in models:
        als = mc.als
        run(
            SparkALS(
                cfg, ALSParams(als.rank, als.max_iter, als.reg_param, als.alpha, als.blocks), seed
            ),
            None,
            "baseline",
        )
    retrieval = None
    tfrs_seconds = 0.0
    if any(m in models for m in TFRS_MODELS):
        retrieval = train_retrieval(
            data, mc.retrieval, prep.prior_half_life_days, seed, progress=progress
        )
        tfrs_seconds += retrieval.seconds
        if "tfrs-retrieval" in models:
            run(retrieval, lambda: None, "tfrs")
            results["tfrs-retrieval"]["fit_seconds"] = round(retrieval.seconds, 2)
    if "tfrs-retrieval+ranking" in models and retrieval is not None:
        ranking = train_ranking(
            data,
            mc.ranking,
            prep.prior_half_life_days,
            seed,
            space=retrieval.space,
            progress=progress,
        )
        tfrs_seconds += ranking.seconds
        two = TwoStage(retrieval, ranking, mc.ranking.candidates)
        run(two, lambda: None, "tfrs")
        results[two.name]["fit_seconds"] = round(retrieval.seconds + ranking.seconds, 2)
    ablations: dict[str, Any] = {}
    if ablation and retrieval is not None:
        for group in mc.retrieval.features:
            params = _retrieval_without(mc.retrieval, group)
            if not {"user", "sequence", "context"} & set(params.features):
                continue  # the query tower needs one of them
            trained = train_retrieval(
                data, params, prep.prior_half_life_days, seed, progress=progress
            )
            trained.name = f"tfrs-retrieval without {group}"
            metrics = score_model(trained, task, k, progress=progress)
            metrics["fit_seconds"] = round(trained.seconds, 2)
            if "tfrs-retrieval" in results:
                # what the group adds: the full model's NDCG minus the model without it
                metrics["ndcg_added_by_group"] = results["tfrs-retrieval"]["ndcg"] - metrics["ndcg"]
            ablations[group] = metrics
            say(f"  without {group:<16} NDCG@{k} {metrics['ndcg']:.4f}")
    report = _report(
        cfg,
        dataset,
        prep,
        scored,
        task,
        results,
        ablations,
        evaluate_on,
        split_kind,
        threshold,
        k,
        seed,
        tfrs_seconds,
        time.monotonic() - started,
    )
    return report


def _best(results: dict[str, dict[str, Any]], names: Sequence[str]) -> dict[str, Any] | None:
    present = [(n, results[n]["ndcg"]) for n in names if n in results]
    if not present:
        return None
    name, value = max(present, key=lambda p: p[1])
    return {"name": name, "ndcg": value}


def _report(
    cfg: AttuneConfig,
    dataset: Dataset,
    prep: Prepared,
    scored: Split,
    task: EvalTask,
    results: dict[str, dict[str, Any]],
    ablations: dict[str, Any],
    evaluate_on: str,
    split_kind: str,
    threshold: float,
    k: int,
    seed: int,
    tfrs_seconds: float,
    total_seconds: float,
) -> dict[str, Any]:
    best_baseline = _best(results, BASELINES)
    best_required = _best(results, REQUIRED_BASELINES)
    best_tfrs = _best(results, TFRS_MODELS)

    def ratio(base: dict[str, Any] | None) -> float | None:
        if base is None or best_tfrs is None or not base["ndcg"]:
            return None
        return round(best_tfrs["ndcg"] / base["ndcg"], 4)

    return {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "data": dataset.version.as_dict(),
        "split": {**scored.describe(), "kind": split_kind, "evaluated_on": evaluate_on},
        "task": task.describe(),
        "k": k,
        "positive_threshold": threshold,
        "seed": seed,
        "selected_on_validation": {
            "prior_half_life_days": prep.prior_half_life_days,
            "knn_neighbours": prep.knn_neighbours,
            **prep.selection,
        },
        "params": {
            "retrieval": cfg.models.retrieval.model_dump(),
            "ranking": cfg.models.ranking.model_dump(),
            "als": cfg.models.als.model_dump(),
        },
        "models": results,
        "ablation": {"retrieval_without": ablations} if ablations else {},
        "best_baseline": best_baseline,
        "best_required_baseline": best_required,
        "best_tfrs": best_tfrs,
        "ndcg_ratio_vs_best_baseline": ratio(best_baseline),
        "ndcg_ratio_vs_best_required_baseline": ratio(best_required),
        "tfrs_training_seconds": round(tfrs_seconds, 2),
        "total_seconds": round(total_seconds, 2),
    }


def format_table(report: dict[str, Any]) -> str:
    """The report's models as a Markdown table (also readable in a terminal)."""
    k = report["k"]
    head = (
        f"| model | Recall@{k} | NDCG@{k} | MAP@{k} | HitRate@{k} | coverage | "
        f"cold Recall@{k} | cold NDCG@{k} | fit s |"
    )
    lines = [head, "|" + "---|" * 9]

    def row(name: str, m: dict[str, Any]) -> str:
        cold = m.get("cold", {})
        return (
            f"| {name} | {m['recall']:.4f} | {m['ndcg']:.4f} | {m['map']:.4f} | "
            f"{m['hit_rate']:.4f} | {m['coverage']:.4f} | {cold.get('recall', float('nan')):.4f} "
            f"| {cold.get('ndcg', float('nan')):.4f} | {m.get('fit_seconds', 0):.1f} |"
        )

    for name, m in report["models"].items():
        lines.append(row(name, m))
    for group, m in report.get("ablation", {}).get("retrieval_without", {}).items():
        lines.append(row(f"tfrs-retrieval without {group}", m))
    task = report["task"]
    lines.append("")
    lines.append(
        f"{report['split']['kind']} split, evaluated on {report['split']['evaluated_on']}: "
        f"{task['users']} users, {task['catalog_items']} items ({task['cold_items']} cold, "
        f"{task['cold_relevant_pairs']} cold relevant pairs); positives: rating >= "
        f"{report['positive_threshold']}; {task['test_users_without_history']} test users "
        "without training history not scored."
    )
    for label, key, ratio_key in (
        ("best baseline", "best_baseline", "ndcg_ratio_vs_best_baseline"),
        (
            "best of popularity / item-kNN / ALS",
            "best_required_baseline",
            "ndcg_ratio_vs_best_required_baseline",
        ),
    ):
        base, tfrs = report.get(key), report.get("best_tfrs")
        if base and tfrs:
            lines.append(
                f"{label}: {base['name']} NDCG@{k} {base['ndcg']:.4f}; best TFRS: {tfrs['name']} "
                f"{tfrs['ndcg']:.4f}; ratio {report[ratio_key]:.3f}"
            )
    lines.append(
        f"TFRS training time (retrieval + ranking): {report['tfrs_training_seconds']:.1f} s"
    )
    return "\n".join(lines)


def plot_report(report: dict[str, Any], path: Path) -> Path:
    """Bar chart of Recall, NDCG, MAP and cold NDCG at k per model, saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = report["k"]
    names = list(report["models"])
    series = {
        f"Recall@{k}": [report["models"][n]["recall"] for n in names],
        f"NDCG@{k}": [report["models"][n]["ndcg"] for n in names],
        f"MAP@{k}": [report["models"][n]["map"] for n in names],
        f"cold NDCG@{k}": [np.nan_to_num(report["models"][n]["cold"]["ndcg"]) for n in names],
    }
    fig, ax = plt.subplots(figsize=(max(6.0, 1.4 * len(names) + 2), 4.5))
    width = 0.8 / len(series)
    x = np.arange(len(names))
    for i, (label, values) in enumerate(series.items()):
        ax.bar(x + (i - (len(series) - 1) / 2) * width, values, width, label=label)
    ax.set_xticks(x, names, rotation=20, ha="right")
    ax.set_ylabel("metric value")
    ax.set_title(
        f"{report['split']['kind']} split ({report['split']['evaluated_on']}), "
        f"{report['task']['users']} users"
    )
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------------------
# CLI


def load_from_args(cfg: AttuneConfig, args: argparse.Namespace) -> Dataset:
    return load_dataset(
        args.format,
        args.interactions,
        args.items,
        columns=args.columns,
        item_columns=args.item_columns,
        cfg=cfg,
        sep=args.sep,
        genre_sep=args.genre_sep,
        limit=args.limit,
    )


def cmd_evaluate(cfg: AttuneConfig, args: argparse.Namespace) -> int:
    """``attune models evaluate``: see the module docstring."""
    from models.data import DataError

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        dataset = load_from_args(cfg, args)
        models = [m.strip() for m in args.models.split(",")] if args.models else list(ALL_MODELS)
        report = run_evaluation(
            cfg,
            dataset,
            split_kind=args.split,
            test_fraction=args.test_fraction,
            threshold=args.positive_threshold,
            k=args.k,
            seed=args.seed,
            models=models,
            evaluate_on=args.evaluate_on,
            ablation=args.ablation,
            max_users=args.max_users,
            progress=not args.no_progress,
        )
    except (DataError, ValueError) as exc:
        print(f"attune models evaluate: {exc}", file=sys.stderr)
        return 2
    print()
    print(format_table(report))
    out = (
        Path(args.json)
        if args.json
        else cfg.paths.resolve("reports")
        / (f"evaluate-{args.split}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}.json")
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    plot = Path(args.plot) if args.plot else out.with_suffix(".png")
    report["plot"] = str(plot)
    out.write_text(json.dumps(clean_json(report), indent=2) + "\n")
    plot_report(report, plot)
    print(f"\nreport: {out}\nplot:   {plot}")
    return 0


def clean_json(value: Any) -> Any:
    """``value`` with NumPy scalars as Python numbers, NaN as null and paths as strings, so the
    report is strict JSON."""
    if isinstance(value, dict):
        return {str(k): clean_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_json(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        value = value.item()
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, Path):
        return str(value)
    return value
