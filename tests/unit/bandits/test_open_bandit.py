"""Loading the Open Bandit Dataset sample and refusing malformed logs."""

from __future__ import annotations

from pathlib import Path

import pytest

from attune.bandits.open_bandit import LogsError, load_open_bandit

DATA = Path(__file__).resolve().parents[3] / "data" / "open-bandit"


@pytest.fixture(scope="module")
def random_lines() -> list[str]:
    return (DATA / "random" / "all.csv").read_text().splitlines()


def test_random_logs() -> None:
    logs = load_open_bandit(DATA / "random")
    # Counted in the CSV: 10,000 rows, 38 clicks, 80 items in item_context.csv, positions 1-3,
    # every propensity 1/80 = 0.0125 (uniform over 80 items).
    assert logs.n_rounds == 10_000
    assert int(logs.reward.sum()) == 38
    assert logs.n_actions == 80 and logs.len_list == 3
    assert set(logs.position.tolist()) == {0, 1, 2}
    assert set(logs.pscore.tolist()) == {0.0125}
    assert logs.affinity.shape == (10_000, 80)
    assert logs.user_features.shape[0] == 10_000 and logs.user_features.shape[1] > 0


def test_on_policy_value_of_the_bts_logs() -> None:
    # 42 clicks in the 10,000 rows of bts/all.csv.
    assert load_open_bandit(DATA / "bts").on_policy_value() == pytest.approx(0.0042)


def _copy(tmp: Path, lines: list[str], items: bool = True) -> Path:
    folder = tmp / "logs"
    folder.mkdir()
    (folder / "all.csv").write_text("\n".join(lines) + "\n")
    if items:
        (folder / "item_context.csv").write_text((DATA / "random" / "item_context.csv").read_text())
    return folder


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(LogsError, match=r"not a folder.*open-bandit"):
        load_open_bandit(tmp_path / "nope")


def test_missing_item_file(tmp_path: Path, random_lines: list[str]) -> None:
    folder = _copy(tmp_path, random_lines[:50], items=False)
    with pytest.raises(LogsError, match=r"item_context\.csv not found"):
        load_open_bandit(folder)


def test_missing_column(tmp_path: Path, random_lines: list[str]) -> None:
    lines = [line.replace("propensity_score", "pscore") for line in random_lines[:50]]
    with pytest.raises(LogsError, match=r"lacks column.*propensity_score"):
        load_open_bandit(_copy(tmp_path, lines))


def test_bad_click(tmp_path: Path, random_lines: list[str]) -> None:
    header = random_lines[0].split(",")
    col = header.index("click")
    row = random_lines[1].split(",")
    row[col] = "2"
    with pytest.raises(LogsError, match="click must be 0 or 1"):
        load_open_bandit(_copy(tmp_path, [random_lines[0], ",".join(row), *random_lines[2:20]]))


def test_zero_propensity(tmp_path: Path, random_lines: list[str]) -> None:
    header = random_lines[0].split(",")
    col = header.index("propensity_score")
    row = random_lines[1].split(",")
    row[col] = "0.0"
    with pytest.raises(LogsError, match=r"propensity_score must be in \(0, 1\]"):
        load_open_bandit(_copy(tmp_path, [random_lines[0], ",".join(row), *random_lines[2:20]]))


def test_unknown_item(tmp_path: Path, random_lines: list[str]) -> None:
    header = random_lines[0].split(",")
    col = header.index("item_id")
    row = random_lines[1].split(",")
    row[col] = "80"
    with pytest.raises(LogsError, match=r"item_id must be integers in 0\.\.79"):
        load_open_bandit(_copy(tmp_path, [random_lines[0], ",".join(row), *random_lines[2:20]]))
