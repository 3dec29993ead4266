"""The promotion gate: which published version of a model is served, and the record of why.

The repository's format (``<name>/<version>/`` folders, atomic publication, ``serving.json``)
is :mod:`attune.model_repository`, shared with the model server. This module adds the models'
rule on top: publishing is not serving; a version becomes the served one only through
:func:`gate`, which promotes it if it beats the served version on the configured metric by the
configured margin (relative: ``new >= served * (1 + margin)``; the first version of a model is
promoted as there is nothing to beat). Every decision is logged and appended to
``<repository>/promotions.jsonl`` (:func:`record`, :func:`promotions`).

The retraining run (:mod:`models.retrain`) gates with :func:`decide_with_baseline`: the same rule
plus a floor, ``new >= min_baseline_ratio * best baseline`` on the same metric and holdout, so a
model that beats a weak served version but not popularity is never served (nor is the first
version of a model that is worse than popularity). There the decision is taken before anything is
published, and recorded at the end of the run with what happened after it (publication, the
model server, the smoke test).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from attune.model_repository import ModelRepository, utc_now

log = logging.getLogger(__name__)

PROMOTIONS_FILE = "promotions.jsonl"


@dataclass(frozen=True)
class Decision:
    """One promotion-gate decision.

    ``version`` is the candidate's published version (``None``: a retraining candidate that was
    not published because it failed the gate). ``baseline`` is the best baseline's value on the
    metric and ``min_baseline_ratio`` the floor applied (retraining runs only); ``details`` holds
    what the run adds (run folder, data version, publication, smoke test).
    """

    model: str
    version: int | None
    promoted: bool
    metric: str
    candidate: float | None
    served_version: int | None
    served: float | None
    margin: float
    reason: str
    decided_at: str
    baseline: float | None = None
    baseline_name: str | None = None
    min_baseline_ratio: float | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def promotions(repo: ModelRepository) -> list[dict[str, Any]]:
    """Every decision recorded in ``repo``, oldest first."""
    path = repo.root / PROMOTIONS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def record(repo: ModelRepository, decision: Decision) -> None:
    """Append ``decision`` to ``repo``'s ``promotions.jsonl``."""
    repo.root.mkdir(parents=True, exist_ok=True)
    with (repo.root / PROMOTIONS_FILE).open("a") as fh:
        fh.write(json.dumps(decision.as_dict(), sort_keys=True) + "\n")


def decide(candidate: float | None, served: float | None, margin: float) -> tuple[bool, str]:
    """The gate rule alone: promote when there is no served value, or when
    ``candidate >= served * (1 + margin)`` and ``candidate > served``."""
    if candidate is None or candidate != candidate:  # NaN: nothing was measured
        return False, "the candidate has no value for the metric"
    if served is None or served != served:
        return True, "no served version to beat"
    needed = served * (1.0 + margin)
    if candidate > served and candidate >= needed:
        return True, f"{candidate:.6f} >= {needed:.6f} (served {served:.6f} x (1 + {margin}))"
    return False, f"{candidate:.6f} < {needed:.6f} needed (served {served:.6f} x (1 + {margin}))"


def decide_with_baseline(
    candidate: float | None,
    served: float | None,
    margin: float,
    baseline: float | None,
    min_baseline_ratio: float,
    baseline_name: str = "best baseline",
) -> tuple[bool, str]:
    """The retraining gate's rule: :func:`decide` (beat the served version by ``margin``; no
    served version: nothing to beat) and a floor: ``candidate >= min_baseline_ratio * baseline``,
    where ``baseline`` is the best baseline's value on the same metric and holdout.

    A floor of 0 is no floor. With a floor, an unmeasured baseline (None/NaN) fails: the
    candidate cannot be shown to be worth serving."""
    promoted, reason = decide(candidate, served, margin)
    if not promoted:
        return False, reason
    assert candidate is not None  # decide promotes measured candidates only
    if min_baseline_ratio <= 0:
        return True, f"{reason}; no baseline floor (min_baseline_ratio 0)"
    if baseline is None or baseline != baseline:
        return False, f"{reason}, but no baseline was measured to check the floor against"
    floor = baseline * min_baseline_ratio
    against = f"{baseline_name} {baseline:.6f} x {min_baseline_ratio}"
    if candidate >= floor:
        return True, f"{reason}; {candidate:.6f} >= {floor:.6f} ({against})"
    return False, f"{candidate:.6f} < {floor:.6f} needed to be worth serving ({against})"


def gate(
    repo: ModelRepository,
    name: str,
    version: int,
    metric: str,
    margin: float,
    candidate_value: float | None,
    served_value: Callable[[int], float | None],
) -> Decision:
    """Promote ``name`` ``version`` if it beats the served version; log and record the decision.

    ``served_value(v)`` measures the served version ``v`` on the same data the candidate was
    measured on (called only when a version is served)."""
    served_v = repo.served_version(name)
    served = served_value(served_v) if served_v is not None and served_v != version else None
    if served_v == version:
        promoted, reason = False, "this version is already served"
    else:
        promoted, reason = decide(candidate_value, served, margin)
    decision = Decision(
        model=name,
        version=version,
        promoted=promoted,
        metric=metric,
        candidate=candidate_value,
        served_version=served_v,
        served=served,
        margin=margin,
        reason=reason,
        decided_at=utc_now(),
    )
    if promoted:
        repo.set_served(
            name, version, {"metric": metric, "value": candidate_value, "promoted_at": utc_now()}
        )
    record(repo, decision)
    log.info(
        "promotion gate %s v%d: %s (%s: candidate %s, served v%s %s): %s",
        name,
        version,
        "PROMOTED" if promoted else "kept served version",
        metric,
        candidate_value,
        served_v,
        served,
        reason,
    )
    return decision
