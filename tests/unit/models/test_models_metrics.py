"""Ranking metrics against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models.metrics import (
    average_precision_at_k,
    catalog_coverage,
    hit_rate_at_k,
    ndcg_at_k,
    per_user_metrics,
    recall_at_k,
    summarize,
)

RANKED = [3, 1, 7, 5]
RELEVANT = {1, 5}


def test_metrics_at_3_by_hand() -> None:
    # top 3 = [3, 1, 7]: one hit (item 1) at rank 2.
    assert recall_at_k(RANKED, RELEVANT, 3) == pytest.approx(1 / 2)
    assert hit_rate_at_k(RANKED, RELEVANT, 3) == 1.0
    # DCG = 1/log2(3) = 0.63093; IDCG = 1 + 1/log2(3) = 1.63093 (two relevant, k = 3).
    assert ndcg_at_k(RANKED, RELEVANT, 3) == pytest.approx(0.63093 / 1.63093, abs=1e-5)
    # AP@3 = precision at the hit (1/2) / min(|R|, k) = 0.5 / 2.
    assert average_precision_at_k(RANKED, RELEVANT, 3) == pytest.approx(0.25)


def test_metrics_at_4_by_hand() -> None:
    # hits at ranks 2 and 4.
    assert recall_at_k(RANKED, RELEVANT, 4) == 1.0
    # DCG = 1/log2(3) + 1/log2(5) = 0.63093 + 0.43068 = 1.06161; IDCG = 1.63093.
    assert ndcg_at_k(RANKED, RELEVANT, 4) == pytest.approx(1.06161 / 1.63093, abs=1e-5)
    # AP@4 = (1/2 + 2/4) / 2.
    assert average_precision_at_k(RANKED, RELEVANT, 4) == pytest.approx(0.5)


def test_perfect_and_empty_rankings() -> None:
    assert ndcg_at_k([1, 5, 3], RELEVANT, 3) == pytest.approx(1.0)
    assert average_precision_at_k([1, 5, 3], RELEVANT, 3) == pytest.approx(1.0)
    assert ndcg_at_k([2, 4, 6], RELEVANT, 3) == 0.0
    assert recall_at_k([2, 4, 6], RELEVANT, 3) == 0.0
    assert hit_rate_at_k([2, 4, 6], RELEVANT, 3) == 0.0


def test_ideal_dcg_is_capped_at_k() -> None:
    # 3 relevant items, k = 1, first one relevant: NDCG@1 = 1 (IDCG counts min(3, 1) = 1 hit),
    # recall = 1/3, AP@1 = 1 / min(3, 1) = 1.
    assert ndcg_at_k([9, 8], {9, 8, 7}, 1) == pytest.approx(1.0)
    assert recall_at_k([9, 8], {9, 8, 7}, 1) == pytest.approx(1 / 3)
    assert average_precision_at_k([9, 8], {9, 8, 7}, 1) == pytest.approx(1.0)


def test_vectorised_metrics_match_hand_values() -> None:
    top = np.array([[3, 1, 7, 5], [2, 4, 6, 8]])
    rel = [np.array([1, 5]), np.array([8])]
    per = per_user_metrics(top, rel, 4)
    # user 0: worked out above; user 1: one relevant at rank 4 -> NDCG 1/log2(5) / 1.
    assert per["ndcg"] == pytest.approx([1.06161 / 1.63093, 1 / math.log2(5)], abs=1e-5)
    assert per["recall"] == pytest.approx([1.0, 1.0])
    assert per["map"] == pytest.approx([0.5, 0.25])
    assert per["hit_rate"] == pytest.approx([1.0, 1.0])


def test_summary_skips_users_without_relevant_items() -> None:
    top = np.array([[1, 2], [3, 4], [5, 6]])
    rel = [np.array([1]), np.array([], dtype=int), np.array([9])]
    out = summarize(top, rel, 2)
    # users 0 and 2 count: hit rates 1 and 0.
    assert out["users"] == 2
    assert out["hit_rate"] == pytest.approx(0.5)
    assert out["ndcg"] == pytest.approx(0.5)


def test_catalog_coverage() -> None:
    # items 0, 1, 2 of 10 appear; -1 is padding, not an item.
    assert catalog_coverage(np.array([[0, 1], [1, 2], [2, -1]]), 10) == pytest.approx(0.3)
