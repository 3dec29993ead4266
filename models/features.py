"""From interactions to what models see: catalog indices, user histories and raw query features.

The raw query features are the inputs of the exported SavedModels' serving signatures, named
in :data:`QUERY_FEATURES`; at request time the personalization API fills them from the online
store (the user's recent items as kept by the speed layer) and the request context:

``user_id``       string, the pseudonymized user id (unknown users fall into OOV buckets)
``recent_items``  string ``[N]``, the user's last ``N`` interacted item ids, **most recent first**,
                  padded with ``""`` (exactly the list the speed layer keeps in Redis)
``request_time``  int64, Unix seconds of the request (the model derives hour and weekday)
``device``, ``placement``, ``segment``  strings, ``""`` when unknown

Training builds the same features for every training interaction from what was known just before
it (the recent items strictly before the interaction), so training and serving see one
distribution.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from models.data import CONTEXT_COLUMNS, interaction_mask, positive_mask

QUERY_FEATURES: tuple[str, ...] = (
    "user_id",
    "recent_items",
    "request_time",
    "device",
    "placement",
    "segment",
)
PAD = ""


def unix_seconds(ts: pd.Series) -> np.ndarray:
    """UTC timestamps -> int64 Unix seconds."""
    values = pd.to_datetime(ts, utc=True).astype("datetime64[us, UTC]")
    return (values.astype("int64").to_numpy() // 1_000_000).astype(np.int64)


def _text(values: pd.Series) -> np.ndarray:
    return np.asarray(values.astype(object).where(values.notna(), PAD).to_numpy(dtype=object))


def recent_item_sequences(interactions: pd.DataFrame, length: int) -> np.ndarray:
    """For each row, the user's last ``length`` distinct interacted items *before* it, most
    recent first (an item counts at its latest interaction), like the speed layer's list.

    ``interactions`` must be in time order. Only interaction events count (see
    :func:`models.data.interaction_mask`). Returns an object array ``[rows, length]`` padded
    with ``""``.
    """
    out = np.full((len(interactions), length), PAD, dtype=object)
    if length == 0 or interactions.empty:
        return out
    users = interactions["user_id"].to_numpy(dtype=object)
    items = interactions["item_id"].to_numpy(dtype=object)
    counts = interaction_mask(interactions)
    # Per user, an insertion-ordered dict of items: re-inserting moves an item to the end.
    history: dict[str, dict[str, None]] = {}
    for row in range(len(users)):
        seen = history.get(users[row])
        if seen:
            recent = list(reversed(seen))[:length]
            out[row, : len(recent)] = recent
        if counts[row]:
            if seen is None:
                seen = history[users[row]] = {}
            seen.pop(items[row], None)
            seen[items[row]] = None
            if len(seen) > length:  # only the newest `length` can ever be returned
                del seen[next(iter(seen))]
    return out


def last_items(interactions: pd.DataFrame, users: np.ndarray, length: int) -> np.ndarray:
    """Each user's last ``length`` distinct interacted items at the end of ``interactions``
    (most recent first, padded with ``""``): the recent-item list the online store holds."""
    out = np.full((len(users), length), PAD, dtype=object)
    if length == 0:
        return out
    inter = interactions[interaction_mask(interactions)]
    latest = inter.drop_duplicates(["user_id", "item_id"], keep="last")
    tail = latest.groupby("user_id", sort=False)["item_id"].apply(
        lambda s: list(s.to_numpy()[-length:][::-1])
    )
    lookup = tail.to_dict()
    for row, user in enumerate(users):
        recent = lookup.get(user)
        if recent:
            out[row, : len(recent)] = recent
    return out


def last_context(interactions: pd.DataFrame, users: np.ndarray) -> dict[str, np.ndarray]:
    """Each user's most recent device, placement and segment (``""`` when never seen)."""
    out: dict[str, np.ndarray] = {}
    last = interactions.groupby("user_id", sort=False)[list(CONTEXT_COLUMNS)].last()
    for col in CONTEXT_COLUMNS:
        mapping = last[col].dropna().to_dict()
        out[col] = np.array([mapping.get(u, PAD) or PAD for u in users], dtype=object)
    return out


@dataclass
class TrainingData:
    """The training side of a split, indexed once for every model.

    ``catalog`` is every candidate item (sorted ids); per-user histories are arrays of catalog
    indices. ``now`` is the time recommendations are asked for (the end of training data).
    """

    interactions: pd.DataFrame
    items: pd.DataFrame
    positive_threshold: float
    catalog: np.ndarray = field(init=False)
    item_index: dict[str, int] = field(init=False)
    positives: np.ndarray = field(init=False)
    now: int = field(init=False)

    def __post_init__(self) -> None:
        self.catalog = np.asarray(self.items["item_id"].to_numpy(dtype=object))
        self.item_index = {item: i for i, item in enumerate(self.catalog)}
        missing = set(self.interactions["item_id"]) - self.item_index.keys()
        if missing:
            raise ValueError(f"{len(missing)} interacted items are not in the catalog")
        self.positives = positive_mask(self.interactions, self.positive_threshold)
        self.now = int(unix_seconds(self.interactions["timestamp"]).max())

    @property
    def n_items(self) -> int:
        return len(self.catalog)

    def item_indices(self, items: pd.Series | np.ndarray) -> np.ndarray:
        return np.fromiter((self.item_index[i] for i in items), dtype=np.int64, count=len(items))

    def positive_pairs(self) -> pd.DataFrame:
        """Positive (user, item) training interactions with catalog indices and times."""
        pos = self.interactions[self.positives]
        return pd.DataFrame(
            {
                "user_id": pos["user_id"].to_numpy(dtype=object),
                "item": self.item_indices(pos["item_id"].to_numpy(dtype=object)),
                "time": unix_seconds(pos["timestamp"]),
            }
        )

    def histories(self, users: np.ndarray, positives_only: bool) -> list[np.ndarray]:
        """For each user, the catalog indices they interacted with in training (unique)."""
        mask = self.positives if positives_only else interaction_mask(self.interactions)
        inter = self.interactions[mask]
        grouped = inter.groupby("user_id", sort=False)["item_id"].unique().to_dict()
        empty = np.zeros(0, dtype=np.int64)
        return [self.item_indices(grouped[u]) if u in grouped else empty for u in users]

    def query_features(self, users: np.ndarray, sequence_length: int) -> dict[str, np.ndarray]:
        """Raw query features for ``users`` as of ``now`` (see :data:`QUERY_FEATURES`)."""
        ctx = last_context(self.interactions, users)
        return {
            "user_id": np.asarray(users, dtype=object),
            "recent_items": last_items(self.interactions, users, sequence_length),
            "request_time": np.full(len(users), self.now, dtype=np.int64),
            **ctx,
        }


def example_query_features(
    interactions: pd.DataFrame, sequence_length: int
) -> dict[str, np.ndarray]:
    """Raw query features for every row of ``interactions`` (in time order), as known just
    before the row happened: what the model trains on."""
    return {
        "user_id": interactions["user_id"].to_numpy(dtype=object),
        "recent_items": recent_item_sequences(interactions, sequence_length),
        "request_time": unix_seconds(interactions["timestamp"]),
        **{col: _text(interactions[col]) for col in CONTEXT_COLUMNS},
    }
