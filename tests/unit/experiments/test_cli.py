"""``attune experiments list | show | start | stop``: output and exit codes, with the running
state in an in-memory stand-in of Redis (tests/integration/experiments uses the real one)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from attune.cli import main
from attune.config import free_port
from attune.experiments import state as state_mod
from attune.keys import Keys
from tests.unit.experiments.fake_redis import FakeRedis

EXPERIMENT: dict[str, Any] = {
    "id": "ranking_v1",
    "hypothesis": "ranking raises ctr",
    "layer": "recs",
    "variants": {"control": {"ranking": True}, "treatment": {"ranking": False}},
    "baseline": 0.05,
    "mde": 0.05,
}


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path, FakeRedis]:
    exp_file = tmp_path / "experiments.yaml"
    exp_file.write_text(yaml.safe_dump({"experiments": [EXPERIMENT]}))
    cfg_file = tmp_path / "attune.yaml"
    cfg_file.write_text(yaml.safe_dump({"experiments": {"file": str(exp_file)}}))
    fake = FakeRedis()
    monkeypatch.setattr(
        state_mod.StateStore,
        "from_config",
        classmethod(lambda cls, cfg: cls(fake, Keys.from_config(cfg))),
    )
    return cfg_file, exp_file, fake


def attune(cfg_file: Path, *args: str) -> int:
    return main(["--config", str(cfg_file), "experiments", *args])


def test_list_show_start_stop(env: Any, capsys: pytest.CaptureFixture[str]) -> None:
    cfg_file, _exp_file, _fake = env
    assert attune(cfg_file, "list") == 0
    out = capsys.readouterr().out
    assert "ranking_v1  ab    recs   draft" in out
    assert "control 50%, treatment 50%" in out

    assert attune(cfg_file, "start", "ranking_v1") == 0
    out = capsys.readouterr().out
    assert "ranking_v1 started at" in out and "users [0, 1) of the layer" in out
    assert attune(cfg_file, "start", "ranking_v1") == 0
    assert "already running with the declared allocation" in capsys.readouterr().out

    assert attune(cfg_file, "list", "--json") == 0
    listed = json.loads(capsys.readouterr().out)
    (row,) = listed["experiments"]
    assert (row["id"], row["status"], row["allocation_changes"]) == ("ranking_v1", "running", [])
    assert row["recorded_allocation"]["weights"] == {"control": 1.0, "treatment": 1.0}

    assert attune(cfg_file, "show", "ranking_v1", "--json") == 0
    shown = json.loads(capsys.readouterr().out)
    # planned users per arm, two-proportion z test, p1 = .05, p2 = .0525, alpha .05, power .8:
    # pbar = .05125; (1.95996 sqrt(2 * .05125 * .94875) + 0.84162 sqrt(.05 * .95 + .0525 *
    # .9475))**2 / .0025**2 = (0.611204 + 0.262450)**2 / 6.25e-6 = 122,124 (rounded up)
    assert shown["planned_users_per_arm"] == 122_124
    assert shown["status"] == "running" and [h["action"] for h in shown["history"]] == ["start"]
    assert shown["declaration"]["variants"]["treatment"]["ranking"] is False

    assert attune(cfg_file, "stop", "ranking_v1") == 0
    assert "ranking_v1 stopped at" in capsys.readouterr().out
    assert attune(cfg_file, "stop", "ranking_v1") == 0
    assert "already stopped" in capsys.readouterr().out
    assert attune(cfg_file, "show", "ranking_v1") == 0
    out = capsys.readouterr().out
    assert "status: stopped (ran " in out and "planned users per arm: 122,124" in out
    assert "history:" in out and "  stop" in out


def test_a_changed_allocation_is_refused_with_exit_3(
    env: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg_file, exp_file, _fake = env
    assert attune(cfg_file, "start", "ranking_v1") == 0
    changed = {**EXPERIMENT, "variants": {"control": {"weight": 3}, "treatment": {"weight": 1}}}
    exp_file.write_text(yaml.safe_dump({"experiments": [changed]}))
    capsys.readouterr()

    assert attune(cfg_file, "list") == 0
    out = capsys.readouterr().out
    assert "running (!)" in out
    assert "(!) ranking_v1 runs with the allocation it started with" in out

    assert attune(cfg_file, "start", "ranking_v1") == 3
    err = capsys.readouterr().err
    assert "split control 50% -> 75%, treatment 50% -> 25%" in err
    assert "--force records the declared allocation" in err

    assert attune(cfg_file, "start", "ranking_v1", "--force") == 0
    assert "recorded the file's allocation (forced)" in capsys.readouterr().out
    assert attune(cfg_file, "show", "ranking_v1", "--json") == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["forced"] is True and shown["allocation_changes"] == []
    assert [h["action"] for h in shown["history"]] == ["start", "force"]


def test_unknown_ids_exit_2_with_the_known_ones(
    env: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg_file, exp_file, _fake = env
    for action in ("show", "start", "stop"):
        assert attune(cfg_file, action, "nope") == 2
        err = capsys.readouterr().err
        assert f"unknown experiment 'nope'; declared in {exp_file}: ranking_v1" in err


def test_stopping_a_draft_is_refused(env: Any, capsys: pytest.CaptureFixture[str]) -> None:
    cfg_file, _exp_file, _fake = env
    assert attune(cfg_file, "stop", "ranking_v1") == 3
    assert "ranking_v1 is a draft (never started)" in capsys.readouterr().err


def test_invalid_declarations_exit_2(env: Any, capsys: pytest.CaptureFixture[str]) -> None:
    cfg_file, exp_file, _fake = env
    exp_file.write_text(yaml.safe_dump({"experiments": [{**EXPERIMENT, "traffic": 2}]}))
    assert attune(cfg_file, "list") == 2
    err = capsys.readouterr().err
    assert str(exp_file) in err and "experiments[0].traffic (experiment ranking_v1)" in err


def test_redis_down_exits_1_but_list_still_shows_the_declarations(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    exp_file = tmp_path / "experiments.yaml"
    exp_file.write_text(yaml.safe_dump({"experiments": [EXPERIMENT]}))
    cfg_file = tmp_path / "attune.yaml"
    port = free_port()  # nothing listens there
    cfg_file.write_text(
        yaml.safe_dump({"experiments": {"file": str(exp_file)}, "redis": {"port": port}})
    )
    assert attune(cfg_file, "list") == 1
    captured = capsys.readouterr()
    assert "ranking_v1  ab    recs   unknown" in captured.out
    assert f"Redis at 127.0.0.1:{port} (db 0) is not reachable" in captured.err
    assert attune(cfg_file, "start", "ranking_v1") == 1
    assert "attune stack up" in capsys.readouterr().err


def test_no_experiments_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg_file = tmp_path / "attune.yaml"
    cfg_file.write_text(f"experiments:\n  file: null\nredis:\n  port: {free_port()}\n")
    assert attune(cfg_file, "list") == 1  # Redis is not there either
    assert "no experiments: experiments.file is null" in capsys.readouterr().out
