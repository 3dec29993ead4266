"""``attune models rollback``: the served history, what "before" means, refusals, and what a
rollback changes in a real (tiny, TensorFlow-free) model repository."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from attune.config import AttuneConfig
from attune.model_repository import ModelRepository
from models.repository import gate, promotions
from models.rollback import (
    REASON,
    Rollback,
    RollbackRefused,
    cmd_rollback,
    plan_rollback,
    previous_served,
    rollback,
    served_history,
)


def test_served_history_is_the_promoted_versions_in_order() -> None:
    decisions = [
        {"model": "retrieval", "version": 1, "promoted": True},
        {"model": "ranking", "version": 1, "promoted": True},
        {"model": "retrieval", "version": 2, "promoted": False},  # failed the gate
        {"model": "retrieval", "version": None, "promoted": False},  # never published
        {"model": "retrieval", "version": 3, "promoted": True},
    ]
    assert served_history(decisions, "retrieval") == [1, 3]
    assert served_history(decisions, "ranking") == [1]
    assert served_history(decisions, "other") == []


@pytest.mark.parametrize(
    ("history", "current", "expected"),
    [
        ([1, 3], 3, 1),  # promoted 1 then 3: before 3 came 1
        ([1, 2, 2, 3], 3, 2),
        ([1, 3, 1], 1, 3),  # after a rollback from 3 to 1, "before" is 3 again (undo)
        ([1, 3, 3], 3, 1),  # the same version promoted twice in a row is one period
        ([1, 3], 5, 3),  # 5 pinned by hand (not in the history): the last one served
        ([1], 1, None),  # nothing before the first
        ([], 2, None),
        ([1, 3], None, None),  # nothing pinned
    ],
)
def test_previous_served(history: list[int], current: int | None, expected: int | None) -> None:
    assert previous_served(history, current) == expected


def test_plan_and_refusals() -> None:
    assert plan_rollback("retrieval", 3, [1, 3], [1, 2, 3], None) == Rollback("retrieval", 3, 1)
    assert plan_rollback("retrieval", 3, [1, 3], [1, 2, 3], 2) == Rollback("retrieval", 3, 2)
    assert not plan_rollback("retrieval", 3, [1, 3], [1, 2, 3], 3).needed  # already served
    with pytest.raises(RollbackRefused, match=r"no published version 9 \(published: v1, v2, v3\)"):
        plan_rollback("retrieval", 3, [1, 3], [1, 2, 3], 9)
    with pytest.raises(RollbackRefused, match=r"nothing was served before retrieval v1"):
        plan_rollback("retrieval", 1, [1], [1, 2], None)
    with pytest.raises(
        RollbackRefused, match=r"v1 was served before v3 but is no longer published"
    ):
        plan_rollback("retrieval", 3, [1, 3], [2, 3], None)
    with pytest.raises(RollbackRefused, match=r"latest published one, v2\), so there is no"):
        plan_rollback("retrieval", None, [], [1, 2], None)
    with pytest.raises(RollbackRefused, match=r"ranking has no published version: nothing to roll"):
        plan_rollback("ranking", None, [], [], None)


def _writer(path: Path) -> None:
    path.mkdir(parents=True)
    (path / "saved_model.pb").write_text("x")


@pytest.fixture
def repo(tmp_path: Path) -> ModelRepository:
    """Both models published v1..v3; the gate promoted v1 (ndcg 0.20) then v3 (0.25)."""
    r = ModelRepository(tmp_path / "models")
    for name in ("retrieval", "ranking"):
        for _ in range(3):
            r.publish(name, _writer, {})
        gate(r, name, 1, "ndcg@10", 0.01, 0.20, lambda v: None)
        gate(r, name, 2, "ndcg@10", 0.01, 0.19, lambda v: 0.20)  # not promoted
        gate(r, name, 3, "ndcg@10", 0.01, 0.25, lambda v: 0.20)
    return r


def test_rollback_serves_the_previous_version_and_records_it(repo: ModelRepository) -> None:
    before = len(promotions(repo))
    plans = rollback(repo, ["retrieval", "ranking"], None, "ndcg@10")
    assert plans == [Rollback("retrieval", 3, 1), Rollback("ranking", 3, 1)]
    assert repo.served_version("retrieval") == 1 and repo.served_version("ranking") == 1
    entry = repo.serving()["retrieval"]
    # v1 was promoted measuring 0.20: serving.json keeps it, as after the gate
    assert (entry["metric"], entry["value"], entry["rolled_back_from"]) == ("ndcg@10", 0.20, 3)
    assert "specific { versions: 1 }" in (repo.root / "models.config").read_text()
    new = promotions(repo)[before:]
    assert [
        (d["model"], d["version"], d["served_version"], d["promoted"], d["reason"]) for d in new
    ] == [
        ("retrieval", 1, 3, True, REASON),
        ("ranking", 1, 3, True, REASON),
    ]
    # rolling back again undoes the rollback: 3 was served before 1
    rollback(repo, ["retrieval"], None, "ndcg@10")
    assert repo.served_version("retrieval") == 3


def test_to_a_version_and_already_served(repo: ModelRepository) -> None:
    rollback(repo, ["ranking"], 2, "ndcg@10")  # v2 failed the gate, but an operator may serve it
    assert repo.served_version("ranking") == 2
    entry = repo.serving()["ranking"]
    assert "value" not in entry  # v2 was never promoted: no measurement to carry over
    n = len(promotions(repo))
    [plan] = rollback(repo, ["ranking"], 2, "ndcg@10")
    assert not plan.needed and len(promotions(repo)) == n  # nothing recorded


def test_a_refusal_changes_nothing_for_any_model(repo: ModelRepository) -> None:
    # --to 4 for both: retrieval has a v4, ranking has not; refused before anything changes
    repo.publish("retrieval", _writer, {})
    serving = json.dumps(repo.serving(), sort_keys=True)
    n = len(promotions(repo))
    with pytest.raises(RollbackRefused, match="ranking has no published version 4"):
        rollback(repo, ["retrieval", "ranking"], 4, "ndcg@10")
    assert json.dumps(repo.serving(), sort_keys=True) == serving  # retrieval untouched too
    assert len(promotions(repo)) == n


def test_cmd_rollback_exit_codes_and_messages(
    repo: ModelRepository, cfg: AttuneConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    c = cfg.model_copy(
        update={"models": cfg.models.model_copy(update={"repository_dir": repo.root})}
    )

    def run(**kw: object) -> int:
        args = {"model": None, "to": None, "json": False, **kw}
        return cmd_rollback(c, argparse.Namespace(**args))

    assert run(model="retrieval") == 0
    out = capsys.readouterr().out
    assert "retrieval: now serving v1 (was v3); recorded: rollback by operator" in out
    assert "ranking" not in out.split("serving.json")[0]  # --model: only retrieval
    assert run(model="ranking", to=7) == 1
    err = capsys.readouterr().err
    assert err.startswith("attune models rollback: REFUSED, nothing changed: ranking has no")
    assert run(json=True) == 0
    doc = json.loads(capsys.readouterr().out)
    # retrieval (now v1) goes back to 3; ranking (v3) to 1
    assert [(m["model"], m["current"], m["target"], m["changed"]) for m in doc["models"]] == [
        ("retrieval", 1, 3, True),
        ("ranking", 3, 1, True),
    ]


def test_cli_wires_models_rollback() -> None:
    from attune.cli import build_parser

    args = build_parser().parse_args(["models", "rollback", "--model", "ranking", "--to", "2"])
    assert (args.model, args.to, args.json) == ("ranking", 2, False)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["models", "rollback", "--model", "als"])
