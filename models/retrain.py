"""The retraining run as separate steps: ``attune models retrain``.

One run lives in a run folder (``--run-dir``, default ``<models.retrain.runs_dir>/<UTC time>``
under the var dir). Each step reads only what earlier steps wrote there and writes its own
``<step>.json``, so every step can run in a fresh process (an Airflow task per step) and the
direct path (all steps in one process, no ``--step``) runs exactly the same code:

``train``
    Reads the gold tables as ``attune models train`` does (Delta, the version read is recorded;
    or ``--interactions FILE``), saves them under ``data/`` (Parquet + ``version.json``, so later
    steps need no Spark), trains retrieval and ranking with :func:`models.train.train_models`
    (the code ``attune models train`` runs) and exports both SavedModels to
    ``candidates/<model>/``, *not* into the repository.
``evaluate``
    Rebuilds the training data and the holdout from ``data/`` (the temporal split is
    deterministic; it must match the one ``train.json`` describes), keeps only the holdout
    interactions the served versions cannot have trained on (:func:`unseen_holdout`, after the
    newest :func:`training_cutoff` of the served versions), and scores on the same users with
    the same exclusions: the candidates and the served versions through their SavedModels (as
    :func:`models.train.promote` does; the ranking models re-rank the new retrieval model's
    candidates) and the popularity and recent-popularity baselines.
``gate``
    :func:`models.repository.decide_with_baseline` per model: beat the served version by
    ``models.promotion_margin`` and reach ``models.gate.min_baseline_ratio`` x the best baseline.
    Nothing is recorded yet.
``publish``
    Each passed candidate becomes a new version in the repository (metadata: training data
    version, parameters, this evaluation) and the served one. Refuses when the served version
    changed since ``evaluate`` (someone promoted or rolled back meanwhile).
``await-serving``
    Polls the model server's status endpoint (TF Serving's ``GET /v1/models/<name>``) until
    every published version is ``AVAILABLE``, for ``models.retrain.serving_timeout_s``.
``smoke``
    A synthetic user gets a holdout user's recent items in the online store (the speed layer's
    write path, :class:`attune.online_store.OnlineStoreWriter`), asks the personalization API
    for recommendations and must get them from the model (``source == "model"``, not degraded).
    The user's keys are deleted afterwards. On failure the previously served versions are
    served again.
``record``
    Appends one decision per model to ``promotions.jsonl`` (:func:`models.repository.record`):
    promoted or not, and why: the gate's reason and what happened after it. Runs whether or not
    the gate passed; recording a run twice is refused (``record.json`` says it was done).

When the gate passes no model, the later steps do nothing and say so.

Exit codes: 0 done; 1 the run failed (a published version did not become available, or the
smoke test failed and the previous versions are served again); 2 a problem the message says how
to fix (an earlier step has not run, no gold data, the model server or the API does not
answer, no read key); 3 the gate passed no model (an Airflow task may map it to "skipped").
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from attune.config import AttuneConfig, ConfigError
from attune.model_repository import ModelRepository, RepositoryError, utc_now, write_json_atomic
from attune.progress import Heartbeat
from models.data import DataError, Dataset, DataVersion, interaction_mask
from models.evaluate import clean_json
from models.repository import Decision, decide_with_baseline, record
from models.train import MODEL_NAMES, RANKING_NAME, RETRIEVAL_NAME, parse_metric, repository

log = logging.getLogger(__name__)

STEPS: tuple[str, ...] = (
    "train",
    "evaluate",
    "gate",
    "publish",
    "await-serving",
    "smoke",
    "record",
)
BASELINES: tuple[str, ...] = ("popularity", "recent-popularity")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NOTHING_PASSED = 0, 1, 2, 3

UNREACHABLE_GRACE_S = 10.0
"""await-serving gives up this soon when the model server never answers at all (a server that
answers but has not loaded the version yet gets ``models.retrain.serving_timeout_s``)."""
POLL_S = 0.5
SMOKE_USER_PREFIX = "attune-smoke-"
"""Raw user id prefix of the smoke test's synthetic users (``<prefix><run folder name>``)."""


class RetrainError(ValueError):
    """A problem the user can fix; the message says how (exit code 2)."""


class RunFailed(RuntimeError):
    """The run failed after publishing (exit code 1); the message says what was done about it."""


# ----------------------------------------------------------------------------------------
# Pure rules


def _utc(value: Any) -> pd.Timestamp:
    ts = pd.Timestamp(value)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def training_cutoff(metadata: dict[str, Any]) -> tuple[pd.Timestamp | None, str]:
    """The newest interaction time a published version may have trained on, and where that
    comes from.

    Its holdout's ``cutoff`` (the newest training interaction) when recorded; else the newest
    interaction of the data it was trained on; else its creation time (a model cannot have
    trained on interactions that happened after it was written). ``(None, ...)`` when the
    metadata has none of them."""
    cutoff = (metadata.get("holdout") or {}).get("cutoff")
    if cutoff:
        return _utc(cutoff), "holdout cutoff"
    max_time = (metadata.get("data") or {}).get("max_time")
    if max_time:
        return _utc(max_time), "newest training data"
    created = metadata.get("created_at")
    if created:
        return _utc(created), "creation time"
    return None, "no cutoff, data or creation time in the metadata"


def unseen_holdout(holdout: pd.DataFrame, cutoff: pd.Timestamp | None) -> pd.DataFrame:
    """The holdout interactions strictly after ``cutoff`` (all of them when there is none):
    those a served version whose training cutoff is ``cutoff`` cannot have trained on."""
    if cutoff is None:
        return holdout
    return holdout[holdout["timestamp"] > cutoff].reset_index(drop=True)


def in_model_order(names: Iterable[str]) -> list[str]:
    """``names`` in :data:`models.train.MODEL_NAMES` order (step files store keys sorted)."""
    order = {name: i for i, name in enumerate(MODEL_NAMES)}
    return sorted(names, key=lambda n: (order.get(n, len(order)), n))


def gate_decisions(
    evaluation: dict[str, Any], margin: float, min_baseline_ratio: float
) -> dict[str, dict[str, Any]]:
    """The gate's decision per model from ``evaluate.json`` (see
    :func:`models.repository.decide_with_baseline`)."""
    out: dict[str, dict[str, Any]] = {}
    unscorable = evaluation.get("unscorable")
    gate_inputs = evaluation["gate_inputs"]
    for name in in_model_order(gate_inputs):
        inputs = gate_inputs[name]
        if unscorable:
            passed, reason = False, unscorable
        else:
            passed, reason = decide_with_baseline(
                inputs.get("candidate"),
                inputs.get("served"),
                margin,
                inputs.get("baseline"),
                min_baseline_ratio,
                inputs.get("baseline_name") or "best baseline",
            )
        out[name] = {
            **inputs,
            "passed": passed,
            "reason": reason,
            "metric": evaluation["metric"],
            "margin": margin,
            "min_baseline_ratio": min_baseline_ratio,
        }
    return out


def smoke_history(interactions: pd.DataFrame, user: str, n: int) -> list[list[Any]]:
    """``user``'s last ``n`` distinct interacted items, most recent first, as
    ``[item_id, event time ms, event type]`` (what the online store would hold for them)."""
    mine = interactions[interaction_mask(interactions) & (interactions["user_id"] == user)]
    latest = mine.drop_duplicates("item_id", keep="last").tail(n).iloc[::-1]
    return [
        [str(item), int(pd.Timestamp(ts).value // 1_000_000), str(etype)]
        for item, ts, etype in zip(
            latest["item_id"], latest["timestamp"], latest["event_type"], strict=True
        )
    ]


def smoke_rows(
    user: str, history: Sequence[Sequence[Any]], run_id: str
) -> list[tuple[str, int, str, str]]:
    """``history`` as rows for :meth:`attune.online_store.OnlineStoreWriter.apply`: recent-item
    updates only (``"r": 1``), so the smoke user touches no popularity, trending or counters."""
    rows = []
    for n, (item, t_ms, etype) in enumerate(history):
        iid = f"{SMOKE_USER_PREFIX}{run_id}-{n}#0"
        payload = {"i": iid, "t": int(t_ms), "y": etype, "it": item, "r": 1}
        rows.append((user, int(t_ms), iid, json.dumps(payload, separators=(",", ":"))))
    return rows


def version_state(body: str, version: int) -> tuple[str | None, str]:
    """``(state, error message)`` of ``version`` in a TF Serving GetModelStatus JSON body;
    state ``None`` when the body does not list the version."""
    try:
        statuses = json.loads(body).get("model_version_status") or []
    except (ValueError, AttributeError):
        return None, ""
    for status in statuses:
        if str(status.get("version")) == str(version):
            error = (status.get("status") or {}).get("error_message") or ""
            return str(status.get("state")), error
    return None, ""


def final_decisions(
    gate: dict[str, Any],
    publish: dict[str, Any] | None,
    await_serving: dict[str, Any] | None,
    smoke: dict[str, Any] | None,
    served_now: dict[str, int | None],
    details: dict[str, Any],
    decided_at: str,
) -> list[Decision]:
    """The decision to record per model: promoted when the gate passed it, it was published
    and it is still the served version; the reason tells the whole story (gate, publication,
    model server, smoke test)."""
    out = []
    for name in in_model_order(gate["models"]):
        g = gate["models"][name]
        published = (publish or {}).get(name)
        version = published["version"] if published else None
        parts = [f"gate: {g['reason']}"]
        if g["passed"] and published is None:
            parts.append("the publish step did not run")
        if published is not None:
            parts.append(f"published v{version} (served before: v{published['previous_served']})")
            if await_serving is None:
                parts.append("the model server's pick-up was not checked")
            elif await_serving.get("ok"):
                secs = (await_serving.get("models") or {}).get(name, {}).get("seconds")
                parts.append(f"AVAILABLE on the model server after {secs} s")
            elif await_serving.get("ok") is False:
                parts.append(f"model server: {await_serving.get('error')}")
            if smoke is None:
                parts.append("smoke test not run")
            elif smoke.get("ok"):
                parts.append(f"smoke test passed ({smoke.get('latency_ms')} ms)")
            elif smoke.get("ok") is False:
                back = (smoke.get("rolled_back") or {}).get(name) or {}
                parts.append(
                    f"smoke test failed: {smoke.get('error')}; served again: v{back.get('to')}"
                )
            if served_now.get(name) != version and not (smoke and smoke.get("ok") is False):
                parts.append(f"v{version} is no longer served (now v{served_now.get(name)})")
        promoted = published is not None and served_now.get(name) == version
        out.append(
            Decision(
                model=name,
                version=version,
                promoted=promoted,
                metric=g["metric"],
                candidate=g.get("candidate"),
                served_version=g.get("served_version"),
                served=g.get("served"),
                margin=g["margin"],
                reason="; ".join(parts),
                decided_at=decided_at,
                baseline=g.get("baseline"),
                baseline_name=g.get("baseline_name"),
                min_baseline_ratio=g.get("min_baseline_ratio"),
                details={**details, "gate_passed": g["passed"]},
            )
        )
    return out


# ----------------------------------------------------------------------------------------
# The run folder


@dataclass
class Run:
    """One retraining run: its folder, the configuration and how it reports progress."""

    cfg: AttuneConfig
    dir: Path
    progress: bool = True
    say: Callable[[str], None] = print
    args: argparse.Namespace | None = None

    @property
    def run_id(self) -> str:
        return self.dir.name

    def path(self, step: str) -> Path:
        return self.dir / f"{step}.json"

    def done(self, step: str) -> bool:
        return self.path(step).exists()

    def read(self, step: str) -> dict[str, Any]:
        path = self.path(step)
        if not path.exists():
            raise RetrainError(
                f"the {step} step has not run in {self.dir} (no {path.name}): run "
                f"`attune models retrain --run-dir {self.dir} --step {step}` first"
            )
        loaded: dict[str, Any] = json.loads(path.read_text())
        return loaded

    def read_optional(self, step: str) -> dict[str, Any] | None:
        return self.read(step) if self.done(step) else None

    def write(self, step: str, payload: dict[str, Any]) -> dict[str, Any]:
        self.dir.mkdir(parents=True, exist_ok=True)
        cleaned: dict[str, Any] = clean_json(payload)
        write_json_atomic(self.path(step), cleaned)
        return cleaned

    def start(self, step: str) -> None:
        """Before ``step`` runs: what later steps wrote came from the previous attempt, so it is
        removed; once this run has published, its train, evaluate and gate steps cannot run
        again (the published versions came from them)."""
        if step not in ("train", "evaluate", "gate"):
            return
        published = self.done("publish") and bool(self.read("publish"))
        if published or self.done("record"):
            raise RetrainError(
                f"this run ({self.dir}) has published or recorded already: its {step} step "
                "cannot run again; start a new run (another --run-dir)"
            )
        for later in STEPS[STEPS.index(step) + 1 :]:
            self.path(later).unlink(missing_ok=True)

    @property
    def data_dir(self) -> Path:
        return self.dir / "data"

    def candidate(self, name: str) -> Path:
        return self.dir / "candidates" / name


def save_dataset(dataset: Dataset, folder: Path) -> None:
    """``dataset`` as ``interactions.parquet`` and ``items.parquet`` (the contract's schemas)
    plus ``version.json``; :func:`load_saved_dataset` reads it back unchanged."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from models.data import interaction_schema, item_schema

    folder.mkdir(parents=True, exist_ok=True)
    inter = pa.Table.from_pandas(
        dataset.interactions, schema=interaction_schema(), preserve_index=False
    )
    items = dataset.items.assign(genres=dataset.items["genres"].map(list))
    pq.write_table(inter, folder / "interactions.parquet")
    pq.write_table(
        pa.Table.from_pandas(items, schema=item_schema(), preserve_index=False),
        folder / "items.parquet",
    )
    write_json_atomic(folder / "version.json", dataset.version.as_dict())


def load_saved_dataset(folder: Path) -> Dataset:
    """The dataset :func:`save_dataset` wrote into ``folder``."""
    import pyarrow.parquet as pq

    from models.data import complete_items, conform_interactions, conform_items

    if not (folder / "version.json").exists():
        raise RetrainError(f"{folder} holds no training data: run the train step first")
    inter = conform_interactions(
        pq.read_table(folder / "interactions.parquet").to_pandas(), str(folder)
    )
    items = conform_items(pq.read_table(folder / "items.parquet").to_pandas(), str(folder))
    version = DataVersion(**json.loads((folder / "version.json").read_text()))
    return Dataset(inter, complete_items(items, inter), version)


def served_version(repo: ModelRepository, name: str) -> int | None:
    """The version of ``name`` the model server serves: the promoted one (``serving.json``),
    else its latest version; ``None`` when nothing is published."""
    version = repo.served_version(name)
    if version is None:
        versions = repo.versions(name)
        version = versions[-1] if versions else None
    return version


def _seconds(started: float) -> float:
    return round(time.monotonic() - started, 2)


# ----------------------------------------------------------------------------------------
# Steps


def step_train(run: Run) -> dict[str, Any]:
    """Load the gold data, save it under ``data/``, train, export to ``candidates/``."""
    from models.train import load_training_data, train_models

    cfg, say = run.cfg, run.say
    started = time.monotonic()
    args = run.args or argparse.Namespace(interactions=None, limit=None)
    dataset = load_training_data(cfg, args, say=lambda line: say(f"train: {line}"))
    v = dataset.version
    say(
        f"train: data {v.version}: {v.rows} interactions, {v.users} users, {v.items_count} "
        f"items ({_seconds(started)} s)"
    )
    t0 = time.monotonic()
    if run.data_dir.exists():
        shutil.rmtree(run.data_dir)
    save_dataset(dataset, run.data_dir)
    say(f"train: saved the data to {run.data_dir} ({_seconds(t0)} s)")
    trained = train_models(
        cfg, dataset, progress=run.progress, say=lambda line: say(f"train: {line.strip()}")
    )
    say(
        f"train: trained {RETRIEVAL_NAME} in {trained.seconds[RETRIEVAL_NAME]} s, "
        f"{RANKING_NAME} in {trained.seconds[RANKING_NAME]} s"
    )
    t0 = time.monotonic()
    for name in MODEL_NAMES:
        target = run.candidate(name)
        tmp = target.with_name(f".tmp-{name}")
        for old in (tmp, target):
            if old.exists():
                shutil.rmtree(old)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        trained.export(cfg, name, tmp)
        tmp.rename(target)
    export_s = _seconds(t0)
    say(f"train: exported {', '.join(MODEL_NAMES)} to {run.dir / 'candidates'} ({export_s} s)")
    split = trained.prep.split
    return run.write(
        "train",
        {
            "data": v.as_dict(),
            "holdout": split.describe(),
            "seed": cfg.models.seed,
            "positive_threshold": trained.data.positive_threshold,
            "prior_half_life_days": trained.prep.prior_half_life_days,
            "params": {
                "retrieval": cfg.models.retrieval.model_dump(),
                "ranking": cfg.models.ranking.model_dump(),
            },
            "metrics_in_memory": trained.metrics,
            "metadata": trained.metadata(cfg),
            "candidates": {name: str(run.candidate(name)) for name in MODEL_NAMES},
            "seconds": {**trained.seconds, "export": export_s, "total": _seconds(started)},
        },
    )


def step_evaluate(run: Run) -> dict[str, Any]:
    """Score candidates, served versions and baselines on the holdout the served versions did
    not train on."""
    from models.baselines import Popularity
    from models.features import TrainingData
    from models.metrics import summarize
    from models.scoring import build_eval_task, metrics_for, rank_top_k
    from models.splits import make_split
    from models.train import saved_ranking_top_k, saved_retrieval_top_k

    cfg, say = run.cfg, run.say
    mc = cfg.models
    started = time.monotonic()
    train = run.read("train")
    dataset = load_saved_dataset(run.data_dir)
    if dataset.version.version != train["data"]["version"]:
        raise RetrainError(
            f"{run.data_dir} holds data {dataset.version.version}, but train.json says "
            f"{train['data']['version']}: run the train step again"
        )
    holdout = train["holdout"]
    split = make_split(
        holdout["kind"], dataset.interactions, holdout["test_fraction"], train["seed"]
    )
    rebuilt = split.describe()
    if (rebuilt["train_rows"], rebuilt["cutoff"]) != (holdout["train_rows"], holdout["cutoff"]):
        raise RetrainError(
            f"the holdout rebuilt from {run.data_dir} ({rebuilt}) is not the one the train step "
            f"used ({holdout}): run the train step again"
        )
    threshold = train["positive_threshold"]
    data = TrainingData(split.train, dataset.items, threshold)
    repo = repository(cfg)
    served = {name: served_version(repo, name) for name in MODEL_NAMES}
    cutoffs: dict[str, Any] = {}
    newest: pd.Timestamp | None = None
    for name, version in served.items():
        if version is None:
            continue
        cutoff, source = training_cutoff(repo.metadata(name, version))
        if cutoff is None:
            raise RetrainError(
                f"cannot tell what {name} v{version} trained on ({source}): its metadata in "
                f"{repo.path(name, version)} needs a holdout cutoff or a creation time"
            )
        cutoffs[name] = {"version": version, "cutoff": str(cutoff), "from": source}
        newest = cutoff if newest is None else max(newest, cutoff)
    unseen = unseen_holdout(split.test, newest)
    seed = train["seed"]
    task = build_eval_task(data, unseen, seed=seed)
    metric, metric_k = parse_metric(mc.promotion_metric)
    k = max(mc.k, metric_k)
    holdout_info = {
        **holdout,
        "rows": len(split.test),
        "served_training_cutoffs": cutoffs,
        "unseen_after": str(newest) if newest is not None else None,
        "unseen_rows": len(unseen),
        "task": task.describe(),
    }
    say(
        f"evaluate: holdout {len(split.test)} interactions after {split.cutoff}; "
        + (
            f"{len(unseen)} after the served versions' training cutoff {newest}; "
            if newest is not None
            else "nothing served yet; "
        )
        + f"{len(task.users)} users to score ({_seconds(started)} s)"
    )
    report: dict[str, Any] = {
        "metric": mc.promotion_metric,
        "k": k,
        "holdout": holdout_info,
        "served": served,
        "models": {},
        "baselines": {},
        "gate_inputs": {},
        "unscorable": None,
    }
    if len(task.users) == 0:
        why = (
            "no holdout interaction is newer than what the served versions trained on "
            f"(cutoff {newest}): nothing unseen to compare on"
            if newest is not None and len(unseen) == 0
            else "no holdout user has training history and a positive unseen interaction: "
            "nothing to compare on"
        )
        report["unscorable"] = why
        report["gate_inputs"] = {
            name: {"candidate": None, "served_version": served[name], "served": None}
            for name in MODEL_NAMES
        }
        say(f"evaluate: {why}; the gate will not promote")
        report["seconds"] = {"total": _seconds(started)}
        return run.write("evaluate", report)

    seq = cfg.speed.features.recent_items  # what the online store passes to the model server

    def measured(top: np.ndarray, seconds: float) -> dict[str, Any]:
        m = metrics_for(top, task, k)
        m["gate_value"] = float(summarize(top, task.relevant, metric_k)[metric])
        m["seconds"] = seconds
        return m

    t0 = time.monotonic()
    top, cand = saved_retrieval_top_k(run.candidate(RETRIEVAL_NAME), data, task, k, seq)
    cand = cand[:, : mc.ranking.candidates]
    models: dict[str, dict[str, Any]] = {RETRIEVAL_NAME: {}, RANKING_NAME: {}}
    models[RETRIEVAL_NAME]["candidate"] = measured(top, _seconds(t0))
    t0 = time.monotonic()
    top = saved_ranking_top_k(run.candidate(RANKING_NAME), data, task, cand, k, seq)
    models[RANKING_NAME]["candidate"] = measured(top, _seconds(t0))
    for name in MODEL_NAMES:
        version = served[name]
        if version is None:
            models[name]["served"] = None
            continue
        t0 = time.monotonic()
        path = repo.path(name, version)
        if name == RETRIEVAL_NAME:
            top = saved_retrieval_top_k(path, data, task, k, seq)[0]
        else:
            top = saved_ranking_top_k(path, data, task, cand, k, seq)
        models[name]["served"] = {"version": version, **measured(top, _seconds(t0))}
    baselines: dict[str, dict[str, Any]] = {}
    for model in (Popularity(), Popularity(train["prior_half_life_days"])):
        t0 = time.monotonic()
        model.fit(data)
        top = rank_top_k(model, task, k, progress=run.progress)
        baselines[model.name] = measured(top, _seconds(t0))
    best = max(BASELINES, key=lambda b: _finite(baselines[b]["gate_value"]))
    report["models"] = models
    report["baselines"] = baselines
    report["gate_inputs"] = {
        name: {
            "candidate": models[name]["candidate"]["gate_value"],
            "served_version": served[name],
            "served": (models[name]["served"] or {}).get("gate_value"),
            "baseline": baselines[best]["gate_value"],
            "baseline_name": best,
        }
        for name in MODEL_NAMES
    }
    first = str(task.users[0])
    report["smoke"] = {"history": smoke_history(data.interactions, first, seq)}
    report["seconds"] = {"total": _seconds(started)}
    for line in format_evaluation(report).splitlines():
        say(f"evaluate: {line}")
    return run.write("evaluate", report)


def _finite(value: Any) -> float:
    return float(value) if value is not None and value == value else -1.0


def format_evaluation(report: dict[str, Any]) -> str:
    """``evaluate.json``'s numbers as a table: candidates, served versions, baselines."""
    k, metric = report["k"], report["metric"]
    lines = [
        f"| model | gate: {metric} | NDCG@{k} | Recall@{k} | MAP@{k} | HitRate@{k} | coverage "
        "| s |",
        "|" + "---|" * 8,
    ]

    def row(label: str, m: dict[str, Any]) -> None:
        lines.append(
            f"| {label} | {_fmt(m['gate_value'])} | {_fmt(m['ndcg'])} | {_fmt(m['recall'])} | "
            f"{_fmt(m['map'])} | {_fmt(m['hit_rate'])} | {_fmt(m['coverage'])} | "
            f"{m['seconds']:.1f} |"
        )

    for name, entry in report["models"].items():
        row(f"{name} candidate", entry["candidate"])
        if entry.get("served"):
            row(f"{name} served v{entry['served']['version']}", entry["served"])
    for name, m in report["baselines"].items():
        row(name, m)
    task = report["holdout"]["task"]
    lines.append(
        f"{task['users']} holdout users, {task['catalog_items']} items; ranking re-ranks the "
        "candidate retrieval model's candidates"
    )
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    return "-" if value is None or value != value else f"{float(value):.4f}"


def step_gate(run: Run) -> dict[str, Any]:
    """Decide per model; nothing is recorded or published here."""
    mc = run.cfg.models
    evaluation = run.read("evaluate")
    decisions = gate_decisions(evaluation, mc.promotion_margin, mc.gate.min_baseline_ratio)
    for name, d in decisions.items():
        verdict = "passed" if d["passed"] else "not promoted"
        run.say(f"gate: {name} {verdict}: {d['reason']}")
    passed = [name for name, d in decisions.items() if d["passed"]]
    if not passed:
        run.say("gate: no model passed; the served versions stay")
    return run.write(
        "gate",
        {
            "metric": evaluation["metric"],
            "margin": mc.promotion_margin,
            "min_baseline_ratio": mc.gate.min_baseline_ratio,
            "models": decisions,
            "passed": passed,
            "decided_at": utc_now(),
        },
    )


def step_publish(run: Run) -> dict[str, Any]:
    """Publish each passed candidate as a new version and serve it (idempotent: a model this
    run already published is not published again)."""
    gate = run.read("gate")
    done: dict[str, Any] = run.read_optional("publish") or {}
    if not gate["passed"]:
        run.say("publish: the gate passed no model: nothing to publish")
        return run.write("publish", done)
    train = run.read("train")
    evaluation = run.read("evaluate")
    repo = repository(run.cfg)
    for name in gate["passed"]:
        if name in done:
            run.say(f"publish: {name} v{done[name]['version']} was published by this run already")
            continue
        started = time.monotonic()
        decision = gate["models"][name]
        current = served_version(repo, name)
        if current != decision["served_version"]:
            raise RetrainError(
                f"the served {name} version is v{current} now, not v{decision['served_version']} "
                "as when this run evaluated (someone promoted or rolled back meanwhile): run the "
                "evaluate and gate steps again"
            )
        source = run.candidate(name)
        if not (source / "saved_model.pb").exists():
            raise RetrainError(f"{source} holds no SavedModel: run the train step again")
        metadata = {
            **train["metadata"][name],
            "evaluation": {
                "metric": evaluation["metric"],
                "holdout": evaluation["holdout"],
                "candidate": evaluation["models"][name]["candidate"],
                "served": evaluation["models"][name].get("served"),
                "baselines": evaluation["baselines"],
            },
            "gate": decision,
            "retrain_run": str(run.dir),
        }
        version = repo.publish(name, partial(_copy_tree, source), metadata)
        repo.set_served(
            name,
            version,
            {
                "metric": decision["metric"],
                "value": decision["candidate"],
                "promoted_at": utc_now(),
                "retrain_run": str(run.dir),
                "previous_version": current,
            },
        )
        done[name] = {"version": version, "previous_served": current}
        run.write("publish", done)  # after each model: a re-run never publishes one twice
        run.say(
            f"publish: {name} v{version} published and served (before: v{current}) in "
            f"{repo.root} ({_seconds(started)} s)"
        )
    return run.write("publish", done)


def _copy_tree(source: Path, target: Path) -> None:
    shutil.copytree(source, target)


def model_server_url(cfg: AttuneConfig) -> str:
    """The model server's REST API as the API reaches it (``api.model_server.rest_url``), else
    ``serving.host:serving.rest_port``."""
    from attune.supervisor import local_url

    url = cfg.api.model_server.rest_url or local_url(cfg.serving.host, cfg.serving.rest_port)
    return url.rstrip("/")


def step_await_serving(run: Run) -> dict[str, Any]:
    """Wait until the model server reports every published version AVAILABLE."""
    from attune.supervisor import NoAnswer, http_get

    published = run.read("publish")
    if not published:
        run.say("await-serving: nothing was published: nothing to wait for")
        return run.write("await-serving", {"ok": None, "models": {}})
    url = model_server_url(run.cfg)
    timeout = run.cfg.models.retrain.serving_timeout_s
    started = time.monotonic()
    pending = dict(published)
    states: dict[str, dict[str, Any]] = {
        name: {"version": p["version"], "state": None} for name, p in published.items()
    }
    answered = False
    last_error = ""

    def fail(message: str, error: type[Exception]) -> Exception:
        run.write("await-serving", {"ok": False, "url": url, "models": states, "error": message})
        return error(message)

    # a wait, not countable work: no ETA; every 10 s the elapsed time and how many are up
    beat = Heartbeat(
        "await-serving",
        run.say,
        every=10.0,
        detail=lambda: (
            f"{len(published) - len(pending)}/{len(published)} model(s) AVAILABLE at {url}; "
            f"gives up after {timeout:.0f} s"
        ),
    )
    with beat:
        while pending:
            for name in list(pending):
                version = pending[name]["version"]
                try:
                    status, body = http_get(f"{url}/v1/models/{name}")
                except NoAnswer as exc:
                    last_error = str(exc)
                    continue
                answered = True
                state, error = version_state(body, version) if status == 200 else (None, "")
                states[name]["state"] = state or f"HTTP {status}"
                if state == "AVAILABLE":
                    states[name]["seconds"] = _seconds(started)
                    run.say(
                        f"await-serving: {name} v{version} AVAILABLE at {url} "
                        f"({_seconds(started)} s)"
                    )
                    del pending[name]
                elif state == "END" and error:
                    raise fail(
                        f"the model server could not load {name} v{version}: {error}", RunFailed
                    )
            if not pending:
                break
            elapsed = time.monotonic() - started
            if not answered and elapsed > min(UNREACHABLE_GRACE_S, timeout):
                raise fail(
                    f"the model server at {url} does not answer ({last_error}): start it with "
                    "`attune serve models`",
                    RetrainError,
                )
            if elapsed > timeout:
                waiting = ", ".join(
                    f"{n} v{p['version']} ({states[n]['state']})" for n, p in pending.items()
                )
                raise fail(
                    f"not AVAILABLE at {url} after {timeout:.0f} s "
                    f"(models.retrain.serving_timeout_s): {waiting}; the repository serves them: "
                    "run this step again, or roll back with `attune models rollback`",
                    RunFailed,
                )
            time.sleep(POLL_S)
    return run.write(
        "await-serving",
        {"ok": True, "url": url, "models": states, "seconds": _seconds(started)},
    )


def _read_key(cfg: AttuneConfig) -> str:
    """The smoke test's API read key (``models.retrain.smoke_read_key``). The API's read-key
    file holds only digests, so the smoke test keeps its plain key in its own 0600 client file
    and creates (or rotates) the key when that file is missing; the API reads the same
    read-keys file and finds a new key within a second."""
    from attune.secrets import client_key

    return client_key(
        cfg.paths.resolve(cfg.api.read_keys_file), "read", cfg.models.retrain.smoke_read_key
    )


def _read_key_client_file(cfg: AttuneConfig) -> Path:
    from attune.secrets import client_key_path

    path = cfg.paths.resolve(cfg.api.read_keys_file)
    return client_key_path(path, cfg.models.retrain.smoke_read_key)


def api_url(cfg: AttuneConfig) -> str:
    from attune.supervisor import local_url

    return local_url(cfg.api.host, cfg.api.port)


def step_smoke(run: Run) -> dict[str, Any]:
    """A recommendation request through the API for a synthetic user seeded with a holdout
    user's recent items must be answered by the model; else serve the previous versions."""
    import redis

    from attune.online_store import OnlineStore, OnlineStoreWriter, delete_user
    from attune.redis_connect import connect
    from attune.secrets import Pseudonymizer, pseudonym_key

    cfg, say = run.cfg, run.say
    published = run.read("publish")
    if not published:
        say("smoke: nothing was published: nothing to test")
        return run.write("smoke", {"ok": None})
    repo = repository(cfg)
    moved = {n: served_version(repo, n) for n, p in published.items()}
    moved = {n: v for n, v in moved.items() if v != published[n]["version"]}
    if moved:
        raise RunFailed(
            "no longer served: "
            + ", ".join(f"{n} v{published[n]['version']} (now v{v})" for n, v in moved.items())
        )
    history = (run.read("evaluate").get("smoke") or {}).get("history") or []
    if not history:
        raise RetrainError("evaluate.json has no holdout user history to seed the smoke test")
    read_key = _read_key(cfg)
    url = api_url(cfg)
    store = OnlineStore.from_config(cfg)
    raw_user = f"{SMOKE_USER_PREFIX}{run.run_id}"
    user = Pseudonymizer(pseudonym_key(cfg))(raw_user)
    client = connect(cfg.redis)
    result: dict[str, Any] = {"api": url, "user": raw_user, "seeded_items": len(history)}
    started = time.monotonic()
    try:
        try:
            delete_user(client, user, store)
            stats = OnlineStoreWriter(client, store).apply(smoke_rows(user, history, run.run_id))
        except redis.exceptions.ConnectionError as exc:
            raise RetrainError(
                f"Redis at {cfg.redis.host}:{cfg.redis.port} does not answer ({exc}): start the "
                "stack with `attune stack up`"
            ) from exc
        say(f"smoke: seeded {stats.applied} recent items of a holdout user for {raw_user}")
        # A freshly loaded model's first predictions can miss the API's time budget (and trip
        # its breaker for its reset time): ask once a second until the model answers or the
        # window ends; the attempts are recorded.
        deadline = time.monotonic() + cfg.models.retrain.smoke_window_s
        attempts = 0
        while True:
            attempts += 1
            response, problem, latency_ms = _smoke_request(cfg, url, raw_user, read_key)
            result.update(latency_ms=latency_ms, attempts=attempts)
            if response is not None:
                body = _json_body(response)
                result.update(
                    status=response.status_code,
                    source=body.get("source"),
                    degraded=body.get("degraded"),
                    variant=body.get("variant"),
                    items=len(body.get("items") or []),
                    server_timing=response.headers.get("server-timing"),
                )
                problem = smoke_problem(response.status_code, body)
            if problem is None or time.monotonic() >= deadline:
                break
            time.sleep(1.0)
    finally:
        try:
            delete_user(client, user, store)
        except redis.exceptions.RedisError as exc:  # the keys expire with user_ttl anyway
            log.warning("smoke: could not delete the smoke user's keys: %s", exc)
        client.close()
    if problem is None:
        say(
            f"smoke: {result['items']} items from the model (variant {result['variant']}) in "
            f"{result['latency_ms']} ms (attempt {result['attempts']}); the smoke user's keys "
            f"deleted ({_seconds(started)} s)"
        )
        return run.write("smoke", {**result, "ok": True})
    rolled_back: dict[str, Any] = {}
    for name, p in published.items():
        previous = p["previous_served"]
        if previous is None:
            rolled_back[name] = {"from": p["version"], "to": None}
            continue
        repo.set_served(
            name,
            previous,
            {"rolled_back_from": p["version"], "reason": f"smoke test: {problem}", "at": utc_now()},
        )
        rolled_back[name] = {"from": p["version"], "to": previous}
    back = ", ".join(
        f"{n} v{r['to']}" if r["to"] is not None else f"{n}: no previous version to go back to"
        for n, r in rolled_back.items()
    )
    run.write("smoke", {**result, "ok": False, "error": problem, "rolled_back": rolled_back})
    raise RunFailed(f"smoke test failed: {problem}; served again: {back}")


def _smoke_request(
    cfg: AttuneConfig, url: str, raw_user: str, read_key: str
) -> tuple[Any, str | None, float]:
    """One recommendation request of the smoke test: (response or None, problem, ms)."""
    import httpx

    problem: str | None = None
    response = None
    t0 = time.perf_counter()
    try:
        response = httpx.post(
            f"{url}/v1/recommendations",
            json={"user_id": raw_user, "k": cfg.models.k},
            headers={"Authorization": f"Bearer {read_key}"},
            timeout=cfg.models.retrain.smoke_timeout_s,
        )
    except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
        raise RetrainError(
            f"the personalization API at {url} does not answer ({exc}): start it with "
            "`attune serve api`"
        ) from exc
    except httpx.HTTPError as exc:
        timeout = cfg.models.retrain.smoke_timeout_s
        problem = f"no answer from {url} within {timeout} s (models.retrain.smoke_timeout_s)"
        problem += f": {type(exc).__name__}"
    if response is not None and response.status_code in (401, 403):
        name = cfg.models.retrain.smoke_read_key
        raise RetrainError(
            f"the API at {url} refused the read key {name!r} ({response.status_code}): the "
            "API must read the read-keys file this job writes (api.read_keys_file); delete "
            f"the client file {_read_key_client_file(cfg)} to create the key again"
        )
    return response, problem, round((time.perf_counter() - t0) * 1000, 1)


def _json_body(response: Any) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def smoke_problem(status: int, body: dict[str, Any]) -> str | None:
    """What is wrong with the smoke test's answer, or ``None`` when the model answered."""
    if status != 200:
        return f"HTTP {status}: {str(body)[:200]}"
    if body.get("source") != "model":
        return f"the API answered from {body.get('source')!r}, not the model" + (
            f" ({body['degraded']})" if body.get("degraded") else ""
        )
    if body.get("degraded"):
        return f"the model answer was degraded: {body['degraded']}"
    if not body.get("items"):
        return "the model answered with no items"
    return None


def step_record(run: Run) -> dict[str, Any]:
    """Append this run's decisions to ``promotions.jsonl`` (once per run)."""
    if run.done("record"):
        previous = run.read("record")
        run.say(f"record: this run was recorded already at {previous.get('recorded_at')}")
        return previous
    gate = run.read("gate")
    train = run.read("train")
    repo = repository(run.cfg)
    decisions = final_decisions(
        gate,
        run.read_optional("publish"),
        run.read_optional("await-serving"),
        run.read_optional("smoke"),
        {name: served_version(repo, name) for name in gate["models"]},
        {"retrain_run": str(run.dir), "data_version": train["data"]["version"]},
        gate["decided_at"],
    )
    for d in decisions:
        record(repo, d)
        verdict = f"promoted v{d.version}" if d.promoted else "not promoted"
        run.say(f"record: {d.model} {verdict}: {d.reason}")
    return run.write(
        "record",
        {
            "recorded_at": utc_now(),
            "promotions": str(repo.root / "promotions.jsonl"),
            "decisions": [d.as_dict() for d in decisions],
        },
    )


STEP_FUNCTIONS: dict[str, Callable[[Run], dict[str, Any]]] = {
    "train": step_train,
    "evaluate": step_evaluate,
    "gate": step_gate,
    "publish": step_publish,
    "await-serving": step_await_serving,
    "smoke": step_smoke,
    "record": step_record,
}


# ----------------------------------------------------------------------------------------
# The run


def ordered_steps(steps: Iterable[str] | None) -> list[str]:
    """``steps`` in run order (all of them when ``None``/empty); unknown names are an error."""
    wanted = list(steps or STEPS)
    unknown = [s for s in wanted if s not in STEPS]
    if unknown:
        raise RetrainError(f"unknown step {unknown[0]!r}: expected some of {', '.join(STEPS)}")
    return [s for s in STEPS if s in wanted]


def default_run_dir(cfg: AttuneConfig, now: datetime | None = None) -> Path:
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    return cfg.paths.resolve(cfg.models.retrain.runs_dir) / stamp


def run_steps(
    cfg: AttuneConfig,
    run_dir: Path,
    steps: Iterable[str] | None = None,
    *,
    args: argparse.Namespace | None = None,
    progress: bool = True,
    say: Callable[[str], None] = print,
) -> tuple[int, dict[str, Any]]:
    """Run ``steps`` (default: all) of the run in ``run_dir``; returns the exit code (module
    docstring) and each step's output. :class:`RetrainError` (and the data errors) propagate.

    When ``await-serving`` or ``smoke`` fails, the later steps are skipped except ``record``,
    which records the failure."""
    run = Run(cfg, Path(run_dir), progress, say, args)
    results: dict[str, Any] = {}
    failure: RunFailed | None = None
    for step in ordered_steps(steps):
        if failure is not None and step != "record":
            say(f"{step}: skipped after the failure above")
            continue
        try:
            run.start(step)
            results[step] = STEP_FUNCTIONS[step](run)
        except RunFailed as exc:
            failure = exc
            say(f"{step}: FAILED: {exc}")
    if failure is not None:
        return EXIT_FAILED, results
    if "gate" in results and not results["gate"]["passed"]:
        return EXIT_NOTHING_PASSED, results
    return EXIT_OK, results


def cmd_retrain(cfg: AttuneConfig, args: argparse.Namespace) -> int:
    """``attune models retrain``: see the module docstring."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("py4j", "tensorflow", "absl"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    out = sys.stderr if args.json else sys.stdout

    def say(line: str) -> None:
        print(line, file=out, flush=True)

    try:
        steps = ordered_steps(args.step)
        if args.run_dir:
            run_dir = Path(args.run_dir).absolute()
        elif steps[0] == "train":
            run_dir = default_run_dir(cfg)
        else:
            raise RetrainError(
                f"--step {steps[0]} needs --run-dir DIR: the run folder its train step wrote"
            )
        say(f"retrain: run folder {run_dir}; steps: {', '.join(steps)}")
        code, results = run_steps(
            cfg, run_dir, steps, args=args, progress=not args.no_progress, say=say
        )
    except (DataError, ValueError, RepositoryError, ConfigError) as exc:
        print(f"attune models retrain: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print(json.dumps({"run_dir": str(run_dir), "exit_code": code, "steps": results}, indent=2))
    return code
