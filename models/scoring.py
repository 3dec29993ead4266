"""The evaluation protocol, shared by every model so that the comparison is fair.

For a split, :func:`build_eval_task` fixes, once, for all models:

* the candidates: the whole catalog (every item of the item table, including items nobody
  interacted with in training: "cold" items);
* the users: test users with at least one positive test interaction on an item they did not
  interact with in training, and with some training history (the query needs one; users never
  seen in training get the popularity fallback in production and are counted, not scored);
* the exclusions: every item the user interacted with in training is removed from their ranking;
* the relevant items: the user's positive test items, minus the excluded ones.

:func:`rank_top_k` turns a model's catalog scores into top-k lists with those exclusions, and
:func:`score_model` computes every metric of :mod:`models.metrics`, overall and restricted to
cold items (relevant items that had no training interactions; only users with such an item),
and the beyond-accuracy metrics of the top-k lists: coverage, personalization and novelty
(novelty's item probabilities are the training users' positives, counted here once per task).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from models.baselines import Recommender
from models.data import interaction_mask, positive_mask
from models.features import TrainingData
from models.metrics import catalog_coverage, novelty, personalization, summarize


@dataclass
class EvalTask:
    users: np.ndarray
    exclude: list[np.ndarray]
    relevant: list[np.ndarray]
    cold_items: np.ndarray
    n_items: int
    skipped_new_users: int
    # Per catalog item, training users with a positive on it, and how many users have any
    # positive: novelty's p(i) = item_users[i] / positive_users. None: novelty not measured.
    item_users: np.ndarray | None = None
    positive_users: int = 0

    @property
    def relevant_cold(self) -> list[np.ndarray]:
        return [r[self.cold_items[r]] for r in self.relevant]

    def describe(self) -> dict[str, Any]:
        return {
            "users": len(self.users),
            "catalog_items": self.n_items,
            "cold_items": int(self.cold_items.sum()),
            "relevant_pairs": int(sum(len(r) for r in self.relevant)),
            "cold_relevant_pairs": int(sum(len(r) for r in self.relevant_cold)),
            "test_users_without_history": self.skipped_new_users,
        }


def build_eval_task(
    data: TrainingData,
    test: pd.DataFrame,
    max_users: int | None = None,
    seed: int = 0,
) -> EvalTask:
    """The users, exclusions and relevant items of a test set (see the module docstring)."""
    test_pos = test[positive_mask(test, data.positive_threshold)]
    test_pos = test_pos[test_pos["item_id"].isin(data.item_index.keys())]
    train_users = set(data.interactions.loc[interaction_mask(data.interactions), "user_id"])
    test_users = test_pos["user_id"].unique()
    known = np.array([u in train_users for u in test_users], dtype=bool)
    users = np.sort(test_users[known].astype(object))
    exclude = data.histories(users, positives_only=False)
    by_user = test_pos.groupby("user_id", sort=False)["item_id"].unique().to_dict()
    relevant = []
    for user, excl in zip(users, exclude, strict=True):
        rel = data.item_indices(by_user[user])
        relevant.append(np.setdiff1d(rel, excl))
    keep = np.array([len(r) > 0 for r in relevant], dtype=bool)
    users = users[keep]
    exclude = [e for e, k in zip(exclude, keep, strict=True) if k]
    relevant = [r for r, k in zip(relevant, keep, strict=True) if k]
    if max_users is not None and len(users) > max_users:
        pick = np.sort(np.random.default_rng(seed).choice(len(users), max_users, replace=False))
        users = users[pick]
        exclude = [exclude[i] for i in pick]
        relevant = [relevant[i] for i in pick]
    seen = np.zeros(data.n_items, dtype=bool)
    seen[data.item_indices(data.interactions["item_id"].to_numpy(dtype=object))] = True
    pairs = data.positive_pairs().drop_duplicates(["user_id", "item"])
    return EvalTask(
        users=users,
        exclude=exclude,
        relevant=relevant,
        cold_items=~seen,
        n_items=data.n_items,
        skipped_new_users=int((~known).sum()),
        item_users=np.bincount(pairs["item"].to_numpy(), minlength=data.n_items),
        positive_users=int(pairs["user_id"].nunique()),
    )


def top_k_from_scores(scores: np.ndarray, exclude: list[np.ndarray], k: int) -> np.ndarray:
    """Best ``k`` catalog indices per row of ``scores`` after removing each row's exclusions.

    Ties are broken by catalog index (lower first), so rankings are deterministic."""
    scores = np.array(scores, dtype=np.float32, copy=True)
    for row, excl in enumerate(exclude):
        scores[row, excl] = -np.inf
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -part_scores), axis=1)
    return np.take_along_axis(part, order, axis=1)


def rank_top_k(
    model: Recommender,
    task: EvalTask,
    k: int,
    batch_size: int = 512,
    progress: bool = True,
) -> np.ndarray:
    """``[users, k]`` top-k catalog indices of ``model`` for the task's users."""
    out = np.zeros((len(task.users), k), dtype=np.int64)
    bar = tqdm(
        total=len(task.users),
        desc=f"scoring {model.name}",
        unit="user",
        disable=not progress,
        leave=False,
    )
    for start in range(0, len(task.users), batch_size):
        stop = min(start + batch_size, len(task.users))
        scores = model.score(task.users[start:stop])
        out[start:stop] = top_k_from_scores(scores, task.exclude[start:stop], k)
        bar.update(stop - start)
    bar.close()
    return out


def metrics_for(top_k: np.ndarray, task: EvalTask, k: int) -> dict[str, Any]:
    """Every metric for a ranking, overall and on cold items, and beyond accuracy."""
    overall = summarize(top_k, task.relevant, k)
    cold = summarize(top_k, task.relevant_cold, k)
    return {
        **overall,
        "coverage": catalog_coverage(top_k[:, :k], task.n_items),
        "personalization": personalization(top_k, k),
        "novelty": (
            novelty(top_k, task.item_users, task.positive_users, k)
            if task.item_users is not None
            else float("nan")
        ),
        "cold": cold,
    }


def score_model(
    model: Recommender, task: EvalTask, k: int, progress: bool = True
) -> dict[str, Any]:
    started = time.monotonic()
    top = rank_top_k(model, task, k, progress=progress)
    result = metrics_for(top, task, k)
    result["scoring_seconds"] = round(time.monotonic() - started, 2)
    return result
