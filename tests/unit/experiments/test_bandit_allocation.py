"""Experiments whose variants a bandit allocates (``allocation.bandit``): the declaration's
checks, the recorded allocation, the pure assigner's unresolved assignment, the decision's
propensities and the analysis that skips the sample-ratio test and warns."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest

from attune.bandits.policies import Observation
from attune.bandits.slots import layout
from attune.config import ConfigError
from attune.experiments.assignment import Assigner, UserContext, layer_point
from attune.experiments.bandit import StoredVariant, choose, policy_name
from attune.experiments.spec import ExperimentsFile, parse_experiments
from attune.experiments.state import Allocation, RunningState, declared_allocations
from attune.experiments.verdict import BANDIT_WARNING, AnalysisPlan, VariantData, analyse
from tests.unit.bandits.stored import linear_hash

NOW = datetime(2026, 12, 5, tzinfo=UTC)


def decls(**over: Any) -> ExperimentsFile:
    exp = {
        "id": "arms",
        "hypothesis": "h",
        "layer": "recs",
        "variants": {"control": {}, "treatment": {"ranking": False}},
        "allocation": {"bandit": {"epsilon": 0.1}},
    } | over
    return parse_experiments({"experiments": [exp]})


def started(d: ExperimentsFile) -> dict[str, RunningState]:
    alloc = declared_allocations(d)["arms"]
    return {"arms": RunningState("arms", "running", NOW - timedelta(days=1), alloc)}


def error_of(**over: Any) -> str:
    with pytest.raises(ConfigError) as exc:
        decls(**over)
    return str(exc.value)


# -- the declaration -----------------------------------------------------------------------


def test_a_bandit_declaration_becomes_the_bandit_config_decide_runs() -> None:
    d = decls(allocation={"bandit": {"epsilon": 0.2, "prior_alpha": 2, "seed": 7}})
    cfg = d.experiments[0].bandit
    assert cfg is not None
    b = cfg.bandit_config()
    assert (b.policy, b.epsilon, b.prior_alpha, b.prior_beta, b.seed) == (
        "thompson",
        0.2,
        2.0,
        1.0,
        7,
    )
    assert decls(allocation={}).experiments[0].bandit is None  # no bandit: the hash split
    assert policy_name("arms") == "experiment:arms"


@pytest.mark.parametrize(
    ("over", "expected"),
    [
        (
            {"allocation": {"bandit": {"epsilon": 0}}},
            "experiments[0].allocation.bandit.epsilon (experiment arms): epsilon is 0; it must "
            "be > 0",
        ),
        (
            {"allocation": {"bandit": {"policy": "ucb"}}},
            "experiments[0].allocation.bandit.policy (experiment arms):",
        ),
        (
            {"allocation": {"bandit": {"epsilom": 0.1}}},
            "experiments[0].allocation.bandit.epsilom (experiment arms): unknown key; expected "
            "one of policy, epsilon, prior_alpha, prior_beta, ucb_alpha, ridge, segments, seed",
        ),
        (
            {"allocation": {"bandits": {}}},
            "experiments[0].allocation.bandits (experiment arms): unknown key; expected one of "
            "bandit",
        ),
        (
            {"type": "interleaving"},
            "experiments[0] (experiment arms): allocation.bandit needs type: ab, not interleaving",
        ),
        (
            {"variants": {"control": {"weight": 2}, "treatment": {"ranking": False}}},
            "experiments[0] (experiment arms): with allocation.bandit the bandit sets the "
            "shares, so weights only say which variants take part (0 leaves one out); got "
            "control 2, treatment 1",
        ),
    ],
)
def test_declaration_mistakes_name_the_key_and_the_fix(over: dict[str, Any], expected: str) -> None:
    assert expected in error_of(**over)


def test_a_bandit_experiment_must_be_in_the_first_layer() -> None:
    # recommendation ids name the first layer's experiment only: the bandit would not learn
    first = {"id": "first", "hypothesis": "h", "layer": "ui", "variants": {"a": {}, "b": {}}}
    bandit = {
        "id": "arms",
        "hypothesis": "h",
        "layer": "recs",
        "variants": {"a": {}, "b": {}},
        "allocation": {"bandit": {}},
    }
    with pytest.raises(ConfigError) as exc:
        parse_experiments({"experiments": [first, bandit]})
    assert (
        "(top level): experiment 'arms' has allocation.bandit but is in layer 'recs': its "
        "bandit learns from the recommendation ids of its lists, which name the experiment of "
        "the first layer only (here 'ui'); put 'arms' in the first layer declared in the file"
    ) in str(exc.value)
    assert parse_experiments({"experiments": [bandit, first]}).experiments[0].bandit


def test_a_zero_weight_leaves_a_variant_out_and_others_must_be_equal() -> None:
    d = decls(variants={"control": {}, "off": {"weight": 0}, "treatment": {"ranking": False}})
    assigner = Assigner(d, started(d))
    (a,) = assigner.assign("u1", UserContext(), NOW)
    assert a.arms == ("control", "treatment")


# -- the recorded allocation -------------------------------------------------------------


def test_the_recorded_allocation_keeps_the_bandit_and_a_change_warns() -> None:
    d = decls()
    alloc = declared_allocations(d)["arms"]
    assert alloc.bandit == {
        "policy": "thompson",
        "epsilon": 0.1,
        "prior_alpha": 1.0,
        "prior_beta": 1.0,
        "seed": 0,
    }
    assert Allocation.from_json(alloc.to_json()) == alloc
    # started as a hash split; the file now says bandit: the recorded allocation stays, warned
    hashed = Allocation(alloc.layer, alloc.traffic, alloc.range, alloc.weights)
    assert "bandit" not in hashed.to_json()  # older records read the same
    state = RunningState("arms", "running", NOW - timedelta(days=1), hashed)
    assigner = Assigner(d, {"arms": state})
    assert len(assigner.warnings) == 1
    assert (
        "allocation hash split by weight -> bandit policy=thompson, epsilon=0.1"
        in (assigner.warnings[0])
    )
    (a,) = assigner.assign("u1", UserContext(), NOW)
    assert a.bandit is None and a.variant in ("control", "treatment")  # the recorded split


# -- the pure assigner -------------------------------------------------------------------


def test_the_assigner_leaves_a_bandit_experiment_unresolved() -> None:
    d = decls()
    assigner = Assigner(d, started(d))
    (a,) = assigner.assign("u1", UserContext(), NOW)
    assert (a.experiment, a.variant, a.variant_config) == ("arms", "", None)
    assert a.bandit is not None and a.bandit.epsilon == 0.1
    assert a.arms == ("control", "treatment")
    spec = d.experiments[0]
    done = a.resolved("treatment", spec.variants["treatment"])
    assert (done.variant, done.variant_config) == ("treatment", spec.variants["treatment"])
    assert assigner.bandit_experiments("u1") == ["arms"]


def test_bandit_experiments_are_those_whose_range_holds_the_user() -> None:
    # arms owns [0, 0.5) of layer recs; the users' points decide, status and targeting do not
    d = decls(traffic=0.5, targeting={"platforms": ["ios"]})
    assigner = Assigner(d, {})  # not even started
    users = [f"u{i}" for i in range(40)]
    inside = [u for u in users if layer_point("recs", u) < 0.5]
    assert 0 < len(inside) < len(users)
    assert [u for u in users if assigner.bandit_experiments(u)] == inside
    assert assigner.assign(inside[0], UserContext(platform="ios"), NOW) == []  # a draft


# -- the decision ------------------------------------------------------------------------


def test_a_certain_variant_gets_one_minus_half_epsilon() -> None:
    # control clicked 500 of 1,000 times, treatment 10 of 1,000: Beta(501, 501) and
    # Beta(11, 991) do not overlap, so Thompson sampling picks control with probability 1;
    # with the floor epsilon = 0.1 over 2 variants, by hand: control 0.1 / 2 + 0.9 = 0.95,
    # treatment 0.1 / 2 = 0.05.
    cfg = decls().experiments[0].bandit
    assert cfg is not None
    state = {b"n:control": b"1000", b"c:control": b"500", b"n:treatment": b"1000"}
    state |= {b"c:treatment": b"10"}
    picks = [
        choose(cfg.bandit_config(), ("control", "treatment"), state, f"d{i}", 1_000)
        for i in range(400)
    ]
    expected = {"control": 0.95, "treatment": 0.05}
    for p in picks:
        assert p.propensity == pytest.approx(expected[p.variant], abs=1e-6)
        assert p.first_ms == 1_000
    # treatment is drawn 5 % of the time: 400 draws give 20 on average (binomial sd 4.4)
    n_treatment = sum(p.variant == "treatment" for p in picks)
    assert 5 <= n_treatment <= 40
    # the same decision id gives the same decision (seeded by it)
    again = choose(cfg.bandit_config(), ("control", "treatment"), state, "d3", 2_000)
    assert again.variant == picks[3].variant


def test_a_linucb_bandit_decides_by_the_users_segment() -> None:
    # control clicked 50 of 100 times by active users and 1 of 100 by new ones, treatment the
    # reverse. Both arms hold the same impressions, so the same A = I + sum x x' and the same
    # confidence bonus for one context; the difference of their estimates for context x is
    # 49 x' A^-1 (x_active - x_new), and since swapping the two segments' coordinates leaves A
    # unchanged, x_active and x_new have equal A^-1 norms and Cauchy-Schwarz makes it > 0 for
    # an active user and < 0 for a new one. So, by hand, with epsilon 0.1 over 2 variants:
    # active -> control 0.95, treatment 0.05; new -> treatment 0.95, control 0.05.
    d = decls(allocation={"bandit": {"policy": "linucb", "epsilon": 0.1, "ucb_alpha": 0.5}})
    spec = d.experiments[0].bandit
    assert spec is not None
    cfg = spec.bandit_config()
    assert (cfg.policy, cfg.ucb_alpha, cfg.ridge, cfg.segments) == (
        "linucb",
        0.5,
        1.0,
        ["new", "active", "at_risk", "dormant"],
    )
    names = layout(cfg).names
    x_active, x_new = layout(cfg).vector("active"), layout(cfg).vector("new")
    obs = [
        Observation("control", x_active, 100, 50),
        Observation("control", x_new, 100, 1),
        Observation("treatment", x_active, 100, 1),
        Observation("treatment", x_new, 100, 50),
    ]
    raw = linear_hash(("control", "treatment"), names, obs)
    arms = ("control", "treatment")
    for segment, best in (("active", "control"), ("new", "treatment")):
        picks = [choose(cfg, arms, raw, f"d{i}", 5, segment) for i in range(200)]
        for p in picks:
            assert p.propensity == pytest.approx(0.95 if p.variant == best else 0.05)
        assert sum(p.variant == best for p in picks) >= 170  # 190 expected, binomial sd 3.1
    # no segment read yet (a user the batch has not seen): the intercept alone, a tie here
    tie = choose(cfg, arms, raw, "d0", 5, None)
    assert tie.propensity == pytest.approx(0.5)
    # the recorded allocation keeps LinUCB's own settings, Thompson's only Thompson's
    assert declared_allocations(d)["arms"].bandit == {
        "policy": "linucb",
        "epsilon": 0.1,
        "ucb_alpha": 0.5,
        "ridge": 1.0,
        "segments": ["new", "active", "at_risk", "dormant"],
        "seed": 0,
    }


def test_the_stored_value_round_trips_and_garbage_reads_as_none() -> None:
    v = StoredVariant("treatment", 0.05, "abc", 17)
    assert StoredVariant.decode(v.encode()) == v
    assert StoredVariant.decode(None) is None
    assert StoredVariant.decode(b"not json") is None
    assert StoredVariant.decode(b'{"v": "x"}') is None


# -- the analysis ------------------------------------------------------------------------


def users(n: int, clickers: int) -> VariantData:
    clicks = np.zeros(n)
    clicks[:clickers] = 1
    return VariantData.from_columns({"exposures": np.ones(n), "clicks": clicks})


def test_the_analysis_skips_the_sample_ratio_test_and_warns() -> None:
    # 1,800 / 200 users: against the 1:1 weights that is chi2 = 2 * 800^2 / 1000 = 1280, a
    # flagged mismatch; a bandit that favoured control is expected to do exactly that
    data = {"control": users(1800, 180), "treatment": users(200, 20)}
    weights = {"control": 1.0, "treatment": 1.0}
    fixed = analyse(AnalysisPlan("arms", "control", weights), data)
    assert fixed.srm is not None and fixed.srm.flagged and fixed.verdict == "stop"
    assert fixed.to_json()["warnings"] == []
    out = analyse(AnalysisPlan("arms", "control", weights, bandit=True), data)
    assert out.srm is None and out.verdict != "stop"
    doc = out.to_json()
    assert doc["srm"] is None
    assert doc["warnings"] == [BANDIT_WARNING]
    assert "biased" in BANDIT_WARNING and "off-policy" in BANDIT_WARNING
    # the declaration says so
    plan = AnalysisPlan.from_declaration(decls().experiments[0])
    assert plan.bandit


def test_the_text_report_prints_the_warning_above_the_numbers() -> None:
    from spark.experiments import format_results

    data = {"control": users(1800, 180), "treatment": users(200, 20)}
    weights = {"control": 1.0, "treatment": 1.0}
    exp = analyse(AnalysisPlan("arms", "control", weights, bandit=True), data).to_json()
    text = format_results({"report_date": "2026-12-05", "experiments": [exp]}).splitlines()
    at = text.index(f"  ! {BANDIT_WARNING}")
    assert at < next(i for i, line in enumerate(text) if "ctr (primary)" in line)
    assert not any("sample ratio mismatch" in line for line in text)


def test_the_registry_lists_every_bandit_experiment(tmp_path: Any) -> None:
    import yaml

    from attune.bandits.registry import bandit_policies
    from attune.config import AttuneConfig

    hashed = {"id": "plain", "hypothesis": "h", "layer": "recs", "variants": {"a": {}, "b": {}}}
    bandit = {
        "id": "arms",
        "hypothesis": "h",
        "layer": "recs",
        "traffic": 0.5,
        "variants": {"a": {}, "b": {}},
        "allocation": {"bandit": {"epsilon": 0.2, "seed": 3}},
    }
    path = tmp_path / "experiments.yaml"
    path.write_text(yaml.safe_dump({"experiments": [bandit, hashed | {"traffic": 0.5}]}))
    base = AttuneConfig()
    cfg = base.model_copy(
        update={"experiments": base.experiments.model_copy(update={"file": path})}
    )
    policies = bandit_policies(cfg)
    assert (policies["experiment:arms"].epsilon, policies["experiment:arms"].seed) == (0.2, 3)
    assert "experiment:plain" not in policies
    off = base.model_copy(
        update={"experiments": base.experiments.model_copy(update={"file": None})}
    )
    assert not any(p.startswith("experiment:") for p in bandit_policies(off))
