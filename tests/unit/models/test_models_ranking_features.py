"""The ranking model's source features (models/ranking_features.py): the NumPy functions on
hand-made tables, point in time (nothing at or after an example's time counts for it), and the
graph twin the SavedModel computes at serving. Expected values worked out by hand."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from attune.config import AttuneConfig
from models.data import complete_items
from models.features import TrainingData, unix_seconds
from models.pipeline import CooccurrenceTable
from models.ranking_features import (
    SourceSettings,
    age_feature,
    build_tables,
    cooccurrence_features,
    first_times,
    popularity_features,
    training_features,
)
from tests.unit.models.conftest import frame

DAY = 86_400


def _table() -> CooccurrenceTable:
    # item 0 -> [1 (0.5), 2 (0.25)]; item 1 -> [0 (0.5)]; item 2 -> none
    return CooccurrenceTable(
        indptr=np.array([0, 2, 3, 3]),
        indices=np.array([1, 2, 0]),
        scores=np.array([0.5, 0.25, 0.5]),
        counts=np.array([2, 1, 2]),
    )


def test_cooccurrence_features_sum_and_max_over_recent_items() -> None:
    recent = np.array([[0, 1], [1, 0], [2, -1], [-1, -1], [0, 1]])
    cands = np.array([2, 0, 0, 1, 1])
    got = cooccurrence_features(recent, cands, _table())
    # row 0: 0 -> 2 is 0.25, 1 -> 2 none           => sum 0.25, max 0.25
    # row 1: 1 -> 0 is 0.5, 0 -> 0 (itself) none   => 0.5, 0.5
    # row 2: 2 has no neighbours, -1 is padding    => 0, 0
    # row 3: padding only                          => 0, 0
    # row 4: 0 -> 1 is 0.5; 1 -> 1 none            => 0.5, 0.5
    np.testing.assert_allclose(got, [[0.25, 0.25], [0.5, 0.5], [0, 0], [0, 0], [0.5, 0.5]])


def test_cooccurrence_features_sum_differs_from_max() -> None:
    # item 2 is a neighbour of both 0 (0.25) and 1 (0.75): sum 1.0, max 0.75
    table = CooccurrenceTable(
        indptr=np.array([0, 1, 2, 2]),
        indices=np.array([2, 2]),
        scores=np.array([0.25, 0.75]),
        counts=np.array([1, 3]),
    )
    got = cooccurrence_features(np.array([[0, 1]]), np.array([2]), table)
    np.testing.assert_allclose(got, [[1.0, 0.75]])


def test_popularity_features_count_only_strictly_earlier_events() -> None:
    items = np.array([0, 0, 1])
    times = np.array([0, DAY, 0])
    got = popularity_features(
        items, times, np.array([0, 0, 0, 1]), np.array([0, DAY, 2 * DAY, DAY]), 2
    )
    # item 0 at t=0: nothing strictly before                  -> all 0
    # item 0 at 1 day: only the event at 0, one day old:
    #   half-life 1 d: 0.5; 7 d: 0.5 ** (1/7); all time: 1
    # item 0 at 2 days: events 2 d and 1 d old:
    #   1 d: 0.25 + 0.5; 7 d: 0.5 ** (2/7) + 0.5 ** (1/7); all time: 2
    # item 1 at 1 day: its event at 0                         -> as item 0 at 1 day
    one = [math.log1p(0.5), math.log1p(0.5 ** (1 / 7)), math.log1p(1)]
    expected = [
        [0, 0, 0],
        one,
        [math.log1p(0.75), math.log1p(0.5 ** (2 / 7) + 0.5 ** (1 / 7)), math.log1p(2)],
        one,
    ]
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_age_feature_is_zero_before_the_first_event() -> None:
    first = first_times(np.array([0, 0, 1]), np.array([5 * DAY, 2 * DAY, 4 * DAY]), 3)
    assert first.tolist() == [2 * DAY, 4 * DAY, math.inf]
    got = age_feature(first, np.array([0, 0, 1, 2]), np.array([5 * DAY, 2 * DAY, 3 * DAY, DAY]))
    # item 0 at 5 d: first at 2 d -> 3 days; at 2 d: its first event is not strictly before;
    # item 1 at 3 d: first at 4 d is in the future -> 0; item 2: never -> 0
    np.testing.assert_allclose(got, [math.log1p(3), 0, 0, 0])


# ----------------------------------------------------------------------------------------
# Point in time on a training set, and the graph twin


def _data() -> TrainingData:
    # sessions (30-min gap): u1 {A, B} and u2 {A, B} early; u3 {A, C} and u4 {A, C} late
    rows = [
        ("u1", "A", 8.0, 0),
        ("u1", "B", 8.0, 10),
        ("u2", "A", 8.0, 20),
        ("u2", "B", 8.0, 30),
        ("u3", "A", 8.0, 10_000),
        ("u3", "C", 8.0, 10_010),
        ("u4", "A", 8.0, 10_020),
        ("u4", "C", 8.0, 10_030),
    ]
    inter = frame(rows)
    items = complete_items(None, inter)
    items["genres"] = [("x",)] * len(items)
    return TrainingData(inter, items, 7.0)


def _settings() -> SourceSettings:
    cfg = AttuneConfig.model_validate({"batch": {"cooccurrence": {"min_count": 1}}})
    return SourceSettings(cfg, chunks=2)


def _positives(data: TrainingData) -> tuple[np.ndarray, np.ndarray]:
    items = data.item_indices(data.interactions["item_id"].to_numpy(dtype=object))
    return items, unix_seconds(data.interactions["timestamp"])


def test_training_features_are_point_in_time() -> None:
    data = _data()
    a, b, c = (data.item_index[i] for i in "ABC")
    ev_items, ev_times = _positives(data)
    assert ev_times.tolist() == [0, 10, 20, 30, 10_000, 10_010, 10_020, 10_030]
    recent = np.array([[a, -1], [a, -1], [a, -1], [b, a]])
    cands = np.array([b, b, c, a])
    times = np.array([10, 10_010, 10_010, 10_030])
    got = training_features(data, _settings(), ev_items, ev_times, recent, cands, times)
    # 2 chunks split at the median time (30 + 10_000) / 2 = 5_015. Rows before it have no
    # table (their own sessions must not count). Later rows read the table of the events
    # before 5_015: baskets {A, B} twice -> n_A = n_B = n_AB = 2, score 2 / sqrt(2 * 2) = 1.
    # row 0 (t=10, chunk 0): 0 although A-B co-occur in the full data;
    # row 1: A -> B = 1; row 2: A -> C only co-occurs later -> 0; row 3: B -> A = 1, A -> A none
    np.testing.assert_allclose(got[:, 0], [0, 1, 0, 1])
    np.testing.assert_allclose(got[:, 1], [0, 1, 0, 1])
    # popularity of B at 10_010: its positives at 10 and 30 (10_000 s and 9_980 s old);
    # of A at 10_030: at 0, 20, 10_000, 10_020 (the one at 10_030 itself is not before)
    b_1d = 0.5 ** (10_000 / DAY) + 0.5 ** (9_980 / DAY)
    b_7d = 0.5 ** (10_000 / (7 * DAY)) + 0.5 ** (9_980 / (7 * DAY))
    np.testing.assert_allclose(
        got[1, 2:5], [math.log1p(b_1d), math.log1p(b_7d), math.log1p(2)], rtol=1e-6
    )
    assert got[3, 4] == pytest.approx(math.log1p(4))
    # B at t=10: its first positive is at 10 itself -> nothing before: popularity 0, age 0
    np.testing.assert_allclose(got[0, 2:6], [0, 0, 0, 0])
    # age of B at 10_010: first positive at 10 -> 10_000 s = 0.11574 days
    assert got[1, 5] == pytest.approx(math.log1p(10_000 / DAY), rel=1e-6)
    # C at 10_010: its first positive is at 10_010 itself -> 0
    assert got[2, 5] == 0


def test_graph_twin_matches_the_end_of_training_tables() -> None:
    from models.encoders import FeatureSpace, features_to_tensors
    from models.pipeline import training_cooccurrence
    from models.ranking import RankingModel

    data = _data()
    settings = _settings()
    space = FeatureSpace.build(data, 1.0)
    table = training_cooccurrence(data, settings.cfg, "session")
    tables = build_tables(data, settings, space.event_items, space.event_times, table)
    params = settings.cfg.models.ranking.model_copy(
        update={"embedding_dim": 8, "source_features": True}
    )
    model = RankingModel(space, params, tables)
    now = 10_030 + DAY
    feats = features_to_tensors(
        {
            "recent_items": np.array([["A", ""], ["", ""]], dtype=object),
            "request_time": np.array([now, now], dtype=np.int64),
        }
    )
    cands = features_to_tensors({"c": np.array([["B", "C", "Z"], ["B", "A", "Z"]], dtype=object)})
    got = model.source_features(feats, cands["c"]).numpy()
    assert got.shape == (2, 3, 6)
    # full data: baskets {A,B} x2, {A,C} x2 -> n_A 4, n_B = n_C = 2, AB = AC = 2 / sqrt(8)
    ab = 2 / math.sqrt(8)
    np.testing.assert_allclose(got[0, :, 0], [ab, ab, 0], rtol=1e-6)
    np.testing.assert_allclose(got[0, :, 1], [ab, ab, 0], rtol=1e-6)
    np.testing.assert_allclose(got[1, :, :2], 0)  # no recent items
    # B: 2 positives, all-time log1p(2); age (now - 10) days; unknown Z: all 0
    assert got[0, 0, 4] == pytest.approx(math.log1p(2))
    assert got[0, 0, 5] == pytest.approx(math.log1p((now - 10) / DAY), rel=1e-6)
    np.testing.assert_allclose(got[0, 2, 2:], 0)
    # popularity as of the end of training (data.now = 10_030, its own event included):
    # B's 1-day count at 10_031 = 0.5 ** (10_021 / DAY) + 0.5 ** (10_001 / DAY)
    b_1d = 0.5 ** (10_021 / DAY) + 0.5 ** (10_001 / DAY)
    assert got[0, 0, 2] == pytest.approx(math.log1p(b_1d), rel=1e-5)
    # and the NumPy training path gives the same values at the same time for the full table
    a, b = data.item_index["A"], data.item_index["B"]
    np_feats = training_features(
        data,
        SourceSettings(settings.cfg, chunks=1),
        space.event_items,
        space.event_times,
        np.array([[a, -1]]),
        np.array([b]),
        np.array([now]),
    )
    # chunks=1: a single chunk with no earlier table -> co-occurrence 0; the rest agrees
    np.testing.assert_allclose(np_feats[0, 4:], got[0, 0, 4:], rtol=1e-5)


def test_needs_settings_when_on() -> None:
    from models.ranking import source_settings

    params = AttuneConfig().models.ranking.model_copy(update={"source_features": True})
    with pytest.raises(ValueError, match=r"models\.ranking\.source_features"):
        source_settings(params, None)
    assert source_settings(params.model_copy(update={"source_features": False}), None) is None


def test_export_round_trip_with_source_features(tmp_path: Path) -> None:
    from models.export import call_signature, load_saved_model, save_ranking
    from models.pipeline import training_cooccurrence
    from models.ranking import SourceNeighbours, train_ranking

    data = _data()
    settings = _settings()
    params = settings.cfg.models.ranking.model_copy(
        update={"embedding_dim": 8, "epochs": 1, "batch_size": 8, "source_features": True}
    )
    source = SourceNeighbours(training_cooccurrence(data, settings.cfg, "session"), 3, 5, settings)
    trained = train_ranking(data, params, 1.0, seed=1, progress=False, source=source)
    save_ranking(trained, tmp_path / "rank")
    loaded = load_saved_model(tmp_path / "rank")
    users = np.array(["u1", "u3"], dtype=object)
    feats = data.query_features(users, params.sequence_length)
    cands = np.array([["A", "B", "C"], ["B", "C", "Z"]], dtype=object)
    out = call_signature(loaded, "serving_default", {**feats, "candidate_ids": cands})
    np.testing.assert_allclose(
        out["scores"], trained.score_candidates(feats, cands), rtol=1e-5, atol=1e-5
    )
    assert np.isfinite(out["scores"]).all()
