"""``attune bandits evaluate`` end to end on the real Open Bandit sample (small simulation and
bootstrap to stay fast), and its exit code 2 on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from attune.cli import main

DATA = Path(__file__).resolve().parents[3] / "data"


@pytest.fixture
def config(tmp_path: Path) -> Path:
    cfg = tmp_path / "attune.yaml"
    cfg.write_text(
        yaml.safe_dump({"paths": {"data_dir": str(DATA), "var_dir": str(tmp_path / "var")}})
    )
    return cfg


def _evaluate(config: Path, *args: str) -> int:
    return main(["--config", str(config), "bandits", "evaluate", *args])


def test_bts_from_the_random_logs(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = _evaluate(
        config, "--policy", "bts", "--logs", "open-bandit", "--n-sim", "5000", "--bootstrap", "30"
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "truth: on-policy mean click of the bts logs = 0.004200" in out
    for name in ("DM", "IPW", "SNIPW", "DR"):
        assert f"\n{name} " in out
    # Default output folder: var_dir/reports/bandits.
    folder = tmp_path / "var" / "reports" / "bandits"
    doc = json.loads((folder / "evaluate-bts-open-bandit-random.json").read_text())
    assert (folder / "evaluate-bts-open-bandit-random.png").stat().st_size > 1000
    assert doc["truth"] == pytest.approx(0.0042)  # 42 clicks / 10,000 rows of bts/all.csv
    assert doc["rounds"] == 10_000 and doc["clicks"] == 38
    assert [r["estimator"] for r in doc["estimates"]] == ["dm", "ipw", "snipw", "dr"]
    for row in doc["estimates"]:
        assert row["ci_low"] <= row["ci_high"]
        assert row["relative_error"] == pytest.approx(abs(row["estimate"] - 0.0042) / 0.0042)
        # Every estimate is a click rate of the same order as the logs' 0.38 %.
        assert 0.001 < row["estimate"] < 0.02


def test_policy_files_json_and_csv_agree_with_random(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Uniform over 80 items at 3 positions, written both ways; evaluated on the random logs,
    # IPW's weights are all 1/80 / 0.0125 = 1, so IPW is the logs' mean click 38/10000.
    uniform = np.full((80, 3), 1 / 80)
    json_file = tmp_path / "uniform.json"
    json_file.write_text(json.dumps({"name": "uniform", "probabilities": uniform.tolist()}))
    csv_file = tmp_path / "uniform_csv.csv"
    csv_file.write_text(
        "item_id,position,probability\n"
        + "".join(f"{a},{p},{1 / 80}\n" for a in range(80) for p in (1, 2, 3))
    )
    for path in (json_file, csv_file):
        code = _evaluate(
            config,
            "--policy",
            str(path),
            "--logs",
            "open-bandit",
            "--bootstrap",
            "0",
            "--json",
            "--out",
            str(tmp_path / "out"),
        )
        assert code == 0
        doc = json.loads(capsys.readouterr().out)
        ipw = next(r for r in doc["estimates"] if r["estimator"] == "ipw")
        assert ipw["estimate"] == pytest.approx(0.0038)
        assert doc["truth"] is None  # no on-policy logs for a file policy


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--policy", "thompson", "--logs", "open-bandit"], "unknown policy 'thompson'"),
        (["--policy", "missing.json", "--logs", "open-bandit"], "missing.json not found"),
        (["--policy", "random", "--logs", "no/such/folder"], "not a folder"),
    ],
)
def test_bad_input_exits_2_with_a_message(
    config: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert _evaluate(config, *args) == 2
    assert message in capsys.readouterr().err


def test_wrong_shape_policy_file(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"probabilities": [[0.5, 0.5]] * 2}))
    assert _evaluate(config, "--policy", str(bad), "--logs", "open-bandit") == 2
    assert "(80, 3)" in capsys.readouterr().err


def test_wrong_columns_in_policy_csv(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("item,slot,p\n0,1,1.0\n")
    assert _evaluate(config, "--policy", str(bad), "--logs", "open-bandit") == 2
    assert "lacks column(s) item_id, position, probability" in capsys.readouterr().err
