"""Fixtures of the models integration tests."""

from __future__ import annotations

import os
from pathlib import Path

# TFRS needs Keras 2; set it before any test module imports TensorFlow (see models/__init__.py).
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import pytest

from attune.config import AttuneConfig


@pytest.fixture(scope="session")
def mini_dir(cfg: AttuneConfig) -> Path:
    path = cfg.paths.data_dir.absolute() / "movietweetings-mini"
    if not (path / "ratings.csv").exists():
        pytest.fail(f"the movietweetings-mini fixture is missing from {path}")
    return path


def quick(cfg: AttuneConfig, repository: Path) -> AttuneConfig:
    """``cfg`` with one-epoch models and the model repository at ``repository``."""
    mc = cfg.models
    models = mc.model_copy(
        update={
            "repository_dir": repository,
            "retrieval": mc.retrieval.model_copy(update={"epochs": 1, "embedding_dim": 16}),
            "ranking": mc.ranking.model_copy(update={"epochs": 1, "embedding_dim": 16}),
            "als": mc.als.model_copy(update={"rank": 8, "max_iter": 3}),
        }
    )
    return cfg.model_copy(update={"models": models})
