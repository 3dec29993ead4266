"""The messages' bandit (attune.bandits.messages): its arms, the cap counting it reads, its
registration, and its configuration."""

from __future__ import annotations

from datetime import timedelta

import pytest
from pydantic import ValidationError

from attune.bandits.feedback import Outcome, outcomes
from attune.bandits.messages import POLICY, cap_count_range, message_arms, window_ms
from attune.bandits.registry import bandit_policies
from attune.bandits.slots import decide
from attune.config import ApiConfig, AttuneConfig, BanditConfig, ContentRule, MessageConfig

NEW = MessageConfig(id="new_feature", text="n", priority=2, cap=1)
BACK = MessageConfig(id="come_back", text="b", priority=1, cap=2, cap_window=timedelta(days=7))
RATE = MessageConfig(id="rate_more", text="r", cap=1, cap_window=timedelta(hours=1))


def test_the_arms_are_the_eligible_messages_whose_cap_leaves_room() -> None:
    # come_back: 1 showing of 2 allowed -> still an arm; rate_more: 1 of 1 -> capped
    split = message_arms([NEW, BACK, RATE], {"come_back": 1, "rate_more": 1})
    assert split.ids == ("new_feature", "come_back")
    assert split.capped == ("rate_more",)
    # 2 of 2: capped too; a message without a count has no showing
    split = message_arms([NEW, BACK, RATE], {"come_back": 2})
    assert (split.ids, split.capped) == (("new_feature", "rate_more"), ("come_back",))
    assert message_arms([], {}).ids == ()


def test_cap_counting_matches_the_cap_scripts_window() -> None:
    # the cap script drops showings at or before now - window: count those strictly after it
    assert window_ms(RATE) == 3_600_000
    assert cap_count_range(RATE, 10_000_000) == ("(6400000", "+inf")
    assert cap_count_range(BACK, 700_000_000) == (f"({700_000_000 - 7 * 86_400_000}", "+inf")


def test_the_policy_picks_among_the_uncapped_messages_only() -> None:
    # come_back clicked 500 of 1,000 times -> Beta(501, 501); new_feature 10 of 1,000 ->
    # Beta(11, 991): no overlap, so P(come_back best) = 1. Floor 0.2 over the 2 arms (rate_more
    # is capped): come_back 0.2 / 2 + 0.8 = 0.9, new_feature 0.2 / 2 = 0.1 (by hand). rate_more's
    # own strong record does not matter: it is not an arm.
    raw = {b"n:come_back": b"1000", b"c:come_back": b"500"} | {
        b"n:new_feature": b"1000",
        b"c:new_feature": b"10",
        b"n:rate_more": b"10",
        b"c:rate_more": b"9",
    }
    split = message_arms([NEW, BACK, RATE], {"rate_more": 1})
    d = decide(BanditConfig(epsilon=0.2), split.ids, raw, None, "d-1")
    assert d.arms == ("new_feature", "come_back")
    assert d.propensities == pytest.approx((0.1, 0.9), abs=1e-6)


def test_linucb_over_messages_without_data_is_uniform() -> None:
    # all three scores tie: each arm 0.1 / 3 + 0.9 / 3 = 1 / 3
    d = decide(BanditConfig(policy="linucb", epsilon=0.1), ("a", "b", "c"), {}, "active", "x")
    assert d.propensities == pytest.approx((1 / 3, 1 / 3, 1 / 3))


def test_the_messages_policy_is_registered_only_when_configured() -> None:
    slots = {"hero": [ContentRule(variant="a"), ContentRule(variant="b")]}
    base = ApiConfig(content_slots=slots, bandits={"hero": BanditConfig()})
    assert set(bandit_policies(AttuneConfig(api=base))) == {"slot:hero"}
    bandit = BanditConfig(epsilon=0.1)
    with_messages = AttuneConfig(api=base.model_copy(update={"message_bandit": bandit}))
    assert bandit_policies(with_messages) == {"slot:hero": BanditConfig(), POLICY: bandit}
    assert POLICY == "messages"


def test_a_message_bandit_needs_unique_message_ids() -> None:
    twice = [RATE, RATE.model_copy(update={"text": "other"})]
    ApiConfig(messages=twice)  # without a bandit: allowed, as before
    with pytest.raises(ValidationError, match="repeats the id\\(s\\) rate_more"):
        ApiConfig(messages=twice, message_bandit=BanditConfig())
    with pytest.raises(ValidationError, match=r"api\.messages"):
        AttuneConfig.model_validate(
            {"api": {"messages": [m.model_dump() for m in twice], "message_bandit": {}}}
        )


def test_the_speed_layer_counts_the_messages_impressions_and_clicks_once_configured() -> None:
    # online rows (user, ts, interaction id, payload) as the speed layer hands them over
    rows = [
        ("u1", 1000, "i1", '{"pl":"messages","ar":"come_back","y":"impression"}'),
        ("u1", 2000, "i2", '{"pl":"messages","ar":"come_back","y":"rec_click"}'),
        ("u1", 3000, "i3", '{"pl":"home","ar":"x","y":"impression"}'),
    ]
    without = AttuneConfig()
    assert outcomes(rows, bandit_policies(without)) == []
    with_bandit = AttuneConfig(api=ApiConfig(message_bandit=BanditConfig()))
    assert outcomes(rows, bandit_policies(with_bandit)) == [
        Outcome("i1", 1000, "u1", "messages", "come_back", "n"),
        Outcome("i2", 2000, "u1", "messages", "come_back", "c"),
    ]
