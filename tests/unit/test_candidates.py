"""The candidate pool shared by the API and the offline served pipeline."""

from __future__ import annotations

from attune.candidates import candidate_pool
from attune.config import RulesConfig
from attune.rules import Candidate, Exclusions

CATS = {"r1": ("x",), "r2": ("x",), "n1": ("y",), "n2": ("z",), "t1": ("x",), "t2": ("y",)}


def _pool(max_ranked: int) -> list[tuple[str, str, str | None]]:
    pool = candidate_pool(
        [Candidate("r1", 0.9, "retrieval"), Candidate("seen", 0.8, "retrieval")],
        {"s1": [("n1", 0.5), ("r1", 0.4)], "s2": [("n2", 0.3), ("bad", 0.2)]},
        ["t1", "n1", "t2"],
        max_ranked=max_ranked,
        ex=Exclusions(seen=frozenset({"seen"}), suppressed_categories=frozenset({"bad"})),
        categories=lambda i: CATS.get(i, ("bad",) if i == "bad" else ()),
        rules=RulesConfig(),
    )
    return [(c.item_id, c.origin, c.seed) for c in pool.values()]


def test_pool_order_sources_once_and_hard_filters() -> None:
    # retrieval first (seen removed), then neighbours seed by seed (r1 already in; "bad" has a
    # suppressed category), then trending (n1 already in)
    assert _pool(10) == [
        ("r1", "retrieval", None),
        ("n1", "similar", "s1"),
        ("n2", "similar", "s2"),
        ("t1", "trending", None),
        ("t2", "trending", None),
    ]


def test_pool_stops_at_max_ranked() -> None:
    assert [i for i, _, _ in _pool(2)] == ["r1", "n1"]


def test_neighbour_scores_sum_over_seeds_and_remember_the_first_seed() -> None:
    from attune.candidates import neighbour_scores

    got = neighbour_scores({"s1": [("a", 0.5), ("b", 0.25)], "s2": [("b", 0.5), ("c", 0.125)]})
    # b: 0.25 + 0.5, first proposed by s1
    assert got == {"a": (0.5, "s1"), "b": (0.75, "s1"), "c": (0.125, "s2")}


def test_pool_takes_neighbours_by_their_summed_score() -> None:
    # b is second for s1 and first for s2: 0.3 + 0.4 = 0.7 beats a's 0.5; c 0.1 last
    pool = candidate_pool(
        [],
        {"s1": [("a", 0.5), ("b", 0.3)], "s2": [("b", 0.4), ("c", 0.1)]},
        [],
        max_ranked=10,
        ex=Exclusions(),
        categories=lambda i: (),
        rules=RulesConfig(),
    )
    assert [(c.item_id, c.seed) for c in pool.values()] == [("b", "s1"), ("a", "s1"), ("c", "s2")]


def test_add_neighbour_score_blends_and_leaves_unscored_alone() -> None:
    from attune.candidates import add_neighbour_score

    ranked = [
        Candidate("a", 1.0, "retrieval"),
        Candidate("b", 0.5, "similar", "s1"),
        Candidate("t", None, "trending"),
    ]
    scores = {"b": (0.75, "s1")}
    # weight 2: b = 0.5 + 2 * 0.75 = 2.0; a has no neighbour score: stays 1.0
    got = add_neighbour_score(ranked, scores, 2.0)
    assert [(c.item_id, c.score, c.origin, c.seed) for c in got] == [
        ("a", 1.0, "retrieval", None),
        ("b", 2.0, "similar", "s1"),
        ("t", None, "trending", None),
    ]
    assert add_neighbour_score(ranked, scores, 0.0) == ranked
