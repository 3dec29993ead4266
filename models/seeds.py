"""One evaluation per seed, and what holds across them: mean and spread per model and metric.

A single run's NDCG differs from the next run's by the luck of the draw: the user-stratified
split's test users, the TFRS models' initialisation and batches, the sampled users of
``--max-users``. ``attune models evaluate --seeds 42,43,44`` runs the whole evaluation once per
seed (:func:`run_seeds`) and :func:`aggregate` reports, for every model and metric, the mean,
the standard deviation (sample std, ``ddof = 1``; 0 for one seed) and the min-max over the
seeds. A temporal split is the same for every seed, so its baselines do not vary and their
knobs are chosen on validation once.

The comparison the issue targets is on the means: the best entry's mean NDCG (best of the
non-baselines: TFRS models, the served pipeline) over the best baseline's mean NDCG, and the
same for :data:`models.evaluate.HEADLINE_MODEL` (the served pipeline), with the per-seed ratios
(each seed's headline NDCG over that seed's best baseline) as its spread.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np

from attune.config import AttuneConfig
from models.data import Dataset
from models.evaluate import (
    BASELINES,
    HEADLINE_MODEL,
    HEADLINE_TARGET,
    knobs_line,
    run_evaluation,
)
from models.evaluate import format_metric as fmt

# Per-model keys that are not metrics: kept from the first seed, not aggregated.
_NOT_METRICS = frozenset({"kind", "params"})


def parse_seeds(text: str) -> list[int]:
    """``"42,43,44"`` -> ``[42, 43, 44]``; a clear error for anything else."""
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(
            f"--seeds {text!r}: expected comma-separated integers, e.g. --seeds 42,43,44"
        ) from None
    if not seeds:
        raise ValueError("--seeds needs at least one seed, e.g. --seeds 42,43,44")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds {text!r} repeats a seed: each run would be the same")
    return seeds


def spread(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean, sample std (``ddof = 1``, 0 for one value), min and max of the finite values,
    and the values themselves (NaN/None: not measured in that run, left out)."""
    raw = [float("nan") if v is None else float(v) for v in values]
    finite = np.array([v for v in raw if v == v], dtype=np.float64)
    if len(finite) == 0:
        nan = float("nan")
        return {"mean": nan, "std": nan, "min": nan, "max": nan, "values": raw}
    return {
        "mean": float(finite.mean()),
        "std": float(finite.std(ddof=1)) if len(finite) > 1 else 0.0,
        "min": float(finite.min()),
        "max": float(finite.max()),
        "values": raw,
    }


def _aggregate_entry(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """One model's metrics over the seeds it ran in (nested dicts such as ``cold`` too)."""
    out: dict[str, Any] = {}
    first = entries[0]
    for key, value in first.items():
        if key in _NOT_METRICS:
            out[key] = value
        elif isinstance(value, dict):
            out[key] = _aggregate_entry([e.get(key) or {} for e in entries])
        elif isinstance(value, (int, float)) or value is None:
            out[key] = spread([e.get(key) for e in entries])
    return out


def aggregate(reports: list[dict[str, Any]], seeds: Sequence[int]) -> dict[str, Any]:
    """The seeds' reports (one :func:`models.evaluate.run_evaluation` report each) summarized;
    see the module docstring. The per-seed reports are under ``per_seed``."""
    if len(reports) != len(seeds) or not reports:
        raise ValueError("one report per seed is needed")
    names: list[str] = []
    for report in reports:
        names.extend(n for n in report["models"] if n not in names)
    models = {
        name: _aggregate_entry([r["models"][name] for r in reports if name in r["models"]])
        for name in names
    }

    def mean_ndcg(name: str) -> float:
        value = models[name]["ndcg"]["mean"]
        return value if value == value else -1.0

    def best(candidates: list[str]) -> dict[str, Any] | None:
        if not candidates:
            return None
        name = max(candidates, key=mean_ndcg)
        return {"name": name, "ndcg_mean": models[name]["ndcg"]["mean"]}

    best_baseline = best([n for n in names if n in BASELINES])
    best_model = best([n for n in names if n not in BASELINES])
    first = reports[0]
    return {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "seeds": list(seeds),
        "data": first.get("data"),
        "split": {
            "kind": first["split"]["kind"],
            "evaluated_on": first["split"]["evaluated_on"],
        },
        "task": {"users": spread([r["task"]["users"] for r in reports])["mean"]},
        "k": first["k"],
        "positive_threshold": first.get("positive_threshold"),
        "positives": first.get("positives"),
        "models": models,
        "best_baseline": best_baseline,
        "best_model": best_model,
        "ndcg_ratio_best_vs_best_baseline": _ratio(best_model, best_baseline),
        "headline": _headline(models, reports, best_baseline),
        "selected_on_validation": [r.get("selected_on_validation") for r in reports],
        "total_seconds": round(sum(r.get("total_seconds", 0.0) for r in reports), 2),
        "per_seed": reports,
    }


def _ratio(top: dict[str, Any] | None, base: dict[str, Any] | None) -> float | None:
    if (
        top is None
        or base is None
        or not base["ndcg_mean"]
        or base["ndcg_mean"] != base["ndcg_mean"]
    ):
        return None
    return round(top["ndcg_mean"] / base["ndcg_mean"], 4)


def _headline(
    models: dict[str, Any], reports: list[dict[str, Any]], best_baseline: dict[str, Any] | None
) -> dict[str, Any] | None:
    """:data:`HEADLINE_MODEL` against the best baseline (by mean NDCG) over the seeds."""
    if HEADLINE_MODEL not in models or best_baseline is None:
        return None
    mean = models[HEADLINE_MODEL]["ndcg"]["mean"]
    ratio = _ratio({"ndcg_mean": mean}, best_baseline)
    per_seed = []
    for r in reports:
        entry = r["models"].get(HEADLINE_MODEL)
        base = max(
            (
                m["ndcg"]
                for n, m in r["models"].items()
                if n in BASELINES and m["ndcg"] == m["ndcg"]
            ),
            default=None,
        )
        per_seed.append(entry["ndcg"] / base if entry is not None and base else None)
    return {
        "model": HEADLINE_MODEL,
        "ndcg_mean": mean,
        "best_baseline": best_baseline["name"],
        "best_baseline_ndcg_mean": best_baseline["ndcg_mean"],
        "ratio_vs_best_baseline": ratio,
        "ratio_per_seed": spread(per_seed),
        "target": HEADLINE_TARGET,
        "met": ratio is not None and ratio >= HEADLINE_TARGET,
    }


def run_seeds(
    cfg: AttuneConfig,
    dataset: Dataset,
    seeds: Sequence[int],
    say: Callable[[str], None] = print,
    **kwargs: Any,
) -> dict[str, Any]:
    """:func:`models.evaluate.run_evaluation` once per seed (``kwargs`` passed on), then
    :func:`aggregate`. The validation choices are shared between seeds whose validation
    split is the same."""
    from attune.progress import RateEta

    cache: dict[Any, Any] = {}
    reports = []
    # one evaluation takes minutes: a line after each seed, with the ETA of the others
    meter = RateEta("--- seeds", len(seeds), "seeds", say=say, every=0.0, min_seconds=0.0)
    for i, seed in enumerate(seeds):
        say(f"--- seed {seed} ({i + 1} of {len(seeds)})")
        reports.append(
            run_evaluation(cfg, dataset, seed=seed, say=say, selection_cache=cache, **kwargs)
        )
        meter.update(1)
    meter.finish(always=True)
    return aggregate(reports, seeds)


def _pm(entry: dict[str, Any] | None, digits: int = 4) -> str:
    """``mean ± std`` of an aggregated metric; ``-`` when not measured."""
    if not entry or entry.get("mean") is None or entry["mean"] != entry["mean"]:
        return "-"
    return f"{fmt(entry['mean'], digits)} ± {fmt(entry['std'], digits)}"


def format_seeds_table(agg: dict[str, Any]) -> str:
    """The aggregate as a Markdown table of ``mean ± std`` over the seeds."""
    k = agg["k"]
    head = (
        f"| model | NDCG@{k} | Recall@{k} | MAP@{k} | HitRate@{k} | coverage | personalization "
        f"| novelty (bits) | cold Recall@{k} | cold NDCG@{k} | fit s |"
    )
    lines = [head, "|" + "---|" * 11]
    for name, m in agg["models"].items():
        cold = m.get("cold") or {}
        lines.append(
            f"| {name} | {_pm(m.get('ndcg'))} | {_pm(m.get('recall'))} | {_pm(m.get('map'))} | "
            f"{_pm(m.get('hit_rate'))} | {_pm(m.get('coverage'))} | "
            f"{_pm(m.get('personalization'))} | {_pm(m.get('novelty'), 2)} | "
            f"{_pm(cold.get('recall'))} | {_pm(cold.get('ndcg'))} | "
            f"{_pm(m.get('fit_seconds'), 1)} |"
        )
    lines.append("")
    seeds = ", ".join(map(str, agg["seeds"]))
    lines.append(
        f"{agg['split']['kind']} split, evaluated on {agg['split']['evaluated_on']}; mean ± std "
        f"(sample std) over seeds {seeds}; min-max per seed in the JSON report."
    )
    base, top = agg.get("best_baseline"), agg.get("best_model")
    if base:
        ndcg = agg["models"][base["name"]]["ndcg"]
        lines.append(
            f"best baseline: {base['name']} NDCG@{k} {_pm(ndcg)} "
            f"(min {fmt(ndcg['min'])}, max {fmt(ndcg['max'])})"
        )
    if base and top:
        ndcg = agg["models"][top["name"]]["ndcg"]
        lines.append(
            f"best entry: {top['name']} NDCG@{k} {_pm(ndcg)} (min {fmt(ndcg['min'])}, max "
            f"{fmt(ndcg['max'])}); ratio of means "
            f"{fmt(agg['ndcg_ratio_best_vs_best_baseline'], 3)}"
        )
    head_line = agg.get("headline")
    if head_line:
        per = head_line["ratio_per_seed"]
        lines.append(
            f"headline: {head_line['model']} / {head_line['best_baseline']} = "
            f"{fmt(head_line['ratio_vs_best_baseline'], 3)} (per seed {fmt(per['min'], 3)}-"
            f"{fmt(per['max'], 3)}); target {head_line['target']:.2f}: "
            f"{'met' if head_line['met'] else 'NOT met'}"
        )
    knobs = {knobs_line(s or {}) for s in agg.get("selected_on_validation") or []}
    lines.extend(sorted(knobs))
    return "\n".join(lines)
