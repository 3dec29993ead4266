"""Experiment declarations: the repository's file, and every mistake reported with the file,
the key path and the fix."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from attune.config import AttuneConfig, ConfigError, RulesConfig, absolute_config, load_config
from attune.experiments.spec import (
    GUARDRAIL_METRICS,
    METRICS,
    USER_METRICS,
    experiments_of,
    load_experiments,
    parse_experiments,
)

ROOT = Path(__file__).resolve().parents[3]

BASE: dict[str, Any] = {
    "experiments": [
        {
            "id": "exp1",
            "hypothesis": "h",
            "layer": "recs",
            "variants": {"control": {"weight": 1}, "treatment": {"weight": 1, "ranking": False}},
        }
    ]
}


def with_changes(**changes: Any) -> dict[str, Any]:
    data = copy.deepcopy(BASE)
    data["experiments"][0].update(changes)
    return data


def error_of(data: Any, tmp_path: Path, name: str = "experiments.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as info:
        load_experiments(path)
    message = str(info.value)
    assert str(path) in message  # every message names the file
    return message


def test_the_repository_file_declares_ranking_on_against_off() -> None:
    decls = load_experiments(ROOT / "config" / "experiments.yaml")
    exp = decls.get("ranking_v1")
    assert exp is not None and exp.type == "ab" and exp.layer == "recs"
    assert exp.control == "control"  # the first variant
    assert exp.variants["control"].ranking is True
    assert exp.variants["treatment"].ranking is False
    assert exp.weights == {"control": 1.0, "treatment": 1.0}
    assert exp.primary_metric == "ctr"
    assert {g.metric for g in exp.guardrails} == {
        "api_latency_p99_ms",
        "error_rate",
        "dismiss_rate",
    }
    assert decls.holdout.share == 0.0


def test_the_defaults_of_a_minimal_declaration(tmp_path: Path) -> None:
    path = tmp_path / "e.yaml"
    path.write_text(yaml.safe_dump(BASE))
    exp = load_experiments(path).experiments[0]
    assert (exp.type, exp.traffic, exp.primary_metric, exp.alpha, exp.mde, exp.power) == (
        "ab",
        1.0,
        "ctr",
        None,
        0.05,
        0.8,
    )
    assert exp.targeting.is_everyone and exp.alpha_or(0.01) == 0.01
    assert exp.variants["control"].model_label is None
    assert exp.variants["control"].candidate_sources is None


def test_an_empty_file_declares_nothing(tmp_path: Path) -> None:
    path = tmp_path / "e.yaml"
    path.write_text("")
    assert load_experiments(path).experiments == ()


def test_metric_names_are_fixed() -> None:
    assert USER_METRICS == (
        "ctr",
        "click_rate",
        "purchase_rate",
        "cart_rate",
        "revenue",
        "dwell_s",
        "dismiss_rate",
    )
    assert GUARDRAIL_METRICS == ("dismiss_rate", "api_latency_p99_ms", "error_rate")
    assert METRICS["ctr"].kind == "ratio" and METRICS["click_rate"].kind == "binary"


def test_a_bad_weight_names_the_key_path_and_the_experiment(tmp_path: Path) -> None:
    data = with_changes(variants={"control": {"weight": -1}, "treatment": {}})
    message = error_of(data, tmp_path)
    assert "experiments[0].variants.control.weight (experiment exp1)" in message
    assert "greater than or equal to 0" in message and "got -1" in message


def test_an_unknown_key_lists_the_keys_it_could_be(tmp_path: Path) -> None:
    data = with_changes(variants={"control": {"weigth": 1}, "treatment": {}})
    message = error_of(data, tmp_path)
    assert "experiments[0].variants.control.weigth (experiment exp1): unknown key" in message
    assert "weight, ranking, model_label, rules, candidate_sources" in message
    message = error_of({**BASE, "holdouts": {}}, tmp_path)
    assert "holdouts: unknown key; expected one of holdout, experiments" in message
    message = error_of(with_changes(targeting={"platform": ["ios"]}), tmp_path)
    assert "targeting.platform" in message and "segments, platforms, users" in message


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"primary_metric": "ctrr"}, "unknown metric 'ctrr': expected one of ctr, click_rate"),
        ({"primary_metric": "error_rate"}, "'error_rate' is an operational metric"),
        ({"secondary_metrics": ["revenue", "revenue"]}, "a metric is listed twice"),
        (
            {"guardrails": [{"metric": "ctr", "max_relative_increase": 0.1}]},
            "'ctr' cannot be a guardrail: a guardrail caps the increase of a metric where lower",
        ),
        (
            {"type": "interleaving", "variants": {"a": {}, "b": {}, "c": {}}},
            "an interleaving experiment compares exactly 2 rankers, got 3 variants",
        ),
        (
            {"type": "interleaving", "variants": {"a": {}, "interleaved": {}}},
            "'interleaved' is reserved",
        ),
        ({"variants": {"control": {}}}, "at least 2 variants, got 1"),
        (
            {"variants": {"control": {"weight": 0}, "treatment": {"weight": 0}}},
            "no variant has a positive weight: give at least one weight > 0",
        ),
        ({"variants": {"a:b": {}, "c": {}}}, "variant name(s) 'a:b' may use only letters"),
        (
            {"start": "2026-12-02T00:00:00Z", "stop": "2026-12-01T00:00:00Z"},
            "stop (2026-12-01T00:00:00+00:00) is not after start (2026-12-02T00:00:00+00:00)",
        ),
        ({"start": "2026-12-01T00:00:00"}, "has no time zone: add one, e.g. 2026-12-01T00:00:00Z"),
        ({"id": "none"}, "'none' is reserved"),
        ({"id": "holdout"}, "'holdout' is reserved"),
        ({"id": "a b"}, "String should match pattern"),
        ({"traffic": 0}, "greater than 0"),
        ({"hypothesis": ""}, "at least 1 character"),
        (
            {"variants": {"a": {"candidate_sources": ["retrival"]}, "b": {}}},
            "unknown candidate source(s) 'retrival': expected some of retrieval, neighbours",
        ),
        ({"variants": {"a": {"candidate_sources": []}, "b": {}}}, "an empty list leaves no"),
    ],
)
def test_each_mistake_says_how_to_fix_it(
    changes: dict[str, Any], expected: str, tmp_path: Path
) -> None:
    assert expected in error_of(with_changes(**changes), tmp_path)


def test_a_missing_required_key(tmp_path: Path) -> None:
    data = copy.deepcopy(BASE)
    del data["experiments"][0]["hypothesis"]
    assert "experiments[0].hypothesis (experiment exp1): required" in error_of(data, tmp_path)


def test_ids_and_variants_must_fit_a_recommendation_id(tmp_path: Path) -> None:
    # "<id>:<variant>:<20 hex>" <= 64 characters: id + variant <= 64 - 20 - 2 = 42
    exp_id = "e" * 24  # the longest id
    ok = with_changes(id=exp_id, variants={"v" * 18: {}, "b": {}})  # 24 + 18 = 42
    path = tmp_path / "ok.yaml"
    path.write_text(yaml.safe_dump(ok))
    assert load_experiments(path).experiments[0].id == exp_id
    message = error_of(with_changes(id=exp_id, variants={"v" * 19: {}, "b": {}}), tmp_path)
    assert "plus the longest variant name is 43 characters" in message
    assert "shorten them to 42 together" in message
    assert "at most 24 characters" in error_of(with_changes(id="e" * 25), tmp_path)


def test_a_date_means_midnight_utc(tmp_path: Path) -> None:
    path = tmp_path / "e.yaml"
    path.write_text(yaml.safe_dump(BASE).replace("id: exp1", "id: exp1\n  start: 2026-12-01"))
    exp = load_experiments(path).experiments[0]
    assert exp.start == datetime(2026, 12, 1, tzinfo=UTC)


def test_ids_are_unique_and_a_layer_holds_at_most_all_its_users(tmp_path: Path) -> None:
    first = BASE["experiments"][0]
    data = {"experiments": [first, dict(first)]}
    assert "'exp1' is declared twice" in error_of(data, tmp_path)
    data = {
        "experiments": [
            {**first, "traffic": 0.6},
            {**first, "id": "exp2", "traffic": 0.5},
        ]
    }
    message = error_of(data, tmp_path)
    assert "layer 'recs' adds up to 1.1 (exp1 0.6 + exp2 0.5)" in message
    assert "lower their traffic" in message
    # the same traffic in two layers is fine
    data["experiments"][1]["layer"] = "other"
    assert [e.id for e in parse_experiments(data).experiments] == ["exp1", "exp2"]


def test_holdout_share_is_bounded(tmp_path: Path) -> None:
    message = error_of({"holdout": {"share": 0.6}}, tmp_path)
    assert "holdout.share" in message and "less than or equal to 0.5" in message


def test_files_that_are_not_declarations(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=r"does not exist .* experiments\.file: null"):
        load_experiments(missing)
    bad = tmp_path / "bad.yaml"
    bad.write_text("experiments: [")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_experiments(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_experiments(listy)


def test_rule_sets_must_be_declared_in_the_config(tmp_path: Path) -> None:
    data = with_changes(variants={"control": {}, "strict": {"rules": "strict_rules"}})
    path = tmp_path / "e.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as info:
        load_experiments(path, rule_sets={"other"})
    message = str(info.value)
    assert "experiments[0].variants.strict.rules (experiment exp1)" in message
    assert "unknown rule set 'strict_rules' (other)" in message
    assert "declare it under api.rule_sets" in message
    assert load_experiments(path, rule_sets={"strict_rules"}).experiments[0].id == "exp1"
    # experiments_of checks against the config's api.rule_sets
    cfg = AttuneConfig()
    cfg = cfg.model_copy(
        update={
            "experiments": cfg.experiments.model_copy(update={"file": path}),
            "api": cfg.api.model_copy(update={"rule_sets": {"strict_rules": RulesConfig()}}),
        }
    )
    assert experiments_of(cfg).ids == ["exp1"]


def test_experiments_file_null_means_no_experiments() -> None:
    cfg = AttuneConfig()
    cfg = cfg.model_copy(update={"experiments": cfg.experiments.model_copy(update={"file": None})})
    assert experiments_of(cfg).experiments == ()


def test_the_experiments_section_of_the_config(tmp_path: Path) -> None:
    e = AttuneConfig().experiments
    assert e.file == Path("config/experiments.yaml")
    assert (e.attribution_window.total_seconds(), e.cuped_days, e.alpha) == (1800, 14, 0.05)
    assert (e.refresh_s, e.correction, e.reports_dir) == (
        10.0,
        "holm",
        Path("reports/experiments"),
    )
    # a child process may run elsewhere: the file is handed over as an absolute path
    assert absolute_config(AttuneConfig()).experiments.file == (
        ROOT / "config" / "experiments.yaml"
    )
    cfg_file = tmp_path / "attune.yaml"
    cfg_file.write_text("experiments:\n  correction: bonferroni\n")
    with pytest.raises(ConfigError, match=r"experiments\.correction"):
        load_config(cfg_file, environ={})


def test_api_experiment_moved_to_the_experiments_file(tmp_path: Path) -> None:
    cfg_file = tmp_path / "attune.yaml"
    cfg_file.write_text("api:\n  experiment:\n    name: recs\n")
    with pytest.raises(ConfigError) as info:
        load_config(cfg_file, environ={})
    message = str(info.value)
    assert str(cfg_file) in message
    assert "api.experiment: moved to the experiments file" in message
    assert "attune experiments start ID" in message and "remove api.experiment" in message
    with pytest.raises(ConfigError, match=r"api\.experiment: moved"):
        load_config(None, environ={"ATTUNE__API__EXPERIMENT__NAME": "recs"})
