"""``attune experiments report``: every experiment's results, statistics and verdict on a date.

The nightly gold stage attributes what each recommendation led to and writes it per experiment,
variant, user and exposure day (``gold/experiment_users``; interleaved lists in
``gold/experiment_teams``; :mod:`spark.attribution`). For a report date ``D`` this command:

1. reads those rows up to ``D`` and the declarations (config ``experiments.file``,
   :func:`attune.experiments.spec.experiments_of`); the report covers every declared experiment
   and every experiment seen in the data, the latter flagged ``"declared": false`` and analysed
   with equal weights, ``ctr`` as the primary metric and no guardrails;
2. per A/B experiment, sums each user's rows up to a day into one observation per user
   (:class:`UserDays`, :meth:`UserDays.as_of`) and runs the analysis library
   (:func:`attune.experiments.verdict.analyse`: delta method, Welch / two-proportion tests,
   CUPED on ``pre_events``, chance to beat, sequential always-valid intervals, sample ratio
   mismatch, Holm / Benjamini-Hochberg, guardrails, verdict) once per day with exposures, from
   the first to ``D``: each look gets only the data up to its day, and the looks are the
   ``history`` the sequential inference builds on, so the report of ``D`` is the same whenever
   it is run and does not depend on earlier reports;
3. breaks the primary metric down by the users' segment (their RFM segment the day before
   their first exposure; by ``context.device`` when the lake has no segments): fixed-horizon
   intervals without CUPED, for exploring, not for deciding;
4. for interleaving experiments, the users' preference between the two rankers
   (:func:`attune.experiments.interleaving.analyse_tallies` over the clicks credited per team);
5. writes the JSON the dashboard reads to ``<experiments.reports_dir>/<D>.json`` and
   ``latest.json`` (when ``D`` is the latest date reported), the Delta table
   ``gold/experiment_results`` (one row per report date, experiment, variant and metric;
   partition ``report_date = D`` replaced on a re-run) and prints a table, verdicts first.

Operational guardrails (``api_latency_p99_ms``, ``error_rate``) come from the API's Prometheus
metrics, which keep no history a nightly batch could read: the report lists them with
``"measured": "live"`` (the dashboard's live page shows them) and they take no part in the batch
verdict. The running status comes from the state in Redis (``attune experiments start/stop``),
judged at the end of ``D``; when Redis cannot be read, from the data (traffic on ``D``:
``running``, earlier only: ``stopped``). Live counts of the day in progress are not in the
report (``"today": null``): the dashboard reads them from Redis itself.

The second half of this module keeps the plain per-variant totals of
``gold/experiment_metrics`` (:func:`experiment_report`) that the notebooks show.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from datetime import UTC, date, datetime, time
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from attune.experiments import stats
from attune.experiments.interleaving import InterleavingResult, UserTally, analyse_tallies
from attune.experiments.spec import INTERLEAVED, ExperimentSpec
from attune.experiments.state import RunningState, status_of
from attune.experiments.verdict import (
    METRIC_KINDS,
    AnalysisPlan,
    ExperimentAnalysis,
    VariantData,
    analyse,
    json_safe,
)

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from attune.config import AttuneConfig
    from attune.experiments.spec import ExperimentsFile
    from spark.tables import Lake

log = logging.getLogger(__name__)

COUNT_COLUMNS = ("exposures", "clicks", "carts", "purchases", "revenue", "dwell_s", "dismissals")
"""The per-user counts of ``gold/experiment_users`` the analysis sums."""
USER_COLUMNS = (
    "variant",
    "user",
    "exposure_date",
    *COUNT_COLUMNS,
    "pre_events",
    "segment",
    "device",
)
"""The columns the report reads from ``gold/experiment_users``."""
UNKNOWN = "unknown"
"""The segment (or device) of users without one."""
LIVE_NOTE = (
    "measured live from the API's Prometheus metrics (the dashboard's live page shows them); a "
    "nightly batch cannot read their history, so they take no part in this verdict"
)
UNDECLARED_NOTE = (
    "not declared in the experiments file: analysed with equal weights, ctr as the primary "
    "metric and no guardrails; declare it (config experiments.file) for its own plan"
)
UNDECLARED_SECONDARY = ("click_rate", "purchase_rate")


class NoMetrics(RuntimeError):
    """Gold has nothing to report on (yet); the message says what to run."""


def end_of(day: date) -> datetime:
    """The last instant of ``day`` (UTC): "now" for a report of that date."""
    return datetime.combine(day, time(23, 59, 59, 999999), tzinfo=UTC)


# ----------------------------------------------------------------------------------------
# Per-user data


@dataclass(frozen=True, eq=False)
class UserTotals:
    """Per user of each variant, everything attributed up to a day: one element per user
    (a user exposed to two variants is one element under each)."""

    variant: NDArray[np.object_]
    counts: Mapping[str, NDArray[np.float64]]
    pre_events: NDArray[np.float64]
    segment: NDArray[np.object_]
    device: NDArray[np.object_]

    @property
    def size(self) -> int:
        return int(self.variant.size)

    def users(self) -> dict[str, int]:
        """Users per variant."""
        names, n = np.unique(self.variant.astype(str), return_counts=True)
        return {str(k): int(v) for k, v in zip(names, n, strict=True)}

    def variant_data(
        self,
        variants: Iterable[str] | None = None,
        *,
        cuped: bool = True,
        where: NDArray[np.bool_] | None = None,
    ) -> dict[str, VariantData]:
        """The analysis library's input: per variant (``variants``, default all), its users'
        counts and, with ``cuped``, ``pre_events`` as the covariate; ``where`` selects users."""
        mask = np.ones(self.size, dtype=bool) if where is None else where
        names = sorted(set(self.variant[mask].tolist())) if variants is None else list(variants)
        out: dict[str, VariantData] = {}
        for name in names:
            sel = mask & (self.variant == name)
            if not sel.any():
                continue
            columns: dict[str, Any] = {c: self.counts[c][sel] for c in COUNT_COLUMNS}
            if cuped:
                columns["pre_period"] = self.pre_events[sel]
            out[name] = VariantData.from_columns(columns)
        return out


@dataclass(frozen=True, eq=False)
class UserDays:
    """One experiment's rows of ``gold/experiment_users`` (one per variant, user and exposure
    day) as parallel arrays, indexed by user key (a variant and a user)."""

    key: NDArray[np.int64]
    """Per row: the index of its (variant, user) in the ``key_*`` arrays."""
    day: NDArray[np.datetime64]
    counts: Mapping[str, NDArray[np.float64]]
    key_variant: NDArray[np.object_]
    key_user: NDArray[np.object_]
    key_pre_events: NDArray[np.float64]
    key_segment: NDArray[np.object_]
    key_device: NDArray[np.object_]

    @classmethod
    def from_rows(cls, rows: Iterable[Mapping[str, Any]]) -> UserDays:
        """From rows with the :data:`USER_COLUMNS` (``pre_events``, ``segment`` and ``device``
        are the user's, the same on each of their rows)."""
        keys: dict[tuple[str, str], int] = {}
        key: list[int] = []
        days: list[date] = []
        counts: dict[str, list[float]] = {c: [] for c in COUNT_COLUMNS}
        k_variant: list[str] = []
        k_user: list[str] = []
        k_pre: list[float] = []
        k_segment: list[str | None] = []
        k_device: list[str | None] = []
        for r in rows:
            pair = (str(r["variant"]), str(r["user"]))
            index = keys.get(pair)
            if index is None:
                index = keys[pair] = len(keys)
                k_variant.append(pair[0])
                k_user.append(pair[1])
                k_pre.append(float(r["pre_events"] or 0))
                k_segment.append(r["segment"])
                k_device.append(r["device"])
            key.append(index)
            days.append(r["exposure_date"])
            for c in COUNT_COLUMNS:
                counts[c].append(float(r[c] or 0))
        return cls(
            key=np.asarray(key, dtype=np.int64),
            day=np.asarray(days, dtype="datetime64[D]"),
            counts={c: np.asarray(v, dtype=np.float64) for c, v in counts.items()},
            key_variant=np.asarray(k_variant, dtype=object),
            key_user=np.asarray(k_user, dtype=object),
            key_pre_events=np.asarray(k_pre, dtype=np.float64),
            key_segment=np.asarray(k_segment, dtype=object),
            key_device=np.asarray(k_device, dtype=object),
        )

    @property
    def days(self) -> list[date]:
        """The exposure days, in order."""
        return [d.astype(object) for d in np.unique(self.day)]

    def as_of(self, day: date) -> UserTotals:
        """Each user's rows with ``exposure_date <= day`` summed (users first exposed later
        are not there yet)."""
        rows = self.day <= np.datetime64(day, "D")
        k = self.key[rows]
        n = self.key_variant.size
        present = np.bincount(k, minlength=n) > 0
        return UserTotals(
            variant=self.key_variant[present],
            counts={
                c: np.bincount(k, weights=self.counts[c][rows], minlength=n)[present].astype(
                    np.float64
                )
                for c in COUNT_COLUMNS
            },
            pre_events=self.key_pre_events[present],
            segment=self.key_segment[present],
            device=self.key_device[present],
        )


@dataclass(frozen=True)
class TeamRow:
    """One interleaved impression of ``gold/experiment_teams``: who saw it, when, and the
    clicks credited to each team shown."""

    user: str
    exposure_date: date
    team_clicks: Mapping[str, int]


def interleaving_result(
    rows: Iterable[TeamRow], teams: tuple[str, str], upto: date, alpha: float
) -> InterleavingResult | None:
    """The rankers' comparison over the impressions up to ``upto`` (None without any).

    Each impression is won by the team with more credited clicks, a tie with as many (one or
    more), undecided without any (the credit rule of :mod:`attune.experiments.interleaving`,
    applied to the counts the batch credited); users are tallied and tested by
    :func:`~attune.experiments.interleaving.analyse_tallies`.
    """
    tallies: dict[str, UserTally] = {}
    for r in rows:
        if r.exposure_date > upto:
            continue
        tally = tallies.setdefault(r.user, UserTally())
        tally.impressions += 1
        first, second = r.team_clicks.get(teams[0], 0), r.team_clicks.get(teams[1], 0)
        if first > second:
            tally.wins_first += 1
        elif second > first:
            tally.wins_second += 1
        elif first > 0:
            tally.ties += 1
    if not tallies:
        return None
    return analyse_tallies(list(tallies.values()), teams, alpha)


# ----------------------------------------------------------------------------------------
# Segments


def metric_value(metric: str, data: VariantData | None) -> float | None:
    """A variant's raw value of ``metric`` (None without users or exposures)."""
    if data is None or data.users == 0:
        return None
    if METRIC_KINDS[metric][0] == "ratio":
        num, den = data.ratio_parts(metric)
        return float(num.sum() / den.sum()) if den.sum() > 0 else None
    return float(data.per_user(metric).mean())


def compare_variants(
    metric: str, control: VariantData, treatment: VariantData, alpha: float
) -> stats.Comparison | None:
    """A fixed-horizon comparison of two variants' users on ``metric``, without CUPED (None
    when either side has fewer than 2 users or no exposures)."""
    if control.users < 2 or treatment.users < 2:
        return None
    kind = METRIC_KINDS[metric][0]
    try:
        if kind == "ratio":
            return stats.ratio_test(
                stats.ratio_summary(*control.ratio_parts(metric)),
                stats.ratio_summary(*treatment.ratio_parts(metric)),
                alpha,
            )
        if kind == "binary":
            return stats.two_proportion_test(
                int(control.per_user(metric).sum()),
                control.users,
                int(treatment.per_user(metric).sum()),
                treatment.users,
                alpha,
            )
        return stats.welch_test(
            stats.mean_summary(control.per_user(metric)),
            stats.mean_summary(treatment.per_user(metric)),
            alpha,
        )
    except ValueError:
        return None


def segment_breakdown(
    totals: UserTotals, control: str, arms: Sequence[str], metric: str, alpha: float
) -> list[dict[str, Any]]:
    """The report's ``segments``: per segment and treatment arm, ``metric`` of the arm's and the
    control's users in the segment, with the relative lift and its interval (fixed horizon, no
    CUPED: a look at where an effect comes from, not a test to decide on).

    Segments are the users' RFM ``segment`` when any user has one, else their ``device``
    (``dimension`` says which); users without one are ``unknown``.
    """
    dimension = "segment" if any(s is not None for s in totals.segment) else "device"
    source = totals.segment if dimension == "segment" else totals.device
    labels = np.asarray([UNKNOWN if s is None else str(s) for s in source], dtype=object)
    out: list[dict[str, Any]] = []
    for label in sorted(set(labels.tolist())):
        data = totals.variant_data([control, *arms], cuped=False, where=labels == label)
        c = data.get(control)
        for arm in arms:
            t = data.get(arm)
            cmp = None if c is None or t is None else compare_variants(metric, c, t, alpha)
            out.append(
                {
                    "dimension": dimension,
                    "segment": label,
                    "variant": arm,
                    "metric": metric,
                    "users": 0 if t is None else t.users,
                    "control_users": 0 if c is None else c.users,
                    "control": metric_value(metric, c),
                    "value": metric_value(metric, t),
                    "rel_lift": None if cmp is None else _finite(cmp.rel_lift),
                    "rel_ci": None if cmp is None else [_finite(x) for x in cmp.rel_ci],
                    "p_value": None if cmp is None else _finite(cmp.p_value),
                }
            )
    return out


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


# ----------------------------------------------------------------------------------------
# One experiment


@dataclass(frozen=True)
class ExperimentInput:
    """What the report knows about one experiment."""

    experiment: str
    decl: ExperimentSpec | None
    users: UserDays | None = None
    teams: Sequence[TeamRow] = ()
    state: RunningState | None = None
    state_known: bool = False
    """Whether the running state could be read (else the status comes from the data)."""


def undeclared_plan(experiment: str, variants: Iterable[str], alpha: float) -> AnalysisPlan:
    """The plan of an experiment seen in the data but not declared (see :data:`UNDECLARED_NOTE`):
    the control is the variant named ``control``, else the first in alphabetical order."""
    names = sorted(set(variants))
    control = "control" if "control" in names else names[0]
    ordered = [control, *(n for n in names if n != control)]
    return AnalysisPlan(
        experiment_id=experiment,
        control=control,
        weights=dict.fromkeys(ordered, 1.0),
        primary_metric="ctr",
        secondary_metrics=UNDECLARED_SECONDARY,
        alpha=alpha,
    )


def declared_plan(decl: ExperimentSpec, state: RunningState | None, alpha: float) -> AnalysisPlan:
    """The declaration's plan; the weights users were assigned by are the ones recorded when the
    experiment started (they differ from the file's after an edit not yet forced)."""
    plan = AnalysisPlan.from_declaration(decl, alpha)
    if state is not None and set(state.allocation.weights) == set(decl.variants):
        recorded = {n: float(state.allocation.weights[n]) for n in decl.variants}
        if recorded != dict(plan.weights) and sum(recorded.values()) > 0:
            plan = AnalysisPlan.from_declaration(decl, alpha, weights=recorded)
    return plan


def experiment_status(inp: ExperimentInput, report_date: date, days: Sequence[date]) -> str:
    """draft | scheduled | running | stopped: the recorded state judged at the end of the
    date, or, without it (Redis unreadable, or an undeclared experiment), the data's: traffic
    on the date is ``running``, only before it ``stopped``, none ``draft``."""
    if inp.decl is not None and inp.state_known:
        return status_of(inp.decl, inp.state, end_of(report_date))
    if report_date in days:
        return "running"
    return "stopped" if days else "draft"


def analyse_experiment(
    inp: ExperimentInput, report_date: date, alpha: float, *, cuped: bool = True, seed: int = 0
) -> dict[str, Any]:
    """The report's object of one experiment (the design's JSON; see the module docstring)."""
    decl = inp.decl
    users = inp.users
    user_days = [] if users is None else [d for d in users.days if d <= report_date]
    team_days = sorted({r.exposure_date for r in inp.teams if r.exposure_date <= report_date})
    days = sorted(set(user_days) | set(team_days))
    kind = decl.type if decl is not None else ("interleaving" if inp.teams else "ab")
    first = days[0] if days else None
    planned_start = None if decl is None or decl.start is None else decl.start.date()
    start = planned_start or first
    extra: dict[str, Any] = {
        "status": experiment_status(inp, report_date, days),
        "declared": decl is not None,
        "start": None if start is None else start.isoformat(),
        "first_exposure": None if first is None else first.isoformat(),
        "days": 0 if first is None else (report_date - first).days + 1,
        "today": None,
    }
    notes = [] if decl is not None else [UNDECLARED_NOTE]
    if extra["status"] in ("draft", "scheduled") and report_date in days:
        notes.append(
            f"exposures on {report_date} although its recorded status is {extra['status']}: "
            "was it started (`attune experiments start`) under another Redis prefix?"
        )
    if kind == "interleaving":
        return _interleaving_entry(inp, report_date, alpha, extra, notes, days)

    seen = set() if users is None else set(users.key_variant.tolist())
    if decl is not None:
        plan = declared_plan(decl, inp.state, alpha)
    elif seen:
        plan = undeclared_plan(inp.experiment, seen, alpha)
    else:  # pragma: no cover - an undeclared experiment is only known from its data
        raise ValueError(f"experiment {inp.experiment!r}: neither declared nor in the data")
    unknown = sorted(seen - set(plan.weights))
    if unknown:
        notes.append(
            f"variant(s) {', '.join(unknown)} in the data but not declared: left out (renamed "
            "or removed while the experiment ran?)"
        )
    arms = [n for n in plan.weights if n != plan.control and plan.weights[n] > 0]
    stop = None if decl is None else decl.stop
    history: tuple[Mapping[str, Any], ...] = ()
    result: ExperimentAnalysis | None = None
    skipped: list[str] = []
    for day in [d for d in user_days if d < report_date] + [report_date]:
        totals = users.as_of(day) if users is not None else None
        data = {} if totals is None else totals.variant_data(plan.weights, cuped=cuped)
        segments: list[dict[str, Any]] = []
        if day == report_date and totals is not None and totals.size:
            segments = segment_breakdown(totals, plan.control, arms, plan.primary_metric, alpha)
        try:
            result = analyse(
                plan,
                data,
                None,
                history,
                as_of=day.isoformat(),
                stop_passed=stop is not None and stop <= end_of(day),
                segments=segments,
                seed=seed,
            )
        except ValueError as exc:
            if day == report_date:
                raise
            # an early look the library cannot analyse (e.g. no variance yet) is no look
            log.info("experiment %s: no look on %s (%s)", inp.experiment, day, exc)
            skipped.append(day.isoformat())
            continue
        history = result.history
    assert result is not None
    if skipped:
        notes.append(f"no look on {', '.join(skipped)}: the data of those days was too thin")
    if users is not None:
        several = _users_in_several_variants(users, report_date)
        if several:
            notes.append(
                f"{several} user(s) were exposed to more than one variant (counted in each)"
            )
    entry = result.to_json(**extra)
    for g in entry["guardrails"]:
        live = METRIC_KINDS[g["metric"]][0] == "operational"
        g["measured"] = "live" if live else "batch"
        if live:
            g["breached"] = None
            g["note"] = LIVE_NOTE
    entry["notes"] = notes
    return entry


def _users_in_several_variants(users: UserDays, upto: date) -> int:
    """Users with rows under more than one variant up to ``upto``."""
    keys = np.unique(users.key[users.day <= np.datetime64(upto, "D")])
    if keys.size == 0:
        return 0
    _, n = np.unique(users.key_user[keys].astype(str), return_counts=True)
    return int((n > 1).sum())


def _interleaving_entry(
    inp: ExperimentInput,
    report_date: date,
    alpha: float,
    extra: dict[str, Any],
    notes: list[str],
    days: Sequence[date],
) -> dict[str, Any]:
    """The report's object of an interleaving experiment: the users' preference between the
    two rankers, its history by day and a verdict from it."""
    decl = inp.decl
    if decl is not None:
        names = list(decl.variants)
    else:
        names = sorted({t for r in inp.teams for t in r.team_clicks})
    result: InterleavingResult | None = None
    history: list[dict[str, Any]] = []
    teams: tuple[str, str] | None = (names[0], names[1]) if len(names) == 2 else None
    if teams is None:
        notes.append(f"expected the lists of 2 rankers, saw teams {names}: nothing to compare")
    else:
        for day in [d for d in days if d <= report_date]:
            r = interleaving_result(inp.teams, teams, day, alpha)
            if r is None:
                continue
            history.append(
                {
                    "date": day.isoformat(),
                    "variant": teams[1],
                    "metric": "preference",
                    "value": r.test.preference,
                    "ci": list(r.test.ci),
                    "p_value": r.test.p_value,
                    "users": r.test.users,
                }
            )
            result = r  # the last look: all impressions up to the date
    verdict, reason = _interleaving_verdict(result, teams)
    notes.append(
        "the preference test is fixed-horizon (not corrected for looking every day): decide "
        "once the planned users have been reached"
    )
    users = inp.users.as_of(report_date) if inp.users is not None else None
    variants = [
        {
            "name": name,
            "weight": 1.0,
            "users": n,
            "exposures": int(users.counts["exposures"][users.variant == name].sum())
            if users is not None
            else 0,
            "is_control": False,
        }
        for name, n in (users.users() if users is not None else {INTERLEAVED: 0}).items()
    ]
    entry: dict[str, Any] = {
        "id": inp.experiment,
        "hypothesis": "" if decl is None else decl.hypothesis,
        "type": "interleaving",
        "layer": "" if decl is None else decl.layer,
        "verdict": verdict,
        "reason": reason,
        "stop": None if decl is None or decl.stop is None else decl.stop.date().isoformat(),
        "as_of": report_date.isoformat(),
        "alpha": alpha,
        "mde": None if decl is None else decl.mde,
        "planned_users_per_arm": None,
        "variants": variants,
        "srm": None,
        "metrics": [],
        "guardrails": [],
        "history": history,
        "segments": [],
        "interleaving": None if result is None else result.to_json(),
        **extra,
        "notes": notes,
    }
    return json_safe(entry)


def _interleaving_verdict(
    result: InterleavingResult | None, teams: tuple[str, str] | None
) -> tuple[str, str]:
    if result is None or teams is None:
        return "running", "waiting for data: no interleaved impression yet"
    t = result.test
    level = f"{1 - result.alpha:.0%}"
    share = (
        f"{teams[1]} preferred in {_pct(t.preference)} of each user's decided impressions "
        f"({level} CI {_pct(t.ci[0])}..{_pct(t.ci[1])}, p = {t.p_value:.2g}, {t.users:,} users)"
    )
    if result.winner == teams[1]:
        return "ship", share
    if result.winner == teams[0]:
        return "stop", f"the control ranker {teams[0]} is better: {share}"
    return "running", f"no significant preference yet: {share}"


def _pct(x: float | None, signed: bool = False) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    return f"{100 * x:+.1f}%" if signed else f"{100 * x:.1f}%"


def failed_entry(inp: ExperimentInput, report_date: date, exc: Exception) -> dict[str, Any]:
    """The object of an experiment whose analysis raised: the error, and no numbers."""
    days = [] if inp.users is None else [d for d in inp.users.days if d <= report_date]
    days = sorted(
        set(days) | {r.exposure_date for r in inp.teams if r.exposure_date <= report_date}
    )
    decl = inp.decl
    return {
        "id": inp.experiment,
        "hypothesis": "" if decl is None else decl.hypothesis,
        "type": ("interleaving" if inp.teams else "ab") if decl is None else decl.type,
        "layer": "" if decl is None else decl.layer,
        "declared": decl is not None,
        "status": experiment_status(inp, report_date, days),
        "verdict": "running",
        "reason": f"analysis failed: {type(exc).__name__}: {exc}",
        "error": f"{type(exc).__name__}: {exc}",
        "first_exposure": days[0].isoformat() if days else None,
        "days": (report_date - days[0]).days + 1 if days else 0,
        "variants": [],
        "srm": None,
        "metrics": [],
        "guardrails": [],
        "history": [],
        "segments": [],
        "interleaving": None,
        "today": None,
        "notes": [],
    }


def build_report(
    inputs: Sequence[ExperimentInput],
    report_date: date,
    alpha: float,
    generated_at: str,
    *,
    cuped: bool = True,
) -> dict[str, Any]:
    """The whole report (the dashboard's JSON): one object per experiment, in input order.
    An experiment whose analysis fails gets :func:`failed_entry`; the others are still
    reported."""
    experiments = []
    for inp in inputs:
        try:
            experiments.append(analyse_experiment(inp, report_date, alpha, cuped=cuped))
        except (ValueError, ArithmeticError) as exc:
            log.exception("experiment %s: analysis failed", inp.experiment)
            experiments.append(failed_entry(inp, report_date, exc))
    return {
        "report_date": report_date.isoformat(),
        "generated_at": generated_at,
        "operational_guardrails": LIVE_NOTE,
        "experiments": experiments,
    }


# ----------------------------------------------------------------------------------------
# The results table and the text


RESULT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("report_date", "DATE"),
    ("experiment", "STRING"),
    ("type", "STRING"),
    ("declared", "BOOLEAN"),
    ("status", "STRING"),
    ("verdict", "STRING"),
    ("reason", "STRING"),
    ("variant", "STRING"),
    ("metric", "STRING"),
    ("role", "STRING"),
    ("users", "BIGINT"),
    ("control_users", "BIGINT"),
    ("exposures", "BIGINT"),
    ("control", "DOUBLE"),
    ("value", "DOUBLE"),
    ("abs_lift", "DOUBLE"),
    ("abs_ci_low", "DOUBLE"),
    ("abs_ci_high", "DOUBLE"),
    ("rel_lift", "DOUBLE"),
    ("rel_ci_low", "DOUBLE"),
    ("rel_ci_high", "DOUBLE"),
    ("p_value", "DOUBLE"),
    ("p_adjusted", "DOUBLE"),
    ("always_valid_p", "DOUBLE"),
    ("cs_low", "DOUBLE"),
    ("cs_high", "DOUBLE"),
    ("rel_cs_low", "DOUBLE"),
    ("rel_cs_high", "DOUBLE"),
    ("chance_to_beat", "DOUBLE"),
    ("expected_loss", "DOUBLE"),
    ("cuped", "BOOLEAN"),
    ("significant", "BOOLEAN"),
    ("threshold", "DOUBLE"),
    ("breached", "BOOLEAN"),
    ("measured", "STRING"),
    ("srm_p", "DOUBLE"),
    ("srm_flagged", "BOOLEAN"),
)
RESULTS_DDL = ", ".join(f"{name} {kind}" for name, kind in RESULT_COLUMNS)
"""``gold/experiment_results``, partitioned by ``report_date``: one row per experiment,
variant and metric. ``role``: ``variant`` (metric ``users``: the variant's users, ``control``
the users its weight expects), ``primary`` / ``secondary`` (a metric of a treatment arm against
the control), ``guardrail`` (``rel_lift`` is the relative change, ``measured`` batch or live)
or ``interleaving`` (metric ``preference``: the share of decided impressions the second ranker
won per user, against 0.5). Every row carries its experiment's verdict."""


def _pair(v: Any, i: int) -> Any:
    return None if v is None else v[i]


def result_rows(doc: Mapping[str, Any]) -> list[tuple[Any, ...]]:
    """``gold/experiment_results`` rows (:data:`RESULT_COLUMNS` order) from a report."""
    report_date = date.fromisoformat(doc["report_date"])
    out: list[tuple[Any, ...]] = []
    for e in doc["experiments"]:
        srm = e.get("srm") or {}
        base = {
            "report_date": report_date,
            "experiment": e["id"],
            "type": e.get("type"),
            "declared": e.get("declared"),
            "status": e.get("status"),
            "verdict": e.get("verdict"),
            "reason": e.get("reason"),
            "srm_p": srm.get("p"),
            "srm_flagged": srm.get("flagged"),
        }
        rows: list[dict[str, Any]] = []
        expected = srm.get("expected") or {}
        for v in e.get("variants", []):
            rows.append(
                {
                    "variant": v["name"],
                    "metric": "users",
                    "role": "variant",
                    "users": v["users"],
                    "exposures": v["exposures"],
                    "value": float(v["users"]),
                    "control": expected.get(v["name"]),
                }
            )
        for m in e.get("metrics", []):
            rows.append(
                {
                    **{k: m.get(k) for k in ("variant", "metric", "role", "users")},
                    **{k: m.get(k) for k in ("control_users", "control", "value", "abs_lift")},
                    **{k: m.get(k) for k in ("rel_lift", "p_value", "p_adjusted", "cuped")},
                    **{k: m.get(k) for k in ("always_valid_p", "chance_to_beat")},
                    **{k: m.get(k) for k in ("expected_loss", "significant")},
                    "abs_ci_low": _pair(m.get("abs_ci"), 0),
                    "abs_ci_high": _pair(m.get("abs_ci"), 1),
                    "rel_ci_low": _pair(m.get("rel_ci"), 0),
                    "rel_ci_high": _pair(m.get("rel_ci"), 1),
                    "cs_low": _pair(m.get("cs"), 0),
                    "cs_high": _pair(m.get("cs"), 1),
                    "rel_cs_low": _pair(m.get("rel_cs"), 0),
                    "rel_cs_high": _pair(m.get("rel_cs"), 1),
                    "measured": "batch",
                }
            )
        for g in e.get("guardrails", []):
            rows.append(
                {
                    **{k: g.get(k) for k in ("variant", "metric", "control", "value")},
                    **{k: g.get(k) for k in ("threshold", "breached", "measured")},
                    "role": "guardrail",
                    "rel_lift": g.get("rel_change"),
                    "rel_cs_low": _pair(g.get("rel_cs"), 0),
                    "rel_cs_high": _pair(g.get("rel_cs"), 1),
                }
            )
        il = e.get("interleaving")
        if il:
            rows.append(
                {
                    "variant": il["rankers"][1],
                    "metric": "preference",
                    "role": "interleaving",
                    "users": il.get("decided_users"),
                    "value": il.get("preference"),
                    "control": 0.5,
                    "rel_ci_low": _pair(il.get("ci"), 0),
                    "rel_ci_high": _pair(il.get("ci"), 1),
                    "p_value": il.get("p_value"),
                    "significant": il.get("significant"),
                    "measured": "batch",
                }
            )
        for r in rows:
            full = {**base, **r}
            out.append(tuple(_cell(full.get(n), kind) for n, kind in RESULT_COLUMNS))
        if not rows:
            out.append(tuple(_cell(base.get(n), kind) for n, kind in RESULT_COLUMNS))
    return out


def _cell(value: Any, kind: str) -> Any:
    if value is None:
        return None
    if kind == "DOUBLE":
        return _finite(float(value))
    if kind == "BIGINT":
        return int(value)
    if kind == "BOOLEAN":
        return bool(value)
    return value


RATE_METRICS = frozenset(n for n, (k, _) in METRIC_KINDS.items() if k in ("ratio", "binary"))


def _value(metric: str, x: float | None) -> str:
    if x is None:
        return "-"
    return _pct(x) if metric in RATE_METRICS else f"{x:,.2f}"


def _interval(ci: Sequence[float | None] | None, signed: bool = True) -> str:
    if not ci or ci[0] is None or ci[1] is None:
        return "-"
    return f"{_pct(ci[0], signed)}..{_pct(ci[1], signed)}"


def format_results(doc: Mapping[str, Any]) -> str:
    """The report as text: every experiment's verdict first, then per experiment its warnings
    (sample ratio mismatch, guardrails) above its numbers."""
    experiments = doc["experiments"]
    day = doc["report_date"]
    if not experiments:
        return f"experiments on {day}: none declared, none in the data"
    lines = [f"experiments on {day}", f"  {'verdict':<14} {'experiment':<24} {'status':<10} reason"]
    for e in experiments:
        flag = "" if e.get("declared", True) else " (undeclared)"
        lines.append(
            f"  {str(e['verdict']).upper():<14} {e['id'] + flag:<24} {e.get('status')!s:<10} "
            f"{e['reason']}"
        )
    for e in experiments:
        lines.append("")
        since = e.get("first_exposure")
        head = f"{e['id']} ({e.get('type')}"
        if e.get("layer"):
            head += f", layer {e['layer']}"
        head += f", since {since}, day {e.get('days')})" if since else ", no exposure yet)"
        lines.append(f"{head}: {str(e['verdict']).upper()}")
        srm = e.get("srm") or {}
        if srm.get("flagged"):
            lines.append(
                f"  ! sample ratio mismatch (chi-square p = {srm['p']:.2g}): see the reason"
            )
        for warning in e.get("warnings") or []:  # e.g. variants allocated by a bandit
            lines.append(f"  ! {warning}")
        for g in e.get("guardrails", []):
            if g.get("breached"):
                lines.append(
                    f"  ! guardrail {g['metric']} breached in {g['variant']}: "
                    f"{_pct(g.get('rel_change'), True)} (allowed +{100 * g['threshold']:.0f}%)"
                )
        for note in e.get("notes", []):
            lines.append(f"  note: {note}")
        if e.get("variants"):
            lines.append(
                "  variants: "
                + ", ".join(
                    f"{v['name']}{' (control)' if v.get('is_control') else ''} "
                    f"{v['users']:,} users, {v['exposures']:,} exposures"
                    for v in e["variants"]
                )
            )
        if e.get("metrics"):
            lines.append(
                f"    {'metric':<24} {'variant':<14} {'control':>9} {'value':>9} {'lift':>8} "
                f"{'CI':>17} {'always-valid CI':>17} {'P(beat)':>8} {'p adj':>7}"
            )
            for m in e["metrics"]:
                name = f"{m['metric']} ({m['role']})"
                beat = m.get("chance_to_beat")
                p_adj = m.get("p_adjusted")
                lines.append(
                    f"    {name:<24} {m['variant']:<14} {_value(m['metric'], m['control']):>9} "
                    f"{_value(m['metric'], m['value']):>9} {_pct(m.get('rel_lift'), True):>8} "
                    f"{_interval(m.get('rel_ci')):>17} {_interval(m.get('rel_cs')):>17} "
                    f"{'-' if beat is None else f'{100 * beat:.0f}%':>8} "
                    f"{'-' if p_adj is None else f'{p_adj:.3f}':>7}"
                )
        for g in e.get("guardrails", []):
            if g.get("measured") == "live":
                lines.append(f"    guardrail {g['metric']} ({g['variant']}): measured live")
            else:
                state = "BREACHED" if g.get("breached") else "ok"
                lines.append(
                    f"    guardrail {g['metric']} ({g['variant']}): "
                    f"{_pct(g.get('rel_change'), True)} (allowed +{100 * g['threshold']:.0f}%): "
                    f"{state}"
                )
        il = e.get("interleaving")
        if il:
            wins = ", ".join(f"{k} {v:,}" for k, v in il["wins"].items())
            lines.append(
                f"    interleaving: {il['impressions']:,} impressions, {il['users']:,} users; "
                f"won: {wins}, ties {il['ties']:,}; preference for {il['preference_of']} "
                f"{_pct(il.get('preference'))} ({_interval(il.get('ci'), False)}, "
                f"p = {'-' if il.get('p_value') is None else format(il['p_value'], '.2g')})"
            )
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------
# I/O


def gold_built(spark: SparkSession, lake: Lake, report_date: date) -> None:
    """Raise :class:`NoMetrics` unless the gold stage has run for ``report_date``."""
    from pyspark.sql import functions as F

    from spark.tables import is_table, read_table

    fix = f"run the nightly batch first: `attune batch run --date {report_date}`"
    if not is_table(spark, lake.gold_training_sets):
        raise NoMetrics(
            f"gold has not been built yet (no table at {lake.gold_training_sets}): {fix}"
        )
    built = (
        read_table(spark, lake.gold_training_sets)
        .where(F.col("as_of_date") == F.lit(report_date))
        .limit(1)
        .count()
    )
    if not built:
        raise NoMetrics(
            f"gold has not been built for {report_date} yet (gold/training_sets has no row for "
            f"it): {fix}"
        )


def latest_gold_date(spark: SparkSession, lake: Lake) -> date | None:
    """The latest date the gold stage has built (``gold/training_sets``)."""
    from pyspark.sql import functions as F

    from spark.tables import first_row, is_table, read_table

    if not is_table(spark, lake.gold_training_sets):
        return None
    value = first_row(read_table(spark, lake.gold_training_sets).agg(F.max("as_of_date")))[0]
    return value if isinstance(value, date) else None


def read_user_days(spark: SparkSession, lake: Lake, report_date: date) -> dict[str, UserDays]:
    """``gold/experiment_users`` up to ``report_date``, per experiment (empty without the
    table: no experiment has had traffic yet)."""
    from pyspark.sql import functions as F

    from spark.tables import is_table, read_table

    if not is_table(spark, lake.gold_experiment_users):
        return {}
    rows = (
        read_table(spark, lake.gold_experiment_users)
        .where(F.col("exposure_date") <= F.lit(report_date))
        .select("experiment", *USER_COLUMNS)
        .collect()
    )
    grouped: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        grouped.setdefault(r["experiment"], []).append(r.asDict())
    return {name: UserDays.from_rows(rs) for name, rs in sorted(grouped.items())}


def read_team_rows(spark: SparkSession, lake: Lake, report_date: date) -> dict[str, list[TeamRow]]:
    """``gold/experiment_teams`` up to ``report_date``, per experiment."""
    from pyspark.sql import functions as F

    from spark.tables import is_table, read_table

    if not is_table(spark, lake.gold_experiment_teams):
        return {}
    rows = (
        read_table(spark, lake.gold_experiment_teams)
        .where(F.col("exposure_date") <= F.lit(report_date))
        .select("experiment", "user", "exposure_date", "team_clicks")
        .collect()
    )
    out: dict[str, list[TeamRow]] = {}
    for r in rows:
        out.setdefault(r["experiment"], []).append(
            TeamRow(r["user"], r["exposure_date"], dict(r["team_clicks"] or {}))
        )
    return out


def read_states(cfg: AttuneConfig) -> tuple[dict[str, RunningState], bool]:
    """The running state in Redis, and whether it could be read (a report without Redis
    derives the status from the data; see :func:`experiment_status`)."""
    from attune.experiments.state import StateStore

    try:
        return StateStore.from_config(cfg).read(), True
    except Exception as exc:  # redis errors: connection, timeout, ...
        log.warning("experiments: running state unreadable (%s): status taken from the data", exc)
        return {}, False


def report_inputs(
    decls: ExperimentsFile,
    users: Mapping[str, UserDays],
    teams: Mapping[str, Sequence[TeamRow]],
    states: Mapping[str, RunningState],
    state_known: bool,
) -> list[ExperimentInput]:
    """Every declared experiment (file order), then the undeclared ones in the data."""
    declared = [e.id for e in decls.experiments]
    undeclared = sorted((set(users) | set(teams)) - set(declared))
    return [
        ExperimentInput(
            experiment=name,
            decl=decls.get(name),
            users=users.get(name),
            teams=teams.get(name, ()),
            state=states.get(name),
            state_known=state_known and decls.get(name) is not None,
        )
        for name in [*declared, *undeclared]
    ]


def write_report(
    cfg: AttuneConfig,
    spark: SparkSession,
    lake: Lake,
    doc: Mapping[str, Any],
    report_date: date,
) -> tuple[str, int]:
    """``<reports_dir>/<D>.json``, ``latest.json`` (unless it holds a later date) and the
    partition ``report_date = D`` of ``gold/experiment_results``; returns (JSON path, version)."""
    from spark.tables import sql_date, write_table

    folder = cfg.paths.resolve(cfg.experiments.reports_dir)
    folder.mkdir(parents=True, exist_ok=True)
    text = json.dumps(doc, indent=2, allow_nan=False) + "\n"
    path = folder / f"{report_date.isoformat()}.json"
    path.write_text(text)
    latest = folder / "latest.json"
    try:
        current = json.loads(latest.read_text()).get("report_date", "") if latest.exists() else ""
    except (OSError, ValueError):
        current = ""
    if str(current) <= report_date.isoformat():
        tmp = latest.with_suffix(".json.tmp")
        tmp.write_text(text)
        tmp.replace(latest)
    written = write_table(
        spark.createDataFrame(result_rows(doc), RESULTS_DDL),
        lake.gold_experiment_results,
        partition_by="report_date",
        replace_where=f"report_date = {sql_date(report_date)}",
    )
    return str(path), written.version


def run_report(
    cfg: AttuneConfig, spark: SparkSession, report_date: date | None, generated_at: datetime
) -> tuple[date, dict[str, Any], str, int]:
    """Read, analyse and write the report of ``report_date`` (default: the latest date gold
    was built for)."""
    from attune.events import format_time
    from attune.experiments.spec import experiments_of
    from spark.tables import Lake

    lake = Lake.from_config(cfg)
    decls = experiments_of(cfg)  # a bad file fails before any Spark work
    if report_date is None:
        report_date = latest_gold_date(spark, lake)
        if report_date is None:
            raise NoMetrics(
                f"gold has not been built yet (no table at {lake.gold_training_sets}): run the "
                "nightly batch first (`attune batch run --date YYYY-MM-DD`)"
            )
    gold_built(spark, lake, report_date)
    users = read_user_days(spark, lake, report_date)
    teams = read_team_rows(spark, lake, report_date)
    states, known = read_states(cfg)
    inputs = report_inputs(decls, users, teams, states, known)
    doc = build_report(
        inputs,
        report_date,
        cfg.experiments.alpha,
        format_time(generated_at),
        cuped=cfg.experiments.cuped_days > 0,
    )
    path, version = write_report(cfg, spark, lake, doc, report_date)
    return report_date, doc, path, version


def cmd_report(cfg: AttuneConfig, args: argparse.Namespace) -> int:
    """``attune experiments report [--date D] [--json]``: 0 written, 1 nothing to report on (or
    failed)."""
    from attune.config import ConfigError
    from attune.progress import Heartbeat, spark_tasks
    from spark.command import batch_session, failed, parse_date, setup_logging

    setup_logging()
    wanted = parse_date(args.date) if args.date else None
    try:
        # Spark work of no known total: elapsed time and Spark tasks every 10 s, no ETA
        with (
            batch_session(cfg, "attune-experiments-report") as spark,
            Heartbeat(
                "experiments report",
                lambda m: print(m, file=sys.stderr, flush=True),
                every=10.0,
                detail=lambda: spark_tasks(spark),
            ),
        ):
            report_date, doc, path, version = run_report(cfg, spark, wanted, datetime.now(UTC))
    except NoMetrics as exc:
        print(f"attune experiments report: {exc}", file=sys.stderr)
        return 1
    except ConfigError:
        raise
    except Exception as exc:
        return failed(
            "experiments report",
            exc,
            "The report replaces its date's rows, so running it again is safe",
        )
    if args.json:
        print(json.dumps({**doc, "json": path}, indent=2))
    else:
        print(format_results(doc))
        print(
            f"\nwritten: {path} and gold/experiment_results (report_date {report_date}, v{version})"
        )
    return 0


# ----------------------------------------------------------------------------------------
# Daily counts per variant (gold/experiment_metrics): the notebooks' first look
#
# ``gold/experiment_metrics`` counts, per day, experiment and variant, impressions, clicks and
# purchases carrying the variant's recommendation ids (:func:`spark.gold.experiment_metrics`;
# not attributed, no users). :func:`experiment_report` sums them for a date and since the
# experiment's first day with traffic, for the experiments with traffic on the date (the
# pseudo-experiment ``none`` left out): ``impressions``, ``items_shown``, ``recommendations``,
# ``clicks``, ``add_to_carts``, ``purchases``, ``revenue``; rates from the sums (``ctr``,
# ``conversion_rate``; None without impressions); ``user_days``, daily distinct users summed over
# the days (the daily table holds no user ids).

NO_EXPERIMENT = "none"
"""What :func:`spark.gold.experiment_metrics` calls ids that match no experiment."""


@dataclass(frozen=True)
class DailyMetrics:
    """One row of ``gold/experiment_metrics`` (the columns the report uses)."""

    event_date: date
    experiment: str
    variant: str
    impressions: int = 0
    items_shown: int = 0
    recommendations: int = 0
    clicks: int = 0
    add_to_carts: int = 0
    purchases: int = 0
    revenue: float = 0.0
    users: int = 0


COUNTS = (
    "impressions",
    "items_shown",
    "recommendations",
    "clicks",
    "add_to_carts",
    "purchases",
)


@dataclass(frozen=True)
class Totals:
    """Counts summed over some days, and the rates computed from them."""

    days: int = 0
    impressions: int = 0
    items_shown: int = 0
    recommendations: int = 0
    clicks: int = 0
    add_to_carts: int = 0
    purchases: int = 0
    revenue: float = 0.0
    user_days: int = 0

    @property
    def ctr(self) -> float | None:
        return self.clicks / self.impressions if self.impressions else None

    @property
    def conversion_rate(self) -> float | None:
        return self.purchases / self.impressions if self.impressions else None

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ctr": self.ctr, "conversion_rate": self.conversion_rate}


def total(rows: Iterable[DailyMetrics]) -> Totals:
    """The sum of ``rows`` (``days``: the distinct dates among them)."""
    rows = list(rows)
    sums = {name: sum(int(getattr(r, name) or 0) for r in rows) for name in COUNTS}
    return Totals(
        days=len({r.event_date for r in rows}),
        revenue=round(float(sum(float(r.revenue or 0.0) for r in rows)), 6),
        user_days=sum(int(r.users or 0) for r in rows),
        **sums,
    )


@dataclass(frozen=True)
class VariantResult:
    variant: str
    day: Totals
    cumulative: Totals


@dataclass(frozen=True)
class ExperimentResult:
    experiment: str
    start_date: date
    variants: list[VariantResult]


def experiment_report(rows: Iterable[DailyMetrics], report_date: date) -> list[ExperimentResult]:
    """The experiments running on ``report_date``, each variant's day and cumulative totals
    (see the module docstring). Rows after ``report_date`` are ignored."""
    upto = [r for r in rows if r.event_date <= report_date and r.experiment != NO_EXPERIMENT]
    running = sorted({r.experiment for r in upto if r.event_date == report_date})
    out = []
    for name in running:
        mine = [r for r in upto if r.experiment == name]
        variants = []
        for variant in sorted({r.variant for r in mine}):
            theirs = [r for r in mine if r.variant == variant]
            variants.append(
                VariantResult(
                    variant,
                    total(r for r in theirs if r.event_date == report_date),
                    total(theirs),
                )
            )
        out.append(ExperimentResult(name, min(r.event_date for r in mine), variants))
    return out


def _pct2(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def format_report(results: Sequence[ExperimentResult], report_date: date) -> str:
    """The report as text tables: per experiment, the day and the cumulative block."""
    if not results:
        return f"experiments on {report_date}: none had traffic that day"
    header = (
        f"    {'variant':<16} {'impressions':>11} {'clicks':>8} {'CTR':>8} {'carts':>7} "
        f"{'purchases':>9} {'conversion':>10} {'revenue':>11} {'user-days':>9}"
    )
    lines = [f"experiments on {report_date}"]
    for e in results:
        days = (report_date - e.start_date).days + 1
        lines.append(f"{e.experiment} (since {e.start_date}, day {days})")
        for label, pick in (
            (f"  on {report_date}", lambda v: v.day),
            (f"  since {e.start_date}", lambda v: v.cumulative),
        ):
            lines += [label, header]
            for v in e.variants:
                t: Totals = pick(v)
                lines.append(
                    f"    {v.variant:<16} {t.impressions:>11,} {t.clicks:>8,} "
                    f"{_pct2(t.ctr):>8} {t.add_to_carts:>7,} {t.purchases:>9,} "
                    f"{_pct2(t.conversion_rate):>10} {t.revenue:>11,.2f} {t.user_days:>9,}"
                )
    return "\n".join(lines)


def latest_built_date(spark: SparkSession, lake: Lake) -> date | None:
    """The latest date the gold stage has built (``gold/training_sets``, one row per run),
    else the latest date with experiment metrics."""
    from pyspark.sql import functions as F

    from spark.tables import is_table, read_table

    for path, column in (
        (lake.gold_training_sets, "as_of_date"),
        (lake.gold_experiment_metrics, "event_date"),
    ):
        if is_table(spark, path):
            row = read_table(spark, path).agg(F.max(column)).first()
            if row is not None and row[0] is not None:
                return row[0]
    return None


def read_metrics(spark: SparkSession, lake: Lake, report_date: date) -> list[DailyMetrics]:
    """The metrics of the experiments with traffic on ``report_date``, up to that date; raises
    :class:`NoMetrics` when gold has none, or has not been built for the date."""
    from pyspark.sql import functions as F

    from spark.tables import is_table, read_table

    if not is_table(spark, lake.gold_experiment_metrics):
        raise NoMetrics(
            f"gold has no experiment metrics yet (no table at {lake.gold_experiment_metrics}): "
            f"run the nightly batch first: `attune batch run --date {report_date}`"
        )
    if is_table(spark, lake.gold_training_sets):
        gold_built(spark, lake, report_date)
    metrics = read_table(spark, lake.gold_experiment_metrics).where(
        F.col("event_date") <= F.lit(report_date)
    )
    running = metrics.where(F.col("event_date") == F.lit(report_date)).select("experiment")
    names = [f.name for f in fields(DailyMetrics)]
    rows = metrics.join(running.distinct(), "experiment").select(*names).collect()
    return [DailyMetrics(**{n: r[n] for n in names}) for r in rows]
