"""New items: catalog items added after the served retrieval model was trained.

The retrieval model's index holds the items it was trained with. For items added later, the
speed layer (:class:`speed_layer.catalog.NewItemVectors`) asks the model server for a vector
computed from the item's content (the retrieval SavedModel's ``item_embeddings`` signature)
and keeps it in Redis (``P:i:{item}:vec``, listed in ``P:new_items``). The API reads those
vectors with the items' content (:func:`load_new_items`, every
``api.candidates.new_items_refresh_s``, in a thread) and, for each request, scores them
against the query embedding that the retrieval call returns (``serving_default``'s
``query_embedding``): the best ``api.candidates.new_items`` join the ranking pool with origin
``new`` (:func:`best_new_items`). The ranking model scores them from their content (its
``with_content`` signature; :func:`candidate_content`). New items have no popularity yet, which
both models count in, so ``api.candidates.new_slots`` places of the list are kept for the best
ranked new item when ranking did not put one in (:func:`keep_new_slots`, exploration).

The vectors live in the space of the model version that made them (``P:new_items:meta``); the
speed layer re-makes them when the served version changes. A request for another version (an
experiment's ``model_label``) does not use them.

Pure functions apart from :func:`load_new_items`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from attune.candidates import ORIGIN_NEW as ORIGIN
from attune.candidates import best_admissible
from attune.candidates import keep_new_slots as keep_new_slots
from attune.keys import Keys
from attune.rules import Candidate


@dataclass(frozen=True)
class NewItemContent:
    title: str = ""
    genres: tuple[str, ...] = ()
    year: int = 0


@dataclass(frozen=True)
class NewItems:
    """The new items' vectors ``[n, dim]`` (row i = ``ids[i]``) and content."""

    ids: tuple[str, ...] = ()
    vectors: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.float32))
    content: dict[str, NewItemContent] = field(default_factory=dict)
    version: str | None = None
    loaded_at: float = 0.0

    def __len__(self) -> int:
        return len(self.ids)


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def load_new_items(client: Any, keys: Keys, limit: int = 100_000) -> NewItems:
    """The newest ``limit`` new items' vectors and catalog content, in two pipelined reads
    (blocking; run it in a thread). Vectors of another length than the meta's ``dim`` (written
    while the served model changed) are skipped; the next refresh has them right."""
    meta = {_text(k): _text(v) for k, v in (client.hgetall(keys.new_items_meta) or {}).items()}
    members = [_text(m) for m in client.zrevrange(keys.new_items, 0, limit - 1)]
    if not members:
        return NewItems(version=meta.get("version"), loaded_at=time.time())
    pipe = client.pipeline(transaction=False)
    for item in members:
        pipe.get(keys.item_vector(item))
        pipe.hmget(keys.item_meta(item), "title", "genres", "year")
    replies = pipe.execute()
    dim = int(meta.get("dim") or 0)
    ids: list[str] = []
    rows: list[np.ndarray] = []
    content: dict[str, NewItemContent] = {}
    for n, item in enumerate(members):
        raw, (title, genres, year) = replies[2 * n], replies[2 * n + 1]
        if not raw:
            continue
        vec = np.frombuffer(raw, dtype="<f4")
        if dim and len(vec) != dim:
            continue
        dim = len(vec)
        try:
            parsed = orjson.loads(genres) if genres else []
        except orjson.JSONDecodeError:
            parsed = []
        try:
            year_n = int(_text(year)) if year else 0
        except ValueError:
            year_n = 0
        ids.append(item)
        rows.append(vec)
        content[item] = NewItemContent(
            _text(title or b""), tuple(str(g) for g in parsed if g), year_n
        )
    vectors = np.stack(rows) if rows else np.zeros((0, dim), dtype=np.float32)
    return NewItems(tuple(ids), vectors, content, meta.get("version"), time.time())


def best_new_items(
    new: NewItems,
    query_embedding: np.ndarray | None,
    n: int,
    admissible: Callable[[str], bool] = lambda item: True,
) -> list[Candidate]:
    """The ``n`` best admissible new items by ``<query embedding, item vector>`` (the
    retrieval model's score), best first, as ``new`` candidates; none when the query
    embedding is missing (a model exported before new items) or of another length."""
    if n <= 0 or not len(new) or query_embedding is None:
        return []
    q = np.asarray(query_embedding, dtype=np.float32).reshape(-1)
    if new.vectors.shape[1] != q.shape[0]:
        return []
    return best_admissible(new.ids, (new.vectors @ q).tolist(), n, admissible, ORIGIN)


def candidate_content(ids: Sequence[str], new: NewItems) -> dict[str, np.ndarray]:
    """The ranking model's ``with_content`` inputs for one request's candidates ``[1, C]``:
    the content of new items, empty for the others (the model's item table has theirs)."""
    rows = [new.content.get(i, NewItemContent()) for i in ids]
    width = max([1, *(len(c.genres) for c in rows)])
    return {
        "candidate_genres": np.array(
            [[[*c.genres, *[""] * (width - len(c.genres))] for c in rows]], dtype=object
        ),
        "candidate_title": np.array([[c.title for c in rows]], dtype=object),
        "candidate_year": np.array([[c.year for c in rows]], dtype=np.int64),
    }
