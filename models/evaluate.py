"""One evaluation run: every baseline and the TFRS models on the same split, side by side.

``attune models evaluate`` (:func:`cmd_evaluate`) loads an interactions file (MovieTweetings, any
CSV through a column mapping, or a Delta table), splits it, and then, in one run:

1. carves a validation split out of the training data (same kind of split, as many
   interactions as the test set) and picks, on it only, the knobs of the baselines (the
   half-life of recent popularity, item-kNN's neighbourhood size x shrinkage, EASE's
   regularization lambda); the chosen half-life is also the one of the TFRS models'
   popularity prior;
2. trains every model on the training data: popularity, recent popularity, item-kNN, EASE,
   Spark MLlib ALS (implicit), the TFRS retrieval model, and retrieval followed by the TFRS
   ranking model; ``served-pipeline`` runs the API's whole path offline on those TFRS models
   (retrieval, co-occurrence neighbours and trending -> ranking -> rules: :mod:`models.pipeline`);
3. ranks the whole catalog for every test user with the same exclusions and computes
   Recall/NDCG/MAP/HitRate@k, catalog coverage, personalization, novelty, and the accuracy
   metrics on cold items (:mod:`models.scoring`);
4. prints a table and writes a JSON report and a plot.

``--evaluate-on validation`` runs the same on the validation split: the mode used to tune the
TFRS hyper-parameters, so the test set is looked at once, for the final numbers.
``--seeds 42,43,44`` runs all of it once per seed and reports mean and spread per model and
metric (:mod:`models.seeds`).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np

from attune.config import AttuneConfig, RetrievalConfig
from attune.progress import progress_lines
from models.baselines import (
    EASE,
    ALSParams,
    ItemKNN,
    Popularity,
    Recommender,
    SparkALS,
    cooccurrence,
)
from models.data import Dataset, choose_positives, load_dataset
from models.features import TrainingData
from models.scoring import EvalTask, build_eval_task, score_model
from models.splits import Split, make_split

log = logging.getLogger(__name__)

BASELINES: tuple[str, ...] = ("popularity", "recent-popularity", "item-knn", "ease", "als")
# The baselines the issue names; recent popularity is an extra, stronger one (see the report).
REQUIRED_BASELINES: tuple[str, ...] = ("popularity", "item-knn", "als")
TFRS_MODELS: tuple[str, ...] = ("tfrs-retrieval", "tfrs-retrieval+ranking", "served-pipeline")
# served-pipeline: the API's whole path offline (models/pipeline.py), on the TFRS models
ALL_MODELS: tuple[str, ...] = BASELINES + TFRS_MODELS
# The entry the target is about (what users get) and the target: its NDCG at least
# HEADLINE_TARGET x the best baseline's, on every split, as a mean over seeds.
HEADLINE_MODEL = "served-pipeline"
HEADLINE_TARGET = 1.15


@dataclass
class Prepared:
    """A split with its validation split and the knobs chosen on validation."""

    split: Split
    validation: Split
    prior_half_life_days: float
    knn_neighbours: int | None  # None: not tuned (item-knn not evaluated)
    selection: dict[str, Any]
    knn_shrinkage: float | None = None
    ease_lambda: float | None = None


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
    *,
    tune: Collection[str] = (),
    cache: dict[Any, Any] | None = None,
) -> Prepared:
    """Split, carve the validation split, choose the baselines' knobs on validation: always
    the prior's half-life, and the knobs of the models in ``tune`` (``item-knn``, ``ease``).

    ``cache`` (any dict, kept by the caller across runs) remembers the knobs chosen on a
    validation split, keyed on its content: with several seeds, a temporal split (the same for
    every seed) is tuned once."""
    split = make_split(split_kind, dataset.interactions, test_fraction, seed)
    validation = make_split(
        split_kind, split.train, validation_fraction(cfg, test_fraction), seed + 1
    )
    mc = cfg.models
    key = (
        _fingerprint(validation),
        threshold,
        k,
        tuple(sorted(tune)),
        mc.model_dump_json(include={"prior_half_life_days", "prior_half_life_grid"}),
        mc.model_dump_json(include={"knn_neighbours_grid", "knn_shrinkage_grid"}),
        mc.model_dump_json(include={"ease_lambda_grid", "ease_max_memory_gb"}),
    )
    if cache is not None and key in cache:
        say("validation: the same split as an earlier run, its choices reused")
        return Prepared(split, validation, **cache[key])
    val_data = TrainingData(validation.train, dataset.items, threshold)
    val_task = build_eval_task(val_data, validation.test)
    selection: dict[str, Any] = {"validation": validation.describe(), "tried": {}}
    if mc.prior_half_life_days is not None:
        half_life = mc.prior_half_life_days
        selection["tried"]["prior_half_life_days"] = {"configured": half_life}
    else:
        tried = {}
        grid = progress_lines(
            mc.prior_half_life_grid, "validation: half-life grid", unit="fits", say=say
        )
        for h in grid:
            tried[h] = score_model(Popularity(h).fit(val_data), val_task, k, progress=False)["ndcg"]
        half_life = max(tried, key=lambda h: (_finite(tried[h]), -h))
        selection["tried"]["prior_half_life_days"] = tried
    chosen: dict[str, Any] = {"prior_half_life_days": half_life, "knn_neighbours": None}
    said = [f"prior half-life {half_life} days"]
    if "item-knn" in tune:
        co = cooccurrence(val_data)
        tried_knn: dict[tuple[int, float], float] = {}
        pairs = list(product(mc.knn_neighbours_grid, mc.knn_shrinkage_grid))
        for n, shrink in progress_lines(pairs, "validation: item-kNN grid", unit="fits", say=say):
            model = ItemKNN(n, shrink).fit(val_data, co)
            tried_knn[n, shrink] = score_model(model, val_task, k, progress=False)["ndcg"]
        # ties: the smaller neighbourhood, then the smaller shrinkage
        best = max(tried_knn, key=lambda ns: (_finite(tried_knn[ns]), -ns[0], -ns[1]))
        chosen["knn_neighbours"], chosen["knn_shrinkage"] = best
        selection["tried"]["knn_neighbours_x_shrinkage"] = {
            f"neighbours={n},shrinkage={s:g}": v for (n, s), v in tried_knn.items()
        }
        said.append(f"item-kNN neighbours {best[0]}, shrinkage {best[1]:g}")
    if "ease" in tune:
        tried_ease: dict[float, float] = {}
        fits: dict[float, Any] = {}
        for lam in progress_lines(
            mc.ease_lambda_grid, "validation: EASE lambda grid", unit="fits", say=say
        ):
            ease = EASE(lam, mc.ease_max_memory_gb).fit(val_data)
            tried_ease[lam] = score_model(ease, val_task, k, progress=False)["ndcg"]
            fits[lam] = ease.fit_info
        # ties: the stronger regularization
        lam_best = max(tried_ease, key=lambda lam: (_finite(tried_ease[lam]), lam))
        chosen["ease_lambda"] = lam_best
        selection["tried"]["ease_lambda"] = tried_ease
        selection["ease_fit_on_validation"] = fits[lam_best]
        said.append(f"EASE lambda {lam_best:g}")
    say(f"validation ({len(val_task.users)} users): " + ", ".join(said))
    chosen["selection"] = selection
    if cache is not None:
        cache[key] = chosen
    return Prepared(split, validation, **chosen)


def _fingerprint(split: Split) -> tuple[int, int, int]:
    """Identifies a split by its rows (who, what, when), cheaply."""
    import pandas as pd

    def digest(frame: Any) -> int:
        cols = [c for c in ("user_id", "item_id", "timestamp", "rating") if c in frame]
        return int(pd.util.hash_pandas_object(frame[cols], index=False).sum())

    return len(split.train), digest(split.train), digest(split.test)


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
    selection_cache: dict[Any, Any] | None = None,
) -> dict[str, Any]:
    """Train and score ``models`` on one split; returns the report (see module docstring).
    ``selection_cache``: see :func:`prepare` (``cache``)."""
    if set(models) & set(TFRS_MODELS) or ablation:  # TensorFlow only when a TFRS model runs
        from models.ranking import TwoStage, train_ranking
        from models.retrieval import train_retrieval

    mc = cfg.models
    test_fraction = mc.test_fraction if test_fraction is None else test_fraction
    positives = choose_positives(
        dataset.interactions,
        mc.positive_threshold if threshold is None else threshold,
        "config" if threshold is None else "option",
    )
    threshold = positives.threshold
    say(f"positives: {positives.reason}")
    k = mc.k if k is None else k
    seed = mc.seed if seed is None else seed
    unknown = [m for m in models if m not in ALL_MODELS]
    if unknown:
        raise ValueError(f"unknown model {unknown[0]!r}: expected some of {', '.join(ALL_MODELS)}")
    if evaluate_on not in ("test", "validation"):
        raise ValueError("evaluate_on must be test or validation")
    started = time.monotonic()
    prep = prepare(
        cfg,
        dataset,
        split_kind,
        test_fraction,
        threshold,
        k,
        seed,
        say,
        tune=[m for m in models if m in ("item-knn", "ease")],
        cache=selection_cache,
    )
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

    def run(
        model: Recommender, fit: Callable[[], Any] | None, kind: str, trained_s: float = 0.0
    ) -> None:
        """Fit (``fit`` or ``model.fit``) and score ``model``; ``trained_s``: the training time
        of TFRS models trained beforehand, counted in its fit time."""
        t0 = time.monotonic()
        if fit is None:
            model.fit(data)
        else:
            fit()
        fit_seconds = time.monotonic() - t0 + trained_s
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
    if "item-knn" in models and prep.knn_neighbours is not None:
        run(ItemKNN(prep.knn_neighbours, prep.knn_shrinkage or 0.0), None, "baseline")
        results["item-knn"]["params"] = {
            "neighbours": prep.knn_neighbours,
            "shrinkage": prep.knn_shrinkage,
        }
    if "ease" in models and prep.ease_lambda is not None:
        ease = EASE(prep.ease_lambda, mc.ease_max_memory_gb)
        run(ease, None, "baseline")
        results["ease"]["params"] = {"lambda": prep.ease_lambda, **ease.fit_info}
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
            run(retrieval, lambda: None, "tfrs", retrieval.seconds)
    ranking = None
    if {"tfrs-retrieval+ranking", "served-pipeline"} & set(models) and retrieval is not None:
        from models.pipeline import ranking_source

        source = ranking_source(data, cfg)
        ranking = train_ranking(
            data,
            mc.ranking,
            prep.prior_half_life_days,
            seed,
            space=retrieval.space,
            progress=progress,
            source=source,
        )
        tfrs_seconds += ranking.seconds
    if "tfrs-retrieval+ranking" in models and retrieval is not None and ranking is not None:
        two = TwoStage(retrieval, ranking, mc.ranking.candidates)
        run(two, lambda: None, "tfrs", retrieval.seconds + ranking.seconds)
    if "served-pipeline" in models and retrieval is not None:
        from models.pipeline import ServedPipeline

        served = ServedPipeline(cfg, retrieval, ranking, k)
        trained_s = retrieval.seconds + (ranking.seconds if ranking is not None else 0.0)
        run(served, None, "tfrs", trained_s)
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
    report["positives"] = positives.as_dict()
    return report


def _best(results: dict[str, dict[str, Any]], names: Sequence[str]) -> dict[str, Any] | None:
    present = [(n, results[n]["ndcg"]) for n in names if n in results]
    if not present:
        return None
    name, value = max(present, key=lambda p: p[1])
    return {"name": name, "ndcg": value}


def headline(
    results: dict[str, dict[str, Any]], best_baseline: dict[str, Any] | None
) -> dict[str, Any] | None:
    """:data:`HEADLINE_MODEL`'s NDCG against the best baseline's, and whether it meets
    :data:`HEADLINE_TARGET`; None when either is missing."""
    entry = results.get(HEADLINE_MODEL)
    if entry is None or best_baseline is None or not best_baseline["ndcg"]:
        return None
    ratio = entry["ndcg"] / best_baseline["ndcg"]
    return {
        "model": HEADLINE_MODEL,
        "ndcg": entry["ndcg"],
        "best_baseline": best_baseline["name"],
        "ratio_vs_best_baseline": round(ratio, 4),
        "target": HEADLINE_TARGET,
        "met": bool(ratio >= HEADLINE_TARGET),
    }


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
            "knn_shrinkage": prep.knn_shrinkage,
            "ease_lambda": prep.ease_lambda,
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
        "headline": headline(results, best_baseline),
        "tfrs_training_seconds": round(tfrs_seconds, 2),
        "total_seconds": round(total_seconds, 2),
    }


def format_table(report: dict[str, Any]) -> str:
    """The report's models as a Markdown table (also readable in a terminal)."""
    k = report["k"]
    head = (
        f"| model | Recall@{k} | NDCG@{k} | MAP@{k} | HitRate@{k} | coverage | "
        f"personalization | novelty (bits) | cold Recall@{k} | cold NDCG@{k} | fit s |"
    )
    lines = [head, "|" + "---|" * 11]
    nan = float("nan")

    def row(name: str, m: dict[str, Any]) -> str:
        cold = m.get("cold", {})
        return (
            f"| {name} | {m['recall']:.4f} | {m['ndcg']:.4f} | {m['map']:.4f} | "
            f"{m['hit_rate']:.4f} | {m['coverage']:.4f} | "
            f"{format_metric(m.get('personalization'))} | "
            f"{format_metric(m.get('novelty'), 2)} | {format_metric(cold.get('recall', nan))} "
            f"| {format_metric(cold.get('ndcg', nan))} | {m.get('fit_seconds', 0):.1f} |"
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
        f"{task['cold_relevant_pairs']} cold relevant pairs); "
        f"{task['test_users_without_history']} test users without training history not scored."
    )
    lines.append(
        "positives: "
        + (report.get("positives") or {}).get("reason", f"rating >= {report['positive_threshold']}")
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
    head_line = report.get("headline")
    if head_line:
        lines.append(
            f"headline: {head_line['model']} NDCG@{k} {head_line['ndcg']:.4f} = "
            f"{head_line['ratio_vs_best_baseline']:.3f} x {head_line['best_baseline']} "
            f"(target {head_line['target']:.2f} x: {'met' if head_line['met'] else 'NOT met'})"
        )
    lines.append(knobs_line(report.get("selected_on_validation") or {}))
    lines.append(
        "personalization: 1 - mean overlap of two users' top-k lists (all pairs); novelty: "
        "mean -log2(share of training users who had the item)."
    )
    lines.append(
        f"TFRS training time (retrieval + ranking): {report['tfrs_training_seconds']:.1f} s"
    )
    return "\n".join(lines)


def format_metric(value: Any, digits: int = 4) -> str:
    """A metric for the table: ``-`` when missing or NaN."""
    if value is None or value != value:
        return "-"
    return f"{value:.{digits}f}"


def knobs_line(selected: dict[str, Any]) -> str:
    """The baselines' knobs chosen on the validation split, as one line."""
    parts = [f"recent-popularity half-life {selected.get('prior_half_life_days')} days"]
    if selected.get("knn_neighbours") is not None:
        parts.append(
            f"item-kNN {selected['knn_neighbours']} neighbours, shrinkage "
            f"{selected.get('knn_shrinkage') or 0:g}"
        )
    if selected.get("ease_lambda") is not None:
        parts.append(f"EASE lambda {selected['ease_lambda']:g}")
    return "chosen on validation: " + "; ".join(parts)


def _metric(entry: dict[str, Any], key: str) -> tuple[float, float]:
    """``(value, spread)`` of a model's metric (``cold.ndcg`` reaches into ``cold``): a plain
    number has no spread; an aggregate over seeds (:mod:`models.seeds`) gives mean and std."""
    value: Any = entry
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if isinstance(value, dict):
        mean, std = value.get("mean"), value.get("std")
        return float(np.nan_to_num(mean if mean is not None else np.nan)), float(
            np.nan_to_num(std if std is not None else 0.0)
        )
    return float(np.nan_to_num(value if value is not None else np.nan)), 0.0


def plot_report(report: dict[str, Any], path: Path) -> Path:
    """Per model: Recall, NDCG, MAP and cold NDCG at k (left), coverage and personalization
    (middle), novelty in bits (right); error bars are the std over seeds when the report
    aggregates several. Saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = report["k"]
    models = report["models"]
    names = list(models)
    panels = [
        (
            "accuracy",
            {
                f"Recall@{k}": "recall",
                f"NDCG@{k}": "ndcg",
                f"MAP@{k}": "map",
                f"cold NDCG@{k}": "cold.ndcg",
            },
        ),
        ("beyond accuracy", {"coverage": "coverage", "personalization": "personalization"}),
        ("novelty (bits)", {"novelty": "novelty"}),
    ]
    width_ratios = [4.0, 2.5, 1.5]
    fig, axes = plt.subplots(
        1,
        3,
        figsize=(max(10.0, 2.2 * len(names) + 4), 4.8),
        gridspec_kw={"width_ratios": width_ratios},
    )
    x = np.arange(len(names))
    for ax, (title, series) in zip(axes, panels, strict=True):
        width = 0.8 / len(series)
        for i, (label, key) in enumerate(series.items()):
            values, errors = zip(*(_metric(models[n], key) for n in names), strict=True)
            offset = (i - (len(series) - 1) / 2) * width
            ax.bar(x + offset, values, width, label=label, yerr=errors if any(errors) else None)
        ax.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.margins(y=0.25)  # room for the legend above the bars
        if len(series) > 1:
            ax.legend(fontsize=7, loc="upper right", ncols=2)
    seeds = report.get("seeds")
    users = (report.get("task") or {}).get("users")
    fig.suptitle(
        f"{report['split']['kind']} split ({report['split']['evaluated_on']}), "
        + (f"{users:.0f} users" if isinstance(users, (int, float)) else "")
        + (f", mean ± std over seeds {', '.join(map(str, seeds))}" if seeds else "")
    )
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
        options: dict[str, Any] = {
            "split_kind": args.split,
            "test_fraction": args.test_fraction,
            "threshold": args.positive_threshold,
            "k": args.k,
            "models": models,
            "evaluate_on": args.evaluate_on,
            "ablation": args.ablation,
            "max_users": args.max_users,
            "progress": not args.no_progress,
        }
        if getattr(args, "seeds", None):
            from models.seeds import parse_seeds, run_seeds

            report = run_seeds(cfg, dataset, parse_seeds(args.seeds), **options)
        else:
            report = run_evaluation(cfg, dataset, seed=args.seed, **options)
    except (DataError, ValueError) as exc:
        print(f"attune models evaluate: {exc}", file=sys.stderr)
        return 2
    print()
    if "per_seed" in report:
        from models.seeds import format_seeds_table

        print(format_seeds_table(report))
    else:
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
