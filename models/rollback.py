"""``attune models rollback``: serve an earlier published version again, by hand.

Which version of a model is served is ``serving.json`` (:mod:`attune.model_repository`);
how it got there is ``promotions.jsonl`` (:mod:`models.repository`): every decision that made a
version the served one (the promotion gate, a retraining run, an earlier rollback) has
``promoted: true``. Read in order, those decisions are the model's *served history*.

Without ``--to``, a rollback serves the version that was served before the current one: walking
back through the served history from the last time the current version became served, the first
other version (:func:`previous_served`). Like ``kubectl rollout undo``, rolling back twice
returns to where it started; ``--to VERSION`` goes anywhere else. With ``--to``, any published
version may be served.

A rollback is refused, changing nothing, when the version is not published (any more), when
nothing else was served before, or when no version is pinned (the model server then serves the
latest version, and "before" means nothing: say which with ``--to``). All models asked for are
checked before any is changed. A rollback is recorded as a decision (``reason: "rollback by
operator"``), so the served history stays complete; the model server follows ``serving.json``
without a restart.

Exit codes: 0 done (or the version is already served); 1 refused (the message says why and what
to do).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from attune.config import AttuneConfig
from attune.model_repository import ModelRepository, utc_now
from models.repository import Decision, promotions, record

MODEL_NAMES = ("retrieval", "ranking")
"""The models ``attune models train`` publishes (``models.train.RETRIEVAL_NAME`` /
``RANKING_NAME``; not imported from there, which would load TensorFlow)."""
REASON = "rollback by operator"


class RollbackRefused(Exception):
    """The rollback cannot be done; the message says why and what to do instead."""


def served_history(decisions: Iterable[Mapping[str, Any]], model: str) -> list[int]:
    """The versions of ``model`` that became the served one, in the order they did."""
    return [
        int(d["version"])
        for d in decisions
        if d.get("model") == model and d.get("promoted") and isinstance(d.get("version"), int)
    ]


def previous_served(history: Sequence[int], current: int | None) -> int | None:
    """The version served before ``current``: from the last time ``current`` became served
    (the end of the history when it never did: pinned by hand), back to the first other
    version; None when there is none."""
    if current is None:
        return None
    last = max((i for i, v in enumerate(history) if v == current), default=len(history))
    for version in reversed(history[:last]):
        if version != current:
            return version
    return None


@dataclass(frozen=True)
class Rollback:
    """One model's planned rollback (``target == current``: already served, nothing to do)."""

    model: str
    current: int | None
    target: int

    @property
    def needed(self) -> bool:
        return self.target != self.current


def plan_rollback(
    model: str,
    current: int | None,
    history: Sequence[int],
    published: Sequence[int],
    to: int | None,
) -> Rollback:
    """What rolling ``model`` back means, or :class:`RollbackRefused` saying why not."""
    if not published:
        raise RollbackRefused(
            f"{model} has no published version: nothing to roll back to "
            "(`attune models train` publishes one)"
        )
    listing = ", ".join(f"v{v}" for v in published)
    if to is not None:
        if to not in published:
            raise RollbackRefused(
                f"{model} has no published version {to} (published: {listing}); "
                f"`attune models list` shows them"
            )
        return Rollback(model, current, to)
    if current is None:
        raise RollbackRefused(
            f"no version of {model} is pinned in serving.json (the model server serves the "
            f"latest published one, v{max(published)}), so there is no 'before': choose one with "
            f"--to VERSION (published: {listing})"
        )
    previous = previous_served(history, current)
    if previous is None:
        raise RollbackRefused(
            f"nothing was served before {model} v{current} (promotions.jsonl records no "
            f"earlier served version): choose one with --to VERSION (published: {listing})"
        )
    if previous not in published:
        raise RollbackRefused(
            f"{model} v{previous} was served before v{current} but is no longer published "
            f"(its folder is gone): choose a published version with --to VERSION "
            f"(published: {listing})"
        )
    return Rollback(model, current, previous)


def last_promotion(
    decisions: Iterable[Mapping[str, Any]], model: str, version: int
) -> Mapping[str, Any] | None:
    """The latest decision that made ``model`` ``version`` the served one, if any."""
    found = None
    for d in decisions:
        if d.get("model") == model and d.get("promoted") and d.get("version") == version:
            found = d
    return found


def apply_rollback(repo: ModelRepository, plan: Rollback, metric: str) -> Decision:
    """Serve ``plan.target`` and record the decision in ``promotions.jsonl``."""
    decisions = promotions(repo)
    earlier = last_promotion(decisions, plan.model, plan.target)
    now = utc_now()
    details: dict[str, Any] = {"reason": REASON, "rolled_back_from": plan.current, "at": now}
    if earlier is not None and earlier.get("candidate") is not None:
        # what the version measured when it was promoted (serving.json keeps it for the gate)
        details.update(metric=earlier.get("metric"), value=earlier.get("candidate"))
    repo.set_served(plan.model, plan.target, details)
    decision = Decision(
        model=plan.model,
        version=plan.target,
        promoted=True,
        metric=str(earlier.get("metric")) if earlier is not None else metric,
        candidate=earlier.get("candidate") if earlier is not None else None,
        served_version=plan.current,
        served=None,
        margin=0.0,
        reason=REASON,
        decided_at=now,
    )
    record(repo, decision)
    return decision


def rollback(
    repo: ModelRepository, models: Sequence[str], to: int | None, metric: str
) -> list[Rollback]:
    """Plan every model's rollback first (refusing before anything changes), then apply them."""
    history = promotions(repo)
    plans = [
        plan_rollback(
            name, repo.served_version(name), served_history(history, name), repo.versions(name), to
        )
        for name in models
    ]
    for plan in plans:
        if plan.needed:
            apply_rollback(repo, plan, metric)
    return plans


def cmd_rollback(cfg: AttuneConfig, args: argparse.Namespace) -> int:
    """``attune models rollback [--model M] [--to VERSION] [--json]``."""
    repo = ModelRepository(
        cfg.paths.resolve(cfg.models.repository_dir), cfg.models.serving_base_path
    )
    models = [args.model] if args.model else list(MODEL_NAMES)
    try:
        plans = rollback(repo, models, args.to, cfg.models.promotion_metric)
    except RollbackRefused as exc:
        print(f"attune models rollback: REFUSED, nothing changed: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(
            json.dumps(
                {
                    "repository": str(repo.root),
                    "models": [{**asdict(p), "changed": p.needed} for p in plans],
                },
                indent=2,
            )
        )
        return 0
    for p in plans:
        if p.needed:
            print(f"{p.model}: now serving v{p.target} (was v{p.current}); recorded: {REASON}")
        else:
            print(f"{p.model}: v{p.target} is already served; nothing to do")
    if any(p.needed for p in plans):
        print(f"serving.json updated in {repo.root}; the model server follows it without a restart")
    return 0
