"""Business rules: what may be recommended, in which order. Pure functions, no I/O.

They sit in the core so that the API (:mod:`attune.api.recommender`) and the offline evaluation
of the served pipeline (``models/pipeline.py``) apply the same code. Applied in this order to
every list, whichever source produced it (docs/api.md):

1. **hard filters** – an item is left out when the request excludes it, when the user already
   interacted with it (``drop_seen``) or bought it (``drop_purchased``), dismissed it (and did not
   undo that), when one of its categories is suppressed (ignored by the user, or "not
   interested" feedback), or when the request asks for categories and the item has none of them;
2. **boosts** – ``category_boosts`` of each of its distinct categories and its ``item_boosts``
   are added to its score, and ``ignored_category_penalty`` is subtracted once when one of its
   categories is *ignored* (shown to the user at least ``speed.features.ignore_min_impressions``
   times without any engagement: implicit, weaker than "not interested", so demoted rather
   than removed); the list is re-sorted (ties by item id);
3. **calibration** (``calibration`` > 0, off by default) – the best ``calibration_depth``
   items are re-ordered so that the list's genre mix follows the user's genre affinities
   (:func:`calibrate`; Steck, "Calibrated recommendations", RecSys 2018): a list ranked by a
   model that leans on what is popular lately would otherwise look the same for everyone;
4. **diversity** – walking the list best first, an item whose primary (first) category already
   has ``max_per_category`` items is skipped; items without a category are not capped;
5. **fill** – when fewer than ``k`` survive, the ``fill`` candidates (popular items, in their
   order) go through the same filters and cap;
6. **pins** – configured items for the placement are put at their positions (when they pass the
   hard filters; the cap does not apply to them) and the list is cut to ``k``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from attune.config import PinConfig, RulesConfig


@dataclass(frozen=True)
class Candidate:
    """One item on its way to the response."""

    item_id: str
    score: float | None
    origin: str  # retrieval, similar, trending, popular, batch, pin
    seed: str | None = None  # the user's item whose neighbour this is (for the reason)


@dataclass(frozen=True)
class Exclusions:
    """Everything the hard filters need to know about the user and the request."""

    seen: frozenset[str] = frozenset()
    purchased: frozenset[str] = frozenset()
    dismissed: frozenset[str] = frozenset()
    suppressed_categories: frozenset[str] = frozenset()
    penalized_categories: frozenset[str] = frozenset()
    excluded: frozenset[str] = frozenset()
    only_categories: frozenset[str] | None = None


@dataclass
class RuleStats:
    """How many candidates each rule removed (for metrics and the debug view)."""

    removed: dict[str, int] = field(default_factory=dict)

    def count(self, rule: str) -> None:
        self.removed[rule] = self.removed.get(rule, 0) + 1


Categories = Callable[[str], Sequence[str]]


def blocked_by(item: str, cats: Sequence[str], ex: Exclusions, rules: RulesConfig) -> str | None:
    """The name of the hard filter that removes ``item``, or None when it may be shown."""
    if item in ex.excluded:
        return "excluded"
    if item in ex.dismissed:
        return "dismissed"
    if rules.drop_purchased and item in ex.purchased:
        return "purchased"
    if rules.drop_seen and item in ex.seen:
        return "seen"
    if ex.suppressed_categories and any(c in ex.suppressed_categories for c in cats):
        return "suppressed_category"
    if ex.only_categories is not None and not any(c in ex.only_categories for c in cats):
        return "category_filter"
    return None


def boosted(
    c: Candidate, cats: Sequence[str], rules: RulesConfig, penalized: frozenset[str] = frozenset()
) -> Candidate:
    if c.score is None:
        return c
    extra = sum(rules.category_boosts.get(cat, 0.0) for cat in dict.fromkeys(cats))
    extra += rules.item_boosts.get(c.item_id, 0.0)
    if penalized and any(cat in penalized for cat in cats):
        extra -= rules.ignored_category_penalty
    return replace(c, score=c.score + extra) if extra else c


def pins_for(rules: RulesConfig, placement: str | None) -> list[PinConfig]:
    pins = list(rules.pins.get("*", []))
    if placement is not None:
        pins += rules.pins.get(placement, [])
    return sorted(pins, key=lambda p: p.position)


CALIBRATION_SMOOTHING = 0.01
"""``alpha`` of the list's genre mix ``(1 - alpha) q + alpha p``, so that a genre of the user's
missing from the list costs a large but finite divergence (Steck's choice)."""


def calibrate(
    ranked: Sequence[Candidate],
    n: int,
    tastes: Mapping[str, float],
    categories: Categories,
    weight: float,
    depth: int,
) -> list[Candidate]:
    """``ranked`` (best first) with its first ``n`` places chosen greedily among the best
    ``depth``, each time the item that maximizes ``(1 - weight) * relevance - weight *
    KL(p || q~)``; the rest follow in their order.

    ``p`` is the user's genre mix (``tastes`` normalized, positive values only); ``q`` the mix
    of the list so far with the item added, each item spreading one unit evenly over its
    genres and counting once in the total (an item without genres adds none), smoothed by
    :data:`CALIBRATION_SMOOTHING`. Relevance is the score rescaled to 0..1 over the window
    (an unscored item 0). Without a positive taste, or with ``weight`` 0, ``ranked`` is
    returned unchanged.
    """
    genres = sorted(g for g, v in tastes.items() if v > 0)
    window = list(ranked[:depth])
    if weight <= 0 or not genres or n <= 0 or len(window) <= 1:
        return list(ranked)
    p = np.array([tastes[g] for g in genres], dtype=float)
    p /= p.sum()
    col = {g: j for j, g in enumerate(genres)}
    mass = np.zeros((len(window), len(genres)))
    for i, c in enumerate(window):
        cats = list(dict.fromkeys(categories(c.item_id)))
        for g in cats:
            if g in col:
                mass[i, col[g]] += 1.0 / len(cats)
    scores = np.array([c.score if c.score is not None else np.nan for c in window], dtype=float)
    rel = np.zeros(len(window))
    known = ~np.isnan(scores)
    if known.any():
        lo, hi = scores[known].min(), scores[known].max()
        rel[known] = (scores[known] - lo) / (hi - lo) if hi > lo else 1.0
    taken = np.zeros(len(window), dtype=bool)
    total = np.zeros(len(genres))
    order: list[int] = []
    a = CALIBRATION_SMOOTHING
    for step in range(min(n, len(window))):
        q = (total[None, :] + mass) / (step + 1)
        kl = (p * np.log(p / ((1 - a) * q + a * p))).sum(axis=1)
        gain = (1 - weight) * rel - weight * kl
        gain[taken] = -np.inf
        best = int(np.argmax(gain))  # the first best: ties keep the ranking's order
        taken[best] = True
        total += mass[best]
        order.append(best)
    return (
        [window[i] for i in order]
        + [c for i, c in enumerate(window) if not taken[i]]
        + list(ranked[depth:])
    )


def apply_rules(
    ranked: Iterable[Candidate],
    k: int,
    ex: Exclusions,
    categories: Categories,
    rules: RulesConfig,
    *,
    fill: Iterable[Candidate] = (),
    placement: str | None = None,
    stats: RuleStats | None = None,
    tastes: Mapping[str, float] | None = None,
) -> list[Candidate]:
    """The final list of at most ``k`` items (see the module docstring); ``tastes``: the user's
    genre affinities, for calibration."""
    stats = stats or RuleStats()
    pins = []
    for pin in pins_for(rules, placement):
        why = blocked_by(pin.item_id, categories(pin.item_id), ex, rules)
        if why is None:
            pins.append(pin)
        else:
            stats.count(why)
    pinned_ids = {p.item_id for p in pins_for(rules, placement)}
    seen_ids: set[str] = set()

    def admissible(cands: Iterable[Candidate]) -> list[Candidate]:
        out = []
        for c in cands:
            if c.item_id in seen_ids:
                continue
            seen_ids.add(c.item_id)
            if c.item_id in pinned_ids:
                continue  # placed by its pin below
            cats = categories(c.item_id)
            why = blocked_by(c.item_id, cats, ex, rules)
            if why is not None:
                stats.count(why)
                continue
            out.append(boosted(c, cats, rules, ex.penalized_categories))
        return out

    primary = admissible(ranked)
    primary.sort(key=lambda c: (-(c.score if c.score is not None else float("-inf")), c.item_id))
    slots = max(0, k - len(pins))
    if rules.calibration > 0 and tastes:
        primary = calibrate(
            primary, slots, tastes, categories, rules.calibration, rules.calibration_depth
        )
    per_category: dict[str, int] = {}
    chosen: list[Candidate] = []

    def take(cands: Iterable[Candidate]) -> None:
        for c in cands:
            if len(chosen) >= slots:
                return
            cats = categories(c.item_id)
            primary_cat = cats[0] if cats else None
            if primary_cat is not None and rules.max_per_category > 0:
                if per_category.get(primary_cat, 0) >= rules.max_per_category:
                    stats.count("diversity")
                    continue
                per_category[primary_cat] = per_category.get(primary_cat, 0) + 1
            chosen.append(c)

    take(primary)
    if len(chosen) < slots:
        take(admissible(fill))

    placed: set[str] = set()
    for pin in pins:
        if pin.item_id in placed:
            continue
        placed.add(pin.item_id)
        chosen.insert(min(pin.position, len(chosen)), Candidate(pin.item_id, None, "pin"))
    return chosen[:k]
