"""Splits never leak test interactions into training."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models.data import load_csv
from models.splits import make_split, temporal_split, user_stratified_split, validation_split
from tests.unit.models.conftest import frame


def _keys(df: pd.DataFrame) -> set[tuple[str, str, int]]:
    return set(zip(df["user_id"], df["item_id"], df["timestamp"].astype("int64"), strict=True))


def test_temporal_cut_is_strict_and_ties_stay_in_training() -> None:
    # 10 rows at t = 1..8, 8, 9; 20 % test -> 8 training rows, boundary t = 8; the second row
    # at t = 8 also goes to training, so the test set is the single row at t = 9.
    times = [1, 2, 3, 4, 5, 6, 7, 8, 8, 9]
    df = frame([(f"u{t % 3}", f"i{n}", 8.0, t) for n, t in enumerate(times)])
    split = temporal_split(df, 0.2)
    assert len(split.train) == 9
    assert split.test["item_id"].tolist() == ["i9"]
    assert split.train["timestamp"].max() < split.test["timestamp"].min()


def test_user_stratified_holds_out_per_user() -> None:
    # u5 has 5 rows -> round(5 * 0.2) = 1 test row; u10 has 10 -> 2; u1 has 1 -> stays in train.
    rows = [("u5", f"a{i}", 7.0, i) for i in range(5)]
    rows += [("u10", f"b{i}", 7.0, 100 + i) for i in range(10)]
    rows += [("u1", "c0", 7.0, 500)]
    split = user_stratified_split(frame(rows), 0.2, seed=3)
    counts = split.test["user_id"].value_counts().to_dict()
    assert counts == {"u5": 1, "u10": 2}
    assert set(split.test["user_id"]) <= set(split.train["user_id"])
    again = user_stratified_split(frame(rows), 0.2, seed=3)
    assert _keys(again.test) == _keys(split.test)


@pytest.mark.parametrize("kind", ["temporal", "user-stratified", "random"])
def test_no_leak_on_real_data(kind: str, mini_dir) -> None:  # type: ignore[no-untyped-def]
    data = load_csv(mini_dir / "ratings.csv", mini_dir / "movies.csv")
    df = data.interactions.assign(row=np.arange(len(data.interactions)))
    split = make_split(kind, df, 0.2, seed=7)
    train_rows, test_rows = set(split.train["row"]), set(split.test["row"])
    # disjoint, and together every row exactly once
    assert not train_rows & test_rows
    assert train_rows | test_rows == set(range(len(df)))
    assert len(split.train) + len(split.test) == len(df)
    if kind == "temporal":
        assert split.train["timestamp"].max() < split.test["timestamp"].min()
    val = validation_split(split, 0.25, seed=7)
    # the validation split only ever sees training rows
    assert set(val.train["row"]) | set(val.test["row"]) == train_rows
    assert not (set(val.test["row"]) & test_rows)


def test_bad_fraction_is_explained() -> None:
    df = frame([("u", "i", 7.0, 1), ("u", "j", 7.0, 2)])
    with pytest.raises(ValueError, match="between 0 and 1"):
        make_split("random", df, 1.5, 0)
    with pytest.raises(ValueError, match="unknown split 'weekly'"):
        make_split("weekly", df, 0.5, 0)
