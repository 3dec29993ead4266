"""Business rules on hand-made lists; every expected list is worked out in the comments."""

from __future__ import annotations

from attune.api.rules import (
    Candidate,
    Exclusions,
    RuleStats,
    apply_rules,
)
from attune.config import PinConfig, RulesConfig
from attune.online_store import dismissals_in_force

CATS = {
    "a": ["Drama"],
    "b": ["Drama", "War"],
    "c": ["Drama"],
    "d": ["Comedy"],
    "e": ["Horror"],
    "f": ["Comedy", "Drama"],
    "g": [],
    "p": ["Drama"],
}


def cats(item: str) -> list[str]:
    return CATS.get(item, [])


def ranked(*pairs: tuple[str, float]) -> list[Candidate]:
    return [Candidate(i, s, "retrieval") for i, s in pairs]


def ids(cands: list[Candidate]) -> list[str]:
    return [c.item_id for c in cands]


LIST = ranked(("a", 9.0), ("b", 8.0), ("c", 7.0), ("d", 6.0), ("e", 5.0), ("f", 4.0), ("g", 3.0))


def test_no_rules_keeps_the_order() -> None:
    rules = RulesConfig(max_per_category=0)
    assert ids(apply_rules(LIST, 4, Exclusions(), cats, rules)) == ["a", "b", "c", "d"]


def test_hard_filters_each_remove_their_items() -> None:
    # a seen, b purchased, c dismissed, e excluded by the request; Horror is not involved
    ex = Exclusions(
        seen=frozenset({"a"}),
        purchased=frozenset({"b"}),
        dismissed=frozenset({"c"}),
        excluded=frozenset({"e"}),
    )
    stats = RuleStats()
    out = apply_rules(LIST, 10, ex, cats, RulesConfig(max_per_category=0), stats=stats)
    assert ids(out) == ["d", "f", "g"]
    assert stats.removed == {"seen": 1, "purchased": 1, "dismissed": 1, "excluded": 1}


def test_seen_and_purchased_switches() -> None:
    ex = Exclusions(seen=frozenset({"a", "b"}), purchased=frozenset({"b"}))
    rules = RulesConfig(max_per_category=0, drop_seen=False)
    # seen items stay, the purchased one (b) still goes
    assert ids(apply_rules(LIST, 3, ex, cats, rules)) == ["a", "c", "d"]


def test_suppressed_category_removes_every_item_having_it() -> None:
    # Drama is suppressed: a, b, c (Drama first) and f (Comedy, Drama) all go
    ex = Exclusions(suppressed_categories=frozenset({"Drama"}))
    out = apply_rules(LIST, 10, ex, cats, RulesConfig(max_per_category=0))
    assert ids(out) == ["d", "e", "g"]


def test_category_filter_keeps_items_with_any_requested_category() -> None:
    # War or Comedy: b (Drama, War), d (Comedy), f (Comedy, Drama)
    ex = Exclusions(only_categories=frozenset({"War", "Comedy"}))
    out = apply_rules(LIST, 10, ex, cats, RulesConfig(max_per_category=0))
    assert ids(out) == ["b", "d", "f"]


def test_diversity_caps_the_primary_category() -> None:
    # cap 2 per primary category: a, b (Drama, Drama), c skipped (third Drama), d, e;
    # f's primary is Comedy (second Comedy: allowed), g has no category (never capped)
    stats = RuleStats()
    out = apply_rules(LIST, 6, Exclusions(), cats, RulesConfig(max_per_category=2), stats=stats)
    assert ids(out) == ["a", "b", "d", "e", "f", "g"]
    assert stats.removed == {"diversity": 1}


def test_boosts_reorder() -> None:
    # Horror +5 moves e from 5.0 to 10.0 (first); item boost +1.5 on d: 6.0 -> 7.5, above c (7.0)
    rules = RulesConfig(max_per_category=0, category_boosts={"Horror": 5.0}, item_boosts={"d": 1.5})
    out = apply_rules(LIST, 5, Exclusions(), cats, rules)
    assert ids(out) == ["e", "a", "b", "d", "c"]
    assert [c.score for c in out] == [10.0, 9.0, 8.0, 7.5, 7.0]


def test_fill_comes_after_and_obeys_the_same_rules() -> None:
    # primary: a, b survive (c seen); fill: c again (seen -> no), d, e; k = 4
    ex = Exclusions(seen=frozenset({"c"}))
    fill = [Candidate("c", None, "popular"), Candidate("d", None, "popular")]
    fill.append(Candidate("e", None, "trending"))
    out = apply_rules(
        ranked(("a", 2.0), ("b", 1.0), ("c", 0.5)), 4, ex, cats, RulesConfig(), fill=fill
    )
    assert ids(out) == ["a", "b", "d", "e"]
    assert [c.origin for c in out] == ["retrieval", "retrieval", "popular", "trending"]


def test_pins_take_their_positions_and_skip_the_cap() -> None:
    # pin p (Drama) at 0 and d at 2 for "home"; 5 - 2 = 3 slots by rank with 1 per primary
    # category: a (Drama), b and c skipped (Drama again), d is pinned (not ranked), e (Horror),
    # f (Comedy: d, the other Comedy, is a pin and pins do not count) -> [a, e, f];
    # then p goes to 0 -> [p, a, e, f], d to 2 -> [p, a, d, e, f]
    rules = RulesConfig(
        max_per_category=1,
        pins={"home": [PinConfig(item_id="p", position=0), PinConfig(item_id="d", position=2)]},
    )
    out = apply_rules(LIST, 5, Exclusions(), cats, rules, placement="home")
    assert ids(out) == ["p", "a", "d", "e", "f"]
    assert out[0].origin == "pin" and out[0].score is None
    # other placements do not get the pins: a, d, e, g (b, c Drama and f Comedy capped)
    assert ids(apply_rules(LIST, 5, Exclusions(), cats, rules, placement="search")) == [
        "a",
        "d",
        "e",
        "g",
    ]


def test_a_pin_that_fails_a_hard_filter_is_not_placed() -> None:
    rules = RulesConfig(max_per_category=0, pins={"*": [PinConfig(item_id="p", position=0)]})
    ex = Exclusions(dismissed=frozenset({"p"}))
    assert ids(apply_rules(LIST, 3, ex, cats, rules)) == ["a", "b", "c"]


def test_dismissals_in_force() -> None:
    # x dismissed at 10, undone at 20 -> lifted; y dismissed at 30 after an undo at 20 -> in
    # force; z never undone -> in force
    assert dismissals_in_force({"x": 10, "y": 30, "z": 5}, {"x": 20, "y": 20}) == {"y", "z"}


def test_ignored_categories_are_demoted_not_removed() -> None:
    # Drama ignored, penalty 2.5: a 9.0 -> 6.5, b 8.0 -> 5.5, c 7.0 -> 4.5, f (Comedy, Drama)
    # 4.0 -> 1.5; d 6.0, e 5.0, g 3.0 unchanged -> a, d, b, e, c, g, f
    rules = RulesConfig(max_per_category=0, ignored_category_penalty=2.5)
    ex = Exclusions(penalized_categories=frozenset({"Drama"}))
    out = apply_rules(LIST, 7, ex, cats, rules)
    assert ids(out) == ["a", "d", "b", "e", "c", "g", "f"]
