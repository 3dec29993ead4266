"""A training run: data -> retrieval + ranking models -> model repository -> promotion gate.

``attune models train`` (:func:`cmd_train`) reads the batch layer's gold tables (Delta, the
version read is recorded) or any interactions file, and then:

1. holds out the newest ``models.holdout_fraction`` of the interactions (a temporal split) and
   picks the popularity prior's half-life on a validation split carved from the rest;
2. trains the retrieval and the ranking model on the rest, with fixed seeds and progress bars;
3. exports both as SavedModels with raw-feature signatures (:mod:`models.export`) and publishes
   them atomically as new versions in the model repository, with metadata (data version,
   parameters, metrics, timings);
4. runs the promotion gate per model: the new version and the served version are both scored,
   *through their SavedModels*, on the same holdout users with the same exclusions, and the new
   one is promoted only if it beats the served one on ``models.promotion_metric`` by
   ``models.promotion_margin``. Decisions are logged and appended to ``promotions.jsonl``.

The ranking model is gated on re-ranking the candidates of the *new* retrieval model, so both of
its versions are compared on identical candidate lists.

Steps 1 and 2 are :func:`train_models`; ``attune models retrain`` (:mod:`models.retrain`) runs the
same function as the first of its separate steps, and gates before publishing instead.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from attune.config import AttuneConfig
from attune.model_repository import ModelRepository
from models.data import DataError, Dataset, choose_positives, load_delta
from models.evaluate import Prepared, clean_json, load_from_args, prepare
from models.features import TrainingData
from models.metrics import summarize
from models.repository import Decision, gate
from models.scoring import EvalTask, build_eval_task, metrics_for

if TYPE_CHECKING:
    from models.ranking import TrainedRanking
    from models.retrieval import TrainedRetrieval

log = logging.getLogger(__name__)

RETRIEVAL_NAME = "retrieval"
RANKING_NAME = "ranking"
MODEL_NAMES: tuple[str, ...] = (RETRIEVAL_NAME, RANKING_NAME)


def parse_metric(name: str) -> tuple[str, int]:
    """``"ndcg@10"`` -> ``("ndcg", 10)``."""
    metric, _, k = name.partition("@")
    return metric, int(k)


def repository(cfg: AttuneConfig) -> ModelRepository:
    return ModelRepository(
        cfg.paths.resolve(cfg.models.repository_dir), cfg.models.serving_base_path
    )


# ----------------------------------------------------------------------------------------
# Scoring exported models through their signatures


def _query_batches(
    data: TrainingData, task: EvalTask, sequence_length: int, batch_size: int = 256
) -> Any:
    for start in range(0, len(task.users), batch_size):
        users = task.users[start : start + batch_size]
        yield start, data.query_features(users, sequence_length)


def saved_retrieval_top_k(
    path: Path, data: TrainingData, task: EvalTask, k: int, sequence_length: int
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k catalog indices per task user from a retrieval SavedModel (after the task's
    exclusions), and the top-``K`` candidate indices the signature returned (for re-ranking).
    Unknown ids and missing places are ``-1``."""
    from models.export import call_signature, load_saved_model

    loaded = load_saved_model(path)
    tops, cands = [], []
    for start, feats in _query_batches(data, task, sequence_length):
        out = call_signature(loaded, "serving_default", feats)
        ids = out["item_ids"].astype(str)
        index = np.vectorize(lambda i: data.item_index.get(i, -1), otypes=[np.int64])(ids)
        for row in range(len(ids)):
            excluded = task.exclude[start + row]
            keep = index[row][(index[row] >= 0) & ~np.isin(index[row], excluded)]
            top = np.full(k, -1, dtype=np.int64)
            top[: min(k, len(keep))] = keep[:k]
            tops.append(top)
            cands.append(keep)
    width = max((len(c) for c in cands), default=0)
    cand = np.full((len(cands), width), -1, dtype=np.int64)
    for row, c in enumerate(cands):
        cand[row, : len(c)] = c
    return np.array(tops).reshape(len(tops), k), cand


def saved_ranking_top_k(
    path: Path,
    data: TrainingData,
    task: EvalTask,
    candidates: np.ndarray,
    k: int,
    sequence_length: int,
) -> np.ndarray:
    """Top-k of ``candidates`` (catalog indices, ``-1`` = none) re-ranked by a ranking
    SavedModel."""
    from models.export import call_signature, load_saved_model

    loaded = load_saved_model(path)
    out = np.full((len(task.users), k), -1, dtype=np.int64)
    for start, feats in _query_batches(data, task, sequence_length):
        cand = candidates[start : start + len(feats["user_id"])]
        ids = np.where(cand >= 0, data.catalog[np.maximum(cand, 0)], "").astype(object)
        scores = call_signature(loaded, "serving_default", {**feats, "candidate_ids": ids})[
            "scores"
        ]
        scores = np.where(cand >= 0, scores, -np.inf)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        picked = np.take_along_axis(cand, order, axis=1)
        out[start : start + len(picked), : picked.shape[1]] = picked
    return out


def _metric(top: np.ndarray, task: EvalTask, metric: str, k: int) -> float:
    return float(summarize(top, task.relevant, k)[metric])


# ----------------------------------------------------------------------------------------
# The run


@dataclass
class TrainResult:
    data_version: dict[str, Any]
    metrics: dict[str, dict[str, Any]]
    versions: dict[str, int] = field(default_factory=dict)
    decisions: list[Decision] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "data_version": self.data_version,
            "metrics": self.metrics,
            "versions": self.versions,
            "decisions": [d.as_dict() for d in self.decisions],
            "seconds": self.seconds,
        }


@dataclass
class TrainedModels:
    """Both models of one training run, before anything is exported or published: what
    ``attune models train`` publishes and ``attune models retrain``'s train step exports."""

    dataset: Dataset
    prep: Prepared
    data: TrainingData
    task: EvalTask
    retrieval: TrainedRetrieval
    ranking: TrainedRanking
    metrics: dict[str, dict[str, Any]]
    seconds: dict[str, float]

    def metadata(self, cfg: AttuneConfig) -> dict[str, dict[str, Any]]:
        """Per model, the metadata published with it (data version, holdout, parameters, ...)."""
        from models.export import RANKING_SIGNATURES, RETRIEVAL_SIGNATURES

        mc = cfg.models
        common = {
            "data": self.dataset.version.as_dict(),
            "holdout": self.prep.split.describe(),
            "prior_half_life_days": self.prep.prior_half_life_days,
            "seed": mc.seed,
            "positive_threshold": self.data.positive_threshold,
            "training_seconds": self.seconds,
            "feature_space": self.retrieval.space.describe(),
        }
        return {
            RETRIEVAL_NAME: {
                **common,
                "model": "tfrs two-tower retrieval",
                "signatures": list(RETRIEVAL_SIGNATURES),
                "params": mc.retrieval.model_dump(),
                "metrics": {"holdout": self.metrics.get(RETRIEVAL_NAME)},
            },
            RANKING_NAME: {
                **common,
                "model": "tfrs deep & cross ranking",
                "signatures": list(RANKING_SIGNATURES),
                "params": mc.ranking.model_dump(),
                "metrics": {"holdout": self.metrics.get(RANKING_NAME)},
            },
        }

    def export(self, cfg: AttuneConfig, name: str, path: Path) -> None:
        """Write model ``name`` as a SavedModel to ``path`` (which must not exist yet)."""
        from models.export import save_ranking, save_retrieval

        if name == RETRIEVAL_NAME:
            save_retrieval(self.retrieval, path, cfg.models.retrieval.top_k)
        elif name == RANKING_NAME:
            save_ranking(self.ranking, path)
        else:
            raise ValueError(f"unknown model {name!r}: expected one of {', '.join(MODEL_NAMES)}")


def train_models(
    cfg: AttuneConfig,
    dataset: Dataset,
    *,
    progress: bool = True,
    say: Callable[[str], None] = print,
) -> TrainedModels:
    """Steps 1 and 2 of the module docstring: hold out the newest interactions, pick the prior's
    half-life on validation, train retrieval and ranking on the rest, and measure both (in
    memory) on the holdout."""
    from models.ranking import TwoStage, train_ranking
    from models.retrieval import train_retrieval
    from models.scoring import rank_top_k

    mc = cfg.models
    _, metric_k = parse_metric(mc.promotion_metric)
    k = max(mc.k, metric_k)
    seed = mc.seed
    positives = choose_positives(dataset.interactions, mc.positive_threshold, "config")
    say(f"positives: {positives.reason}")
    prep = prepare(
        cfg, dataset, "temporal", mc.holdout_fraction, positives.threshold, mc.k, seed, say
    )
    data = TrainingData(prep.split.train, dataset.items, positives.threshold)
    task = build_eval_task(data, prep.split.test, seed=seed)
    say(
        f"training on {len(data.interactions)} interactions up to {prep.split.cutoff}; "
        f"holdout: {len(prep.split.test)} interactions, {len(task.users)} users"
    )
    retrieval = train_retrieval(data, mc.retrieval, prep.prior_half_life_days, seed, progress)
    from models.pipeline import ranking_source

    ranking = train_ranking(
        data,
        mc.ranking,
        prep.prior_half_life_days,
        seed,
        space=retrieval.space,
        progress=progress,
        source=ranking_source(data, cfg),
    )
    seconds = {"retrieval": round(retrieval.seconds, 2), "ranking": round(ranking.seconds, 2)}
    metrics: dict[str, dict[str, Any]] = {}
    if len(task.users):
        metrics[RETRIEVAL_NAME] = metrics_for(
            rank_top_k(retrieval, task, k, progress=progress), task, k
        )
        two = TwoStage(retrieval, ranking, mc.ranking.candidates)
        metrics[RANKING_NAME] = metrics_for(rank_top_k(two, task, k, progress=progress), task, k)
        for name, m in metrics.items():
            say(f"  {name:<10} holdout NDCG@{k} {m['ndcg']:.4f}  Recall@{k} {m['recall']:.4f}")
    else:
        say("  the holdout has no scorable users: no metrics, the gate will not promote")
    return TrainedModels(dataset, prep, data, task, retrieval, ranking, metrics, seconds)


def run_training(
    cfg: AttuneConfig,
    dataset: Dataset,
    *,
    publish: bool = True,
    run_gate: bool = True,
    progress: bool = True,
    say: Callable[[str], None] = print,
) -> TrainResult:
    """Train, export, publish and gate both models (see the module docstring)."""
    started = time.monotonic()
    trained = train_models(cfg, dataset, progress=progress, say=say)
    result = TrainResult(dataset.version.as_dict(), trained.metrics, seconds=dict(trained.seconds))
    if not publish:
        result.seconds["total"] = round(time.monotonic() - started, 2)
        return result
    repo = repository(cfg)
    metadata = trained.metadata(cfg)
    for name in MODEL_NAMES:
        result.versions[name] = repo.publish(
            name, partial(trained.export, cfg, name), metadata[name]
        )
    say(
        f"published {RETRIEVAL_NAME} v{result.versions[RETRIEVAL_NAME]} and "
        f"{RANKING_NAME} v{result.versions[RANKING_NAME]} in {repo.root}"
    )
    if run_gate:
        result.decisions = promote(cfg, repo, trained.data, trained.task, result.versions)
    result.seconds["total"] = round(time.monotonic() - started, 2)
    return result


def promote(
    cfg: AttuneConfig,
    repo: ModelRepository,
    data: TrainingData,
    task: EvalTask,
    versions: dict[str, int],
) -> list[Decision]:
    """The promotion gate for the new retrieval and ranking versions (module docstring)."""
    mc = cfg.models
    metric, k = parse_metric(mc.promotion_metric)
    seq = cfg.speed.features.recent_items  # what the online store would pass
    if len(task.users) == 0:
        measure_r: float | None = None
        measure_k: float | None = None
        cand = np.zeros((0, 0), dtype=np.int64)
    else:
        new_r = repo.path(RETRIEVAL_NAME, versions[RETRIEVAL_NAME])
        top, cand = saved_retrieval_top_k(new_r, data, task, k, seq)
        measure_r = _metric(top, task, metric, k)
        cand = cand[:, : mc.ranking.candidates]
        new_k = repo.path(RANKING_NAME, versions[RANKING_NAME])
        measure_k = _metric(saved_ranking_top_k(new_k, data, task, cand, k, seq), task, metric, k)

    def served_retrieval(version: int) -> float | None:
        path = repo.path(RETRIEVAL_NAME, version)
        return _metric(saved_retrieval_top_k(path, data, task, k, seq)[0], task, metric, k)

    def served_ranking(version: int) -> float | None:
        path = repo.path(RANKING_NAME, version)
        return _metric(saved_ranking_top_k(path, data, task, cand, k, seq), task, metric, k)

    return [
        gate(
            repo,
            RETRIEVAL_NAME,
            versions[RETRIEVAL_NAME],
            mc.promotion_metric,
            mc.promotion_margin,
            measure_r,
            served_retrieval,
        ),
        gate(
            repo,
            RANKING_NAME,
            versions[RANKING_NAME],
            mc.promotion_metric,
            mc.promotion_margin,
            measure_k,
            served_ranking,
        ),
    ]


# ----------------------------------------------------------------------------------------
# CLI


def load_training_data(
    cfg: AttuneConfig, args: argparse.Namespace, say: Callable[[str], None] | None = None
) -> Dataset:
    """The gold Delta tables (the version read is recorded), or ``--interactions FILE``;
    ``say``: progress lines while the Delta tables are read (:func:`models.data.load_delta`)."""
    if args.interactions:
        return load_from_args(cfg, args)
    lake = cfg.lake_root.rstrip("/")
    inter = f"{lake}/{cfg.models.training_examples_table}"
    items = f"{lake}/{cfg.models.items_table}"
    from models.data import is_delta_table

    if not is_delta_table(inter):
        raise DataError(
            f"no gold training examples at {inter}: run the nightly batch first, or train from "
            "a file with --interactions FILE --format movietweetings|csv"
        )
    return load_delta(
        cfg, inter, items if is_delta_table(items) else None, limit=args.limit, say=say
    )


def cmd_train(cfg: AttuneConfig, args: argparse.Namespace) -> int:
    """``attune models train``: see the module docstring."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("py4j", "tensorflow", "absl"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        dataset = load_training_data(cfg, args, say=print)
        print(
            f"data: {dataset.version.interactions} ({dataset.version.version}), "
            f"{dataset.version.rows} interactions, {dataset.version.users} users"
        )
        result = run_training(
            cfg,
            dataset,
            publish=not args.no_publish,
            run_gate=not args.no_gate,
            progress=not args.no_progress,
        )
    except (DataError, ValueError) as exc:
        print(f"attune models train: {exc}", file=sys.stderr)
        return 2
    for d in result.decisions:
        print(
            f"gate {d.model} v{d.version}: {'PROMOTED' if d.promoted else 'not promoted'} "
            f"({d.metric} {d.candidate} vs served v{d.served_version} {d.served}): {d.reason}"
        )
    print(f"training time: {result.seconds}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(clean_json(result.as_dict()), indent=2) + "\n")
    return 0
