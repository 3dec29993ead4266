"""Experiment declarations: what ``config/experiments.yaml`` may say, checked before anything runs.

The file (config ``experiments.file``) holds a long-term **holdout** and a list of
**experiments**::

    holdout: {share: 0.05}
    experiments:
      - id: ranking_v1
        hypothesis: Re-ranking with the ranking model raises click rate
        type: ab                     # ab | interleaving
        layer: recs
        traffic: 1.0
        variants:                    # the first variant is the control
          control:   {weight: 1, ranking: true}
          treatment: {weight: 1, ranking: false}
        targeting: {segments: [], platforms: [], users: all}
        start: 2026-12-01T00:00:00Z
        stop: null
        primary_metric: ctr
        secondary_metrics: [purchase_rate, dwell_s]
        guardrails: [{metric: dismiss_rate, max_relative_increase: 0.05}]
        baseline: 0.05
        mde: 0.05
        power: 0.8
        allocation:                  # optional, type ab only: a bandit picks each user's variant
          bandit: {policy: thompson, epsilon: 0.1, prior_alpha: 1, prior_beta: 1, seed: 0}

Concepts:

* A **variant** is a way of answering a recommendation request: re-rank with the ranking model
  or keep the retrieval order (``ranking``), call a TF Serving version label (``model_label``),
  apply a named rule set of ``api.rule_sets`` instead of ``api.rules`` (``rules``), and draw
  candidates only from some sources (``candidate_sources``). Its ``weight`` is its share of the
  experiment's users relative to the other variants. The first variant is the control.
* A **layer** groups experiments that must not share a user (they change the same thing). In
  each layer, one hash of the user picks a point in [0, 1); the layer's experiments own
  consecutive ranges of width ``traffic`` in file order, so their traffic may add up to at most
  1 and a user is in at most one experiment per layer. Experiments of different layers are
  independent (a user can be in one of each). The default layer is ``default``.
* **Targeting** narrows who may enter: segments (the batch layer's segment of the user),
  platforms (the request's ``context.device``) and ``users: new | returning`` (whether the
  user has any events in the online store). A user in an experiment's range who does not match
  its targeting gets the defaults, not another experiment: ranges never move with targeting.
* **type interleaving** compares two rankers (exactly two variants) inside one list: every user
  of the experiment gets a team-draft merge of both variants' lists, and a click credits the
  variant whose item was clicked (:mod:`attune.experiments.interleaving`). Weights do not split
  users there; they must still not all be 0.
* **allocation.bandit** (``type: ab`` only) lets a bandit (Thompson sampling, or LinUCB over
  the user's segment) choose each new user's variant instead of the hash: policy
  ``experiment:<id>`` learns from the impressions and clicks of the experiment's lists, the
  choice is stored per user (``Keys.user_experiment_variant``) and kept for as long as the key
  lives, and the first exposure logs a decision impression with the propensity
  (docs/bandits.md, "Experiment variants"). ``epsilon`` (> 0) keeps every variant's propensity
  at least ``epsilon / variants``, so off-policy estimates can divide by it; weights only say
  which variants take part (0 leaves one out) and must otherwise be equal. Interleaving is
  refused. The report then skips the sample-ratio test and warns that its fixed-allocation
  statistics are biased.
* **start / stop** is the planned window. ``attune experiments start ID`` makes an experiment
  run (from ``start`` when that is in the future); it stops at ``stop`` or at
  ``attune experiments stop ID``.
* Metrics have fixed names (:data:`METRICS`); the unit of analysis is the user. ``primary_metric``
  decides the verdict, ``secondary_metrics`` are reported (corrected for multiple testing),
  ``guardrails`` stop an experiment whose treatment makes a lower-is-better metric worse by more
  than ``max_relative_increase``. ``mde`` (relative minimum detectable effect), ``power`` and
  ``baseline`` (the control's expected primary metric, a rate) plan the sample size; ``alpha``
  falls back to config ``experiments.alpha``.

Every mistake raises :class:`attune.config.ConfigError` naming the file, the key path
(``experiments[0].variants.control.weight``) and the fix. :func:`load_experiments` reads a file;
:func:`experiments_of` reads the one the configuration names (``experiments.file: null`` means
no experiments; a named file that does not exist is an error, so an experiment is never silently
off because the API runs from another folder).
"""

from __future__ import annotations

import types
import typing
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from attune.config import BanditConfig, ConfigError

if TYPE_CHECKING:
    from attune.config import AttuneConfig

ExperimentType = Literal["ab", "interleaving"]
UsersFilter = Literal["all", "new", "returning"]

RECOMMENDATION_ID_MAX = 64
"""The event schema's limit on ``recommendation_id``."""
TOKEN_CHARS = 20
"""Random hex characters that end a recommendation id (``<experiment>:<variant>:<token>``)."""
NO_EXPERIMENT = ("none", "default")
"""(experiment, variant) of recommendation ids of users in no experiment."""
HOLDOUT = ("holdout", "holdout")
"""(experiment, variant) of recommendation ids of users in the long-term holdout."""
INTERLEAVED = "interleaved"
"""The variant named in the recommendation ids of an interleaving experiment (every user of the
experiment sees both rankers; each item's ``team`` says whose it is)."""
RESERVED_IDS = frozenset({NO_EXPERIMENT[0], HOLDOUT[0]})

CANDIDATE_SOURCES = ("retrieval", "neighbours", "batch", "session", "trending", "popular")
"""Where the API's candidates come from: the retrieval model, the batch layer's co-occurrence
neighbours of the user's items, the batch layer's precomputed list (fallback), neighbours of the
session's items (fallback for new visitors), trending and popular items (pool and fill)."""

ID_PATTERN = r"^[A-Za-z0-9_.-]+$"
ID_MAX = 24


@dataclass(frozen=True)
class MetricInfo:
    """What a metric name means; the analysis, the batch layer and the dashboard share it."""

    name: str
    kind: Literal["ratio", "binary", "mean", "operational"]
    higher_is_better: bool
    description: str

    @property
    def per_user(self) -> bool:
        """A user-level metric (tested per user); operational ones are compared as values."""
        return self.kind != "operational"


METRICS: dict[str, MetricInfo] = {
    m.name: m
    for m in (
        MetricInfo("ctr", "ratio", True, "attributed clicks / exposures (delta method)"),
        MetricInfo("click_rate", "binary", True, "share of exposed users with >= 1 click"),
        MetricInfo("purchase_rate", "binary", True, "share of exposed users with a purchase"),
        MetricInfo("cart_rate", "binary", True, "share of exposed users with an add-to-cart"),
        MetricInfo("revenue", "mean", True, "attributed revenue per exposed user"),
        MetricInfo("dwell_s", "mean", True, "attributed dwell seconds per exposed user"),
        MetricInfo("dismiss_rate", "ratio", False, "dismissals / exposures"),
        MetricInfo("api_latency_p99_ms", "operational", False, "the API's p99 per variant (ms)"),
        MetricInfo("error_rate", "operational", False, "the API's failed requests per variant"),
    )
}
USER_METRICS = tuple(n for n, m in METRICS.items() if m.per_user)
GUARDRAIL_METRICS = tuple(n for n, m in METRICS.items() if not m.higher_is_better)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class VariantSpec(_Strict):
    """One arm: how the API answers its users (fields left out keep the API's defaults)."""

    weight: float = Field(1.0, ge=0, description="Share of users, relative to the other arms.")
    ranking: bool = Field(True, description="Re-rank with the ranking model (else retrieval).")
    model_label: str | None = Field(
        None, min_length=1, description="TF Serving version label to call; None = the served one."
    )
    rules: str | None = Field(
        None, min_length=1, description="A rule set of api.rule_sets; None = api.rules."
    )
    candidate_sources: tuple[str, ...] | None = Field(
        None, description=f"Subset of {', '.join(CANDIDATE_SOURCES)}; None = all."
    )

    @field_validator("candidate_sources")
    @classmethod
    def _known_sources(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if v is None:
            return v
        unknown = [s for s in v if s not in CANDIDATE_SOURCES]
        if unknown:
            raise ValueError(
                f"unknown candidate source(s) {', '.join(map(repr, unknown))}: expected some of "
                f"{', '.join(CANDIDATE_SOURCES)} (or null for all)"
            )
        if not v:
            raise ValueError(
                "an empty list leaves no candidates: name at least one source, or null for all"
            )
        if len(set(v)) != len(v):
            raise ValueError("a source is listed twice: list each once")
        return v


class TargetingSpec(_Strict):
    """Who may enter; empty lists mean anyone."""

    segments: tuple[str, ...] = Field((), description="The user's batch segment is one of these.")
    platforms: tuple[str, ...] = Field((), description="The request's context.device is one.")
    users: UsersFilter = Field("all", description="new: no events yet; returning: some.")

    @property
    def is_everyone(self) -> bool:
        return not self.segments and not self.platforms and self.users == "all"


class GuardrailSpec(_Strict):
    """A lower-is-better metric the treatment must not raise by more than the threshold."""

    metric: str
    max_relative_increase: float = Field(gt=0, description="e.g. 0.10: at most +10 %.")

    @field_validator("metric")
    @classmethod
    def _lower_is_better(cls, v: str) -> str:
        if v not in GUARDRAIL_METRICS:
            raise ValueError(
                f"{v!r} cannot be a guardrail: a guardrail caps the increase of a metric where "
                f"lower is better, one of {', '.join(GUARDRAIL_METRICS)}"
            )
        return v


def _aware(v: Any) -> Any:
    if isinstance(v, date) and not isinstance(v, datetime):
        return datetime(v.year, v.month, v.day, tzinfo=UTC)
    if isinstance(v, datetime) and v.tzinfo is None:
        raise ValueError(f"{v.isoformat()} has no time zone: add one, e.g. {v.isoformat()}Z")
    return v


class BanditAllocationSpec(BanditConfig):
    """``allocation.bandit``: the variants are arms of a bandit (policy ``experiment:<id>``,
    :mod:`attune.bandits.registry`) instead of a hash split: Thompson sampling, or LinUCB over
    the user's segment at the first exposure (the speed layer learns from each list impression
    and click with the user's segment then, as it does for a content slot). The settings of a
    content slot's bandit (:class:`attune.config.BanditConfig`), but ``epsilon`` must be > 0
    here and defaults to 0.1."""

    epsilon: float = Field(
        0.1, gt=0, le=1, description="Exploration floor: every variant >= epsilon / variants."
    )

    @field_validator("epsilon", mode="before")
    @classmethod
    def _positive_epsilon(cls, v: Any) -> Any:
        if isinstance(v, int | float) and not isinstance(v, bool) and v <= 0:
            raise ValueError(
                f"epsilon is {v}; it must be > 0 (e.g. 0.1) so that every variant keeps a "
                "propensity above 0 that an off-policy analysis can divide by"
            )
        return v

    def bandit_config(self) -> BanditConfig:
        """The :class:`attune.config.BanditConfig` that :func:`attune.bandits.slots.decide`
        runs."""
        return BanditConfig(**self.model_dump())

    def recorded(self) -> dict[str, Any]:
        """What the experiment's recorded allocation keeps: the policy's own settings only, so
        that a Thompson experiment started before LinUCB was offered reads as unchanged."""
        own = _POLICY_FIELDS[self.policy]
        return {k: v for k, v in self.model_dump(mode="json").items() if k in own}


_POLICY_FIELDS = {
    "thompson": ("policy", "epsilon", "prior_alpha", "prior_beta", "seed"),
    "linucb": ("policy", "epsilon", "ucb_alpha", "ridge", "segments", "seed"),
}


class AllocationSpec(_Strict):
    """``allocation``: how an A/B experiment splits its users between variants. Left out:
    by a hash of the user, in proportion to the weights."""

    bandit: BanditAllocationSpec | None = None


class ExperimentSpec(_Strict):
    """One declared experiment (see the module docstring)."""

    id: str = Field(pattern=ID_PATTERN, max_length=ID_MAX)
    hypothesis: str = Field(min_length=1, description="What the treatment should change, why.")
    type: ExperimentType = "ab"
    layer: str = Field("default", pattern=ID_PATTERN, max_length=64)
    traffic: float = Field(1.0, gt=0, le=1, description="Share of the layer's users.")
    variants: dict[str, VariantSpec] = Field(description="The first is the control.")
    targeting: TargetingSpec = TargetingSpec()
    start: datetime | None = None
    stop: datetime | None = None
    primary_metric: str = "ctr"
    secondary_metrics: tuple[str, ...] = ()
    guardrails: tuple[GuardrailSpec, ...] = ()
    alpha: float | None = Field(None, gt=0, lt=0.5, description="None: experiments.alpha.")
    mde: float = Field(0.05, gt=0, description="Relative minimum detectable effect.")
    power: float = Field(0.8, gt=0.5, lt=1)
    baseline: float | None = Field(
        None, gt=0, lt=1, description="Expected control value of the primary metric (a rate)."
    )
    allocation: AllocationSpec = AllocationSpec()

    @field_validator("id")
    @classmethod
    def _not_reserved(cls, v: str) -> str:
        if v in RESERVED_IDS:
            raise ValueError(
                f"{v!r} is reserved (recommendation ids of users in no experiment or in the "
                "holdout use it): choose another id"
            )
        return v

    @field_validator("start", "stop", mode="before")
    @classmethod
    def _dates(cls, v: Any) -> Any:
        return _aware(v)

    @field_validator("start", "stop")
    @classmethod
    def _zoned(cls, v: datetime | None) -> datetime | None:
        return _aware(v)

    @field_validator("primary_metric")
    @classmethod
    def _primary(cls, v: str) -> str:
        return _user_metric(v)

    @field_validator("secondary_metrics")
    @classmethod
    def _secondary(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for name in v:
            _user_metric(name)
        if len(set(v)) != len(v):
            raise ValueError("a metric is listed twice: list each once")
        return v

    @field_validator("variants")
    @classmethod
    def _variant_names(cls, v: dict[str, VariantSpec]) -> dict[str, VariantSpec]:
        import re

        if len(v) < 2:
            raise ValueError(
                f"an experiment needs at least 2 variants, got {len(v)}: the first is the "
                "control, the others are compared with it"
            )
        bad = [n for n in v if not re.match(ID_PATTERN, n)]
        if bad:
            raise ValueError(
                f"variant name(s) {', '.join(map(repr, bad))} may use only letters, digits, "
                "'_', '.' and '-' (they go into recommendation ids, separated by ':')"
            )
        if all(s.weight <= 0 for s in v.values()):
            raise ValueError("no variant has a positive weight: give at least one weight > 0")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> ExperimentSpec:
        if self.type == "interleaving":
            if len(self.variants) != 2:
                raise ValueError(
                    f"an interleaving experiment compares exactly 2 rankers, got "
                    f"{len(self.variants)} variants: keep two (or use type: ab)"
                )
            if INTERLEAVED in self.variants:
                raise ValueError(
                    f"variant name {INTERLEAVED!r} is reserved in interleaving experiments "
                    "(their recommendation ids use it): rename the variant"
                )
        if self.bandit is not None:
            if self.type != "ab":
                raise ValueError(
                    f"allocation.bandit needs type: ab, not {self.type}: an interleaving "
                    "experiment shows both rankers to every user, so there is no variant to "
                    "choose; remove allocation (or use type: ab)"
                )
            weights = {w for w in self.weights.values() if w > 0}
            if len(weights) > 1:
                shown = ", ".join(f"{n} {w:g}" for n, w in self.weights.items())
                raise ValueError(
                    f"with allocation.bandit the bandit sets the shares, so weights only say "
                    f"which variants take part (0 leaves one out); got {shown}: give every "
                    "variant that takes part the same weight (e.g. 1)"
                )
        longest = max(len(n) for n in self.variants)
        room = RECOMMENDATION_ID_MAX - TOKEN_CHARS - 2
        if len(self.id) + longest > room:
            raise ValueError(
                f"id {self.id!r} plus the longest variant name is {len(self.id) + longest} "
                f"characters; recommendation ids '<id>:<variant>:<{TOKEN_CHARS} hex>' must fit "
                f"in {RECOMMENDATION_ID_MAX}: shorten them to {room} together"
            )
        if self.start is not None and self.stop is not None and self.stop <= self.start:
            raise ValueError(
                f"stop ({self.stop.isoformat()}) is not after start ({self.start.isoformat()}): "
                "move stop later (or set it to null)"
            )
        return self

    # -- derived ------------------------------------------------------------------------
    @property
    def control(self) -> str:
        """The first variant."""
        return next(iter(self.variants))

    @property
    def weights(self) -> dict[str, float]:
        return {n: v.weight for n, v in self.variants.items()}

    @property
    def bandit(self) -> BanditAllocationSpec | None:
        """The bandit that allocates the variants (None: the hash split by weight)."""
        return self.allocation.bandit

    @property
    def metrics(self) -> tuple[str, ...]:
        """Primary then secondary metrics."""
        return (self.primary_metric, *self.secondary_metrics)

    def alpha_or(self, default: float) -> float:
        """This experiment's alpha, else ``default`` (config ``experiments.alpha``)."""
        return self.alpha if self.alpha is not None else default


def _user_metric(name: str) -> str:
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}: expected one of {', '.join(USER_METRICS)}")
    if not METRICS[name].per_user:
        raise ValueError(
            f"{name!r} is an operational metric (no per-user test): use it as a guardrail, "
            f"or pick one of {', '.join(USER_METRICS)}"
        )
    return name


class HoldoutSpec(_Strict):
    """Users kept out of every experiment for good (they get the defaults)."""

    share: float = Field(0.0, ge=0, le=0.5, description="Of all users; 0 = no holdout.")


class ExperimentsFile(_Strict):
    """The whole declarations file."""

    holdout: HoldoutSpec = HoldoutSpec()
    experiments: tuple[ExperimentSpec, ...] = ()

    @model_validator(mode="after")
    def _file_level(self) -> ExperimentsFile:
        seen: set[str] = set()
        for exp in self.experiments:
            if exp.id in seen:
                raise ValueError(f"experiment id {exp.id!r} is declared twice: ids must be unique")
            seen.add(exp.id)
        layers = list(self.layers())
        for exp in self.experiments:
            if exp.bandit is not None and exp.layer != layers[0]:
                raise ValueError(
                    f"experiment {exp.id!r} has allocation.bandit but is in layer "
                    f"{exp.layer!r}: its bandit learns from the recommendation ids of its lists, "
                    "which name the experiment of the first layer only (here "
                    f"{layers[0]!r}); put {exp.id!r} in the first layer declared in the file"
                )
        for layer, members in self.layers().items():
            total = sum(e.traffic for e in members)
            if total > 1 + 1e-9:
                shares = " + ".join(f"{e.id} {e.traffic:g}" for e in members)
                raise ValueError(
                    f"the traffic of layer {layer!r} adds up to {total:g} ({shares}); "
                    "experiments of one layer share its users: lower their traffic to at most 1 "
                    "in total, or put one in another layer"
                )
        return self

    def layers(self) -> dict[str, list[ExperimentSpec]]:
        """Layer -> its experiments in file order; layers in the order they first appear."""
        out: dict[str, list[ExperimentSpec]] = {}
        for exp in self.experiments:
            out.setdefault(exp.layer, []).append(exp)
        return out

    def get(self, experiment_id: str) -> ExperimentSpec | None:
        return next((e for e in self.experiments if e.id == experiment_id), None)

    @property
    def ids(self) -> list[str]:
        return [e.id for e in self.experiments]


# ----------------------------------------------------------------------------------------
# Loading


def _field_type(model: Any, loc: tuple[int | str, ...]) -> Any:
    """The type at ``loc`` under ``model`` (for listing the keys an unknown key could be)."""
    tp: Any = model
    for part in loc:
        origin = typing.get_origin(tp)
        args = typing.get_args(tp)
        if origin in (typing.Union, types.UnionType):
            tp = next((a for a in args if a is not type(None)), None)
            origin, args = typing.get_origin(tp), typing.get_args(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            field = tp.model_fields.get(str(part))
            if field is None:
                return None
            tp = field.annotation
        elif origin is dict:
            tp = args[1]
        elif origin in (tuple, list):
            tp = args[0]
        else:
            return None
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        tp = next((a for a in typing.get_args(tp) if a is not type(None)), None)
    return tp


def _key_path(loc: tuple[int | str, ...], data: Any) -> str:
    out = ""
    node = data
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            node = None
    return out or "(top level)"


def _experiment_id(loc: tuple[int | str, ...], data: Any) -> str | None:
    if len(loc) >= 2 and loc[0] == "experiments" and isinstance(loc[1], int):
        try:
            value = data["experiments"][loc[1]]["id"]
        except (KeyError, IndexError, TypeError):
            return None
        return str(value)
    return None


def _format(exc: ValidationError, origin: str, data: Any) -> str:
    lines = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        where = _key_path(loc, data)
        exp_id = _experiment_id(loc, data)
        if exp_id is not None and loc[2:] != ("id",):
            where += f" (experiment {exp_id})"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            parent = _field_type(ExperimentsFile, loc[:-1])
            known = (
                ", ".join(parent.model_fields)
                if isinstance(parent, type) and issubclass(parent, BaseModel)
                else "see attune/experiments/spec.py"
            )
            lines.append(f"  {where}: unknown key; expected one of {known}")
        elif err["type"] == "missing":
            lines.append(f"  {where}: required; add it (see config/experiments.yaml)")
        elif err["type"] in ("value_error", "assertion_error"):
            lines.append(f"  {where}: {msg}")
        else:
            lines.append(f"  {where}: {msg} (got {err.get('input')!r})")
    return f"invalid experiments in {origin}:\n" + "\n".join(lines)


def parse_experiments(data: Any, origin: str = "the declarations") -> ExperimentsFile:
    """Validate already-parsed YAML (a mapping, or None for an empty file)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{origin} must hold a mapping with 'holdout' and 'experiments' at the top level"
        )
    try:
        return ExperimentsFile.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format(exc, origin, data)) from None


def load_experiments(path: str | Path, rule_sets: Collection[str] | None = None) -> ExperimentsFile:
    """Read and check a declarations file; with ``rule_sets`` (the names in
    ``api.rule_sets``), every variant's ``rules`` must name one of them."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(
            f"experiments file {p} does not exist (relative paths are taken from the working "
            f"directory {Path.cwd()}): create it (the repository's config/experiments.yaml is "
            "an example), point experiments.file at it, or set experiments.file: null for no "
            "experiments"
        )
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"experiments file {p} is not valid YAML: {exc}") from exc
    decls = parse_experiments(data, str(p))
    if rule_sets is not None:
        check_rule_sets(decls, rule_sets, str(p))
    return decls


def check_rule_sets(decls: ExperimentsFile, rule_sets: Collection[str], origin: str) -> None:
    """Every variant's ``rules`` names a rule set of ``api.rule_sets``."""
    lines = []
    for i, exp in enumerate(decls.experiments):
        for name, v in exp.variants.items():
            if v.rules is not None and v.rules not in rule_sets:
                known = ", ".join(sorted(rule_sets)) or "none are configured"
                lines.append(
                    f"  experiments[{i}].variants.{name}.rules (experiment {exp.id}): unknown "
                    f"rule set {v.rules!r} ({known}): declare it under api.rule_sets in the "
                    "attune config, or set rules: null for api.rules"
                )
    if lines:
        raise ConfigError(f"invalid experiments in {origin}:\n" + "\n".join(lines))


def experiments_path(cfg: AttuneConfig) -> Path | None:
    """The declarations file the configuration names (None: experiments are off)."""
    f = cfg.experiments.file
    return None if f is None else f if f.is_absolute() else Path.cwd() / f


def experiments_of(cfg: AttuneConfig) -> ExperimentsFile:
    """The declarations the configuration names, rule sets checked against ``api.rule_sets``."""
    path = experiments_path(cfg)
    if path is None:
        return ExperimentsFile()
    return load_experiments(path, cfg.api.rule_sets)


def iter_variants(decls: ExperimentsFile) -> Iterator[tuple[ExperimentSpec, str, VariantSpec]]:
    for exp in decls.experiments:
        for name, v in exp.variants.items():
            yield exp, name, v
