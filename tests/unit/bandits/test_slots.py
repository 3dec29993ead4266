"""A content slot's bandit decision (attune.bandits.slots), with hand-worked propensities."""

from __future__ import annotations

import numpy as np
import pytest

from attune.bandits.policies import Observation
from attune.bandits.slots import decide, layout, policy_name, slot_arms
from attune.config import BanditConfig, ContentRule
from tests.unit.bandits.stored import linear_hash

RULES = [
    ContentRule(variant="welcome", max_events=0),
    ContentRule(variant="drama_picks", genre="Drama", min_affinity=2.0),
    ContentRule(variant="win_back", segments=["at_risk"]),
    ContentRule(variant="drama_picks"),
    ContentRule(variant="default"),
]


def test_arms_are_the_variants_of_the_rules_that_hold_each_once() -> None:
    assert slot_arms(RULES, [False, True, False, True, True]) == ("drama_picks", "default")
    assert slot_arms(RULES, [True, False, False, False, False]) == ("welcome",)
    # none holds: the slot's default, its last rule
    assert slot_arms(RULES, [False] * 5) == ("default",)
    assert policy_name("home_banner") == "slot:home_banner"


def test_a_single_arm_is_shown_for_sure() -> None:
    d = decide(BanditConfig(), ("welcome",), {}, None, "d1")
    assert (d.action, d.propensity, d.propensities) == ("welcome", 1.0, (1.0,))


def test_thompson_with_separated_posteriors_and_the_floor() -> None:
    # a: 500 clicks of 1,000 -> Beta(501, 501); b: 10 of 1,000 -> Beta(11, 991): no overlap,
    # so P(a best) = 1; floor 0.1 over 2 arms: a 0.1 / 2 + 0.9 = 0.95, b 0.05 (by hand).
    raw = {b"n:a": b"1000", b"c:a": b"500", b"n:b": b"1000", b"c:b": b"10"}
    cfg = BanditConfig(policy="thompson", epsilon=0.1)
    d = decide(cfg, ("a", "b"), raw, None, "d1")
    assert d.propensities == pytest.approx((0.95, 0.05), abs=1e-6)
    assert d.propensity == pytest.approx(0.95 if d.action == "a" else 0.05, abs=1e-6)


def test_thompson_without_data_is_uniform_and_the_decision_id_seeds_it() -> None:
    cfg = BanditConfig(policy="thompson", epsilon=0.0)
    arms = ("a", "b", "c", "d")
    d = decide(cfg, arms, {}, None, "abc")
    # equal Beta(1, 1) posteriors: each arm best with probability 1/4
    assert d.propensities == pytest.approx((0.25,) * 4, abs=1e-4)
    # same id, same choice; over many ids every arm is chosen
    assert decide(cfg, arms, {}, None, "abc").action == d.action
    chosen = {decide(cfg, arms, {}, None, f"id-{i}").action for i in range(60)}
    assert chosen == set(arms)


def test_linucb_without_data_ties_and_with_data_follows_the_segment() -> None:
    cfg = BanditConfig(policy="linucb", epsilon=0.1, segments=["active", "new"])
    # no data: equal scores for both arms, the tie shares 1 - 0.1: 0.05 + 0.45 = 0.5 each
    d = decide(cfg, ("a", "b"), {}, "active", "x")
    assert d.propensities == pytest.approx((0.5, 0.5))
    # the exact propensities of a clear winner: 1 - 0.1 + 0.1 / 2 = 0.95 and 0.1 / 2 = 0.05
    features = layout(cfg)
    x = features.vector("active")
    # "a" clicked 50 of 100 times for active users, "b" 1 of 100 (statistics as the store
    # keeps them; the bytes go through the same encoding as Redis)
    obs = [Observation("a", x, 100, 50), Observation("b", x, 100, 1)]
    raw = linear_hash(("a", "b"), features.names, obs)
    d = decide(cfg, ("a", "b"), raw, "active", "x")
    assert d.propensities == pytest.approx((0.95, 0.05))
    assert np.isclose(sum(d.propensities), 1.0)
