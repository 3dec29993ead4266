"""The candidate pool that the ranking model re-orders: one definition for the API and for the
offline evaluation of the served pipeline (``models/pipeline.py``), so that "what the API
serves" and "what is evaluated" are the same code.

The pool is built from the candidate sources in a fixed order, each item kept once (at its first
source), until ``max_ranked`` items are in:

1. **retrieval** – the retrieval model's results, best first (with its score);
2. **neighbours** – the co-occurrence neighbours of the seed items (the request's seed item,
   then the user's latest items), best :func:`neighbour_scores` first, ``origin = "similar"``
   (the seed is the first one that proposed the item);
3. **trending** – the trending items, best first.

Items a hard filter removes (:func:`attune.rules.blocked_by`: seen, dismissed, suppressed
category, ...) never enter the pool, so no ranking slot is wasted on them. Pure functions, no
I/O: the callers read the sources (the model server and Redis online, the training data
offline).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

from attune.config import RulesConfig
from attune.rules import Candidate, Categories, Exclusions, blocked_by

ORIGIN_NEW = "new"
"""The origin of an item the served model never saw, scored by its content vector."""

Fits = Callable[[list[Candidate], int, Candidate], bool]
"""Whether candidate ``c`` may take position ``i`` of the list ``chosen``."""

Neighbours = Mapping[str, Sequence[tuple[str, float]]]
"""Seed item -> its co-occurrence neighbours ``(item, score)``, best first; seeds in order."""


def neighbour_scores(neighbours: Neighbours) -> dict[str, tuple[float, str]]:
    """Item -> (its neighbour score, the first seed that proposed it): the sum of its
    similarities to the seeds, item-kNN's score of a user whose history is the seeds. In the
    order items were first proposed (seed by seed, best first)."""
    out: dict[str, tuple[float, str]] = {}
    for seed, rows in neighbours.items():
        for item, score in rows:
            total, first = out.get(item, (0.0, seed))
            out[item] = (total + score, first)
    return out


def add_neighbour_score(
    ranked: Iterable[Candidate], scores: Mapping[str, tuple[float, str]], weight: float
) -> list[Candidate]:
    """``ranked`` with ``weight`` times each candidate's neighbour score (0 when no seed
    proposed it) added to its score: the ranking model's view of the user blended with
    item-kNN's (``api.candidates.neighbour_weight``). Unscored candidates stay unscored."""
    if weight == 0:
        return list(ranked)
    return [
        c
        if c.score is None
        else Candidate(
            c.item_id, c.score + weight * scores.get(c.item_id, (0.0, ""))[0], c.origin, c.seed
        )
        for c in ranked
    ]


def candidate_pool(
    retrieved: Iterable[Candidate],
    neighbours: Neighbours,
    trending: Iterable[str],
    *,
    max_ranked: int,
    ex: Exclusions,
    categories: Categories,
    rules: RulesConfig,
) -> dict[str, Candidate]:
    """Item id -> candidate, in pool order (see the module docstring)."""
    pool: dict[str, Candidate] = {}

    def add(c: Candidate) -> None:
        if c.item_id in pool or len(pool) >= max_ranked:
            return
        if blocked_by(c.item_id, categories(c.item_id), ex, rules) is None:
            pool[c.item_id] = c

    for c in retrieved:
        add(c)
    proposed = neighbour_scores(neighbours)
    for item in sorted(proposed, key=lambda i: -proposed[i][0]):  # stable: ties keep order
        add(Candidate(item, None, "similar", proposed[item][1]))
    for item in trending:
        add(Candidate(item, None, "trending"))
    return pool


def best_admissible(
    ids: Sequence[str],
    scores: Sequence[float],
    n: int,
    admissible: Callable[[str], bool],
    origin: str = ORIGIN_NEW,
) -> list[Candidate]:
    """The ``n`` best ``ids`` by ``scores`` that ``admissible`` lets through, best first (ties:
    the given order), as candidates of ``origin``: how the API picks new items from their
    vectors' scores and the offline pipeline from the retrieval model's."""
    out: list[Candidate] = []
    if n <= 0:
        return out
    for i in sorted(range(len(ids)), key=lambda j: -scores[j]):
        if admissible(ids[i]):
            out.append(Candidate(ids[i], float(scores[i]), origin))
            if len(out) >= n:
                break
    return out


def fits_cap(categories: Categories, rules: RulesConfig) -> Fits:
    """A :data:`Fits` that keeps the diversity cap: ``c`` may replace position ``i`` when the
    other items of the list leave room for one more of its primary category."""

    def fits(chosen: list[Candidate], i: int, c: Candidate) -> bool:
        cats = categories(c.item_id)
        if not cats or rules.max_per_category <= 0:
            return True
        same = sum(
            1 for j, o in enumerate(chosen) if j != i and categories(o.item_id)[:1] == cats[:1]
        )
        return same < rules.max_per_category

    return fits


def keep_new_slots(
    final: list[Candidate],
    ranked: Sequence[Candidate],
    slots: int,
    fits: Fits = lambda chosen, i, c: True,
) -> list[Candidate]:
    """``final`` with at least ``slots`` new items when ``ranked`` has them: the best ranked
    new items not in ``final`` replace its last items that are neither new nor pinned, from
    the end (``fits(final, i, c)`` may refuse replacing position ``i`` by ``c``, e.g. for the
    diversity cap: :func:`fits_cap`). ``ranked`` must hold only admissible candidates.

    New items have no popularity yet, so a ranking model that weighs popularity rarely puts
    them in the list on its own; the reserved slots are the exploration that lets them earn
    some (``api.candidates.new_slots``)."""
    have = sum(1 for c in final if c.origin == ORIGIN_NEW)
    if slots <= have or not final:
        return final
    in_final = {c.item_id for c in final}
    spare = sorted(
        (c for c in ranked if c.origin == ORIGIN_NEW and c.item_id not in in_final),
        key=lambda c: -(c.score if c.score is not None else float("-inf")),
    )
    out = list(final)
    for c in spare[: slots - have]:
        for i in range(len(out) - 1, -1, -1):
            if out[i].origin not in (ORIGIN_NEW, "pin") and fits(out, i, c):
                out[i] = c
                break
    return out
