"""The Open Bandit Dataset (ZOZOTOWN, Saito et al. 2021): logged slates with their propensities.

Folder layout (as shipped in obp 0.4.1; ``data/open-bandit/{random,bts}/`` hold the ALL
campaign's 10,000-round samples): ``all.csv`` has one row per shown item, i.e. one
(round, position) pair, with columns

``item_id``            the item shown, ``0..n_items-1`` (the action)
``position``           1, 2 or 3: where in the 3-item slate it was shown
``click``              the reward, 0 or 1
``propensity_score``   the logging policy's probability of showing this item at this position
``user_feature_*``     hashed categorical user features (one-hot encoded here)
``user-item_affinity_<a>``  past clicks between the user and item ``a`` (0 if none)

and ``item_context.csv`` one row per item (``item_id`` plus item features). The number of
items comes from ``item_context.csv`` (an item the logs never show is still an action).
Rows keep their file order, so "round ``i``" is the ``i``-th data row of ``all.csv``. Positions
are stored 0-based in :class:`BanditLogs`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

LOGS_FILE = "all.csv"
ITEMS_FILE = "item_context.csv"
REQUIRED_COLUMNS = ("item_id", "position", "click", "propensity_score")
USER_FEATURE_PREFIX = "user_feature_"
AFFINITY_PREFIX = "user-item_affinity_"


class LogsError(ValueError):
    """Logged bandit data that cannot be used; the message says what is wrong and how to fix it."""


@dataclass(frozen=True)
class BanditLogs:
    """Logged bandit feedback, one entry per round (a shown item at one position)."""

    action: NDArray[np.int64]  # (n,) item index in [0, n_actions)
    position: NDArray[np.int64]  # (n,) 0-based position in [0, len_list)
    reward: NDArray[np.float64]  # (n,) 0/1 click
    pscore: NDArray[np.float64]  # (n,) logged propensity of (action, position)
    user_features: NDArray[np.float64]  # (n, d) one-hot user features (may be 0 columns)
    affinity: NDArray[np.float64]  # (n, n_actions) user-item affinities (zeros if absent)
    n_actions: int
    len_list: int
    source: str

    @property
    def n_rounds(self) -> int:
        return int(self.action.shape[0])

    def on_policy_value(self) -> float:
        """Mean reward of the logging policy itself (the ground truth when it is ``pi_e``)."""
        return float(self.reward.mean())


def load_open_bandit(folder: Path | str) -> BanditLogs:
    """Read an Open Bandit Dataset folder (``all.csv`` + ``item_context.csv``).

    Raises :class:`LogsError` naming the file and the fix when a file is missing, a required
    column is absent, or values are out of range (a position outside 1..3 is fine if the
    positions are 1..L for some L; clicks must be 0/1; propensities in (0, 1]).
    """
    import pandas as pd

    root = Path(folder)
    logs_path = root / LOGS_FILE
    items_path = root / ITEMS_FILE
    if not root.is_dir():
        raise LogsError(
            f"{root} is not a folder: --logs takes open-bandit or a folder holding {LOGS_FILE} "
            f"and {ITEMS_FILE} in the Open Bandit Dataset layout"
        )
    for path in (logs_path, items_path):
        if not path.is_file():
            raise LogsError(
                f"{path} not found: a logs folder needs {LOGS_FILE} (one row per shown item) "
                f"and {ITEMS_FILE} (one row per item), as in data/open-bandit/random/"
            )
    try:
        data = pd.read_csv(logs_path, index_col=0)
        items = pd.read_csv(items_path, index_col=0)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise LogsError(f"cannot parse {root}: {exc}; expected CSV files with a header") from exc
    missing = [c for c in REQUIRED_COLUMNS if c not in data.columns]
    if missing:
        raise LogsError(
            f"{logs_path} lacks column(s) {', '.join(missing)}; it needs "
            f"{', '.join(REQUIRED_COLUMNS)} (found: {', '.join(map(str, data.columns[:8]))}...)"
        )
    if "item_id" not in items.columns:
        raise LogsError(f"{items_path} lacks column item_id (one row per item, ids 0..n-1)")
    if len(data) == 0:
        raise LogsError(f"{logs_path} has no rows")
    n_actions = int(items["item_id"].max()) + 1
    action = data["item_id"].to_numpy()
    if not np.issubdtype(action.dtype, np.integer) or action.min() < 0 or action.max() >= n_actions:
        raise LogsError(
            f"{logs_path}: item_id must be integers in 0..{n_actions - 1} (the ids of "
            f"{items_path.name}); found values outside that range"
        )
    raw_pos = data["position"].to_numpy()
    if not np.issubdtype(raw_pos.dtype, np.integer) or raw_pos.min() < 1:
        raise LogsError(f"{logs_path}: position must be integers counted from 1 (1 = top slot)")
    len_list = int(raw_pos.max())
    click = data["click"].to_numpy()
    if not np.isin(click, (0, 1)).all():
        raise LogsError(f"{logs_path}: click must be 0 or 1 in every row")
    pscore = data["propensity_score"].to_numpy(dtype=np.float64)
    if not np.all((pscore > 0) & (pscore <= 1)):
        raise LogsError(
            f"{logs_path}: propensity_score must be in (0, 1] in every row (the logging "
            "policy's probability of the shown item); drop rows with 0 or missing values"
        )
    user_cols = [c for c in data.columns if str(c).startswith(USER_FEATURE_PREFIX)]
    if user_cols:
        user = pd.get_dummies(data[user_cols].astype(str), dtype=np.float64).to_numpy()
    else:
        user = np.zeros((len(data), 0))
    affinity = np.zeros((len(data), n_actions))
    for a in range(n_actions):
        col = f"{AFFINITY_PREFIX}{a}"
        if col in data.columns:
            affinity[:, a] = data[col].to_numpy(dtype=np.float64)
    return BanditLogs(
        action=action.astype(np.int64),
        position=(raw_pos - 1).astype(np.int64),
        reward=click.astype(np.float64),
        pscore=pscore,
        user_features=np.asarray(user, dtype=np.float64),
        affinity=affinity,
        n_actions=n_actions,
        len_list=len_list,
        source=str(root),
    )
