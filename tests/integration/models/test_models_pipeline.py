"""Train on the mini fixture, export, publish, load; Delta input; ALS; the evaluate command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from attune.config import AttuneConfig
from models.data import load_csv
from tests.integration.models.conftest import quick

pytestmark = pytest.mark.integration

QUERY_INPUTS = {
    "device": ["string", [None]],
    "placement": ["string", [None]],
    "recent_items": ["string", [None, None]],
    "recent_times": ["int64", [None, None]],
    "request_time": ["int64", [None]],
    "segment": ["string", [None]],
    "user_id": ["string", [None]],
}


def test_train_export_publish_load_and_gate(
    cfg: AttuneConfig, mini_dir: Path, tmp_path: Path
) -> None:
    from models.export import call_signature, load_saved_model, signature_summary
    from models.features import TrainingData
    from models.repository import promotions
    from models.train import repository, run_training

    run_cfg = quick(cfg, tmp_path / "repo")
    dataset = load_csv(mini_dir / "ratings.csv", mini_dir / "movies.csv")
    first = run_training(run_cfg, dataset, progress=False, say=lambda s: None)
    assert first.versions == {"retrieval": 1, "ranking": 1}
    assert [d.promoted for d in first.decisions] == [True, True]  # nothing served before
    repo = repository(run_cfg)
    assert repo.serving()["retrieval"]["version"] == 1

    # signatures: names, dtypes and shapes (batch first; k = min(top_k 100, 99 movies))
    r_sig = signature_summary(repo.path("retrieval", 1))
    assert set(r_sig) == {
        "serving_default",
        "query_embedding",
        "candidate_embedding",
        "item_embeddings",
    }
    assert r_sig["serving_default"]["inputs"] == QUERY_INPUTS
    assert r_sig["serving_default"]["outputs"] == {
        "item_ids": ["string", [None, 99]],
        "scores": ["float32", [None, 99]],
        "query_embedding": ["float32", [None, 17]],
    }
    # 16 dimensions + the popularity prior's coordinate
    assert r_sig["query_embedding"]["outputs"] == {"embedding": ["float32", [None, 17]]}
    assert r_sig["candidate_embedding"]["inputs"] == {"item_id": ["string", [None]]}
    assert r_sig["item_embeddings"]["inputs"] == {
        "item_ids": ["string", [None]],
        "genres": ["string", [None, None]],
        "title": ["string", [None]],
        "year": ["int64", [None]],
    }
    assert r_sig["item_embeddings"]["outputs"] == {
        "embeddings": ["float32", [None, 17]],
        "known": ["bool", [None]],
    }
    k_sig = signature_summary(repo.path("ranking", 1))
    assert set(k_sig) == {"serving_default", "with_content"}
    assert k_sig["serving_default"]["inputs"] == {
        **QUERY_INPUTS,
        "candidate_ids": ["string", [None, None]],
    }
    assert k_sig["serving_default"]["outputs"] == {"scores": ["float32", [None, None]]}

    meta = repo.metadata("retrieval", 1)
    assert meta["data"]["version"] == dataset.version.version
    assert meta["params"]["epochs"] == 1
    assert meta["metrics"]["holdout"]["ndcg"] > 0

    # the loaded model answers raw features, for a known and an unknown user
    history = TrainingData(dataset.interactions, dataset.items, 7.0)
    feats = history.query_features(np.array(["7809", "someone-new"], dtype=object), 50)
    out = call_signature(load_saved_model(repo.path("retrieval", 1)), "serving_default", feats)
    assert out["item_ids"].shape == (2, 99)
    assert set(out["item_ids"][0].astype(str)) == set(dataset.catalog)
    assert np.all(np.diff(out["scores"], axis=1) <= 0)  # best first

    # the same data and seeds give the same models: not better by the margin, not promoted
    second = run_training(run_cfg, dataset, progress=False, say=lambda s: None)
    assert second.versions == {"retrieval": 2, "ranking": 2}
    assert [d.promoted for d in second.decisions] == [False, False]
    assert second.decisions[0].served == pytest.approx(second.decisions[0].candidate)
    assert repo.served_version("retrieval") == 1
    assert len(promotions(repo)) == 4


def test_training_examples_from_delta(
    cfg: AttuneConfig, spark, mini_dir: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    from models.data import interaction_schema, item_schema, load_delta

    data = load_csv(mini_dir / "ratings.csv", mini_dir / "movies.csv")
    spark.conf.set("spark.sql.execution.arrow.pyspark.enabled", "true")
    inter = data.interactions.copy()
    inter["timestamp"] = inter["timestamp"].dt.tz_localize(None)  # the session's zone is UTC
    table = str(tmp_path / "gold" / "training_examples")
    for rows in (inter.iloc[:1000], inter):  # two commits: versions 0 and 1
        frame = spark.createDataFrame(rows, schema=_spark_schema(interaction_schema()))
        frame.write.format("delta").mode("overwrite").save(table)
    items = data.items.assign(genres=data.items["genres"].map(list))
    items_table = str(tmp_path / "gold" / "items")
    spark.createDataFrame(items, schema=_spark_schema(item_schema())).write.format("delta").save(
        items_table
    )

    loaded = load_delta(cfg, table, items_table)
    assert loaded.version.kind == "delta"
    assert loaded.version.version == "delta:1+0"  # the latest version of each table was read
    assert loaded.version.details["interactions_version"] == 1
    pd.testing.assert_frame_equal(loaded.interactions, data.interactions)
    assert loaded.items.set_index("item_id").loc["0443272", "genres"] == (
        "Biography",
        "Drama",
        "History",
        "War",
    )
    older = load_delta(cfg, table, version=0)
    assert older.version.rows == 1000


def _spark_schema(schema):  # type: ignore[no-untyped-def]
    from pyspark.sql import types as T

    mapping = {
        "string": T.StringType(),
        "double": T.DoubleType(),
        "int32": T.IntegerType(),
        "timestamp[us, tz=UTC]": T.TimestampType(),
        "list<item: string>": T.ArrayType(T.StringType()),
    }
    return T.StructType(
        [T.StructField(f.name, mapping[str(f.type)], nullable=f.nullable) for f in schema]
    )


def test_als_baseline(cfg: AttuneConfig, spark, mini_dir: Path) -> None:  # type: ignore[no-untyped-def]
    from models.baselines import ALSParams, SparkALS, popularity_counts
    from models.features import TrainingData

    data = load_csv(mini_dir / "ratings.csv", mini_dir / "movies.csv")
    training = TrainingData(data.interactions, data.items, 7.0)
    als = SparkALS(cfg, ALSParams(rank=8, max_iter=3), seed=1).fit(training)
    scores = als.score(np.array(["7809", "a-user-nobody-knows"], dtype=object))
    assert scores.shape == (2, 99)
    assert np.isfinite(scores[0]).all()
    # an unknown user gets the popularity ranking
    np.testing.assert_allclose(scores[1], popularity_counts(training))


def test_evaluate_command(cfg: AttuneConfig, mini_dir: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from attune.cli import main

    out = tmp_path / "report.json"
    code = main(
        [
            "models", "evaluate",
            "--interactions", str(mini_dir / "ratings.csv"),
            "--items", str(mini_dir / "movies.csv"),
            "--format", "csv",
            "--columns", "user=user_id,item=item_id,rating=rating,timestamp=timestamp",
            "--split", "temporal", "--test-fraction", "0.2", "--positive-threshold", "7",
            "--k", "10", "--seed", "3",
            "--models", "popularity,item-knn,als,tfrs-retrieval",
            "--json", str(out), "--no-progress",
        ]
    )  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "| popularity |" in printed and "| tfrs-retrieval |" in printed
    report = json.loads(out.read_text())
    assert set(report["models"]) == {"popularity", "item-knn", "als", "tfrs-retrieval"}
    for metrics in report["models"].values():
        assert 0 <= metrics["ndcg"] <= 1 and 0 <= metrics["recall"] <= 1
        assert "cold" in metrics and "coverage" in metrics
    assert report["split"]["kind"] == "temporal"
    assert report["data"]["rows"] == 5191
    assert Path(report["plot"]).stat().st_size > 1000
