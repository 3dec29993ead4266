"""From interactions to what models see: catalog indices, user histories and raw query features.

The raw query features are the inputs of the exported SavedModels' serving signatures, named
in :data:`QUERY_FEATURES`; at request time the personalization API fills them from the online
store (the user's recent items as kept by the speed layer) and the request context:

``user_id``       string, the pseudonymized user id (unknown users fall into OOV buckets)
``recent_items``  string ``[N]``, the user's last ``N`` interacted item ids, **most recent first**,
                  padded with ``""`` (exactly the list the speed layer keeps in Redis)
``recent_times``  int64 ``[N]``, Unix seconds of each recent item's latest interaction (the score
                  of the online store's ``recent`` zset), ``0`` for padding; the sequence
                  encoders turn ``request_time - recent_times`` into time-gap buckets
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
    "recent_times",
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


def recent_item_history(interactions: pd.DataFrame, length: int) -> tuple[np.ndarray, np.ndarray]:
    """For each row, the user's last ``length`` distinct interacted items *before* it, most
    recent first (an item counts at its latest interaction), like the speed layer's list, and
    the Unix seconds of those latest interactions.

    ``interactions`` must be in time order. Only interaction events count (see
    :func:`models.data.interaction_mask`); the row itself never counts for its own features
    (strictly the past). Returns ``(items, times)``: an object array ``[rows, length]`` padded
    with ``""`` and an int64 array ``[rows, length]`` padded with ``0``.
    """
    out = np.full((len(interactions), length), PAD, dtype=object)
    out_t = np.zeros((len(interactions), length), dtype=np.int64)
    if length == 0 or interactions.empty:
        return out, out_t
    users = interactions["user_id"].to_numpy(dtype=object)
    items = interactions["item_id"].to_numpy(dtype=object)
    times = unix_seconds(interactions["timestamp"])
    counts = interaction_mask(interactions)
    # Per user, an insertion-ordered dict item -> time: re-inserting moves an item to the end.
    history: dict[str, dict[str, int]] = {}
    for row in range(len(users)):
        seen = history.get(users[row])
        if seen:
            recent = list(reversed(seen.items()))[:length]
            out[row, : len(recent)] = [item for item, _ in recent]
            out_t[row, : len(recent)] = [t for _, t in recent]
        if counts[row]:
            if seen is None:
                seen = history[users[row]] = {}
            seen.pop(items[row], None)
            seen[items[row]] = int(times[row])
            if len(seen) > length:  # only the newest `length` can ever be returned
                del seen[next(iter(seen))]
    return out, out_t


def recent_item_sequences(interactions: pd.DataFrame, length: int) -> np.ndarray:
    """The item part of :func:`recent_item_history`."""
    return recent_item_history(interactions, length)[0]


def last_history(
    interactions: pd.DataFrame, users: np.ndarray, length: int
) -> tuple[np.ndarray, np.ndarray]:
    """Each user's last ``length`` distinct interacted items at the end of ``interactions``
    (most recent first, padded with ``""``) and their latest interaction times (Unix seconds,
    ``0`` padding): the recent-item zset the online store holds."""
    out = np.full((len(users), length), PAD, dtype=object)
    out_t = np.zeros((len(users), length), dtype=np.int64)
    if length == 0:
        return out, out_t
    inter = interactions[interaction_mask(interactions)]
    latest = inter.drop_duplicates(["user_id", "item_id"], keep="last")
    latest = latest.assign(_t=unix_seconds(latest["timestamp"]))
    tail = latest.groupby("user_id", sort=False)[["item_id", "_t"]].apply(
        lambda g: (
            list(g["item_id"].to_numpy()[-length:][::-1]),
            g["_t"].to_numpy()[-length:][::-1],
        )
    )
    lookup = tail.to_dict()
    for row, user in enumerate(users):
        recent = lookup.get(user)
        if recent:
            got, when = recent
            out[row, : len(got)] = got
            out_t[row, : len(got)] = when
    return out, out_t


def last_items(interactions: pd.DataFrame, users: np.ndarray, length: int) -> np.ndarray:
    """The item part of :func:`last_history`."""
    return last_history(interactions, users, length)[0]


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
        recent, recent_times = last_history(self.interactions, users, sequence_length)
        return {
            "user_id": np.asarray(users, dtype=object),
            "recent_items": recent,
            "recent_times": recent_times,
            "request_time": np.full(len(users), self.now, dtype=np.int64),
            **ctx,
        }


def example_query_features(
    interactions: pd.DataFrame, sequence_length: int
) -> dict[str, np.ndarray]:
    """Raw query features for every row of ``interactions`` (in time order), as known just
    before the row happened: what the model trains on."""
    recent, recent_times = recent_item_history(interactions, sequence_length)
    return {
        "user_id": interactions["user_id"].to_numpy(dtype=object),
        "recent_items": recent,
        "recent_times": recent_times,
        "request_time": unix_seconds(interactions["timestamp"]),
        **{col: _text(interactions[col]) for col in CONTEXT_COLUMNS},
    }
