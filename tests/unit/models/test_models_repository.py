"""The promotion gate: the rule, and what a decision records and serves."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from attune.model_repository import ModelRepository, RepositoryError
from models.repository import decide, gate, promotions


def _writer(content: str):  # type: ignore[no-untyped-def]
    def write(path: Path) -> None:
        path.mkdir(parents=True)
        (path / "saved_model.pb").write_text(content)

    return write


def test_gate_rule() -> None:
    assert decide(0.10, None, 0.01)[0] is True  # nothing served yet
    assert decide(0.102, 0.100, 0.01)[0] is True  # 0.102 >= 0.100 * 1.01 = 0.101
    assert decide(0.1005, 0.100, 0.01)[0] is False  # better, but not by the margin
    assert decide(0.09, 0.100, 0.0)[0] is False
    assert decide(0.100, 0.100, 0.0)[0] is False  # a tie does not replace the served model
    assert decide(float("nan"), 0.1, 0.0)[0] is False


def test_gate_records_and_serves(tmp_path: Path) -> None:
    repo = ModelRepository(tmp_path, serving_base_path="/models")
    for _ in range(3):
        repo.publish("retrieval", _writer("x"), {})
    first = gate(repo, "retrieval", 1, "ndcg@10", 0.05, 0.20, lambda v: None)
    assert first.promoted and repo.served_version("retrieval") == 1
    # v2 measures 0.205, served v1 re-measured at 0.20 -> needs 0.21: kept
    second = gate(repo, "retrieval", 2, "ndcg@10", 0.05, 0.205, lambda v: 0.20)
    assert not second.promoted and second.served == 0.20
    assert repo.served_version("retrieval") == 1
    third = gate(repo, "retrieval", 3, "ndcg@10", 0.05, 0.25, lambda v: 0.20)
    assert third.promoted and repo.served_version("retrieval") == 3
    lines = [json.loads(x) for x in (tmp_path / "promotions.jsonl").read_text().splitlines()]
    assert [x["promoted"] for x in lines] == [True, False, True]
    assert promotions(repo) == lines
    config = (tmp_path / "models.config").read_text()
    assert 'base_path: "/models/retrieval"' in config
    assert "specific { versions: 3 }" in config
    with pytest.raises(RepositoryError, match="no published version 9"):
        repo.set_served("retrieval", 9, {})
