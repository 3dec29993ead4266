"""The recommendation pipeline, stage by stage, with its fallbacks.

1. **features** – one pipelined Redis read (:meth:`attune.api.store.ApiStore.read_request`):
   the user's online features, batch view, feedback, consent, trending and popular lists;
2. **experiments** – :class:`attune.experiments.assignment.Assigner` puts the user in the
   holdout, or in at most one running experiment per layer (declarations from
   ``experiments.file``, running state from Redis, re-read every ``experiments.refresh_s``);
   an experiment with ``allocation.bandit`` takes the variant stored for the user (read in
   step 1), else the bandit's new decision, stored at once (:mod:`attune.experiments.bandit`);
   the variant says what changes: ranking on/off, model label, rule set (``api.rule_sets``),
   candidate sources. An interleaving experiment runs steps 3-6 for both its rankers and merges
   the two lists by team draft (:func:`attune.experiments.interleaving.team_draft`), each item
   tagged with the ranker (``team``) it came from;
3. **retrieval** – the retrieval model through the TF Serving protocol, with the user's recent
   items (the request's seed item first) as its sequence input; meanwhile the batch layer's
   co-occurrence neighbours of the seed and latest items are read from Redis;
4. **candidates** – retrieval results + neighbours + trending items, hard-filtered (seen,
   dismissed, ... see :mod:`attune.rules`) before ranking so no ranking slot is wasted
   (:func:`attune.candidates.candidate_pool`, shared with the offline evaluation);
5. **ranking** – the ranking model scores the candidates (skipped when the variant says so);
6. **rules** – :func:`attune.rules.apply_rules`: filters, boosts, diversity, fill, pins.

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

A variant's ``candidate_sources`` (:data:`attune.experiments.spec.CANDIDATE_SOURCES`) keeps only
the sources it lists; left out, ``retrieval`` means no retrieval call (ranking orders the rest
of the pool), ``neighbours`` no seed neighbours in the pool, ``trending`` no trending items in
the pool or the fill, ``popular`` no popular fill, ``batch`` and ``session`` no such fallback;
without any of retrieval, neighbours and trending the model path is skipped. A list may then
end shorter than ``k``. An interleaved response reports ranker a's ``source`` and both
rankers' ``degraded``.

Every request ends with ``observe(experiment, variant, outcome, seconds)`` for each experiment
the user is in (else ``none/default`` or ``holdout/holdout``): the API's per-variant latency and
error metrics, which the guardrails ``api_latency_p99_ms`` and ``error_rate`` read.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from attune.api.model_client import GuardedModels, ModelUnavailable
from attune.api.new_items import ORIGIN as NEW
from attune.api.new_items import best_new_items, candidate_content
from attune.api.store import ApiStore, RequestData
from attune.candidates import (
    add_neighbour_score,
    candidate_pool,
    fits_cap,
    keep_new_slots,
    neighbour_scores,
)
from attune.config import AttuneConfig, ConfigError, RulesConfig
from attune.experiments.assignment import (
    Assigner,
    Assignment,
    UserContext,
    combined_variant,
    new_token,
    recommendation_id,
)
from attune.experiments.bandit import StoredVariant, choose
from attune.experiments.spec import (
    CANDIDATE_SOURCES,
    HOLDOUT,
    NO_EXPERIMENT,
    ExperimentsFile,
    VariantSpec,
    check_rule_sets,
)
from attune.rules import Candidate, Exclusions, RuleStats, apply_rules, blocked_by

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
    team: str | None = None  # interleaving: the variant (ranker) the item came from


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
    assignments: list[Assignment] = field(default_factory=list)
    # bandit-allocated experiments whose variant this request decided and stored first:
    # (experiment, what was stored); the API logs a decision impression for each
    first_exposures: list[tuple[str, StoredVariant]] = field(default_factory=list)

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


@dataclass(frozen=True)
class Treatment:
    """What one request's variant changes in the pipeline (the defaults: everything on)."""

    ranking: bool = True
    model_label: str | None = None
    rules: RulesConfig = field(default_factory=RulesConfig)
    sources: frozenset[str] = frozenset(CANDIDATE_SOURCES)


@dataclass
class _Answer:
    """One ranker's list before it becomes the response."""

    final: list[Candidate]
    source: str
    degraded: str | None
    stats: RuleStats
    timings: dict[str, float]


MODEL_POOL = frozenset({"retrieval", "neighbours", "trending"})
"""The sources of the ranking model's pool; without any of them the fallbacks answer."""

Observer = Callable[[str, str, str, float], None]
"""``(experiment, variant, outcome, seconds)`` after each request; outcome ok | degraded |
error (the per-variant guardrail metrics)."""


class Recommender:
    def __init__(
        self,
        cfg: AttuneConfig,
        store: ApiStore,
        models: GuardedModels,
        clock: Callable[[], float] = time.time,
        experiments: ExperimentsFile | None = None,
        observe: Observer | None = None,
    ) -> None:
        self.cfg = cfg
        self.api = cfg.api
        self.store = store
        self.models = models
        self.clock = clock
        self.observe = observe
        self.default_personalization = cfg.privacy.default_consent.personalization
        self.assigner = Assigner(ExperimentsFile(), {})
        if experiments is not None:
            self.set_experiments(Assigner(experiments, {}))

    def set_experiments(self, assigner: Assigner) -> None:
        """Use new declarations or running state (the API's refresh task calls this)."""
        check_rule_sets(assigner.decls, self.api.rule_sets, "the experiments file")
        self.assigner = assigner

    def treatment(self, variant: VariantSpec) -> Treatment:
        rules = self.api.rules
        if variant.rules is not None:
            try:
                rules = self.api.rule_sets[variant.rules]
            except KeyError:  # checked when the declarations were loaded
                raise ConfigError(
                    f"unknown rule set {variant.rules!r}: declare it under api.rule_sets"
                ) from None
        sources = (
            frozenset(variant.candidate_sources)
            if variant.candidate_sources is not None
            else frozenset(CANDIDATE_SOURCES)
        )
        return Treatment(variant.ranking, variant.model_label, rules, sources)

    # -- helpers ----------------------------------------------------------------------
    def _query(self, req: RecRequest, data: RequestData, now_s: int) -> dict[str, np.ndarray]:
        # The recent zset scores items by event time (RecentItem.event_ms): the sequence
        # encoders read request_time - recent_times; the seed item is being looked at now.
        pairs = [(r.item_id, r.event_ms // 1000) for r in data.features.recent]
        if req.seed_item:
            pairs = [(req.seed_item, now_s)] + [p for p in pairs if p[0] != req.seed_item]
        if not pairs:
            pairs = [("", 0)]
        # An erased user's id embedding is still in the served models until a model trained
        # after the erasure is served: the empty id is the models' unknown user.
        return {
            "user_id": np.array(["" if data.erased else req.subject], dtype=object),
            "recent_items": np.array([[item for item, _ in pairs]], dtype=object),
            "recent_times": np.array([[t for _, t in pairs]], dtype=np.int64),
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
        if c.origin == NEW:
            genres = set(catalog.categories(c.item_id))
            for r in recent:
                if genres & set(catalog.categories(r.item_id)):
                    action = VERBS.get(r.type, "viewed")
                    return f"new, and like {catalog.title(r.item_id)}, which you {action}"
            return "new in the catalog"
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
    async def assign(
        self, req: RecRequest, data: RequestData, now: float
    ) -> tuple[bool, list[Assignment], list[tuple[str, StoredVariant]]]:
        """(in the holdout, the user's experiments, the first exposures this request decided)
        for this request. A bandit-allocated experiment gets the user's stored variant, else a
        new decision stored if none is stored yet (the stored one wins a race)."""
        assigner = self.assigner
        if assigner.in_holdout(req.subject):
            return True, [], []
        ctx = UserContext(
            segment=data.segment, platform=req.device, returning=not data.features.is_empty
        )
        found = assigner.assign(req.subject, ctx, datetime.fromtimestamp(now, UTC))
        out: list[Assignment] = []
        first: list[tuple[str, StoredVariant]] = []
        for a in found:
            if a.bandit is None:
                out.append(a)
                continue
            raw, state = data.experiment_bandits.get(a.experiment, (None, {}))
            stored = StoredVariant.decode(raw)
            if stored is None:
                mine = choose(
                    a.bandit, a.arms, state, uuid.uuid4().hex, int(now * 1000), data.segment
                )
                kept = await self.store.remember_variant(req.subject, a.experiment, mine.encode())
                stored = StoredVariant.decode(kept) or mine
                if stored == mine:
                    first.append((a.experiment, mine))
            spec = assigner.decls.get(a.experiment)
            if stored.variant not in a.arms or spec is None:
                continue  # no longer a variant that takes part: the defaults
            out.append(a.resolved(stored.variant, spec.variants[stored.variant]))
        return False, out, first

    async def recommend(self, req: RecRequest) -> RecResult:
        started = time.perf_counter()
        now = self.clock()
        bandits = self.assigner.bandit_experiments(req.subject)
        if bandits:
            data = await self.store.read_request(req.subject, int(now * 1000), bandits)
        else:  # the common case keeps the plain call
            data = await self.store.read_request(req.subject, int(now * 1000))
        features_s = time.perf_counter() - started

        holdout, assignments, first = await self.assign(req, data, now)
        rec_id = recommendation_id(assignments, holdout, new_token())
        experiment, variant_name = rec_id.split(":")[:2]
        labels = [(a.experiment, a.variant) for a in assignments] or [
            HOLDOUT if holdout else NO_EXPERIMENT
        ]
        outcome = "error"
        try:
            result = await self._recommend(req, data, now, assignments, rec_id)
            result.timings = {"features": features_s, **result.timings}
            result.timings["total"] = time.perf_counter() - started
            result.experiment, result.variant = experiment, variant_name
            result.assignments = assignments
            result.first_exposures = first
            outcome = "degraded" if result.degraded else "ok"
            if not data.consent.get("personalization", self.default_personalization):
                result.degraded = "no personalization consent"
            return result
        finally:
            if self.observe is not None:
                seconds = time.perf_counter() - started
                for exp, var in labels:
                    self.observe(exp, var, outcome, seconds)

    async def _recommend(
        self,
        req: RecRequest,
        data: RequestData,
        now: float,
        assignments: Sequence[Assignment],
        rec_id: str,
    ) -> RecResult:
        if assignments and assignments[0].type == "interleaving":
            return await self._interleave(req, data, now, assignments, rec_id)
        variant = combined_variant([a.variant_config for a in assignments if a.variant_config])
        ans = await self._answer(req, data, now, self.treatment(variant))
        items = [self._item(c, data, req.seed_item) for c in ans.final]
        return RecResult(
            rec_id, "", "", ans.source, items, ans.degraded, ans.timings, ans.stats.removed
        )

    async def _interleave(
        self,
        req: RecRequest,
        data: RequestData,
        now: float,
        assignments: Sequence[Assignment],
        rec_id: str,
    ) -> RecResult:
        """Both rankers' lists (each with the user's other experiments underneath), merged by
        team draft with the recommendation id as the seed."""
        from attune.experiments.interleaving import team_draft

        (name_a, var_a), (name_b, var_b) = assignments[0].rankers
        others = [a.variant_config for a in assignments[1:] if a.variant_config]
        ans_a, ans_b = await asyncio.gather(
            self._answer(req, data, now, self.treatment(combined_variant([var_a, *others]))),
            self._answer(req, data, now, self.treatment(combined_variant([var_b, *others]))),
        )
        merged = team_draft(
            [c.item_id for c in ans_a.final],
            [c.item_id for c in ans_b.final],
            req.k,
            rec_id,
            teams=(name_a, name_b),
        )
        by_id = {c.item_id: c for c in ans_b.final} | {c.item_id: c for c in ans_a.final}
        items = []
        for item_id, team in merged:
            it = self._item(by_id[item_id], data, req.seed_item)
            it.team = team
            items.append(it)
        timings = {
            stage: max(ans_a.timings.get(stage, 0.0), ans_b.timings.get(stage, 0.0))
            for stage in {**ans_a.timings, **ans_b.timings}
        }
        degraded = "; ".join(
            f"{name}: {a.degraded}" for name, a in ((name_a, ans_a), (name_b, ans_b)) if a.degraded
        )
        removed = dict(ans_a.stats.removed)
        for rule, n in ans_b.stats.removed.items():
            removed[rule] = removed.get(rule, 0) + n
        return RecResult(rec_id, "", "", ans_a.source, items, degraded or None, timings, removed)

    def _item(self, c: Candidate, data: RequestData, seed_item: str | None) -> RecItem:
        info = self.store.catalog.items.get(c.item_id)
        return RecItem(
            c.item_id,
            c.score,
            self._reason(c, data, seed_item),
            c.origin,
            info.title if info is not None and info.title else None,
            self.store.catalog.categories(c.item_id),
        )

    async def _answer(
        self, req: RecRequest, data: RequestData, now: float, treat: Treatment
    ) -> _Answer:
        """Steps 3-6 for one treatment: candidates, ranking, rules."""
        api = self.api
        cand_cfg = api.candidates
        sources = treat.sources
        timings: dict[str, float] = {}
        t = time.perf_counter()
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
            nb_task = (
                asyncio.create_task(
                    self.store.neighbours(seeds, cand_cfg.per_seed, cand_cfg.neighbours)
                )
                if "neighbours" in sources or "session" in sources
                else None
            )
            query = self._query(req, data, int(now))
            retrieved: list[Candidate] = []
            if "retrieval" in sources:
                try:
                    try:
                        out = await self.models.predict(
                            api.model_server.retrieval_model, query, label=treat.model_label
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
                    retrieved += self._new_candidates(out, ex, treat)
                except ModelUnavailable as exc:
                    degraded = f"retrieval {exc.reason}"
            if nb_task is not None:
                neighbours = await nb_task
            t2 = time.perf_counter()
            timings["candidates"] = t2 - t
            t = t2
            if degraded is None and sources & MODEL_POOL:
                pool_neighbours = neighbours if "neighbours" in sources else {}
                ranked, degraded = await self._rank(
                    data, query, treat, retrieved, pool_neighbours, ex, timings
                )
                t = time.perf_counter()
                source = "model"
        if ranked is None and personalize and data.batch_recs and "batch" in sources:
            source = "batch"
            ranked = [Candidate(i, s, "batch") for i, s in data.batch_recs]
        if ranked is None and has_signal and "session" in sources and any(neighbours.values()):
            source = "session"
            ranked = self._neighbour_candidates(neighbours)
        if ranked is None:
            ranked = []
        fill: list[Candidate] = []
        if "trending" in sources:
            fill += [Candidate(i, None, "trending") for i in data.trending]
        if "popular" in sources:
            fill += [Candidate(i, None, "popular") for i in data.popular]

        stats = RuleStats()
        final = apply_rules(
            ranked,
            req.k,
            ex,
            categories,
            treat.rules,
            fill=fill,
            placement=req.placement,
            stats=stats,
            tastes=data.features.affinities,
        )
        if source == "model" and cand_cfg.new_slots:
            final = keep_new_slots(
                final, ranked, cand_cfg.new_slots, fits_cap(categories, treat.rules)
            )
        timings["rules"] = time.perf_counter() - t
        return _Answer(final, source, degraded, stats, timings)

    def _new_candidates(
        self, retrieval_out: dict[str, np.ndarray], ex: Exclusions, treat: Treatment
    ) -> list[Candidate]:
        """The best new items for this query (:mod:`attune.api.new_items`): only for the
        served version, whose space their vectors are in."""
        new = self.store.new_items
        n = self.api.candidates.new_items
        query = retrieval_out.get("query_embedding")
        if not n or not len(new) or query is None or treat.model_label is not None:
            return []
        categories = self.store.catalog.categories
        return best_new_items(
            new,
            np.asarray(query)[0],
            n,
            lambda item: blocked_by(item, categories(item), ex, treat.rules) is None,
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
        data: RequestData,
        query: dict[str, np.ndarray],
        treat: Treatment,
        retrieved: list[Candidate],
        neighbours: dict[str, list[tuple[str, float]]],
        ex: Exclusions,
        timings: dict[str, float],
    ) -> tuple[list[Candidate], str | None]:
        api = self.api
        pool = candidate_pool(
            retrieved,
            neighbours,
            data.trending[: api.candidates.trending] if "trending" in treat.sources else (),
            max_ranked=api.candidates.max_ranked,
            ex=ex,
            categories=self.store.catalog.categories,
            rules=treat.rules,
        )
        if not treat.ranking or not pool:
            # without ranking: the retrieval order (or, without retrieval, the pool's order)
            if "retrieval" in treat.sources:
                return [c for c in pool.values() if c.origin == "retrieval"], None
            return list(pool.values()), None
        started = time.perf_counter()
        ids = list(pool)
        inputs = {**query, "candidate_ids": np.array([ids], dtype=object)}
        signature = "serving_default"
        if any(c.origin == NEW for c in pool.values()):  # scored from their content
            signature = "with_content"
            inputs.update(candidate_content(ids, self.store.new_items))
        try:
            out = await self.models.predict(
                api.model_server.ranking_model,
                inputs,
                signature=signature,
                label=treat.model_label,
            )
        except ModelUnavailable as exc:
            timings["ranking"] = time.perf_counter() - started
            return [c for c in pool.values() if c.origin == "retrieval"], f"ranking {exc.reason}"
        timings["ranking"] = time.perf_counter() - started
        scores = out["scores"][0]
        # keep the origin (for the reason); the score is the ranking model's, blended with
        # the neighbour source's view (item-kNN) when api.candidates.neighbour_weight says so
        ranked = [
            Candidate(i, float(s), pool[i].origin, pool[i].seed)
            for i, s in zip(ids, scores, strict=True)
        ]
        weight = api.candidates.neighbour_weight
        if weight == 0:  # the default: no second pass over the neighbours on the hot path
            return ranked, None
        return add_neighbour_score(ranked, neighbour_scores(neighbours), weight), None
