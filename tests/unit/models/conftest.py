"""Fixtures of the models tests: tiny hand-made frames and the movietweetings-mini fixture."""

from __future__ import annotations

import os
from pathlib import Path

# TFRS needs Keras 2; set it before any test module imports TensorFlow (see models/__init__.py).
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import pandas as pd
import pytest

from attune.config import AttuneConfig


def frame(rows: list[tuple[str, str, float | None, int]]) -> pd.DataFrame:
    """Interactions in the contract's columns from (user, item, rating, unix seconds) rows."""
    from models.data import conform_interactions

    raw = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])
    return conform_interactions(raw, "test rows")


@pytest.fixture(scope="session")
def mini_dir(cfg: AttuneConfig) -> Path:
    path = cfg.paths.data_dir.absolute() / "movietweetings-mini"
    if not (path / "ratings.csv").exists():
        pytest.fail(f"the movietweetings-mini fixture is missing from {path}")
    return path
