"""The demo experiment's simulated users: taste, position bias, reactions, outcome events."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from attune.demo_experiment import (
    BASE_CLICK,
    TASTE_CLICK,
    Reaction,
    Taste,
    look,
    outcome_events,
    react,
    tastes,
)
from attune.events import Event


def test_tastes_are_genre_shares_of_the_users_ratings() -> None:
    genres = {"m1": ["Drama"], "m2": ["Drama", "Comedy"], "m3": ["Horror"]}
    got = tastes([("u", "m1"), ("u", "m2"), ("u", "m3"), ("v", "unknown")], genres)
    # u: Drama twice (m1, m2), Comedy once, Horror once -> 2/4, 1/4, 1/4; v has no known genre
    assert got["u"].affinity == {"Drama": 0.5, "Comedy": 0.25, "Horror": 0.25}
    assert "v" not in got
    assert got["u"].appeal(["Comedy", "Drama"]) == 0.5
    assert got["u"].appeal(["Western"]) == 0.0


def test_position_bias() -> None:
    assert look(0) == 1.0
    assert look(1) == pytest.approx(2**-0.7)  # 0.6156
    assert look(9) == pytest.approx(10**-0.7)  # 0.1995


def test_click_rate_follows_appeal_at_the_top_slot() -> None:
    # slot 0 is always looked at: P(click) = BASE + TASTE * appeal = 0.01 + 0.45 * 0.5 = 0.235
    taste = Taste({"Drama": 0.5, "Comedy": 0.5})
    rng = random.Random(1)
    n = 20_000
    reactions = [react([("m", ["Drama"])], taste, rng) for _ in range(n)]
    clicks = sum(len(r.clicks) for r in reactions)
    expected = BASE_CLICK + TASTE_CLICK * 0.5
    sd = (expected * (1 - expected) / n) ** 0.5  # 0.003; 5 sd = 0.015
    assert abs(clicks / n - expected) < 5 * sd
    # not clicked (0.765), then dismissed with 0.03 * (1 - 0.5): 0.765 * 0.015 = 0.011475
    dismissed = sum(len(r.dismissed) for r in reactions)
    sd = (0.011475 * (1 - 0.011475) / n) ** 0.5  # 0.00075
    assert abs(dismissed / n - 0.011475) < 5 * sd


def test_outcome_events_are_valid_collector_events() -> None:
    now = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
    reaction = Reaction(clicks=(("m1", 60_000),), dismissed=("m9",))
    events = outcome_events("u1", "ranking_v1:control:abc", reaction, now, "home")
    assert [e["type"] for e in events] == ["rec_click", "dwell", "dismiss"]
    for e in events:
        Event.model_validate(e)  # the collector's own schema accepts them
        assert e["recommendation_id"] == "ranking_v1:control:abc"
    # the dwell is reported with the click, 2 s after the list was shown, its length in dwell_ms
    assert events[1]["timestamp"] == "2026-12-06T12:00:02+00:00"
    assert events[1]["dwell_ms"] == 60_000
