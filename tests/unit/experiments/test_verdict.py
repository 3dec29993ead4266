"""analyse(): per-variant users in, metrics, SRM, guardrails, a verdict and the report JSON out."""

from __future__ import annotations

import itertools
import json
import math
from datetime import UTC, datetime
from types import SimpleNamespace

import numpy as np
import pytest

from attune.experiments import simulate as sim
from attune.experiments import stats as S
from attune.experiments.verdict import (
    AnalysisPlan,
    ExperimentAnalysis,
    Guardrail,
    VariantData,
    analyse,
)

WEIGHTS = {"control": 1.0, "treatment": 1.0}


def users(n: int, clickers: int, exposures: int = 1, pre: np.ndarray | None = None) -> VariantData:
    """n users with ``exposures`` each, the first ``clickers`` of them clicked once."""
    clicks = np.zeros(n)
    clicks[:clickers] = 1
    return VariantData.from_columns(
        {"exposures": np.full(n, float(exposures)), "clicks": clicks, "pre_period": pre}
    )


def plan(**kw) -> AnalysisPlan:  # type: ignore[no-untyped-def]
    base = {"experiment_id": "exp1", "control": "control", "weights": WEIGHTS}
    return AnalysisPlan(**(base | kw))


def test_worked_example_click_rate_ships() -> None:
    # control 100/1000 clickers, treatment 130/1000: the two-proportion example of
    # test_stats (p = 0.035488, relative CI 1.7 %..66.2 %). The planned sample is these 1000
    # users per arm, so this single look is at the horizon and alpha is spent at once: the
    # always-valid test is the z test with the Wald se, z = 0.03 / 0.0142513 = 2.105069,
    # p = 0.035285, and the confidence sequence is the 95 % Wald interval.
    out = analyse(
        plan(primary_metric="click_rate", planned_users_per_arm=1000),
        {"control": users(1000, 100), "treatment": users(1000, 130)},
    )
    m = out.metrics[0]
    assert (m.metric, m.role, m.variant, m.cuped) == ("click_rate", "primary", "treatment", False)
    assert (m.control, m.value) == (0.1, 0.13)
    assert m.p_value == pytest.approx(0.035488, abs=1e-6)
    assert m.always_valid_p == pytest.approx(0.035285, rel=1e-3)
    assert m.p_adjusted == m.always_valid_p  # Holm over one arm changes nothing
    assert m.cs == pytest.approx((0.002068, 0.057932), abs=1e-6)
    assert m.rel_cs == pytest.approx((0.016984, 0.661776), abs=1e-5)
    assert m.info_fraction == 1.0
    assert m.significant and m.chance_to_beat > 0.95
    assert out.verdict == "ship"
    assert out.reason == "treatment +30.0% click_rate (always-valid 95% CI +1.7%..+66.2%)"


def test_ratio_metric_uses_the_delta_method() -> None:
    # ctr with one exposure per user is the click rate, but tested as a ratio of user sums:
    # control R = 0.1, num var = 100 * 0.9^2 + 900 * 0.1^2 = 90 / 999; den var 0, so the
    # delta variance is 0.0900901 / 1000 / 1^2 = 9.00901e-5
    out = analyse(plan(), {"control": users(1000, 100), "treatment": users(1000, 130)})
    m = out.metrics[0]
    assert m.metric == "ctr"
    assert m.se == pytest.approx(math.sqrt(90 / 999 / 1000 + 0.13 * 0.87 * 1000 / 999 / 1000))


def test_srm_stops_the_experiment_first() -> None:
    # 1200 / 1000 against 50/50: expected 1100 each, chi2 = 2 * 100^2 / 1100 = 18.18,
    # p = 2.0e-5 < 0.001
    out = analyse(plan(), {"control": users(1200, 120), "treatment": users(1000, 300)})
    assert out.srm.chi2 == pytest.approx(18.1818, abs=1e-4)
    assert out.verdict == "stop"
    assert out.reason.startswith("sample ratio mismatch: users control 1,200, treatment 1,000")


def test_user_level_guardrail_breach_stops() -> None:
    # dismissals: control 1 per 10 exposures, treatment 2 per 10: +100 % against +5 % allowed
    rng = np.random.default_rng(0)
    n = 5000
    data = {}
    for name, rate in (("control", 0.1), ("treatment", 0.2)):
        exposures = np.full(n, 10.0)
        data[name] = VariantData.from_columns(
            {
                "exposures": exposures,
                "clicks": rng.binomial(10, 0.1, n),
                "dismissals": rng.binomial(10, rate, n),
            }
        )
    p = plan(guardrails=(Guardrail("dismiss_rate", 0.05),))
    out = analyse(p, data)
    g = out.guardrails[0]
    assert g.breached and g.rel_cs is not None and g.rel_cs[0] > 0.05
    assert out.verdict == "stop"
    assert out.reason.startswith("guardrail breached: dismiss_rate +")


def test_small_guardrail_noise_is_not_a_breach() -> None:
    sim_ab = sim.simulate_ab(sim.UserModel(), 2000, 1, WEIGHTS, seed=5)
    p = plan(guardrails=(Guardrail("dismiss_rate", 0.05),))
    out = analyse(p, sim_ab.days[-1])
    assert not out.guardrails[0].breached


def test_operational_guardrail_compares_values() -> None:
    # p99 latency 100 ms -> 115 ms: +15 % against +10 % allowed
    p = plan(guardrails=(Guardrail("api_latency_p99_ms", 0.10), Guardrail("error_rate", 0.10)))
    values = {"api_latency_p99_ms": {"control": 100.0, "treatment": 115.0}}
    out = analyse(p, {"control": users(1000, 100), "treatment": users(1000, 100)}, values)
    lat, err = out.guardrails
    assert lat.rel_change == pytest.approx(0.15) and lat.breached
    assert err.value is None and not err.breached  # no value: nothing to compare
    assert out.verdict == "stop"
    assert "api_latency_p99_ms +15.0% in treatment (allowed +10%)" in out.reason


def test_waiting_for_data() -> None:
    out = analyse(plan(), {"control": users(1, 0)})
    assert out.verdict == "running"
    assert out.reason.startswith("waiting for data")
    assert out.metrics == ()


def test_no_difference_when_the_planned_sample_rules_out_the_mde() -> None:
    # A/A with 20,000 users per arm planned at 20,000: the interval on the relative lift of
    # ctr is about +-3 %, inside the MDE of 10 %
    day = sim.simulate_ab(sim.UserModel(), 40_000, 1, WEIGHTS, seed=6).days[-1]
    out = analyse(plan(mde=0.10, planned_users_per_arm=19_000), day)
    assert out.verdict == "no_difference", out.reason
    assert out.reason.startswith("no effect of 10% or more on ctr: treatment")


def test_running_while_collecting() -> None:
    day = sim.simulate_ab(sim.UserModel(), 1000, 1, WEIGHTS, seed=7).days[-1]
    out = analyse(plan(planned_users_per_arm=10_000), day)
    assert out.verdict == "running"
    assert out.reason.startswith("collecting data: ")
    assert "of 10,000 planned users per arm" in out.reason


def test_planned_sample_from_the_baseline_of_a_binary_metric() -> None:
    # baseline 0.10, +10 %: the worked example of test_stats, 14,751 users per arm
    out = analyse(
        plan(primary_metric="click_rate", baseline=0.10, mde=0.10),
        {"control": users(500, 50), "treatment": users(500, 55)},
    )
    assert out.planned_users_per_arm == 14751
    assert out.metrics[0].info_fraction == pytest.approx(1000 / (2 * 14751))


def test_daily_analysis_carries_the_sequence_and_ships_a_real_effect() -> None:
    # +20 % clicks per exposure, 600 users a day for 10 days; each day's analysis gets the
    # history of the previous report. The always-valid p-value may only fall.
    days = sim.simulate_ab(sim.UserModel(), 600, 10, WEIGHTS, {"treatment": 1.2}, seed=8).days
    p = plan(planned_users_per_arm=3000, secondary_metrics=("click_rate", "revenue"))
    history: tuple = ()
    ps, verdicts = [], []
    for k, day in enumerate(days):
        out = analyse(p, day, history=history, as_of=f"2026-12-{k + 1:02d}")
        history = out.history
        primary = next(m for m in out.metrics if m.role == "primary")
        ps.append(primary.always_valid_p)
        verdicts.append(out.verdict)
        assert primary.cuped  # the simulator gives a pre-period covariate
    assert all(b <= a * (1 + 1e-3) for a, b in itertools.pairwise(ps))
    assert verdicts[-1] == "ship"
    assert verdicts[0] == "running"
    # one history row per day, metric and arm; re-running a day replaces its rows
    assert len(history) == 10 * 3
    again = analyse(p, days[-1], history=history, as_of="2026-12-10")
    assert len(again.history) == 30
    assert again.metrics == out.metrics


def test_multiplicity_holm_across_arms() -> None:
    weights = {"control": 1.0, "b": 1.0, "c": 1.0}
    data = {
        "control": users(4000, 400),
        "b": users(4000, 470),
        "c": users(4000, 420),
    }
    out = analyse(plan(weights=weights, primary_metric="click_rate"), data)
    prim = [m for m in out.metrics if m.role == "primary"]
    assert [m.variant for m in prim] == ["b", "c"]
    assert tuple(m.p_adjusted for m in prim) == pytest.approx(
        S.holm([m.always_valid_p for m in prim])
    )


def test_to_json_has_the_report_shape_and_is_strict_json() -> None:
    day = sim.simulate_ab(sim.UserModel(), 2000, 1, WEIGHTS, {"treatment": 1.1}, seed=9).days[-1]
    p = plan(
        secondary_metrics=("purchase_rate", "dwell_s"),
        guardrails=(Guardrail("dismiss_rate", 0.05), Guardrail("api_latency_p99_ms", 0.1)),
        hypothesis="h",
        layer="recs",
        start="2026-12-01",
    )
    out = analyse(
        p,
        day,
        {"api_latency_p99_ms": {"control": 80.0, "treatment": 82.0}},
        as_of="2026-12-01",
        segments=[{"segment": "active", "metric": "ctr"}],
    )
    doc = out.to_json(status="running", days=1, today=None)
    json.dumps(doc, allow_nan=False)
    for key in (
        "id", "hypothesis", "type", "layer", "status", "verdict", "reason", "start", "stop",
        "days", "planned_users_per_arm", "variants", "srm", "metrics", "guardrails", "history",
        "segments", "interleaving", "today",
    ):  # fmt: skip
        assert key in doc, key
    assert doc["variants"][0] == {
        "name": "control",
        "weight": 0.5,
        "users": day["control"].users,
        "exposures": int(day["control"].exposures.sum()),
        "is_control": True,
    }
    assert set(doc["srm"]) >= {"chi2", "p", "flagged"}
    metric_keys = {
        "metric", "role", "variant", "control", "value", "abs_lift", "abs_ci", "rel_lift",
        "rel_ci", "p_value", "p_adjusted", "always_valid_p", "cs", "chance_to_beat",
        "expected_loss", "cuped", "significant",
    }  # fmt: skip
    assert [m["metric"] for m in doc["metrics"]] == ["ctr", "purchase_rate", "dwell_s"]
    assert all(metric_keys <= set(m) for m in doc["metrics"])
    assert {g["metric"] for g in doc["guardrails"]} == {"dismiss_rate", "api_latency_p99_ms"}
    g_keys = {"metric", "variant", "control", "value", "rel_change", "threshold", "breached"}
    assert all(g_keys <= set(g) for g in doc["guardrails"])
    h_keys = {"date", "variant", "metric", "rel_lift", "cs", "users"}
    assert all(h_keys <= set(h) for h in doc["history"])
    assert doc["segments"] == [{"segment": "active", "metric": "ctr"}]
    assert isinstance(out, ExperimentAnalysis)


def test_plan_from_a_declaration() -> None:
    decl = SimpleNamespace(
        id="ranking_v1",
        hypothesis="h",
        type="ab",
        layer="recs",
        variants={"control": SimpleNamespace(weight=1), "treatment": SimpleNamespace(weight=3)},
        primary_metric="ctr",
        secondary_metrics=("purchase_rate",),
        guardrails=(SimpleNamespace(metric="dismiss_rate", max_relative_increase=0.05),),
        alpha=None,
        mde=0.05,
        power=0.8,
        baseline=None,
        start=datetime(2026, 12, 1, tzinfo=UTC),
        stop=None,
    )
    p = AnalysisPlan.from_declaration(decl, default_alpha=0.1)
    assert p.control == "control"
    assert p.weights == {"control": 1.0, "treatment": 3.0}
    assert p.alpha == 0.1
    assert p.guardrails == (Guardrail("dismiss_rate", 0.05),)
    assert p.start == "2026-12-01"


def test_input_errors_say_how_to_fix() -> None:
    with pytest.raises(ValueError, match="name the first variant"):
        plan(control="nope")
    with pytest.raises(ValueError, match="cannot be a primary or secondary metric"):
        plan(primary_metric="api_latency_p99_ms")
    with pytest.raises(ValueError, match="does not declare"):
        analyse(plan(), {"other": users(10, 1)})
    with pytest.raises(ValueError, match="one value per user"):
        VariantData.from_columns({"exposures": [1, 1], "clicks": [1]})


def test_metrics_without_any_variation_do_not_break_the_analysis() -> None:
    # nobody purchased or dismissed yet: revenue and dismiss_rate are 0 in both arms
    p = plan(secondary_metrics=("revenue",), guardrails=(Guardrail("dismiss_rate", 0.05),))
    out = analyse(p, {"control": users(100, 10), "treatment": users(100, 12)})
    revenue = next(m for m in out.metrics if m.metric == "revenue")
    assert (revenue.abs_lift, revenue.always_valid_p) == (0.0, 1.0)
    assert not out.guardrails[0].breached
    json.dumps(out.to_json(), allow_nan=False)  # the undefined relative lift becomes null
    assert out.to_json()["metrics"][1]["rel_lift"] is None


def test_an_empty_arm_beside_a_full_one_is_a_mismatch() -> None:
    # 500 / 0 against 50/50: chi2 = 2 * 250^2 / 250 = 500
    out = analyse(plan(), {"control": users(500, 50)})
    assert out.srm.chi2 == pytest.approx(500.0)
    assert out.verdict == "stop"
    assert out.reason.startswith("sample ratio mismatch")
