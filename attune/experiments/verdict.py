"""The analysis of one A/B experiment: per-user data in, metrics, health checks and a verdict out.

:func:`analyse` takes what the batch layer knows about each variant's users
(:class:`VariantData`: exposures, attributed clicks, carts, purchases, revenue, dwell, dismissals
and a pre-experiment covariate) and the few fields of the declaration the analysis needs
(:class:`AnalysisPlan`), and returns an :class:`ExperimentAnalysis` whose :meth:`to_json
<ExperimentAnalysis.to_json>` is one experiment of the daily report the dashboard reads.

How each metric is analysed (the unit is always the user, see :mod:`attune.experiments.stats`):

* ratio metrics (``ctr`` = clicks / exposures, ``dismiss_rate``): delta method;
* binary metrics (``click_rate``, ``purchase_rate``, ``cart_rate``: share of users with at least
  one): two-proportion z test and a beta-binomial posterior;
* means (``revenue``, ``dwell_s``): Welch's t test and a normal posterior;
* with a pre-period covariate, every user-level metric is CUPED-adjusted first (then tested as a
  mean, with a normal posterior);
* every comparison also gets its sequential, always-valid inference (alpha spent over the
  planned sample, so the daily look is safe): the confidence sequence ``cs`` and the
  ``always_valid_p``. Earlier looks come from the report's ``history`` rows.

The verdict, in this order of precedence:

1. **stop** when the split is unhealthy (sample ratio mismatch, chi-square p < 0.001: no metric
   can be trusted), when a guardrail is breached (a user-level guardrail whose one-sided
   always-valid interval on the relative change lies wholly above its allowed increase, or an
   operational value above it), or when every treatment is significantly worse on the primary
   metric;
2. **ship** when a treatment's primary metric is significantly better: its always-valid p-value,
   Holm-adjusted across the treatment arms, is below alpha (its confidence sequence excludes 0);
3. **no_difference** when the planned sample is reached (or the planned stop date passed) and
   every treatment's always-valid interval on the relative lift excludes the minimum detectable
   effect: a worthwhile improvement has been ruled out;
4. **running** otherwise, with how far the experiment is.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from attune.experiments import stats

MetricKind = Literal["ratio", "binary", "mean", "operational"]
Verdict = Literal["running", "ship", "no_difference", "stop"]

METRIC_KINDS: dict[str, tuple[MetricKind, bool]] = {
    "ctr": ("ratio", True),
    "click_rate": ("binary", True),
    "purchase_rate": ("binary", True),
    "cart_rate": ("binary", True),
    "revenue": ("mean", True),
    "dwell_s": ("mean", True),
    "dismiss_rate": ("ratio", False),
    "api_latency_p99_ms": ("operational", False),
    "error_rate": ("operational", False),
}
"""Metric name -> (kind, higher is better); the names of the declarations' metrics."""

MIN_USERS = 2
"""Users every arm needs before anything is estimated (a variance needs two)."""


@dataclass(frozen=True, eq=False)
class VariantData:
    """One variant's exposed users, one array element per user (all arrays the same length).

    Counts are attributed to the experiment's exposures (see docs/experiments.md):
    ``exposures`` (impressions), ``clicks``, ``carts``, ``purchases``, ``revenue``, ``dwell_s``
    and ``dismissals``; ``pre_period`` is the user's activity before their first exposure (the
    CUPED covariate), or ``None`` when unknown.
    """

    exposures: NDArray[np.float64]
    clicks: NDArray[np.float64]
    purchases: NDArray[np.float64]
    carts: NDArray[np.float64]
    revenue: NDArray[np.float64]
    dwell_s: NDArray[np.float64]
    dismissals: NDArray[np.float64]
    pre_period: NDArray[np.float64] | None = None

    def __post_init__(self) -> None:
        names = ("exposures", "clicks", "purchases", "carts", "revenue", "dwell_s", "dismissals")
        n: int | None = None
        for name in (*names, "pre_period"):
            value = getattr(self, name)
            if value is None:
                continue
            a = np.asarray(value, dtype=np.float64)
            if a.ndim != 1:
                raise ValueError(f"VariantData.{name} must be 1-D (one value per user)")
            if n is None:
                n = a.size
            elif a.size != n:
                raise ValueError(
                    f"VariantData.{name} has {a.size} users, exposures has {n}: every array "
                    "needs one value per user, in the same order"
                )
            object.__setattr__(self, name, a)

    @classmethod
    def from_columns(cls, columns: Mapping[str, ArrayLike]) -> VariantData:
        """From a mapping of column name -> per-user values (e.g. a DataFrame's columns);
        missing count columns are zeros, a missing ``pre_period`` is ``None``."""
        if "exposures" not in columns:
            raise ValueError("columns need at least 'exposures' (one value per user)")
        n = len(np.asarray(columns["exposures"]))
        zero = np.zeros(n)
        pick = {
            k: np.asarray(columns.get(k, zero), dtype=np.float64)
            for k in (
                "exposures",
                "clicks",
                "purchases",
                "carts",
                "revenue",
                "dwell_s",
                "dismissals",
            )
        }
        pre = columns.get("pre_period")
        return cls(**pick, pre_period=None if pre is None else np.asarray(pre, np.float64))

    @property
    def users(self) -> int:
        """The number of users."""
        return int(self.exposures.size)

    def per_user(self, metric: str) -> NDArray[np.float64]:
        """The per-user values of a binary or mean metric."""
        if metric == "click_rate":
            return (self.clicks > 0).astype(np.float64)
        if metric == "purchase_rate":
            return (self.purchases > 0).astype(np.float64)
        if metric == "cart_rate":
            return (self.carts > 0).astype(np.float64)
        if metric == "revenue":
            return self.revenue
        if metric == "dwell_s":
            return self.dwell_s
        raise ValueError(f"{metric!r} is not a per-user binary or mean metric")

    def ratio_parts(self, metric: str) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Numerator and denominator per user of a ratio metric."""
        if metric == "ctr":
            return self.clicks, self.exposures
        if metric == "dismiss_rate":
            return self.dismissals, self.exposures
        raise ValueError(f"{metric!r} is not a ratio metric")


@dataclass(frozen=True)
class Guardrail:
    """A lower-is-better metric the treatment may worsen by at most ``max_relative_increase``."""

    metric: str
    max_relative_increase: float


def _date(value: Any) -> str | None:
    if value is None:
        return None
    iso = getattr(value, "isoformat", None)
    return str(iso())[:10] if callable(iso) else str(value)[:10]


@dataclass(frozen=True)
class AnalysisPlan:
    """What the analysis needs from an experiment's declaration.

    ``weights`` are the variants' allocation weights in declaration order (the first named
    ``control``); ``planned_users_per_arm`` fixes the horizon of the sequential inference, else
    it is planned from ``baseline``/``mde``/``power`` (binary primary metrics) or from the
    pooled data's variance (others). ``stop_passed`` says the planned stop date is behind us.
    """

    experiment_id: str
    control: str
    weights: Mapping[str, float]
    primary_metric: str = "ctr"
    secondary_metrics: tuple[str, ...] = ()
    guardrails: tuple[Guardrail, ...] = ()
    alpha: float = 0.05
    mde: float = 0.05
    power: float = 0.8
    baseline: float | None = None
    planned_users_per_arm: int | None = None
    cuped: bool = True
    spending: stats.Spending = "obrien_fleming"
    hypothesis: str = ""
    type: str = "ab"
    layer: str = ""
    start: str | None = None
    stop: str | None = None
    bandit: bool = False  # allocation.bandit: variants allocated by a bandit, not by weight

    def __post_init__(self) -> None:
        if self.control not in self.weights:
            raise ValueError(
                f"control {self.control!r} is not among the variants {list(self.weights)}: "
                "name the first variant of the declaration"
            )
        for name in (self.primary_metric, *self.secondary_metrics):
            kind = METRIC_KINDS.get(name, ("unknown", True))[0]
            if kind not in ("ratio", "binary", "mean"):
                raise ValueError(
                    f"metric {name!r} cannot be a primary or secondary metric: expected one "
                    f"of {', '.join(k for k, v in METRIC_KINDS.items() if v[0] != 'operational')}"
                )
        for g in self.guardrails:
            if g.metric not in METRIC_KINDS:
                raise ValueError(
                    f"unknown guardrail metric {g.metric!r}: expected one of "
                    f"{', '.join(METRIC_KINDS)}"
                )

    @classmethod
    def from_declaration(
        cls, decl: Any, default_alpha: float = 0.05, **overrides: Any
    ) -> AnalysisPlan:
        """From a declared experiment (any object with the fields of ``ExperimentSpec`` in
        :mod:`attune.experiments.spec`: ``id``, ``variants`` (name -> object with ``weight``,
        the first the control), ``primary_metric``, ``secondary_metrics``, ``guardrails``,
        ``alpha`` (``None``: ``default_alpha``), ``mde``, ``power``, ``baseline``, ...)."""
        variants = dict(decl.variants)
        kwargs: dict[str, Any] = {
            "experiment_id": decl.id,
            "control": next(iter(variants)),
            "weights": {k: float(v.weight) for k, v in variants.items()},
            "primary_metric": decl.primary_metric,
            "secondary_metrics": tuple(decl.secondary_metrics),
            "guardrails": tuple(
                Guardrail(g.metric, float(g.max_relative_increase)) for g in decl.guardrails
            ),
            "alpha": default_alpha if decl.alpha is None else float(decl.alpha),
            "mde": float(decl.mde),
            "power": float(decl.power),
            "baseline": getattr(decl, "baseline", None),
            "hypothesis": getattr(decl, "hypothesis", ""),
            "type": getattr(decl, "type", "ab"),
            "layer": getattr(decl, "layer", ""),
            "start": _date(getattr(decl, "start", None)),
            "stop": _date(getattr(decl, "stop", None)),
            "bandit": getattr(decl, "bandit", None) is not None,
        }
        kwargs.update(overrides)
        return cls(**kwargs)


@dataclass(frozen=True)
class MetricResult:
    """One metric of one treatment arm against the control (a row of the report's ``metrics``).

    ``control``/``value`` are the raw metric values; lifts and intervals are CUPED-adjusted
    when ``cuped``. ``abs_ci``/``rel_ci``/``p_value`` hold at the planned horizon only;
    ``cs``/``rel_cs``/``always_valid_p`` hold at every look. ``p_adjusted`` is the always-valid
    p-value adjusted for multiplicity (Holm across arms for the primary metric,
    Benjamini-Hochberg across the secondary metrics and arms); ``significant`` compares it with
    alpha. ``chance_to_beat`` and ``expected_loss`` read "better" in the metric's direction.
    """

    metric: str
    role: str
    variant: str
    control: float
    value: float
    abs_lift: float
    abs_ci: tuple[float, float]
    rel_lift: float
    rel_ci: tuple[float, float]
    p_value: float
    p_adjusted: float
    always_valid_p: float
    cs: tuple[float, float]
    rel_cs: tuple[float, float]
    chance_to_beat: float
    expected_loss: float
    cuped: bool
    significant: bool
    higher_is_better: bool
    users: int
    control_users: int
    info_fraction: float
    se: float


@dataclass(frozen=True)
class GuardrailResult:
    """A guardrail of one treatment arm: ``rel_change`` against the control, the allowed
    ``threshold``, and whether it is ``breached``; ``rel_cs`` is the one-sided always-valid
    interval for user-level guardrails (``None`` for operational values)."""

    metric: str
    variant: str
    control: float | None
    value: float | None
    rel_change: float | None
    threshold: float
    breached: bool
    rel_cs: tuple[float, float] | None


@dataclass(frozen=True)
class VariantInfo:
    """A variant's share of the allocation and its exposed users (the report's ``variants``)."""

    name: str
    weight: float
    users: int
    exposures: int
    is_control: bool


@dataclass(frozen=True)
class ExperimentAnalysis:
    """The analysis of one experiment; :meth:`to_json` is its object in the daily report."""

    plan: AnalysisPlan
    verdict: Verdict
    reason: str
    planned_users_per_arm: int | None
    variants: tuple[VariantInfo, ...]
    srm: stats.Srm | None  # None: not tested (a bandit-allocated experiment)
    metrics: tuple[MetricResult, ...]
    guardrails: tuple[GuardrailResult, ...]
    history: tuple[Mapping[str, Any], ...] = ()
    segments: tuple[Mapping[str, Any], ...] = ()
    as_of: str | None = None

    def to_json(self, **extra: Any) -> dict[str, Any]:
        """The report's experiment object (see docs/experiments.md); ``extra`` adds or
        overrides keys the analysis does not know (``status``, ``days``, ``today``, ...).

        Floats that are not finite become ``null`` (JSON has no infinity)."""
        p = self.plan
        out: dict[str, Any] = {
            "id": p.experiment_id,
            "hypothesis": p.hypothesis,
            "type": p.type,
            "layer": p.layer,
            "status": "running",
            "verdict": self.verdict,
            "reason": self.reason,
            "start": p.start,
            "stop": p.stop,
            "as_of": self.as_of,
            "alpha": p.alpha,
            "mde": p.mde,
            "planned_users_per_arm": self.planned_users_per_arm,
            "variants": [
                {
                    "name": v.name,
                    "weight": v.weight,
                    "users": v.users,
                    "exposures": v.exposures,
                    "is_control": v.is_control,
                }
                for v in self.variants
            ],
            "srm": None
            if self.srm is None
            else {
                "chi2": self.srm.chi2,
                "p": self.srm.p,
                "flagged": self.srm.flagged,
                "expected": dict(self.srm.expected),
            },
            "warnings": analysis_warnings(p),
            "metrics": [
                {
                    "metric": m.metric,
                    "role": m.role,
                    "variant": m.variant,
                    "control": m.control,
                    "value": m.value,
                    "abs_lift": m.abs_lift,
                    "abs_ci": list(m.abs_ci),
                    "rel_lift": m.rel_lift,
                    "rel_ci": list(m.rel_ci),
                    "p_value": m.p_value,
                    "p_adjusted": m.p_adjusted,
                    "always_valid_p": m.always_valid_p,
                    "cs": list(m.cs),
                    "rel_cs": list(m.rel_cs),
                    "chance_to_beat": m.chance_to_beat,
                    "expected_loss": m.expected_loss,
                    "cuped": m.cuped,
                    "significant": m.significant,
                    "higher_is_better": m.higher_is_better,
                    "users": m.users,
                    "control_users": m.control_users,
                    "info_fraction": m.info_fraction,
                }
                for m in self.metrics
            ],
            "guardrails": [
                {
                    "metric": g.metric,
                    "variant": g.variant,
                    "control": g.control,
                    "value": g.value,
                    "rel_change": g.rel_change,
                    "threshold": g.threshold,
                    "breached": g.breached,
                    "rel_cs": None if g.rel_cs is None else list(g.rel_cs),
                }
                for g in self.guardrails
            ],
            "history": [dict(h) for h in self.history],
            "segments": [dict(s) for s in self.segments],
            "interleaving": None,
        }
        out.update(extra)
        return json_safe(out)


BANDIT_WARNING = (
    "variants allocated by a bandit: who got which variant depended on earlier users' "
    "outcomes, so the fixed-allocation statistics here (the sample-ratio test against the "
    "weights, which is skipped; delta-method and CUPED intervals; the sequential p-values) are "
    "biased and the verdict is a rough guide only. Estimate each variant's value off-policy "
    "instead, weighting users by the propensity their decision impression logged (placement "
    "experiment:<id>; IPS / self-normalized IPS of attune.bandits.ope, docs/bandits.md)."
)


def analysis_warnings(plan: AnalysisPlan) -> list[str]:
    """What the report must say above the numbers about how they were obtained."""
    return [BANDIT_WARNING] if plan.bandit else []


def json_safe(value: Any) -> Any:
    """Numbers as JSON takes them (no NaN or infinity: null), numpy scalars as Python's."""
    if isinstance(value, float | np.floating):
        f = float(value)
        return f if math.isfinite(f) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


# ----------------------------------------------------------------------------------------
# The analysis


@dataclass(frozen=True)
class _Arm:
    """One arm's estimate of one metric (CUPED-adjusted or not) and its raw value."""

    estimate: stats.Estimate
    raw: float
    summary: stats.Summary | None = None
    successes: int | None = None


@dataclass
class _Metric:
    name: str
    kind: MetricKind
    higher_is_better: bool
    cuped: bool
    arms: dict[str, _Arm] = field(default_factory=dict)


def _has_covariate(data: Mapping[str, VariantData]) -> bool:
    pres = [d.pre_period for d in data.values()]
    if any(p is None for p in pres):
        return False
    return float(np.var(np.concatenate([p for p in pres if p is not None]))) > 0


def _metric_arms(name: str, data: Mapping[str, VariantData], use_cuped: bool) -> _Metric:
    kind, higher = METRIC_KINDS[name]
    names = list(data)
    xs = [data[n].pre_period for n in names] if use_cuped else None
    m = _Metric(name, kind, higher, use_cuped)
    if kind == "ratio":
        parts = [data[n].ratio_parts(name) for n in names]
        raw = [stats.ratio_summary(num, den) for num, den in parts]
        if xs is not None:
            adj = stats.cuped_ratio([p[0] for p in parts], [p[1] for p in parts], xs)  # type: ignore[arg-type]
            ests = list(adj.estimates)
        else:
            ests = [r.estimate for r in raw]
        for n, r, e in zip(names, raw, ests, strict=True):
            m.arms[n] = _Arm(e, r.ratio)
        return m
    ys = [data[n].per_user(name) for n in names]
    values = ys if xs is None else list(stats.cuped(ys, xs).adjusted)  # type: ignore[arg-type]
    for n, y, v in zip(names, ys, values, strict=True):
        s = stats.mean_summary(v)
        succ = int(y.sum()) if kind == "binary" and xs is None else None
        m.arms[n] = _Arm(s.estimate, float(y.mean()), s, succ)
    return m


def _compare(m: _Metric, control: str, arm: str, alpha: float) -> stats.Comparison:
    c, t = m.arms[control], m.arms[arm]
    if c.successes is not None and t.successes is not None:
        return stats.two_proportion_test(
            c.successes, c.estimate.n, t.successes, t.estimate.n, alpha
        )
    if m.kind != "ratio" and c.summary is not None and t.summary is not None:
        return stats.welch_test(c.summary, t.summary, alpha)
    return stats.compare(c.estimate, t.estimate, alpha)


def _bayes(m: _Metric, control: str, arm: str, alpha: float, seed: int) -> stats.Bayes:
    c, t = m.arms[control], m.arms[arm]
    if c.successes is not None and t.successes is not None:
        nc, nt = c.estimate.n, t.estimate.n
        if m.higher_is_better:
            return stats.beta_binomial_bayes(c.successes, nc, t.successes, nt, seed=seed)
        # lower is better: "beating" the control means a lower rate; flip to failures
        return stats.beta_binomial_bayes(nc - c.successes, nc, nt - t.successes, nt, seed=seed)
    ce, te = c.estimate, t.estimate
    if not m.higher_is_better:
        ce = stats.Estimate(-ce.value, ce.variance, ce.n)
        te = stats.Estimate(-te.value, te.variance, te.n)
    return stats.normal_bayes(ce, te, alpha)


@dataclass(frozen=True)
class _Look:
    abs_lift: float
    se: float
    users: int
    control_users: int
    rel_cs: tuple[float, float] | None


def _past_looks(
    history: Sequence[Mapping[str, Any]], metric: str, variant: str, as_of: str | None
) -> list[_Look]:
    rows = [
        h
        for h in history
        if h.get("metric") == metric
        and h.get("variant") == variant
        and (as_of is None or str(h.get("date", "")) < as_of)
    ]
    rows.sort(key=lambda h: str(h.get("date", "")))
    looks = []
    for h in rows:
        try:
            look = _Look(
                float(h["abs_lift"]),
                float(h["se"]),
                int(h["users"]),
                int(h["control_users"]),
                None if h.get("cs") is None else (float(h["cs"][0]), float(h["cs"][1])),
            )
        except (KeyError, TypeError, ValueError, IndexError):
            continue  # a row from before looks were recorded: not usable as a look
        if look.se > 0 and math.isfinite(look.abs_lift):
            looks.append(look)
    return looks


@dataclass(frozen=True)
class _SeqOut:
    always_valid_p: float
    cs: tuple[float, float]
    rel_cs: tuple[float, float]
    info_fraction: float


def _sequential(
    cmp: stats.Comparison,
    users: int,
    control_users: int,
    past: list[_Look],
    planned: int,
    alpha: float,
    spending: stats.Spending,
) -> _SeqOut:
    planned_total = 2 * planned
    t_now = (users + control_users) / planned_total
    if not cmp.se > 0:
        # no variation in either arm (e.g. nobody purchased yet): nothing to test
        d = cmp.abs_lift
        p = 1.0 if d == 0 else 0.0
        return _SeqOut(p, (d, d), (cmp.rel_lift, cmp.rel_lift), t_now)
    now = _Look(cmp.abs_lift, cmp.se, users, control_users, None)
    # information must grow from look to look: a past look with as many users as a later one
    # (or as this one, e.g. after the data was rebuilt) is dropped
    looks: list[_Look] = []
    last = 0.0
    for look in past:
        t = (look.users + look.control_users) / planned_total
        if last < t < t_now:
            looks.append(look)
            last = t
    looks.append(now)
    t_arr = np.array([(lk.users + lk.control_users) / planned_total for lk in looks])
    seq = stats.sequential_test(
        [lk.abs_lift for lk in looks], [lk.se for lk in looks], t_arr, alpha, spending
    )
    b = seq.boundaries[-1]
    lo, hi = -math.inf, math.inf
    for lk in looks[:-1]:
        if lk.rel_cs is not None:
            lo, hi = max(lo, lk.rel_cs[0]), min(hi, lk.rel_cs[1])
    if math.isfinite(b) and math.isfinite(cmp.rel_se):
        cur = cmp.relative_interval(b)
        nlo, nhi = max(lo, cur[0]), min(hi, cur[1])
        lo, hi = (nlo, nhi) if nlo <= nhi else cur
    return _SeqOut(seq.always_valid_p, seq.cs[-1], (lo, hi), float(t_arr[-1]))


def _planned_users(plan: AnalysisPlan, primary: str, data: Mapping[str, VariantData]) -> int:
    if plan.planned_users_per_arm is not None:
        return plan.planned_users_per_arm
    # the variance is estimated on the pooled (blinded) data: it does not look at the effect
    kind, _ = METRIC_KINDS[primary]
    if kind == "binary":
        y = np.concatenate([d.per_user(primary) for d in data.values()])
        rate = plan.baseline if plan.baseline is not None else float(y.mean())
        rate = min(max(rate, 1e-6), 1 - 1e-6)
        if rate * (1 + plan.mde) >= 1:
            return int(y.size)
        return stats.required_users_per_arm(rate, plan.mde, plan.alpha, plan.power)
    if kind == "ratio":
        num = np.concatenate([d.ratio_parts(primary)[0] for d in data.values()])
        den = np.concatenate([d.ratio_parts(primary)[1] for d in data.values()])
        r = float(num.sum() / den.sum())
        sd = float(np.std((num - r * den) / den.mean(), ddof=1))
        mean = plan.baseline if plan.baseline is not None else r
    else:
        y = np.concatenate([d.per_user(primary) for d in data.values()])
        sd, mean = float(np.std(y, ddof=1)), float(y.mean())
    if mean == 0 or sd == 0:
        return int(sum(d.users for d in data.values()))
    return stats.required_users_per_arm_for_mean(mean, sd, plan.mde, plan.alpha, plan.power)


def _pct(x: float) -> str:
    return f"{x * 100:+.1f}%" if math.isfinite(x) else "n/a"


def _interval(ci: tuple[float, float]) -> str:
    return f"{_pct(ci[0])}..{_pct(ci[1])}"


def analyse(
    plan: AnalysisPlan,
    variants: Mapping[str, VariantData],
    guardrail_values: Mapping[str, Mapping[str, float]] | None = None,
    history: Sequence[Mapping[str, Any]] = (),
    *,
    as_of: str | None = None,
    stop_passed: bool = False,
    segments: Sequence[Mapping[str, Any]] = (),
    seed: int = 0,
) -> ExperimentAnalysis:
    """Analyse one experiment (see the module docstring).

    ``variants``: each variant's users (variants of ``plan.weights`` missing here have none).
    ``guardrail_values``: operational guardrails, metric -> variant -> value (e.g. the API's
    p99 latency per variant). ``history``: the report's earlier ``history`` rows of this
    experiment, the looks the sequential inference builds on; with ``as_of`` (the look's date,
    ``YYYY-MM-DD``) the returned history holds them plus this look's rows (a re-run of the same
    date replaces its rows). ``segments`` pass through to the report. ``seed`` fixes the
    Monte-Carlo draws of the Bayesian summaries.
    """
    unknown = [v for v in variants if v not in plan.weights]
    if unknown:
        raise ValueError(
            f"data for variant(s) {unknown} that experiment {plan.experiment_id!r} does not "
            f"declare (declared: {list(plan.weights)}): check the variant names in the data"
        )
    names = list(plan.weights)
    total_w = sum(plan.weights.values())
    counts = {n: variants[n].users if n in variants else 0 for n in names}
    infos = tuple(
        VariantInfo(
            n,
            plan.weights[n] / total_w if total_w > 0 else 0.0,
            counts[n],
            int(variants[n].exposures.sum()) if n in variants else 0,
            n == plan.control,
        )
        for n in names
    )
    # a bandit's shares follow the outcomes, so no expected split exists to test against
    srm = None if plan.bandit else stats.srm_test(counts, plan.weights)
    flagged = srm is not None and srm.flagged
    kept_history = tuple(h for h in history if as_of is None or h.get("date") != as_of)
    arms = [n for n in names if n != plan.control and plan.weights[n] > 0]
    too_small = [n for n in [plan.control, *arms] if counts[n] < MIN_USERS]
    if too_small or any(variants[n].exposures.sum() <= 0 for n in [plan.control, *arms]):

        def fmt(n: str) -> str:
            return f"{n} {counts[n]}"

        waiting = (
            "waiting for data: every variant needs at least "
            f"{MIN_USERS} exposed users ({', '.join(fmt(n) for n in [plan.control, *arms])})"
        )
        return ExperimentAnalysis(
            plan=plan,
            # an arm left empty while others fill up is a broken split, not a slow start
            verdict="stop" if flagged else "running",
            reason=_srm_reason(plan, srm, counts) if srm is not None and flagged else waiting,
            planned_users_per_arm=plan.planned_users_per_arm,
            variants=infos,
            srm=srm,
            metrics=(),
            guardrails=(),
            history=kept_history,
            segments=tuple(segments),
            as_of=as_of,
        )

    data = {n: variants[n] for n in [plan.control, *arms]}
    use_cuped = plan.cuped and _has_covariate(data)
    planned = _planned_users(plan, plan.primary_metric, data)
    user_guardrails = [g for g in plan.guardrails if METRIC_KINDS[g.metric][0] != "operational"]
    roles: dict[str, str] = {plan.primary_metric: "primary"}
    for s in plan.secondary_metrics:
        roles.setdefault(s, "secondary")
    tested = list(roles) + [g.metric for g in user_guardrails if g.metric not in roles]

    computed: dict[str, _Metric] = {}
    for name in tested:
        computed[name] = _metric_arms(name, data, use_cuped)

    rows: list[dict[str, Any]] = []  # one per (metric, arm), before multiplicity
    new_history: list[dict[str, Any]] = []
    nc = counts[plan.control]
    for name in roles:
        m = computed[name]
        for arm in arms:
            cmp = _compare(m, plan.control, arm, plan.alpha)
            past = _past_looks(history, name, arm, as_of)
            seq = _sequential(cmp, counts[arm], nc, past, planned, plan.alpha, plan.spending)
            bayes = _bayes(m, plan.control, arm, plan.alpha, seed)
            rows.append({"m": m, "arm": arm, "cmp": cmp, "seq": seq, "bayes": bayes})
            new_history.append(_history_row(as_of, arm, name, cmp, seq, counts[arm], nc))

    # multiplicity: Holm across arms (primary), Benjamini-Hochberg across the rest
    adjusted: list[float] = [math.nan] * len(rows)
    primary_idx = [i for i, r in enumerate(rows) if r["m"].name == plan.primary_metric]
    other_idx = [i for i, r in enumerate(rows) if r["m"].name != plan.primary_metric]
    for idx, fn in ((primary_idx, stats.holm), (other_idx, stats.benjamini_hochberg)):
        for i, p in zip(idx, fn([rows[i]["seq"].always_valid_p for i in idx]), strict=True):
            adjusted[i] = p

    results = []
    for r, p_adj in zip(rows, adjusted, strict=True):
        m, cmp, seq, bayes = r["m"], r["cmp"], r["seq"], r["bayes"]
        results.append(
            MetricResult(
                metric=m.name,
                role=roles[m.name],
                variant=r["arm"],
                control=m.arms[plan.control].raw,
                value=m.arms[r["arm"]].raw,
                abs_lift=cmp.abs_lift,
                abs_ci=cmp.abs_ci,
                rel_lift=cmp.rel_lift,
                rel_ci=cmp.rel_ci,
                p_value=cmp.p_value,
                p_adjusted=p_adj,
                always_valid_p=seq.always_valid_p,
                cs=seq.cs,
                rel_cs=seq.rel_cs,
                chance_to_beat=bayes.chance_to_beat,
                expected_loss=bayes.expected_loss,
                cuped=m.cuped,
                significant=p_adj < plan.alpha,
                higher_is_better=m.higher_is_better,
                users=counts[r["arm"]],
                control_users=nc,
                info_fraction=seq.info_fraction,
                se=cmp.se,
            )
        )

    guardrails: list[GuardrailResult] = []
    for g in plan.guardrails:
        for arm in arms:
            if METRIC_KINDS[g.metric][0] == "operational":
                guardrails.append(_operational(g, arm, plan.control, guardrail_values or {}))
                continue
            m = computed[g.metric]
            cmp = _compare(m, plan.control, arm, plan.alpha)
            past = _past_looks(history, g.metric, arm, as_of)
            # one-sided at alpha: the lower end of the two-sided 1 - 2 alpha sequence
            seq = _sequential(cmp, counts[arm], nc, past, planned, 2 * plan.alpha, plan.spending)
            guardrails.append(
                GuardrailResult(
                    metric=g.metric,
                    variant=arm,
                    control=m.arms[plan.control].raw,
                    value=m.arms[arm].raw,
                    rel_change=cmp.rel_lift,
                    threshold=g.max_relative_increase,
                    breached=seq.rel_cs[0] > g.max_relative_increase,
                    rel_cs=seq.rel_cs,
                )
            )
            if g.metric not in roles:
                new_history.append(_history_row(as_of, arm, g.metric, cmp, seq, counts[arm], nc))

    verdict, reason = _decide(plan, srm, counts, results, guardrails, planned, stop_passed)
    out_history = kept_history + (tuple(new_history) if as_of is not None else ())
    return ExperimentAnalysis(
        plan=plan,
        verdict=verdict,
        reason=reason,
        planned_users_per_arm=planned,
        variants=infos,
        srm=srm,
        metrics=tuple(results),
        guardrails=tuple(guardrails),
        history=out_history,
        segments=tuple(segments),
        as_of=as_of,
    )


def _history_row(
    as_of: str | None,
    arm: str,
    metric: str,
    cmp: stats.Comparison,
    seq: _SeqOut,
    users: int,
    control_users: int,
) -> dict[str, Any]:
    """A look of the report's ``history``: ``rel_lift`` with its always-valid interval ``cs``
    (relative, what the dashboard draws over time), and what the next look needs to carry the
    sequential inference on (``abs_lift``, ``se``, the users of both arms)."""
    return {
        "date": as_of,
        "variant": arm,
        "metric": metric,
        "rel_lift": cmp.rel_lift,
        "cs": list(seq.rel_cs),
        "abs_lift": cmp.abs_lift,
        "abs_cs": list(seq.cs),
        "se": cmp.se,
        "users": users,
        "control_users": control_users,
    }


def _operational(
    g: Guardrail, arm: str, control: str, values: Mapping[str, Mapping[str, float]]
) -> GuardrailResult:
    per_variant = values.get(g.metric, {})
    c, v = per_variant.get(control), per_variant.get(arm)
    if c is None or v is None or not math.isfinite(c) or not math.isfinite(v):
        return GuardrailResult(g.metric, arm, c, v, None, g.max_relative_increase, False, None)
    # a control at 0 (no errors): any error at all in the treatment is an unbounded increase
    change = v / c - 1 if c > 0 else (0.0 if v <= 0 else math.inf)
    return GuardrailResult(
        g.metric, arm, c, v, change, g.max_relative_increase, change > g.max_relative_increase, None
    )


def _srm_reason(plan: AnalysisPlan, srm: stats.Srm, counts: Mapping[str, int]) -> str:
    observed = ", ".join(f"{k} {counts[k]:,}" for k in plan.weights)
    expected = ", ".join(f"{k} {v:,.0f}" for k, v in srm.expected.items())
    return (
        f"sample ratio mismatch: users {observed} against expected {expected} "
        f"(chi-square p = {srm.p:.2g}); the split is broken, so no metric can be trusted: "
        "check assignment and exposure logging"
    )


def _decide(
    plan: AnalysisPlan,
    srm: stats.Srm | None,
    counts: Mapping[str, int],
    results: Sequence[MetricResult],
    guardrails: Sequence[GuardrailResult],
    planned: int,
    stop_passed: bool,
) -> tuple[Verdict, str]:
    level = f"{1 - plan.alpha:.0%}"
    if srm is not None and srm.flagged:
        return "stop", _srm_reason(plan, srm, counts)
    breached = [g for g in guardrails if g.breached]
    if breached:
        parts = [
            f"{g.metric} {_pct(g.rel_change or 0.0)} in {g.variant} (allowed +{g.threshold:.0%})"
            for g in breached
        ]
        return "stop", f"guardrail breached: {'; '.join(parts)}"

    primary = [m for m in results if m.role == "primary"]

    def better(m: MetricResult) -> float:
        return m.rel_lift if m.higher_is_better else -m.rel_lift

    def describe(m: MetricResult) -> str:
        return (
            f"{m.variant} {_pct(m.rel_lift)} {m.metric} "
            f"(always-valid {level} CI {_interval(m.rel_cs)})"
        )

    winners = [m for m in primary if m.significant and better(m) > 0]
    if winners:
        best = max(winners, key=better)
        return "ship", describe(best)
    losers = [m for m in primary if m.significant and better(m) < 0]
    if primary and len(losers) == len(primary):
        return "stop", "every treatment is worse on the primary metric: " + "; ".join(
            describe(m) for m in losers
        )
    smallest = min(counts[n] for n in [plan.control, *(m.variant for m in primary)])
    reached = smallest >= planned
    if reached or stop_passed:

        def excludes_mde(m: MetricResult) -> bool:
            lo, hi = m.rel_cs
            return hi < plan.mde if m.higher_is_better else lo > -plan.mde

        if primary and all(excludes_mde(m) for m in primary):
            return "no_difference", (
                f"no effect of {plan.mde:.0%} or more on {plan.primary_metric}: "
                + "; ".join(describe(m) for m in primary)
            )
        why = "planned sample reached" if reached else "planned stop date passed"
        return "running", (
            f"{why} but inconclusive: the interval still includes the minimum detectable "
            f"effect {_pct(plan.mde)} ({'; '.join(describe(m) for m in primary)}); keep it "
            "running or stop it without a decision"
        )
    return "running", (
        f"collecting data: {smallest:,} of {planned:,} planned users per arm "
        f"({smallest / planned:.0%}); " + "; ".join(describe(m) for m in primary)
    )
