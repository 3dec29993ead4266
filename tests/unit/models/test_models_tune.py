"""The hyper-parameter search's pure parts: the --param syntax, drawing trials, choosing."""

from __future__ import annotations

import pytest

from attune.config import RetrievalConfig
from models.tune import best_trial, draw_trials, parse_param, yaml_snippet


def test_parse_param_types_values_like_the_config() -> None:
    assert parse_param("temperature=0.1, 0.2") == ("temperature", (0.1, 0.2))
    assert parse_param("embedding_dim=32,64") == ("embedding_dim", (32, 64))
    assert parse_param("sequence_encoder=gru") == ("sequence_encoder", ("gru",))


@pytest.mark.parametrize(
    ("text", "fix"),
    [
        ("temperature", "expected NAME=V1,V2"),
        ("temprature=0.1", "not a models.retrieval key"),
        ("sequence_encoder=lstm", "not valid for sequence_encoder"),
        ("embedding_dim=2", "not valid for embedding_dim"),  # ge=4
    ],
)
def test_parse_param_errors_say_the_fix(text: str, fix: str) -> None:
    with pytest.raises(ValueError, match=fix):
        parse_param(text)


def test_trials_start_with_the_configured_model_and_never_repeat() -> None:
    base = RetrievalConfig()  # temperature 0.2, epochs 2
    space = {"temperature": (0.1, 0.2), "epochs": (1, 2)}
    trials = draw_trials(base, space, 10, seed=1)
    # 2 x 2 points, one of them the configured one (trial 0, an empty update): 4 trials in all
    assert trials[0] == {}
    assert len(trials) == 4
    points = {(t.get("temperature", 0.2), t.get("epochs", 2)) for t in trials}
    assert points == {(0.1, 1), (0.1, 2), (0.2, 1), (0.2, 2)}
    assert draw_trials(base, space, 3, seed=1) == trials[:3]  # deterministic in the seed


def test_best_trial_skips_trials_over_the_budget_and_nan() -> None:
    trials = [
        {"trial": 0, "ndcg": 0.10, "within_budget": True, "update": {}},
        {"trial": 1, "ndcg": 0.30, "within_budget": False, "update": {"epochs": 9}},
        {"trial": 2, "ndcg": float("nan"), "within_budget": True, "update": {"epochs": 3}},
        {"trial": 3, "ndcg": 0.12, "within_budget": True, "update": {"temperature": 0.1}},
        {"trial": 4, "ndcg": 0.12, "within_budget": True, "update": {"temperature": 0.5}},
    ]
    best = best_trial(trials)
    assert best is not None and best["trial"] == 3  # ties: the earlier
    assert best_trial(trials[1:3]) is None


def test_yaml_snippet() -> None:
    assert yaml_snippet({"temperature": 0.1, "sequence_encoder": "gru"}) == (
        'models:\n  retrieval:\n    temperature: 0.1\n    sequence_encoder: "gru"'
    )
