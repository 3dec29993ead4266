"""The dashboard's data: loaders and shapers that know nothing of Streamlit.

Every page asks this module for its rows, so what the dashboard shows is testable without a
browser or a Streamlit runtime. Two kinds of function live here:

* **loaders** read one source and never raise for a source that is simply not there yet: they
  return :class:`Missing`, which says what is missing and the command that makes it (an empty
  lake is the first thing a new user sees, and it must read as "run this", not as a traceback).
  Sources: the experiment reports (``<reports_dir>/latest.json`` and ``<YYYY-MM-DD>.json``,
  written by the nightly experiment report), the model repository (versions, their
  evaluations, ``serving.json``, ``promotions.jsonl``), the model server's status API, the
  services' Prometheus ``/metrics``, Redis (online-store bookkeeping, the speed layer's live
  experiment counts) and the data-quality Delta tables (:mod:`dashboards.delta`).
* **shapers** turn a loaded report into display rows: formatted numbers (rates as percentages,
  lifts with their intervals), the verdict's colour, the confidence sequence over time.

The experiment report's format is the one ``ExperimentAnalysis.to_json()`` writes (one object
per experiment: variants, SRM, metrics, guardrails, history, segments, interleaving, today).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, TypeGuard

REPORT_COMMAND = "attune experiments report"
BATCH_COMMAND = "attune batch run --date YYYY-MM-DD"
LATEST = "latest.json"
DATED_REPORT = re.compile(r"^(\d{4}-\d{2}-\d{2})\.json$")


@dataclass(frozen=True)
class Missing:
    """Nothing to show yet: ``what`` is missing, ``hint`` is how to make it."""

    what: str
    hint: str

    def __str__(self) -> str:
        return f"{self.what}: {self.hint}"


# ----------------------------------------------------------------------------------------
# Experiment reports


def report_dates(reports_dir: Path) -> list[str]:
    """The dates of the dated report files, newest first."""
    try:
        names = [p.name for p in reports_dir.iterdir()]
    except OSError:
        return []
    return sorted((m.group(1) for n in names if (m := DATED_REPORT.match(n))), reverse=True)


def load_report(reports_dir: Path, report_date: str | None = None) -> dict[str, Any] | Missing:
    """The experiment report of ``report_date`` (default: ``latest.json``, else the newest dated
    file), or :class:`Missing` saying how to produce it."""
    hint = (
        f"no data yet — run `{REPORT_COMMAND}` after a nightly batch run (`{BATCH_COMMAND}`); "
        f"it writes {reports_dir}/{LATEST}"
    )
    if report_date is not None:
        path = reports_dir / f"{report_date}.json"
    else:
        path = reports_dir / LATEST
        if not path.exists():
            dates = report_dates(reports_dir)
            if dates:
                path = reports_dir / f"{dates[0]}.json"
    if not path.exists():
        return Missing(f"no experiment report in {reports_dir}", hint)
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return Missing(
            f"the experiment report {path} cannot be read ({exc})",
            f"re-run `{REPORT_COMMAND}` to rewrite it",
        )
    if not isinstance(report, dict) or not isinstance(report.get("experiments"), list):
        return Missing(
            f"the experiment report {path} has no 'experiments' list",
            f"re-run `{REPORT_COMMAND}` to rewrite it",
        )
    report.setdefault("path", str(path))
    return report


def find_experiment(report: Mapping[str, Any], experiment_id: str) -> dict[str, Any] | None:
    for exp in report.get("experiments", []):
        if exp.get("id") == experiment_id:
            return dict(exp)
    return None


VERDICT_COLOURS = {"ship": "green", "stop": "red", "no_difference": "gray", "running": "blue"}
VERDICT_LABELS = {
    "ship": "ship",
    "stop": "stop",
    "no_difference": "no difference",
    "running": "keep running",
}
STATUS_COLOURS = {"running": "blue", "stopped": "gray", "scheduled": "orange", "draft": "gray"}


def verdict_badge(verdict: str | None) -> tuple[str, str]:
    """(label, colour) of a verdict's badge (colours: green ship, red stop, gray no difference,
    blue keep running)."""
    v = verdict or "running"
    return VERDICT_LABELS.get(v, v.replace("_", " ")), VERDICT_COLOURS.get(v, "gray")


def status_badge(status: str | None) -> tuple[str, str]:
    s = status or "draft"
    return s, STATUS_COLOURS.get(s, "gray")


# Number formats ----------------------------------------------------------------------------

LOWER_IS_BETTER = frozenset({"dismiss_rate", "error_rate", "api_latency_p99_ms"})
RATE_METRICS = frozenset(
    {"ctr", "click_rate", "purchase_rate", "cart_rate", "dismiss_rate", "error_rate"}
)
UNITS = {"dwell_s": "s", "api_latency_p99_ms": "ms"}


def _finite(x: Any) -> TypeGuard[float]:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def fmt_value(metric: str, x: Any) -> str:
    """A metric's value: rates as percentages, durations with their unit."""
    if not _finite(x):
        return "–"
    if metric in RATE_METRICS:
        return f"{100 * x:.2f}%"
    unit = UNITS.get(metric)
    if unit:
        return f"{x:,.1f} {unit}"
    return f"{x:,.4g}" if abs(x) < 1000 else f"{x:,.0f}"


def fmt_abs(metric: str, x: Any) -> str:
    """An absolute difference: percentage points for rates, else the metric's unit."""
    if not _finite(x):
        return "–"
    if metric in RATE_METRICS:
        return f"{100 * x:+.2f} pp"
    unit = UNITS.get(metric)
    return f"{x:+,.2f} {unit}" if unit else f"{x:+,.4g}"


def fmt_pct(x: Any, digits: int = 1) -> str:
    """A relative change as a signed percentage: ``+6.2%``."""
    return f"{100 * x:+.{digits}f}%" if _finite(x) else "–"


def fmt_change(x: Any) -> str:
    """A guardrail's relative change: :func:`fmt_pct`, and ``+∞`` for an increase from a control
    at 0 (no error in the control, some in the variant)."""
    return "+∞" if x == math.inf else fmt_pct(x)


def fmt_interval(ci: Any, fmt: Any) -> str:
    """``[low, high]`` with ``fmt`` applied to both ends (``–`` when absent)."""
    if not isinstance(ci, Sequence) or len(ci) != 2 or not all(_finite(v) for v in ci):
        return "–"
    return f"[{fmt(ci[0])}, {fmt(ci[1])}]"


def fmt_p(p: Any) -> str:
    if not _finite(p):
        return "–"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def fmt_share(x: Any) -> str:
    return f"{100 * x:.1f}%" if _finite(x) else "–"


def fmt_count(x: Any) -> str:
    return f"{int(x):,}" if _finite(x) else "–"


# Shapers ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExperimentSummary:
    """One line of the experiments list."""

    id: str
    hypothesis: str
    type: str
    layer: str
    status: str
    verdict: str
    reason: str
    start: str | None
    days: int | None
    users: int
    primary_metric: str | None
    lift: str  # the primary metric's relative lift with its interval, or the preference
    significant: bool
    headline: str = "–"  # the lift alone (+6.2%), or the preference (53.5%)
    headline_label: str = "Lift"
    srm_flagged: bool = False
    guardrails_breached: int = 0


def _treatment_rows(exp: Mapping[str, Any], metric: str) -> list[dict[str, Any]]:
    return [m for m in exp.get("metrics") or [] if m.get("metric") == metric]


def preference_of(il: Mapping[str, Any]) -> str:
    """The ranker an interleaving preference is the share of (the second one by default)."""
    rankers = il.get("rankers") or ["a", "b"]
    return str(il.get("preference_of") or rankers[-1])


def primary_metric(exp: Mapping[str, Any]) -> str | None:
    for m in exp.get("metrics") or []:
        if m.get("role") == "primary":
            return str(m.get("metric"))
    return None


def summarise(exp: Mapping[str, Any]) -> ExperimentSummary:
    """The experiments-list line of one experiment."""
    variants = exp.get("variants") or []
    users = sum(int(v.get("users") or 0) for v in variants)
    metric = primary_metric(exp)
    lift, significant, headline, headline_label = "–", False, "–", f"Lift ({metric})"
    il = exp.get("interleaving")
    if exp.get("type") == "interleaving" and isinstance(il, Mapping):
        users = int(il.get("users") or users)
        preferred = preference_of(il)
        lift = (
            f"{preferred} preferred {fmt_share(il.get('preference'))} "
            f"{fmt_interval(il.get('ci'), fmt_share)}"
        )
        headline = fmt_share(il.get("preference"))
        headline_label = f"Preference for {preferred}"
        p = il.get("p_value")
        significant = bool(il.get("significant", _finite(p) and p < float(il.get("alpha", 0.05))))
        metric = "preference"
    elif metric is not None:
        rows = _treatment_rows(exp, metric)
        if rows:
            best = max(rows, key=lambda m: m.get("rel_lift") or -math.inf)
            label = f"{best.get('variant')}: " if len(rows) > 1 else ""
            lift = (
                f"{label}{fmt_pct(best.get('rel_lift'))} "
                f"{fmt_interval(best.get('rel_ci'), fmt_pct)}"
            )
            headline = fmt_pct(best.get("rel_lift"))
            significant = bool(best.get("significant"))
    srm = exp.get("srm")
    return ExperimentSummary(
        id=str(exp.get("id")),
        hypothesis=str(exp.get("hypothesis") or ""),
        type=str(exp.get("type") or "ab"),
        layer=str(exp.get("layer") or ""),
        status=str(exp.get("status") or "draft"),
        verdict=str(exp.get("verdict") or "running"),
        reason=str(exp.get("reason") or ""),
        start=exp.get("start"),
        days=exp.get("days"),
        users=users,
        primary_metric=metric,
        lift=lift,
        significant=significant,
        headline=headline,
        headline_label=headline_label,
        srm_flagged=isinstance(srm, Mapping) and bool(srm.get("flagged")),
        guardrails_breached=sum(bool(g.get("breached")) for g in exp.get("guardrails") or []),
    )


def metric_rows(exp: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The metric table (GrowthBook's reading order): per metric and treatment, the baseline,
    the variant, the relative lift with its interval, chance to win, then the p-values."""
    order = {"primary": 0, "secondary": 1}
    metrics = sorted(
        exp.get("metrics") or [], key=lambda m: (order.get(m.get("role"), 2), m.get("metric", ""))
    )
    rows = []
    for m in metrics:
        name = str(m.get("metric"))
        rows.append(
            {
                "metric": name,
                "role": m.get("role") or "",
                "variant": m.get("variant") or "",
                "control": fmt_value(name, m.get("control")),
                "value": fmt_value(name, m.get("value")),
                "rel. lift": fmt_pct(m.get("rel_lift")),
                "rel. 95% CI": fmt_interval(m.get("rel_ci"), fmt_pct),
                "abs. lift": fmt_abs(name, m.get("abs_lift")),
                "abs. 95% CI": fmt_interval(m.get("abs_ci"), lambda x, n=name: fmt_abs(n, x)),
                "chance to win": fmt_share(m.get("chance_to_beat")),
                "p": fmt_p(m.get("p_value")),
                "p (adjusted)": fmt_p(m.get("p_adjusted")),
                "always-valid p": fmt_p(m.get("always_valid_p")),
                "always-valid 95% CI": fmt_interval(m.get("rel_cs"), fmt_pct),
                "always-valid CI (abs.)": fmt_interval(
                    m.get("cs"), lambda x, n=name: fmt_abs(n, x)
                ),
                "CUPED": "yes" if m.get("cuped") else "no",
                "significant": bool(m.get("significant")),
                # a lift in the metric's good direction (dismissals: lower is better)
                "good": ((m.get("rel_lift") or 0.0) >= 0)
                == bool(m.get("higher_is_better", name not in LOWER_IS_BETTER)),
            }
        )
    return rows


def history_metrics(exp: Mapping[str, Any]) -> list[str]:
    """The metrics with a history, the primary first."""
    seen = list(dict.fromkeys(str(h.get("metric")) for h in exp.get("history") or []))
    primary = primary_metric(exp)
    if primary in seen:
        seen.remove(primary)
        seen.insert(0, primary)
    return seen


def history_rows(exp: Mapping[str, Any], metric: str) -> list[dict[str, Any]]:
    """``metric``'s estimate and its always-valid interval per report date and treatment,
    oldest first: the relative lift and its confidence sequence (``rel_lift``, ``cs``), or
    for an interleaving experiment the preference and its interval (``value``, ``ci``). Rows
    without a date are dropped."""
    rows = []
    for h in exp.get("history") or []:
        if h.get("metric") != metric or not h.get("date"):
            continue
        interval = h.get("cs") if h.get("cs") is not None else h.get("ci")
        interval = interval if isinstance(interval, Sequence) and len(interval) == 2 else [None] * 2
        rows.append(
            {
                "date": str(h["date"]),
                "variant": str(h.get("variant") or ""),
                "estimate": h["rel_lift"] if "rel_lift" in h else h.get("value"),
                "low": interval[0],
                "high": interval[1],
                "users": h.get("users"),
            }
        )
    return sorted(rows, key=lambda r: (r["date"], r["variant"]))


def history_domain(
    rows: Sequence[Mapping[str, Any]], baseline: float, *, share: bool = False
) -> tuple[tuple[float, float], bool]:
    """The y range of the over-time chart and whether it cuts an interval.

    Early on, with a handful of users, an always-valid interval can reach +60,000%: drawn in
    full it flattens the estimates into the zero line. The range shows the baseline, every
    estimate, and the intervals as far as three times the largest distance of an estimate from
    the baseline, and at least 100 points either side of it (a preference, a share, stays within
    0..1; a relative lift cannot fall below -100%). Returns ``((low, high), cut)``; ``cut`` says
    some interval reaches past the range (the page says so, the tooltip has the full interval).
    """

    def finite(key: str) -> list[float]:
        return [float(r[key]) for r in rows if _finite(r.get(key))]

    estimates, lows, highs = finite("estimate"), finite("low"), finite("high")
    reach = max([1.0] + [3 * abs(e - baseline) for e in estimates])
    floor, ceiling = (0.0, 1.0) if share else (-1.0, math.inf)
    low = max(min(lows + estimates + [baseline]), baseline - reach, floor)
    high = min(max(highs + estimates + [baseline]), baseline + reach, ceiling)
    if high - low < 1e-9:  # nothing but the baseline to show: a range around it
        low, high = max(baseline - 0.1, floor), min(baseline + 0.1, ceiling)
    cut = any(v < low for v in lows) or any(v > high for v in highs)
    return (low, high), cut


def guardrail_rows(
    exp: Mapping[str, Any], live: LiveGuardrails | None = None
) -> list[dict[str, Any]]:
    """The guardrail table: per guardrail and treatment the control, the variant, the change and
    the allowed increase; ``measured`` says whether the nightly report measured it or the API's
    /metrics do (``live``: the guardrails with those filled in, see :func:`live_guardrails`)."""
    rows = []
    for g in live.guardrails if live is not None else exp.get("guardrails") or []:
        name = str(g.get("metric"))
        rows.append(
            {
                "guardrail": name,
                "variant": g.get("variant") or "",
                "control": fmt_value(name, g.get("control")),
                "value": fmt_value(name, g.get("value")),
                "change": fmt_change(g.get("rel_change")),
                "allowed increase": fmt_pct(g.get("threshold")).lstrip("+"),
                "measured": g.get("live")
                or ("live" if g.get("measured") == "live" else "nightly report"),
                "breached": bool(g.get("breached")),
            }
        )
    return rows


def segment_rows(exp: Mapping[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for s in exp.get("segments") or []:
        name = str(s.get("metric"))
        rows.append(
            {
                "segment": s.get("segment") or "",
                "metric": name,
                "variant": s.get("variant") or "",
                "users": fmt_count(s.get("users")),
                "control": fmt_value(name, s.get("control")),
                "value": fmt_value(name, s.get("value")),
                "rel. lift": fmt_pct(s.get("rel_lift")),
                "rel. 95% CI": fmt_interval(s.get("rel_ci"), fmt_pct),
            }
        )
    return rows


def variant_rows(exp: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            "variant": v.get("name"),
            "control": "yes" if v.get("is_control") else "",
            "weight": fmt_share(v.get("weight")),
            "users": fmt_count(v.get("users")),
            "exposures": fmt_count(v.get("exposures")),
        }
        for v in exp.get("variants") or []
    ]


def srm_message(exp: Mapping[str, Any]) -> str | None:
    """The sample-ratio-mismatch warning, or None when the split is healthy (or untested)."""
    srm = exp.get("srm")
    if not isinstance(srm, Mapping) or not srm.get("flagged"):
        return None
    variants = exp.get("variants") or []
    observed = " vs ".join(f"{fmt_count(v.get('users'))} {v.get('name')}" for v in variants)
    planned = " / ".join(fmt_share(v.get("weight")) for v in variants)
    p = srm.get("p")
    p_text = f"{p:.1e}" if _finite(p) and p < 0.001 else fmt_p(p)
    return (
        f"Sample ratio mismatch: {observed} users where the split plans {planned} "
        f"(chi² {srm.get('chi2', float('nan')):.1f}, p = {p_text}; flagged below 0.001). "
        "The assignment or the exposure logging is broken: the results below cannot be trusted."
    )


def breached_guardrails(exp: Mapping[str, Any]) -> list[str]:
    return [
        f"{g.get('metric')} ({g.get('variant')}: {fmt_change(g.get('rel_change'))}, "
        f"allowed +{100 * float(g.get('threshold') or 0):.0f}%)"
        for g in exp.get("guardrails") or []
        if g.get("breached")
    ]


def today_rows(
    today: Mapping[str, Any] | None, live: Mapping[str, Mapping[str, int]] | None = None
) -> tuple[str | None, list[dict[str, Any]]]:
    """Today so far: (as of, rows) per variant, from the speed layer's live counts in Redis
    when there are any (fresher), else from the report's ``today``."""
    source: Mapping[str, Any] | None = None
    as_of: str | None = None
    if live:
        source, as_of = live, "now (the speed layer's live counts in Redis)"
    elif isinstance(today, Mapping) and today.get("variants"):
        source, as_of = today["variants"], str(today.get("as_of") or "")
    if not source:
        return None, []
    rows = []
    for variant, counts in source.items():
        impressions, clicks = counts.get("impressions"), counts.get("clicks")
        rows.append(
            {
                "variant": variant,
                "users": fmt_count(counts.get("users")),
                "impressions": fmt_count(impressions),
                "clicks": fmt_count(clicks),
                "purchases": fmt_count(counts.get("purchases")),
                "click rate": fmt_share(clicks / impressions) if impressions else "–",
            }
        )
    return as_of, rows


def interleaving_rows(il: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Wins per ranker (impressions whose clicks credit it more), ties, and (when reported)
    impressions without a click."""
    wins = il.get("wins") or {}
    decided = sum(int(v) for v in wins.values())
    rows = [
        {
            "ranker": ranker,
            "wins": fmt_count(n),
            "share of decided": fmt_share(n / decided) if decided else "–",
        }
        for ranker, n in wins.items()
    ]
    rows.append({"ranker": "tie", "wins": fmt_count(il.get("ties")), "share of decided": ""})
    if il.get("undecided") is not None:
        rows.append(
            {"ranker": "no click", "wins": fmt_count(il.get("undecided")), "share of decided": ""}
        )
    return rows


# ----------------------------------------------------------------------------------------
# Models


@dataclass(frozen=True)
class ModelVersion:
    model: str
    version: int
    created_at: str
    served: bool
    data: str
    metrics: dict[str, float | None]
    gate_value: float | None
    baselines: dict[str, float | None] = field(default_factory=dict)


OFFLINE_METRICS = ("ndcg", "recall", "map", "hit_rate", "coverage", "personalization", "novelty")


def model_versions(repository: Path) -> list[ModelVersion] | Missing:
    """Every published version of every model, newest first, with the offline metrics its
    evaluation recorded (``attune_metadata.json``) and whether ``serving.json`` serves it."""
    from attune.model_repository import ModelRepository, RepositoryError, version_folders

    hint = (
        "no model yet — train one with `attune models train` or run the retraining "
        "(`attune airflow trigger attune_retrain`)"
    )
    if not repository.is_dir():
        return Missing(f"no model repository at {repository}", hint)
    repo = ModelRepository(repository)
    try:
        serving = repo.serving()
    except (OSError, ValueError):
        serving = {}
    out: list[ModelVersion] = []
    for folder in sorted(p for p in repository.iterdir() if p.is_dir()):
        for version in sorted(version_folders(folder), reverse=True):
            try:
                meta = repo.metadata(folder.name, version)
            except (RepositoryError, OSError, ValueError):
                meta = {}
            evaluation = meta.get("evaluation") or {}
            cand = evaluation.get("candidate") or {}
            data = meta.get("data") or {}
            data_text = (
                f"{fmt_count(data.get('rows'))} / {fmt_count(data.get('users'))}" if data else "–"
            )
            served = (serving.get(folder.name) or {}).get("version")
            out.append(
                ModelVersion(
                    model=folder.name,
                    version=version,
                    created_at=str(meta.get("created_at") or ""),
                    served=served is not None and int(served) == version,
                    data=data_text,
                    metrics={k: cand.get(k) for k in OFFLINE_METRICS},
                    gate_value=cand.get("gate_value"),
                    baselines={
                        name: b.get("gate_value")
                        for name, b in (evaluation.get("baselines") or {}).items()
                        if isinstance(b, Mapping)
                    },
                )
            )
    if not out:
        return Missing(f"the model repository {repository} has no published version", hint)
    return out


def model_version_rows(versions: Iterable[ModelVersion]) -> list[dict[str, Any]]:
    rows = []
    for v in versions:
        row: dict[str, Any] = {
            "model": v.model,
            "version": v.version,
            "served": "served" if v.served else "",
            "created": v.created_at[:10],
            "rows / users": v.data,
        }
        for k in OFFLINE_METRICS:
            row[k] = _fmt_metric(v.metrics.get(k), 2 if k == "novelty" else 4)
        scored = [(n, float(b)) for n, b in v.baselines.items() if _finite(b)]
        best = max(scored, key=lambda nb: nb[1], default=None)
        row["baseline"] = f"{best[0]} {best[1]:.4f}" if best else "–"
        rows.append(row)
    return rows


def _fmt_metric(x: Any, digits: int = 4) -> str:
    return f"{x:.{digits}f}" if _finite(x) else "–"


def promotion_rows(repository: Path) -> list[dict[str, Any]]:
    """The promotion gate's decisions (``promotions.jsonl``), newest first."""
    from attune.model_repository import ModelRepository
    from models.repository import promotions

    try:
        decisions = promotions(ModelRepository(repository))
    except (OSError, ValueError):
        return []
    rows = []
    for d in reversed(decisions):
        rows.append(
            {
                "decided": str(d.get("decided_at") or "")[:19].replace("T", " "),
                "model": d.get("model"),
                "version": d.get("version") if d.get("version") is not None else "–",
                "promoted": "promoted" if d.get("promoted") else "refused",
                "metric": d.get("metric"),
                "candidate": _fmt_metric(d.get("candidate")),
                "served before": (
                    f"v{d['served_version']} {_fmt_metric(d.get('served'))}"
                    if d.get("served_version") is not None
                    else "–"
                ),
                "reason": d.get("reason") or "",
            }
        )
    return rows


def served_versions(rest_url: str, models: Sequence[str], timeout_s: float) -> dict[str, Any]:
    """What the model server serves, from its REST status API: ``{model: [(version, state)]}``
    plus ``error`` when it does not answer."""
    from attune.supervisor import NoAnswer, http_get

    out: dict[str, Any] = {"url": rest_url, "models": {}, "error": None}
    for name in models:
        try:
            status, body = http_get(f"{rest_url.rstrip('/')}/v1/models/{name}", timeout_s)
        except NoAnswer as exc:
            out["error"] = str(exc)
            return out
        if status != 200:
            out["models"][name] = [("–", f"HTTP {status}: {body[:120]}")]
            continue
        try:
            entries = json.loads(body).get("model_version_status") or []
        except ValueError:
            entries = []
        out["models"][name] = [(str(e.get("version")), str(e.get("state"))) for e in entries]
    return out


# ----------------------------------------------------------------------------------------
# Live: Prometheus /metrics, Redis


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


def parse_metrics(text: str) -> list[Sample]:
    """The samples of a Prometheus text exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    return [
        Sample(s.name, dict(s.labels), float(s.value))
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def total(samples: Iterable[Sample], name: str, **where: str) -> float:
    """The sum of the samples called ``name`` whose labels include ``where``."""
    return sum(
        s.value
        for s in samples
        if s.name == name and all(s.labels.get(k) == v for k, v in where.items())
    )


def buckets(samples: Iterable[Sample], name: str, **where: str) -> list[tuple[float, float]]:
    """A histogram's cumulative buckets ``(le, count)`` summed over the other labels."""
    acc: dict[float, float] = {}
    for s in samples:
        if s.name != f"{name}_bucket" or not all(s.labels.get(k) == v for k, v in where.items()):
            continue
        le = float(s.labels["le"])
        acc[le] = acc.get(le, 0.0) + s.value
    return sorted(acc.items())


def bucket_delta(
    before: Sequence[tuple[float, float]], after: Sequence[tuple[float, float]]
) -> list[tuple[float, float]]:
    """The buckets of the observations made between two scrapes."""
    prior = dict(before)
    return [(le, count - prior.get(le, 0.0)) for le, count in after]


def histogram_quantile(q: float, cumulative: Sequence[tuple[float, float]]) -> float | None:
    """The ``q`` quantile of a histogram the way Prometheus estimates it: find the bucket that
    holds the rank ``q * count`` and interpolate linearly inside it (the +Inf bucket answers its
    lower bound). None without observations."""
    if not cumulative:
        return None
    count = cumulative[-1][1]
    if count <= 0:
        return None
    rank = q * count
    prev_le, prev_count = 0.0, 0.0
    for le, c in cumulative:
        if c >= rank:
            if math.isinf(le):
                return prev_le
            if c == prev_count:
                return le
            return prev_le + (le - prev_le) * (rank - prev_count) / (c - prev_count)
        prev_le, prev_count = le, c
    return prev_le


@dataclass(frozen=True)
class Scrape:
    """Two scrapes of one ``/metrics`` endpoint ``seconds`` apart (None: not reachable)."""

    url: str
    before: list[Sample] | None
    after: list[Sample] | None
    seconds: float
    error: str | None = None
    taken_at: datetime | None = None  # when the second scrape answered (UTC)

    @property
    def up(self) -> bool:
        return self.after is not None


def scrape_twice(
    url: str, seconds: float, timeout_s: float = 1.0, headers: dict[str, str] | None = None
) -> Scrape:
    """GET ``url`` twice, ``seconds`` apart, with ``headers`` (the admin key /metrics needs);
    rates come from the difference."""
    import time

    from attune.supervisor import NoAnswer, http_get

    samples: list[list[Sample]] = []
    started: list[float] = []
    for i in range(2):
        if i:
            time.sleep(max(0.0, seconds - (time.monotonic() - started[0])))
        started.append(time.monotonic())
        try:
            status, body = http_get(url, timeout_s, headers)
        except NoAnswer as exc:
            return Scrape(url, None, None, seconds, str(exc))
        if status != 200:
            hint = (
                ": the admin key was refused; the dashboard and the service must share "
                "api.admin_keys_file (or set metrics_requires_admin: false)"
                if status in (401, 403)
                else ""
            )
            return Scrape(url, None, None, seconds, f"HTTP {status}{hint}")
        samples.append(parse_metrics(body))
    return Scrape(url, samples[0], samples[1], started[1] - started[0], None, datetime.now(UTC))


def collector_rates(scrape: Scrape) -> dict[str, float | None]:
    """Events accepted per second over the scrape window, and since the collector started."""
    if scrape.before is None or scrape.after is None:
        return {"events_per_s": None, "accepted_total": None, "rejected_total": None}
    name = "attune_collector_events_total"
    now = total(scrape.after, name, outcome="accepted")
    then = total(scrape.before, name, outcome="accepted")
    return {
        "events_per_s": (now - then) / scrape.seconds if scrape.seconds > 0 else None,
        "accepted_total": now,
        "rejected_total": total(scrape.after, name, outcome="rejected"),
    }


def api_latency(scrape: Scrape, q: float = 0.99) -> dict[str, Any]:
    """The API's ``q`` latency quantile (seconds) over the scrape window; the quantile since the
    API started when no request arrived in the window (``window`` says which)."""
    if scrape.before is None or scrape.after is None:
        return {"p": None, "window": None, "requests_per_s": None, "requests_total": None}
    name = "attune_api_request_seconds"
    after = buckets(scrape.after, name)
    delta = bucket_delta(buckets(scrape.before, name), after)
    in_window = delta[-1][1] if delta else 0.0
    if in_window > 0:
        p, window = histogram_quantile(q, delta), f"last {scrape.seconds:.0f} s"
    else:
        p, window = histogram_quantile(q, after), "since the API started"
    requests = total(scrape.after, "attune_api_requests_total")
    return {
        "p": p,
        "window": window,
        "requests_per_s": in_window / scrape.seconds if scrape.seconds > 0 else None,
        "requests_total": requests,
    }


# Live guardrails ----------------------------------------------------------------------------
#
# The operational guardrails (``api_latency_p99_ms``, ``error_rate``) live in the API's
# Prometheus metrics, which keep no history: the nightly report lists them ``"measured": "live"``
# with null values and leaves them out of its verdict. The experiment page fills them from the
# API's /metrics instead, per variant and since the API started.

VARIANT_SECONDS = "attune_api_variant_seconds"
VARIANT_REQUESTS = "attune_api_variant_requests_total"
API_START = "attune serve api"
LIVE_DOWN = "live: the API is not running"


def variant_requests(
    samples: Iterable[Sample], experiment: str, variants: Iterable[str], outcome: str | None = None
) -> dict[str, float]:
    """Recommendation requests per variant of ``experiment`` since the API started (every
    outcome, or only ``outcome``: ok, degraded or error)."""
    samples = list(samples)
    where = {"outcome": outcome} if outcome is not None else {}
    return {
        v: total(samples, VARIANT_REQUESTS, experiment=experiment, variant=v, **where)
        for v in variants
    }


def variant_guardrail_values(
    samples: Iterable[Sample], experiment: str, variants: Iterable[str]
) -> dict[str, dict[str, float | None]]:
    """The operational guardrails per variant of ``experiment``, since the API started:
    ``api_latency_p99_ms``, the 99th percentile of ``attune_api_variant_seconds`` estimated from
    its cumulative buckets as Prometheus' ``histogram_quantile`` does (linear inside the bucket
    that holds the rank, see :func:`histogram_quantile`), in milliseconds; ``error_rate``, the
    requests that failed over all of them (ok, degraded and error). None for a variant without
    requests."""
    samples, variants = list(samples), list(variants)
    latency: dict[str, float | None] = {}
    for v in variants:
        p = histogram_quantile(
            0.99, buckets(samples, VARIANT_SECONDS, experiment=experiment, variant=v)
        )
        latency[v] = 1000 * p if p is not None else None
    requests = variant_requests(samples, experiment, variants)
    errors = variant_requests(samples, experiment, variants, outcome="error")
    return {
        "api_latency_p99_ms": latency,
        "error_rate": {v: errors[v] / n if n > 0 else None for v, n in requests.items()},
    }


def relative_change(control: float | None, value: float | None) -> float | None:
    """``value`` against ``control`` as a relative change (``value / control - 1``), the rule of
    the verdict's operational guardrails: a control at 0 (no error at all) makes any error in
    the variant an unbounded increase, and none no change. None when either is missing."""
    if not _finite(control) or not _finite(value):
        return None
    if control > 0:
        return value / control - 1
    return 0.0 if value <= 0 else math.inf


def control_variant(exp: Mapping[str, Any]) -> str | None:
    """The experiment's control: the variant marked ``is_control``, else the first one."""
    variants = exp.get("variants") or []
    for v in variants:
        if v.get("is_control"):
            return str(v.get("name"))
    return str(variants[0].get("name")) if variants else None


@dataclass(frozen=True)
class LiveGuardrails:
    """An experiment's guardrails with the operational ones (``"measured": "live"`` in the
    report) filled from the API's /metrics: ``control``, ``value``, ``rel_change`` and
    ``breached`` as the report writes them for the others, and ``live`` saying where the
    numbers come from (since the API started, when it was scraped) or that the API does not
    answer."""

    guardrails: list[dict[str, Any]]
    up: bool = False  # the API answered
    scraped_at: str | None = None
    requests: dict[str, float] = field(default_factory=dict)  # variant -> since the API started

    @property
    def measured(self) -> bool:
        """Whether the experiment has an operational guardrail at all."""
        return measures_live(self.guardrails)

    @property
    def breached(self) -> list[dict[str, Any]]:
        return [g for g in self.guardrails if g.get("measured") == "live" and g.get("breached")]


def measures_live(guardrails: Iterable[Mapping[str, Any]]) -> bool:
    """Whether any of the report's ``guardrails`` is measured live (needs the API's /metrics)."""
    return any(g.get("measured") == "live" for g in guardrails)


def live_guardrails(exp: Mapping[str, Any], scrape: Scrape | None) -> LiveGuardrails:
    """``exp``'s guardrails with the live ones filled from ``scrape`` (the API's /metrics; None
    or down: left empty, marked :data:`LIVE_DOWN`). Each treatment is compared with the control
    (:func:`relative_change`) and breached when the change exceeds the declared
    ``max_relative_increase`` (the report's ``threshold``)."""
    guardrails = [dict(g) for g in exp.get("guardrails") or []]
    live = [g for g in guardrails if g.get("measured") == "live"]
    if not live:
        return LiveGuardrails(guardrails)
    if scrape is None or scrape.after is None:
        for g in live:
            g["live"] = LIVE_DOWN
        return LiveGuardrails(guardrails)
    experiment = str(exp.get("id"))
    control = control_variant(exp)
    names = [str(v.get("name")) for v in exp.get("variants") or []]
    names += [str(g.get("variant")) for g in live if str(g.get("variant")) not in names]
    values = variant_guardrail_values(scrape.after, experiment, names)
    requests = variant_requests(scrape.after, experiment, names)
    when = (
        f" (scraped {scrape.taken_at.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC)"
        if scrape.taken_at
        else ""
    )
    for g in live:
        variant = str(g.get("variant"))
        per_variant = values.get(str(g.get("metric")), {})
        c, v = per_variant.get(control or ""), per_variant.get(variant)
        change = relative_change(c, v)
        threshold = g.get("threshold")
        idle = [n for n in dict.fromkeys((control, variant)) if n and not requests.get(n)]
        g.update(
            control=c,
            value=v,
            rel_change=change,
            breached=change is not None and _finite(threshold) and change > threshold,
            live=(
                f"live: no request for {' or '.join(idle)} since the API started{when}"
                if idle
                else f"live, since the API started{when}"
            ),
        )
    return LiveGuardrails(guardrails, True, when.strip(" ()") or None, requests)


def live_breach_message(live: LiveGuardrails, verdict: str | None) -> str | None:
    """The error shown above the numbers when a live guardrail is breached: the report's verdict
    was reached without it."""
    if not live.breached:
        return None
    label = verdict_badge(verdict)[0]
    return (
        "Live guardrail breached: "
        + "; ".join(breached_guardrails({"guardrails": live.breached}))
        + f", measured on the API since it started ({live.scraped_at or 'just now'}). "
        f"The verdict in the report ({label}) does not include it: the nightly report cannot "
        "read the API's metrics."
    )


def normalise_live_counts(raw: Any) -> dict[str, dict[str, dict[str, int]]]:
    """The speed layer's live counts as ``{experiment: {variant: {count: n}}}``, whether the
    reader keys them by experiment then variant, by ``(experiment, variant)`` or by
    ``"experiment|variant"``."""
    out: dict[str, dict[str, dict[str, int]]] = {}
    if not isinstance(raw, Mapping):
        return out
    for key, value in raw.items():
        if isinstance(key, tuple) and len(key) == 2:
            exp, variant = str(key[0]), str(key[1])
            out.setdefault(exp, {})[variant] = {str(k): int(v) for k, v in value.items()}
        elif isinstance(key, str) and "|" in key:
            exp, variant = key.split("|", 1)
            out.setdefault(exp, {})[variant] = {str(k): int(v) for k, v in value.items()}
        elif isinstance(value, Mapping):
            for variant, counts in value.items():
                if isinstance(counts, Mapping):
                    out.setdefault(str(key), {})[str(variant)] = {
                        str(k): int(v) for k, v in counts.items() if _finite(v)
                    }
    return out


def click_rate_today(live: Mapping[str, Mapping[str, Mapping[str, int]]]) -> float | None:
    """Clicks / impressions over every experiment's variants today (None without
    impressions)."""
    impressions = sum(c.get("impressions", 0) for v in live.values() for c in v.values())
    clicks = sum(c.get("clicks", 0) for v in live.values() for c in v.values())
    return clicks / impressions if impressions else None


def ms_to_iso(ms: Any) -> str | None:
    if not _finite(ms):
        try:
            ms = float(ms)
        except (TypeError, ValueError):
            return None
    return datetime.fromtimestamp(float(ms) / 1000, UTC).isoformat(timespec="seconds")


def age_s(ms: Any, now: datetime) -> float | None:
    """Seconds from the epoch-milliseconds time ``ms`` to ``now``."""
    try:
        return now.timestamp() - float(ms) / 1000
    except (TypeError, ValueError):
        return None


def fmt_duration(seconds: Any) -> str:
    if not _finite(seconds):
        return "–"
    s = float(seconds)
    if abs(s) < 1:
        return f"{1000 * s:.0f} ms"
    if abs(s) < 120:
        return f"{s:.1f} s"
    if abs(s) < 7200:
        return f"{s / 60:.0f} min"
    if abs(s) < 2 * 86400:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.0f} days"


def speed_layer_freshness(status: Mapping[str, Any] | None) -> dict[str, Any]:
    """What the speed layer's status board says about the online query: its last micro-batch
    (an event waits at most about two batches before it is in Redis) and when that was."""
    q = ((status or {}).get("queries") or {}).get("online") or {}
    progress = q.get("progress") or {}
    writer = q.get("writer") or {}
    duration = (progress.get("durationMs") or {}).get("triggerExecution")
    return {
        "state": (status or {}).get("state"),
        "trigger": (status or {}).get("trigger"),
        "batch_s": duration / 1000 if _finite(duration) else None,
        "batch_at": progress.get("timestamp"),
        "input_rows_per_s": progress.get("inputRowsPerSecond"),
        "redis_ms": writer.get("last_redis_ms"),
    }


# ----------------------------------------------------------------------------------------
# Data quality


def quality_dates(rows: Iterable[Mapping[str, Any]], column: str) -> list[date]:
    return sorted({r[column] for r in rows if r.get(column) is not None}, reverse=True)


def quality_rows(rows: Iterable[Mapping[str, Any]], run_date: date) -> list[dict[str, Any]]:
    """The checks of one run, failed ones first."""
    picked = [r for r in rows if r.get("run_date") == run_date]
    picked.sort(key=lambda r: (bool(r.get("passed")), str(r.get("stage")), str(r.get("check"))))
    return [
        {
            "stage": r.get("stage"),
            "check": r.get("check"),
            "value": _fmt_number(r.get("value")),
            "threshold": _fmt_number(r.get("threshold")),
            "passed": bool(r.get("passed")),
            "table": "/".join(str(r.get("table_name") or "").rstrip("/").split("/")[-2:]),
            "detail": r.get("detail") or "",
        }
        for r in picked
    ]


def quality_history(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Checks passed and failed per run date, oldest first."""
    acc: dict[date, list[int]] = {}
    for r in rows:
        d = r.get("run_date")
        if d is None:
            continue
        pair = acc.setdefault(d, [0, 0])
        pair[0 if r.get("passed") else 1] += 1
    return [
        {"run_date": d.isoformat(), "passed": p, "failed": f} for d, (p, f) in sorted(acc.items())
    ]


def drift_rows(rows: Iterable[Mapping[str, Any]], as_of: date) -> tuple[list[dict], list[dict]]:
    """(sampled users per status, per-feature agreement) of one drift report."""
    picked = [r for r in rows if r.get("as_of_date") == as_of]
    statuses = [
        {"status": str(r["feature"]).split(":", 1)[1], "users": fmt_count(r.get("users"))}
        for r in picked
        if str(r.get("feature", "")).startswith("status:")
    ]
    features = [
        {
            "feature": r.get("feature"),
            "users compared": int(r.get("users") or 0),
            "equal": int(r.get("users_equal") or 0),
            "share equal": r.get("share_equal"),
            "mean diff": _fmt_number(r.get("mean_diff")),
            "max diff": _fmt_number(r.get("max_diff")),
        }
        for r in picked
        if not str(r.get("feature", "")).startswith("status:")
    ]
    return statuses, features


def _fmt_number(x: Any) -> str:
    if not _finite(x):
        return "–"
    if x == 0:
        return "0"
    if abs(x) < 1e-3 or abs(x) >= 1e6:
        return f"{x:.2e}"
    return f"{x:,.4g}"


def benchmarked_freshness(path: Path, trigger: str) -> dict[str, Any] | None:
    """The freshness p95 last measured by ``benchmarks/freshness.py`` for ``trigger`` (collector
    acknowledgement -> the event visible in Redis), or None when it has not been run."""
    try:
        results = json.loads(path.read_text())
        stats = (results.get("modes") or {}).get(trigger)
        if not isinstance(stats, Mapping) or not _finite(stats.get("p95_s")):
            return None
        return {"p95_s": float(stats["p95_s"]), "when": str(results.get("when") or "")}
    except (OSError, ValueError, AttributeError):
        return None


def short_error(error: str | None) -> str:
    """A connection error in a few words, for a table cell."""
    if not error:
        return ""
    text = error.lower()
    if "refused" in text:
        return "connection refused"
    if "timed out" in text or "timeout" in text:
        return "timed out"
    if "name or service not known" in text or "nodename" in text:
        return "unknown host"
    return error if len(error) <= 60 else error[:57] + "..."


# ----------------------------------------------------------------------------------------
# Bandits
#
# A bandit policy's state is one Redis hash of cumulative impressions and clicks per arm; its
# history another, of the same counts per arm and hour (attune.bandits.store: decode_counts,
# decode_history). Arms are whatever the state names: a policy name is opaque here, and its
# arms are not known to the configuration alone (a slot's arms are the variants of its rules).


@dataclass(frozen=True)
class ArmEstimate:
    """One arm of a bandit policy: its counts, the posterior mean of its click rate with the
    equal-tailed credible interval, and the posterior probability that it is the best arm."""

    arm: str
    impressions: int
    clicks: int
    rate: float
    low: float
    high: float
    p_best: float


def bandit_arm_estimates(
    counts: Mapping[str, Any], prior_alpha: float, prior_beta: float, level: float = 0.95
) -> list[ArmEstimate]:
    """Each arm's click rate under the policy's Beta prior, arms by name.

    ``counts``: arm -> :class:`attune.bandits.policies.ArmCounts` (``decode_counts``). The
    posterior is the one Thompson sampling draws from (``beta_posterior``): ``Beta(alpha + c,
    beta + max(n - c, 0))``, whose mean is ``(alpha + c) / (alpha + beta + n)`` (a click counted
    before its impression floors the failures at 0). The interval cuts ``(1 - level) / 2`` off
    each tail (``scipy.stats.beta.ppf``); ``p_best`` is the posterior probability that the arm
    has the highest rate (``beta_win_probabilities``, numerical integration to about 1e-5: the
    probability Thompson sampling shows the arm with, before the exploration floor). For a
    LinUCB policy these are context-free estimates from its counts, not what it decides by.
    """
    from scipy.stats import beta as beta_dist

    from attune.bandits.policies import (
        BetaState,
        ThompsonParams,
        beta_posterior,
        beta_win_probabilities,
    )

    if not 0.0 < level < 1.0:
        raise ValueError(f"credible level {level} must lie strictly between 0 and 1 (e.g. 0.95)")
    arms = sorted(counts)
    if not arms:
        return []
    state = BetaState.from_counts(arms, counts)
    a, b = beta_posterior(state, ThompsonParams(prior_alpha, prior_beta, 0.0))
    tail = (1.0 - level) / 2.0
    low = beta_dist.ppf(tail, a, b)
    high = beta_dist.ppf(1.0 - tail, a, b)
    p_best = beta_win_probabilities(a, b)
    return [
        ArmEstimate(
            arm=arm,
            impressions=int(state.impressions[i]),
            clicks=int(state.clicks[i]),
            rate=float(a[i] / (a[i] + b[i])),
            low=float(low[i]),
            high=float(high[i]),
            p_best=float(p_best[i]),
        )
        for i, arm in enumerate(arms)
    ]


def fmt_rate(x: Any) -> str:
    """A click rate: two decimals of a percent (rates are a few percent)."""
    return f"{100 * x:.2f}%" if _finite(x) else "–"


def bandit_arm_rows(estimates: Sequence[ArmEstimate]) -> list[dict[str, Any]]:
    """The per-arm table: counts, rate with its 95% credible interval, P(best); ``leading``
    (hidden) marks the arm most likely best."""
    top = max((e.p_best for e in estimates), default=None)
    return [
        {
            "arm": e.arm,
            "impressions": fmt_count(e.impressions),
            "clicks": fmt_count(e.clicks),
            "click rate": fmt_rate(e.rate),
            "95% credible interval": fmt_interval((e.low, e.high), fmt_rate),
            "P(best)": fmt_share(e.p_best),
            "leading": e.p_best == top,
        }
        for e in estimates
    ]


def bandit_totals(counts: Mapping[str, Any]) -> dict[str, Any]:
    """Impressions, clicks and the raw click rate (None without impressions) over all arms."""
    n = sum(int(c.impressions) for c in counts.values())
    k = sum(int(c.clicks) for c in counts.values())
    return {"impressions": n, "clicks": k, "rate": k / n if n else None}


HOUR_MS = 3_600_000


def bandit_allocation(
    history: Mapping[tuple[int, str], Any], max_hours: int = 24 * 14
) -> list[dict[str, Any]]:
    """The allocation over time: per hour, each arm's impressions, clicks and share of the
    hour's impressions (``history``: ``(hour start ms, arm) -> ArmCounts``, ``decode_history``).

    One row per hour and arm, hours oldest first, arms by name; every arm seen in those hours
    gets a row in every hour (0 when it was not shown), so the shares of an hour sum to 1 and a
    stacked chart stays whole. The hours: the ``max_hours`` hours up to the last one with
    impressions, from the first one with impressions among them; an hour in between without
    any (the speed layer stopped, no traffic) has every share 0 rather than being skipped, so a
    chart shows the gap instead of drawing across it. Clicks count in the hour they arrived in,
    impressions in theirs: an hour's clicks / impressions is only roughly that hour's rate.
    """
    shown: dict[int, int] = {}
    for (hour, _), c in history.items():
        shown[hour] = shown.get(hour, 0) + int(c.impressions)
    last = max((h for h, n in shown.items() if n > 0), default=None)
    if last is None:
        return []
    start = last - (max_hours - 1) * HOUR_MS
    first = min(h for h, n in shown.items() if n > 0 and h >= start)
    hours = sorted({*range(first, last + 1, HOUR_MS), *(h for h in shown if first <= h <= last)})
    arms = sorted({arm for h, arm in history if first <= h <= last})
    rows: list[dict[str, Any]] = []
    for hour in hours:
        total = shown.get(hour, 0)
        for arm in arms:
            c = history.get((hour, arm))
            n = int(c.impressions) if c is not None else 0
            rows.append(
                {
                    "hour": datetime.fromtimestamp(hour / 1000, UTC),
                    "arm": arm,
                    "impressions": n,
                    "clicks": int(c.clicks) if c is not None else 0,
                    "share": n / total if total else 0.0,
                }
            )
    return rows
