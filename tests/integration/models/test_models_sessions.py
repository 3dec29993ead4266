"""The TFRS retrieval model on the OTTO sample's session prefixes (real TensorFlow training)."""

from __future__ import annotations

from pathlib import Path

from attune.config import AttuneConfig
from models.sessions import load_otto, run_session_evaluation, split_sessions
from tests.integration.models.conftest import quick


def test_tfrs_retrieval_ranks_session_prefixes(cfg: AttuneConfig, tmp_path: Path) -> None:
    sample = load_otto(cfg.paths.data_dir / "otto-sample")
    report = run_session_evaluation(
        quick(cfg, tmp_path / "models"),
        sample,
        models=["tfrs-retrieval", "popularity"],
        say=lambda _line: None,
    )
    split = split_sessions(sample.events, 0.2)
    m = report["models"]["tfrs-retrieval"]
    # every case is scored, with the same case set as the baselines
    assert m["cases"] == len(split.cases) == report["models"]["popularity"]["cases"]
    assert m["new_cases"] + m["repeat_cases"] == m["cases"]
    for key in ("recall", "mrr", "recall_new", "mrr_new", "recall_repeat"):
        assert 0.0 <= m[key] <= 1.0
    assert m["mrr"] <= m["recall"]  # 1/rank <= 1 for each hit
    assert report["caveat"] is not None and "anecdotal" in report["caveat"]
