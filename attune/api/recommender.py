"""The recommendation pipeline, stage by stage, with its fallbacks.

1. **features** – one pipelined Redis read (:meth:`attune.api.store.ApiStore.read_request`):
   the user's online features, batch view, feedback, consent, trending and popular lists;
2. **variant** – ``assign_variant(experiment, user)`` picks the arm (ranking on/off, model label);
3. **retrieval** – the retrieval model through the TF Serving protocol, with the user's recent
   items (the request's seed item first) as its sequence input; meanwhile the batch layer's
   co-occurrence neighbours of the seed and latest items are read from Redis;
4. **candidates** – retrieval results + neighbours + trending items, hard-filtered (seen,
   dismissed, ... see :mod:`attune.api.rules`) before ranking so no ranking slot is wasted;
5. **ranking** – the ranking model scores the candidates (skipped when the variant says so);
6. **rules** – :func:`attune.api.rules.apply_rules`: filters, boosts, diversity, fill, pins.

Sources, in the order they are tried (the response's ``source`` says which answered):

``model``    the model server answered within its budget (step 3; a failed ranking keeps the
             retrieval order and says so in ``degraded``);
``batch``    the nightly batch's precomputed recommendations for the user;
``session``  co-occurrence neighbours of the visitor's session items (new and anonymous users
             whose session has items, while the model server cannot answer);
``popular``  trending, then all-time popular items (no signal, or no consent to personalize).

Users without any history skip the model (it would only see an empty sequence) and get the
``popular`` list; as soon as their session has an item the model and the neighbours of the
session's items take over. Every list is filled up to ``k`` with trending and popular items
that pass the same rules.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from attune.api.experiments import assign_variant
from attune.api.model_client import GuardedModels, ModelUnavailable
from attune.api.rules import (
    Candidate,
    Exclusions,
    RuleStats,
    apply_rules,
    blocked_by,
)
from attune.api.store import ApiStore, RequestData
from attune.config import AttuneConfig, VariantConfig

VERBS = {
    "item_view": "viewed",
    "click": "clicked",
    "rec_click": "clicked",
    "dwell": "viewed",
    "add_to_cart": "added",
    "checkout": "bought",
    "purchase": "bought",
    "rating": "rated",
}
PURCHASE_TYPES = frozenset({"purchase", "checkout"})


@dataclass(frozen=True)
class RecRequest:
    subject: str  # pseudonymized user id, else pseudonymized anonymous id
    is_user: bool
    k: int
    placement: str | None = None
    page: str | None = None
    device: str | None = None
    categories: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()
    seed_item: str | None = None


@dataclass
class RecItem:
    item_id: str
    score: float | None
    reason: str
    origin: str
    title: str | None = None
    categories: tuple[str, ...] = ()


@dataclass
class RecResult:
    recommendation_id: str
    experiment: str
    variant: str
    source: str
    items: list[RecItem]
    degraded: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    removed: dict[str, int] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "recommendation_id": self.recommendation_id,
            "experiment": self.experiment,
            "variant": self.variant,
            "source": self.source,
            "items": [
                {
                    "item_id": it.item_id,
                    "position": pos,
                    "score": None if it.score is None else round(float(it.score), 6),
                    "reason": it.reason,
                    "title": it.title,
                    "categories": list(it.categories),
                }
                for pos, it in enumerate(self.items)
            ],
        }
        if self.degraded:
            out["degraded"] = self.degraded
        return out


class Recommender:
    def __init__(
        self,
        cfg: AttuneConfig,
        store: ApiStore,
        models: GuardedModels,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        self.api = cfg.api
        self.store = store
        self.models = models
        self.clock = clock
        self.weights = {n: v.weight for n, v in self.api.experiment.variants.items()}
        self.default_personalization = cfg.privacy.default_consent.personalization
        longest = max(len(n) for n in self.api.experiment.variants)
        if len(self.api.experiment.name) + longest + 22 > 64:
            raise ValueError(
                "api.experiment.name plus the longest variant name must stay within 42 "
                "characters: recommendation ids are at most 64 (the event schema's limit)"
            )

    # -- helpers ----------------------------------------------------------------------
    def _query(self, req: RecRequest, data: RequestData, now_s: int) -> dict[str, np.ndarray]:
        recent = data.features.recent_item_ids
        if req.seed_item:
            recent = [req.seed_item] + [i for i in recent if i != req.seed_item]
        if not recent:
            recent = [""]
        return {
            "user_id": np.array([req.subject], dtype=object),
            "recent_items": np.array([recent], dtype=object),
            "request_time": np.array([now_s], dtype=np.int64),
            "device": np.array([req.device or ""], dtype=object),
            "placement": np.array([req.placement or ""], dtype=object),
            "segment": np.array([data.segment or ""], dtype=object),
        }

    def _exclusions(self, req: RecRequest, data: RequestData) -> Exclusions:
        f = data.features
        return Exclusions(
            seen=frozenset(f.recent_item_ids),
            purchased=frozenset(r.item_id for r in f.recent if r.type in PURCHASE_TYPES),
            dismissed=frozenset(f.dismissed_items),
            suppressed_categories=frozenset(data.suppressed),
            penalized_categories=frozenset(f.ignored_genres),
            excluded=frozenset(req.exclude),
            only_categories=frozenset(req.categories) if req.categories else None,
        )

    def _reason(self, c: Candidate, data: RequestData, seed_item: str | None) -> str:
        catalog = self.store.catalog
        recent = data.features.recent
        if c.origin == "pin":
            return "featured"
        if c.origin == "trending":
            return "trending now"
        if c.origin == "popular":
            return "popular"
        if c.seed is not None:
            if c.seed == seed_item:
                return f"similar to {catalog.title(c.seed)}"
            verb = next((VERBS.get(r.type, "viewed") for r in recent if r.item_id == c.seed), None)
            return f"because you {verb or 'viewed'} {catalog.title(c.seed)}"
        cats = catalog.categories(c.item_id)
        if cats:
            for r in recent:
                if cats[0] in catalog.categories(r.item_id):
                    return f"because you {VERBS.get(r.type, 'viewed')} {catalog.title(r.item_id)}"
        if seed_item is not None:
            return f"similar to {catalog.title(seed_item)}"
        return "based on your history" if c.origin == "batch" else "picked for you"

    # -- the pipeline -----------------------------------------------------------------
    async def recommend(self, req: RecRequest) -> RecResult:
        api = self.api
        cand_cfg = api.candidates
        timings: dict[str, float] = {}
        started = time.perf_counter()
        now = self.clock()
        data = await self.store.read_request(req.subject, int(now * 1000))
        t = time.perf_counter()
        timings["features"] = t - started

        variant_name = assign_variant(api.experiment.name, req.subject, self.weights)
        variant: VariantConfig = api.experiment.variants[variant_name]
        personalize = data.consent.get("personalization", self.default_personalization)
        ex = self._exclusions(req, data)
        categories = self.store.catalog.categories
        seeds: list[str] = []
        if req.seed_item:
            seeds.append(req.seed_item)
        seeds += [i for i in data.features.recent_item_ids[: cand_cfg.seeds] if i not in seeds]
        has_signal = personalize and bool(seeds)

        ranked: list[Candidate] | None = None
        source = "popular"
        degraded: str | None = None
        neighbours: dict[str, list[tuple[str, float]]] = {}
        if has_signal:
            nb_task = asyncio.create_task(self.store.neighbours(seeds, cand_cfg.per_seed))
            query = self._query(req, data, int(now))
            try:
                try:
                    out = await self.models.predict(
                        api.model_server.retrieval_model, query, label=variant.model_label
                    )
                finally:
                    t2 = time.perf_counter()
                    timings["retrieval"] = t2 - t
                    t = t2
                ids = out["item_ids"][0][: cand_cfg.retrieval]
                scores = out["scores"][0][: cand_cfg.retrieval]
                retrieved = [
                    Candidate(str(i), float(s), "retrieval")
                    for i, s in zip(ids, scores, strict=True)
                    if i
                ]
            except ModelUnavailable as exc:
                degraded = f"retrieval {exc.reason}"
                retrieved = []
            neighbours = await nb_task
            t2 = time.perf_counter()
            timings["candidates"] = t2 - t
            t = t2
            if degraded is None:
                ranked, degraded = await self._rank(
                    req, data, query, variant, retrieved, neighbours, ex, timings
                )
                t = time.perf_counter()
                source = "model"
        if ranked is None and personalize and data.batch_recs:
            source = "batch"
            ranked = [Candidate(i, s, "batch") for i, s in data.batch_recs]
        if ranked is None and has_signal and any(neighbours.values()):
            source = "session"
            ranked = self._neighbour_candidates(neighbours)
        if ranked is None:
            ranked = []
        fill = [Candidate(i, None, "trending") for i in data.trending]
        fill += [Candidate(i, None, "popular") for i in data.popular]

        stats = RuleStats()
        final = apply_rules(
            ranked,
            req.k,
            ex,
            categories,
            api.rules,
            fill=fill,
            placement=req.placement,
            stats=stats,
        )
        items = []
        for c in final:
            info = self.store.catalog.items.get(c.item_id)
            items.append(
                RecItem(
                    c.item_id,
                    c.score,
                    self._reason(c, data, req.seed_item),
                    c.origin,
                    info.title if info is not None and info.title else None,
                    categories(c.item_id),
                )
            )
        timings["rules"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - started
        rec_id = f"{api.experiment.name}:{variant_name}:{uuid.uuid4().hex[:20]}"
        if not personalize:
            degraded = "no personalization consent"
        return RecResult(
            rec_id,
            api.experiment.name,
            variant_name,
            source,
            items,
            degraded,
            timings,
            stats.removed,
        )

    def _neighbour_candidates(
        self, neighbours: dict[str, list[tuple[str, float]]]
    ) -> list[Candidate]:
        """Neighbours of the seeds, each weighted by 1 / (rank of its seed), summed per item
        (the batch layer's formula for precomputed recommendations)."""
        score: dict[str, float] = {}
        first_seed: dict[str, str] = {}
        for rank, (seed, rows) in enumerate(neighbours.items(), start=1):
            for item, s in rows:
                score[item] = score.get(item, 0.0) + s / rank
                first_seed.setdefault(item, seed)
        return [Candidate(i, s, "similar", first_seed[i]) for i, s in score.items()]

    async def _rank(
        self,
        req: RecRequest,
        data: RequestData,
        query: dict[str, np.ndarray],
        variant: VariantConfig,
        retrieved: list[Candidate],
        neighbours: dict[str, list[tuple[str, float]]],
        ex: Exclusions,
        timings: dict[str, float],
    ) -> tuple[list[Candidate], str | None]:
        api = self.api
        pool: dict[str, Candidate] = {}
        categories = self.store.catalog.categories
        rules = api.rules

        def add(c: Candidate) -> None:
            if c.item_id in pool or len(pool) >= api.candidates.max_ranked:
                return
            if blocked_by(c.item_id, categories(c.item_id), ex, rules) is None:
                pool[c.item_id] = c

        for c in retrieved:
            add(c)
        for seed, rows in neighbours.items():
            for item, _s in rows:
                add(Candidate(item, None, "similar", seed))
        for item in data.trending[: api.candidates.trending]:
            add(Candidate(item, None, "trending"))
        if not variant.ranking or not pool:
            return [c for c in pool.values() if c.origin == "retrieval"], None
        started = time.perf_counter()
        ids = list(pool)
        try:
            out = await self.models.predict(
                api.model_server.ranking_model,
                {**query, "candidate_ids": np.array([ids], dtype=object)},
                label=variant.model_label,
            )
        except ModelUnavailable as exc:
            timings["ranking"] = time.perf_counter() - started
            return [c for c in pool.values() if c.origin == "retrieval"], f"ranking {exc.reason}"
        timings["ranking"] = time.perf_counter() - started
        scores = out["scores"][0]
        # keep the origin (for the reason); the score is the ranking model's
        return [
            Candidate(i, float(s), pool[i].origin, pool[i].seed)
            for i, s in zip(ids, scores, strict=True)
        ], None
