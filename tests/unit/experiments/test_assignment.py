"""Assignment: the hashing scheme (bit-identical to the API's earlier one), layers, holdout,
targeting, running state and recommendation ids."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from attune.experiments.assignment import (
    Assigner,
    UserContext,
    assign,
    assign_variant,
    combined_variant,
    in_holdout,
    layer_point,
    recommendation_id,
    targeting_matches,
    unit_hash,
)
from attune.experiments.spec import ExperimentsFile, TargetingSpec, VariantSpec, parse_experiments
from attune.experiments.state import RunningState, declared_allocations

NOW = datetime(2026, 12, 5, tzinfo=UTC)
EVERYONE = UserContext()


def decls(*experiments: dict[str, Any], holdout: float = 0.0) -> ExperimentsFile:
    full = [
        {"hypothesis": "h", "variants": {"control": {}, "treatment": {"ranking": False}}, **e}
        for e in experiments
    ]
    return parse_experiments({"holdout": {"share": holdout}, "experiments": full})


def running(
    d: ExperimentsFile, *ids: str, since: datetime = NOW - timedelta(days=1)
) -> dict[str, RunningState]:
    allocs = declared_allocations(d)
    return {i: RunningState(i, "running", since, allocs[i]) for i in ids}


# -- the hash ----------------------------------------------------------------------------


def test_unit_hash_is_sha256_based() -> None:
    # `printf e:u | sha256sum` starts with b5bd348ef098c56d; 0xb5bd348ef098c56d / 2**64
    assert unit_hash("e", "u") == pytest.approx(0.7099182938551137, abs=1e-15)
    # `printf layer:recs:u | sha256sum` starts with 0acc9b4944cbb923; / 2**64 = 0.042184548...
    assert layer_point("recs", "u") == pytest.approx(0.04218454874789658, abs=1e-15)
    # `printf holdout:u | sha256sum` starts with a6e549b39ff52ac9 -> 0.6519...
    assert unit_hash("holdout", "u") == pytest.approx(0.651936155656547, abs=1e-15)


def test_assignment_is_deterministic_and_depends_on_the_experiment() -> None:
    weights = {"a": 1.0, "b": 1.0}
    first = [assign_variant("exp1", f"user{i}", weights) for i in range(200)]
    assert first == [assign_variant("exp1", f"user{i}", weights) for i in range(200)]
    other = [assign_variant("exp2", f"user{i}", weights) for i in range(200)]
    assert first != other  # a new experiment reshuffles (same outcome has chance 2**-200)


def test_shares_follow_the_weights() -> None:
    # weights 3:1 -> 75 % / 25 %; over 20,000 users the standard error of a share is
    # sqrt(0.75 * 0.25 / 20000) = 0.003, so +-0.015 is 5 standard errors
    weights = {"control": 3.0, "treatment": 1.0}
    n = 20_000
    got = [assign_variant("recs", f"u{i}", weights) for i in range(n)]
    assert abs(got.count("control") / n - 0.75) < 0.015


def test_variant_walks_the_cumulative_weights_in_order() -> None:
    # unit_hash("e", "u") = 0.70991...: with weights 1:1 the point is 1.4198 of 2 -> the
    # second arm; with 3:1 it is 2.8397 of 4 -> the first (its range is [0, 3))
    assert assign_variant("e", "u", {"a": 1, "b": 1}) == "b"
    assert assign_variant("e", "u", {"a": 3, "b": 1}) == "a"


def test_zero_weight_arms_get_nobody() -> None:
    got = {assign_variant("e", f"u{i}", {"off": 0.0, "on": 2.0}) for i in range(500)}
    assert got == {"on"}


def test_no_positive_weight_is_an_error() -> None:
    with pytest.raises(ValueError, match="positive weight"):
        assign_variant("e", "u", {"a": 0.0})


# -- layers ------------------------------------------------------------------------------


def test_a_layer_is_split_in_file_order() -> None:
    # u's point in layer recs is 0.04218... (see above): in [0.04, 1) it falls to the second
    # experiment, in [0, 0.05) to the first
    d = decls(
        {"id": "a", "layer": "recs", "traffic": 0.04}, {"id": "b", "layer": "recs", "traffic": 0.96}
    )
    assert [x.experiment for x in assign(d, running(d, "a", "b"), "u", EVERYONE, NOW)] == ["b"]
    d = decls(
        {"id": "a", "layer": "recs", "traffic": 0.05}, {"id": "b", "layer": "recs", "traffic": 0.95}
    )
    assert [x.experiment for x in assign(d, running(d, "a", "b"), "u", EVERYONE, NOW)] == ["a"]
    # a's range stays a's while a does not run: u gets nothing in the layer, not b
    assert assign(d, running(d, "b"), "u", EVERYONE, NOW) == []


def test_layers_are_exclusive_inside_and_independent_across_20k_users() -> None:
    d = decls(
        {"id": "a", "layer": "recs", "traffic": 0.3},
        {"id": "b", "layer": "recs", "traffic": 0.5},
        {"id": "c", "layer": "ui", "traffic": 0.5},
    )
    assigner = Assigner(d, running(d, "a", "b", "c"))
    n = 20_000
    sets = [{x.experiment for x in assigner.assign(f"user{i}", EVERYONE, NOW)} for i in range(n)]
    assert not any({"a", "b"} <= s for s in sets)  # one experiment per layer, never two
    count = Counter(e for s in sets for e in s)
    both = sum(1 for s in sets if {"a", "c"} <= s)
    # binomial standard errors over 20,000 users: a sqrt(.3*.7/n) = 0.0032, b and c
    # sqrt(.5*.5/n) = 0.0035, a and c together (independent: .3*.5 = .15) sqrt(.15*.85/n) =
    # 0.0025; allow 5 of them
    assert abs(count["a"] / n - 0.3) < 5 * 0.0032
    assert abs(count["b"] / n - 0.5) < 5 * 0.0035
    assert abs(count["c"] / n - 0.5) < 5 * 0.0035
    assert abs(both / n - 0.15) < 5 * 0.0025
    # the layer hash and the variant hash are independent too: a's users split 50/50
    arms = Counter(
        x.variant
        for i in range(n)
        for x in assigner.assign(f"user{i}", EVERYONE, NOW)
        if x.experiment == "a"
    )
    # about 6,000 users in a: standard error of a share sqrt(.25/6000) = 0.0065
    assert abs(arms["control"] / count["a"] - 0.5) < 5 * 0.0065


def test_holdout_share_within_binomial_tolerance_and_out_of_everything() -> None:
    d = decls({"id": "a", "layer": "recs"}, holdout=0.1)
    assigner = Assigner(d, running(d, "a"))
    n = 20_000
    held = [f"user{i}" for i in range(n) if assigner.in_holdout(f"user{i}")]
    # standard error sqrt(.1 * .9 / 20000) = 0.0021; 5 of them
    assert abs(len(held) / n - 0.1) < 5 * 0.0021
    assert all(assigner.assign(u, EVERYONE, NOW) == [] for u in held)
    # everyone else is in a (traffic 1, no targeting)
    assert all(
        assigner.assign(f"user{i}", EVERYONE, NOW) for i in range(200) if f"user{i}" not in held
    )
    # hand-worked: u's holdout hash is 0.6519 (see above)
    assert not in_holdout(0.5, "u") and in_holdout(0.0, "u") is False


# -- targeting and status ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("targeting", "ctx", "matches"),
    [
        ({}, UserContext(), True),
        ({"segments": ["active"]}, UserContext(segment="active"), True),
        ({"segments": ["active"]}, UserContext(segment="dormant"), False),
        ({"segments": ["active"]}, UserContext(), False),  # no segment yet
        ({"platforms": ["ios", "android"]}, UserContext(platform="Android"), True),
        ({"platforms": ["ios"]}, UserContext(platform="web"), False),
        ({"platforms": ["ios"]}, UserContext(), False),
        ({"users": "new"}, UserContext(returning=False), True),
        ({"users": "new"}, UserContext(returning=True), False),
        ({"users": "returning"}, UserContext(returning=True), True),
        ({"users": "returning"}, UserContext(returning=False), False),
        (
            {"segments": ["active"], "platforms": ["ios"], "users": "returning"},
            UserContext(segment="active", platform="ios", returning=True),
            True,
        ),
        (
            {"segments": ["active"], "platforms": ["ios"], "users": "returning"},
            UserContext(segment="active", platform="ios", returning=False),
            False,
        ),
    ],
)
def test_targeting(targeting: dict[str, Any], ctx: UserContext, matches: bool) -> None:
    assert targeting_matches(TargetingSpec.model_validate(targeting), ctx) is matches


def test_a_user_who_does_not_match_gets_nothing_in_the_layer() -> None:
    # u (point 0.042) is in a's range [0, 0.5); a targets ios only; b's range is [0.5, 1)
    d = decls(
        {"id": "a", "layer": "recs", "traffic": 0.5, "targeting": {"platforms": ["ios"]}},
        {"id": "b", "layer": "recs", "traffic": 0.5},
    )
    states = running(d, "a", "b")
    assert assign(d, states, "u", UserContext(platform="web"), NOW) == []
    assert [x.experiment for x in assign(d, states, "u", UserContext(platform="ios"), NOW)] == ["a"]


def test_only_running_experiments_take_users() -> None:
    d = decls({"id": "a", "layer": "recs", "stop": "2026-12-10T00:00:00Z"})
    assert assign(d, {}, "u", EVERYONE, NOW) == []  # draft
    later = running(d, "a", since=NOW + timedelta(hours=1))
    assert assign(d, later, "u", EVERYONE, NOW) == []  # scheduled
    assert assign(d, later, "u", EVERYONE, NOW + timedelta(hours=2))  # its start has come
    states = running(d, "a")
    assert assign(d, states, "u", EVERYONE, NOW)
    assert assign(d, states, "u", EVERYONE, datetime(2026, 12, 10, tzinfo=UTC)) == []  # past stop
    stopped = {
        "a": RunningState("a", "stopped", NOW - timedelta(days=2), states["a"].allocation, NOW)
    }
    assert assign(d, stopped, "u", EVERYONE, NOW) == []


def test_a_running_experiment_keeps_its_recorded_allocation() -> None:
    before = decls(
        {
            "id": "a",
            "layer": "recs",
            "variants": {"control": {"weight": 1}, "treatment": {"weight": 0}},
        }
    )
    states = running(before, "a")  # recorded: everybody in control
    after = decls(
        {
            "id": "a",
            "layer": "recs",
            "variants": {"control": {"weight": 0}, "treatment": {"weight": 1}},
        }
    )
    assigner = Assigner(after, states)
    assert {assigner.assign(f"u{i}", EVERYONE, NOW)[0].variant for i in range(100)} == {"control"}
    assert len(assigner.warnings) == 1
    assert "keeps the allocation it started with" in assigner.warnings[0]
    assert "control 100% -> 0%" in assigner.warnings[0]
    assert "start a --force" in assigner.warnings[0]


def test_interleaving_gives_every_user_both_rankers() -> None:
    d = decls(
        {
            "id": "i",
            "layer": "recs",
            "type": "interleaving",
            "variants": {"served": {}, "canary": {"model_label": "canary"}},
        }
    )
    got = {tuple(assign(d, running(d, "i"), f"u{n}", EVERYONE, NOW)) for n in range(50)}
    assert len(got) == 1
    (a,) = got.pop()
    assert (a.experiment, a.variant, a.type, a.variant_config) == (
        "i",
        "interleaved",
        "interleaving",
        None,
    )
    assert [name for name, _ in a.rankers] == ["served", "canary"]
    assert a.rankers[1][1].model_label == "canary"


# -- what the API does with the assignments ----------------------------------------------


def test_recommendation_ids() -> None:
    d = decls({"id": "a", "layer": "recs"}, {"id": "b", "layer": "ui"})
    got = assign(d, running(d, "a", "b"), "u", EVERYONE, NOW)
    assert [x.experiment for x in got] == ["a", "b"]  # layers in the order they first appear
    token = "0123456789abcdef0123"
    assert recommendation_id(got, False, token) == f"a:{got[0].variant}:{token}"
    assert recommendation_id([], False, token) == f"none:default:{token}"
    assert recommendation_id(got, True, token) == f"holdout:holdout:{token}"


def test_variants_of_several_layers_combine_first_layer_first() -> None:
    first = VariantSpec.model_validate({"ranking": False})
    second = VariantSpec.model_validate({"ranking": True, "model_label": "canary", "rules": "r"})
    both = combined_variant([first, second])
    # ranking from the first layer (it sets it), the rest from the second; unset fields default
    assert (both.ranking, both.model_label, both.rules, both.candidate_sources) == (
        False,
        "canary",
        "r",
        None,
    )
    assert combined_variant([]) == VariantSpec()
