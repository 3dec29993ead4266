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
