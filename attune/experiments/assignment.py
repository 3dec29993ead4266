"""Assignment: which experiments and variants one user is in, decided by hashing, no storage.

Every decision is a deterministic hash of the subject (the pseudonymized user id, else the
pseudonymized anonymous id; no raw id is ever hashed): :func:`unit_hash` maps
``"<salt>:<subject>"`` through SHA-256 (first 8 bytes, big-endian) uniformly into [0, 1). For a
request, in this order:

1. **holdout**: ``unit_hash("holdout", subject) < holdout.share`` puts the user in the
   long-term holdout: no experiment at all, the API's defaults, recommendation ids
   ``holdout:holdout:<token>`` (so the holdout can be compared with everyone else later).
2. **layers**: per layer, ``unit_hash("layer:<layer>", subject)`` is the user's point in the
   layer. The layer's experiments own consecutive ranges of width ``traffic`` in file order (a
   started experiment keeps the range it started with, :mod:`attune.experiments.state`); the
   experiment whose range holds the point gets the user if it is *running* and its targeting
   matches, else the user gets nothing in this layer. Ranges never depend on which experiments
   run, so starting or stopping one never moves another's users.
3. **variant**: inside an A/B experiment, :func:`assign_variant` hashes
   ``"<experiment id>:<subject>"`` into the variants' cumulative weights (first variant first).
   A different experiment id reshuffles users independently of the layer hash and of every
   other experiment; changing a weight moves only the users between the old and new boundary.
   An interleaving experiment has no split: each of its users gets both rankers, merged. An
   experiment with ``allocation.bandit`` has no hash split either: :meth:`Assigner.assign`
   returns it unresolved and the API picks the variant from what it stored for the user, or
   by the bandit (:mod:`attune.experiments.bandit`), so this module stays free of I/O.

The recommendation id (:func:`recommendation_id`) is ``<experiment>:<variant>:<20 hex>`` (at
most 64 characters, the event schema's limit), naming the experiment of the first layer the
user is in (layers in the order they first appear in the file), ``none:default:<token>`` when
the user is in none, and ``holdout:holdout:<token>`` in the holdout. The batch layer reads it
with ``batch.recommendation_id_pattern``.

Targeting is checked on every request: ``users: new`` matches a user without any event in the
online store, so once the user's first events arrive the user stops matching and gets the
defaults; the analysis keeps counting the user in the arm of the first exposure.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from attune.config import BanditConfig
from attune.experiments.spec import (
    HOLDOUT,
    INTERLEAVED,
    NO_EXPERIMENT,
    TOKEN_CHARS,
    BanditAllocationSpec,
    ExperimentsFile,
    ExperimentSpec,
    ExperimentType,
    TargetingSpec,
    VariantSpec,
)
from attune.experiments.state import (
    Allocation,
    RunningState,
    declared_allocations,
    effective_allocation,
    mismatch,
    status_of,
)


def unit_hash(salt: str, subject: str) -> float:
    """``"<salt>:<subject>"`` mapped uniformly into [0, 1): the first 8 bytes of its SHA-256,
    big-endian, divided by 2**64."""
    digest = hashlib.sha256(f"{salt}:{subject}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_variant(experiment: str, subject: str, weights: Mapping[str, float]) -> str:
    """The variant of ``subject`` in ``experiment``; ``weights`` are relative shares, walked in
    their order (zero weights get nobody)."""
    total = sum(w for w in weights.values() if w > 0)
    if not weights or total <= 0:
        raise ValueError(
            f"experiment {experiment!r} has no variant with a positive weight; "
            "give at least one of its variants a weight > 0 in the experiments file"
        )
    point = unit_hash(experiment, subject) * total
    upto = 0.0
    last = ""
    for name, weight in weights.items():
        if weight <= 0:
            continue
        upto += weight
        last = name
        if point < upto:
            return name
    return last  # point == total can only come from rounding: the last positive arm


def in_holdout(share: float, subject: str) -> bool:
    """Whether ``subject`` is in the long-term holdout of ``share`` of all users."""
    return share > 0 and unit_hash(HOLDOUT[0], subject) < share


def layer_point(layer: str, subject: str) -> float:
    """``subject``'s point in ``layer`` (which experiment of the layer may take it)."""
    return unit_hash(f"layer:{layer}", subject)


@dataclass(frozen=True)
class UserContext:
    """What targeting looks at, per request."""

    segment: str | None = None  # the batch layer's segment of the user
    platform: str | None = None  # the request's context.device
    returning: bool = False  # the user has events in the online store


def targeting_matches(t: TargetingSpec, ctx: UserContext) -> bool:
    """Segments and platforms: any of them (empty = any; platforms compare case-insensitively);
    users: all, new (no events yet) or returning."""
    if t.segments and ctx.segment not in t.segments:
        return False
    if t.platforms:
        if ctx.platform is None:
            return False
        if ctx.platform.lower() not in {p.lower() for p in t.platforms}:
            return False
    if t.users == "new" and ctx.returning:
        return False
    return not (t.users == "returning" and not ctx.returning)


@dataclass(frozen=True)
class Assignment:
    """One experiment a user is in. For an A/B test ``variant`` is the arm and
    ``variant_config`` its declaration; for interleaving ``variant`` is ``interleaved``,
    ``variant_config`` None and ``rankers`` the two variants (name, declaration) to merge.

    A bandit-allocated A/B test (``bandit`` set) comes back *unresolved*: ``variant`` is ""
    and ``variant_config`` None, ``arms`` the variants the bandit chooses between; the caller
    resolves it from the user's stored variant or a new decision
    (:mod:`attune.experiments.bandit`) and fills both in with :meth:`resolved`."""

    experiment: str
    variant: str
    type: ExperimentType
    variant_config: VariantSpec | None
    layer: str
    rankers: tuple[tuple[str, VariantSpec], ...] = ()
    bandit: BanditConfig | None = None
    arms: tuple[str, ...] = ()

    def resolved(self, variant: str, config: VariantSpec) -> Assignment:
        """This bandit assignment with its variant chosen."""
        return replace(self, variant=variant, variant_config=config)


@dataclass(frozen=True)
class _Slot:
    spec: ExperimentSpec
    allocation: Allocation  # the effective one (recorded once started)
    state: RunningState | None
    weights: dict[str, float]  # the allocation's weights, declared variants only
    bandit: BanditConfig | None = None  # the effective allocation's bandit


def _bandit_of(alloc: Allocation) -> BanditConfig | None:
    if alloc.bandit is None:
        return None
    return BanditAllocationSpec.model_validate(alloc.bandit).bandit_config()


class Assigner:
    """Declarations and running state, prepared once for many :meth:`assign` calls (the API
    builds a new one whenever either changes). ``warnings`` says what the running state and
    the file disagree on (allocation changed, variants gone)."""

    def __init__(self, decls: ExperimentsFile, running: Mapping[str, RunningState]) -> None:
        self.decls = decls
        self.running = dict(running)
        self.warnings: list[str] = []
        declared = declared_allocations(decls)
        layers: dict[str, list[_Slot]] = {}
        for spec in decls.experiments:
            state = self.running.get(spec.id)
            alloc = effective_allocation(declared[spec.id], state)
            changes = mismatch(spec, declared[spec.id], state)
            if changes:
                self.warnings.append(
                    f"experiment {spec.id} keeps the allocation it started with, not the "
                    f"file's ({'; '.join(changes)}); `attune experiments start {spec.id} "
                    "--force` records the file's"
                )
            weights = {n: w for n, w in alloc.weights.items() if n in spec.variants}
            gone = [n for n in alloc.weights if n not in spec.variants]
            if gone and spec.type == "ab":
                self.warnings.append(
                    f"experiment {spec.id}: recorded variant(s) {', '.join(gone)} are no longer "
                    "declared; their users get the defaults"
                )
            bandit = _bandit_of(alloc) if spec.type == "ab" else None
            layers.setdefault(alloc.layer, []).append(_Slot(spec, alloc, state, weights, bandit))
        self._layers = layers

    @property
    def holdout_share(self) -> float:
        return self.decls.holdout.share

    def in_holdout(self, subject: str) -> bool:
        return in_holdout(self.holdout_share, subject)

    def bandit_experiments(self, subject: str) -> list[str]:
        """The bandit-allocated experiments whose layer range holds ``subject`` (whether they
        run or its targeting matches or not): the ones whose stored variant and bandit state a
        request reads before :meth:`assign` ([] in the holdout)."""
        if self.in_holdout(subject):
            return []
        out: list[str] = []
        for layer, slots in self._layers.items():
            point = layer_point(layer, subject)
            for slot in slots:
                lo, hi = slot.allocation.range
                if lo <= point < hi:
                    if slot.bandit is not None:
                        out.append(slot.spec.id)
                    break
        return out

    def assign(self, subject: str, ctx: UserContext, now: datetime) -> list[Assignment]:
        """The experiments ``subject`` is in, first layer first ([] in the holdout)."""
        if self.in_holdout(subject):
            return []
        out: list[Assignment] = []
        for layer, slots in self._layers.items():
            point = layer_point(layer, subject)
            for slot in slots:
                lo, hi = slot.allocation.range
                if not lo <= point < hi:
                    continue
                a = self._enter(slot, subject, ctx, now)
                if a is not None:
                    out.append(a)
                break  # ranges are exclusive: the first that holds the point decides
        return out

    @staticmethod
    def _enter(slot: _Slot, subject: str, ctx: UserContext, now: datetime) -> Assignment | None:
        spec = slot.spec
        if status_of(spec, slot.state, now) != "running":
            return None
        if not targeting_matches(spec.targeting, ctx):
            return None
        if spec.type == "interleaving":
            rankers = tuple(spec.variants.items())
            return Assignment(
                spec.id, INTERLEAVED, "interleaving", None, slot.allocation.layer, rankers
            )
        if not any(w > 0 for w in slot.weights.values()):
            return None
        if slot.bandit is not None:
            arms = tuple(n for n, w in slot.weights.items() if w > 0)
            return Assignment(
                spec.id, "", "ab", None, slot.allocation.layer, bandit=slot.bandit, arms=arms
            )
        variant = assign_variant(spec.id, subject, slot.weights)
        return Assignment(spec.id, variant, "ab", spec.variants[variant], slot.allocation.layer)


def assign(
    declarations: ExperimentsFile,
    running: Mapping[str, RunningState],
    subject: str,
    ctx: UserContext,
    now: datetime,
) -> list[Assignment]:
    """The experiments ``subject`` is in (see the module docstring); [] in the holdout."""
    return Assigner(declarations, running).assign(subject, ctx, now)


VARIANT_FIELDS = ("ranking", "model_label", "rules", "candidate_sources")
"""The fields of a variant that change how the API answers (weight only splits users)."""


def combined_variant(variants: Sequence[VariantSpec]) -> VariantSpec:
    """What to do for a user in several experiments (one per layer), first layer first: each
    field comes from the first variant that sets it explicitly in the file; fields no variant
    sets keep the API's defaults. Layers are meant to change different things; where they
    collide, the first layer wins."""
    values: dict[str, object] = {}
    for v in variants:
        for name in VARIANT_FIELDS:
            if name in v.model_fields_set and name not in values:
                values[name] = getattr(v, name)
    return VariantSpec.model_validate(values)


def new_token() -> str:
    """The random end of a recommendation id."""
    return uuid.uuid4().hex[:TOKEN_CHARS]


def recommendation_id(assignments: Sequence[Assignment], holdout: bool, token: str) -> str:
    """``<experiment>:<variant>:<token>`` of the first assignment; ``holdout:holdout:<token>``
    in the holdout, ``none:default:<token>`` in no experiment."""
    if holdout:
        experiment, variant = HOLDOUT
    elif assignments:
        experiment, variant = assignments[0].experiment, assignments[0].variant
    else:
        experiment, variant = NO_EXPERIMENT
    return f"{experiment}:{variant}:{token}"
