from __future__ import annotations

from datetime import timedelta

from attune.api.targeting import Profile, eligible_messages, pick_content
from attune.config import ApiConfig, ContentRule, MessageConfig

RULES = ApiConfig().content_slots["home_banner"]


def test_default_home_banner_rules() -> None:
    # welcome: no events at all; drama_picks: Drama affinity >= 2; win_back: at_risk/dormant
    assert pick_content(RULES, Profile(None, 0, {}))[1].variant == "welcome"
    assert pick_content(RULES, Profile("active", 12, {"Drama": 2.5}))[1].variant == "drama_picks"
    assert pick_content(RULES, Profile("active", 12, {"Drama": 1.9}))[1].variant == "default"
    assert pick_content(RULES, Profile("dormant", 3, {"Drama": 0.1})) == (2, RULES[2])


def test_no_rule_holds_gives_the_last() -> None:
    rules = [ContentRule(variant="a", min_events=10), ContentRule(variant="b", segments=["x"])]
    assert pick_content(rules, Profile("y", 1, {})) == (1, rules[1])


def test_messages_by_targeting_and_priority() -> None:
    msgs = [
        MessageConfig(id="low", text="l"),
        MessageConfig(id="vip", text="v", priority=5, segments=["champion"]),
        MessageConfig(id="fans", text="f", priority=1, genre="Horror", min_affinity=1.0),
        MessageConfig(id="busy", text="b", min_events=100, cap_window=timedelta(hours=1)),
    ]
    got = eligible_messages(msgs, Profile("champion", 20, {"Horror": 3.0}))
    assert [m.id for m in got] == ["vip", "fans", "low"]
    assert [m.id for m in eligible_messages(msgs, Profile(None, 200, {}))] == ["low", "busy"]
