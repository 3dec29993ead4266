"""The personalization API's HTTP endpoints (FastAPI on uvicorn) and ``attune serve api``.

Every ``/v1`` endpoint needs a read key (``Authorization: Bearer <key>`` or ``X-Read-Key``) and
is rate limited per key (429 + ``Retry-After``). User ids are the app's own: the API
pseudonymizes them with the collector's key, exactly as the collector does, so it finds the
features the speed layer wrote for the same user. The full reference is ``docs/api.md``.

``POST /v1/recommendations``  ranked items with reasons, ``recommendation_id``, variant, source
``GET  /v1/similar/{item_id}`` items seen with this one (public, cacheable: ETag, max-age)
``GET  /v1/trending``          trending items (public, cacheable)
``POST /v1/content/{slot}``    the content variant for a slot
``POST /v1/messages``          targeted messages within their frequency caps
``POST /v1/feedback``          dismiss / not interested, or undo: Redis at once, event to Kafka
``GET  /healthz`` ``/readyz``  open (liveness, readiness)
``GET  /metrics`` ``/docs`` ``/openapi.json``  admin endpoints: an admin key (``Authorization:
Bearer`` or ``X-Admin-Key``; ``attune keys create-admin NAME``) unless
``api.metrics_requires_admin`` is false; a read key there gets 403, an admin key on ``/v1`` too

Request bodies are strict JSON (a boolean is ``true``/``false``, an integer is no ``"10"`` and
no ``true``; 422 names the field) of at most ``api.max_body_bytes`` on every endpoint (413,
refused before the body is read: :class:`attune.web.BodyLimit`). ``GET /openapi.json`` declares
every body and every answer with its schema.

Personalized answers carry ``Cache-Control: private, no-store``; public ones an ``ETag`` (a
hash of the body) and ``Cache-Control: public, max-age=N``, and ``If-None-Match`` with the
current ETag gets ``304 Not Modified``. Each recommendation response carries ``Server-Timing``
with the time of every stage (``features;dur=0.4, retrieval;dur=2.1, ...``, milliseconds).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import orjson
from fastapi import FastAPI, Request, Response
from fastapi.openapi.docs import get_swagger_ui_html
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from redis.exceptions import RedisError

from attune.api.breaker import CircuitBreaker
from attune.api.keys import RateLimiter, ReadKeys
from attune.api.metrics import BREAKER_STATES, ApiMetrics
from attune.api.model_client import GuardedModels, ModelClient, open_model_client
from attune.api.recommender import Recommender, RecRequest, RecResult
from attune.api.store import ApiStore
from attune.api.targeting import Profile, eligible_messages, pick_content, rule_holds
from attune.bandits.messages import POLICY as MESSAGES_POLICY
from attune.bandits.messages import cap_count_range, message_arms, window_ms
from attune.bandits.slots import decide, policy_name, slot_arms
from attune.config import AttuneConfig, BanditConfig, ConfigError
from attune.events import TIME_WINDOW, EventTime, format_time
from attune.experiments.assignment import Assigner
from attune.experiments.bandit import policy_name as experiment_policy
from attune.experiments.spec import experiments_of, experiments_path, load_experiments
from attune.experiments.state import parse_states, status_of
from attune.ingest.consent import ConsentStore
from attune.ingest.pipeline import TYPE_ERRORS, json_type, time_window
from attune.ingest.producer import KafkaSink, KafkaUnavailable
from attune.secrets import (
    HashedKeys,
    Pseudonymizer,
    admin_keys_path,
    admin_refusal,
    presented_key,
    pseudonym_key,
)
from attune.web import BodyLimit, install_openapi, json_body, ref, responses

log = logging.getLogger(__name__)

JSON = "application/json"
PRIVATE = "private, no-store"
FEEDBACK_NAMESPACE = uuid.UUID("6f1c2e0a-3b7d-5e55-9a51-a77e7e5d0002")


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type=JSON, headers=headers)


class ApiError(Exception):
    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.body: dict[str, Any] = {"error": message, **extra}
        self.headers: dict[str, str] = {}


# ----------------------------------------------------------------------------------------
# Request bodies


class _In(BaseModel):
    # strict: no coercion ("yes" is no boolean; "10" and true are no integer)
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True, strict=True)


class ContextIn(_In):
    placement: str | None = Field(None, max_length=128)
    page: str | None = Field(None, max_length=2048)
    device: str | None = Field(None, max_length=64)


class SubjectIn(_In):
    """Who is asking: ``user_id`` (a logged-in user) or ``anonymous_id`` (a visitor)."""

    user_id: str | None = Field(None, min_length=1, max_length=256)
    anonymous_id: str | None = Field(None, min_length=1, max_length=256)
    context: ContextIn = ContextIn()

    @model_validator(mode="after")
    def _one_id(self) -> Any:
        if self.user_id is None and self.anonymous_id is None:
            raise ValueError("send user_id (a logged-in user) or anonymous_id (a visitor)")
        return self


def _with_subject(
    event: dict[str, Any], body: SubjectIn, placement: str | None = None
) -> dict[str, Any]:
    """``event`` with the request's user or anonymous id and its context (``placement``, when
    given, replacing the request's)."""
    if body.user_id is not None:
        event["user_id"] = body.user_id
    if body.anonymous_id is not None:
        event["anonymous_id"] = body.anonymous_id
    ctx = body.context.model_dump(exclude_none=True)
    if placement is not None:
        ctx["placement"] = placement
    if ctx:
        event["context"] = ctx
    return event


class FiltersIn(_In):
    categories: list[str] | None = Field(
        None, max_length=100, description="Only items in one of these categories."
    )
    exclude_items: list[str] = Field(default_factory=list, max_length=1000)


class RecommendationsIn(SubjectIn):
    """A recommendations request: who, how many (``k``), filters, an optional seed item."""

    k: int | None = Field(None, ge=1)
    filters: FiltersIn = FiltersIn()
    seed_item: str | None = Field(None, min_length=1, max_length=256)


class FeedbackIn(SubjectIn):
    """Feedback on shown items: dismiss or not interested, or (``undo``) taking it back."""

    action: Literal["dismiss", "not_interested"]
    items: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(
        min_length=1, max_length=100
    )
    undo: bool = False
    recommendation_id: str | None = Field(None, max_length=64)
    event_id: str | None = Field(None, min_length=1, max_length=64)
    timestamp: EventTime | None = Field(
        None,
        description="When the user gave the feedback (default: now); within the plausible "
        "window of event times (collector.event_times).",
    )


class MessagesIn(SubjectIn):
    """A messages request: who, and at most how many messages (``max``)."""

    max: int = Field(1, ge=1, le=20)


def _errors(exc: ValidationError) -> list[dict[str, str]]:
    out = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"]) or "(body)"
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = f"unknown field {err['loc'][-1]!r}: see docs/api.md for the fields"
        elif err["type"] in TYPE_ERRORS:
            message = f"{message}, got {json_type(err.get('input'))}"
        out.append({"field": loc, "message": message})
    return out


async def _parse(
    request: Request, model: type[BaseModel], context: dict[str, Any] | None = None
) -> Any:
    body = await request.body()  # within api.max_body_bytes (BodyLimit refused larger ones)
    try:
        data = orjson.loads(body) if body.strip() else {}
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, f"invalid JSON at byte {exc.pos}: {exc.msg}") from None
    try:
        return model.model_validate(data, context=context)
    except ValidationError as exc:
        raise ApiError(422, "invalid request", errors=_errors(exc)) from None


# ----------------------------------------------------------------------------------------
# Caching


def etag_of(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """RFC 9110 weak comparison of ``If-None-Match`` against the current ETag."""
    if not if_none_match:
        return False
    bare = etag.removeprefix("W/")
    for tag in if_none_match.split(","):
        tag = tag.strip()
        if tag == "*" or tag.removeprefix("W/") == bare:
            return True
    return False


def public_response(request: Request, body: Any, max_age: int) -> Response:
    data = orjson.dumps(body)
    etag = etag_of(data)
    headers = {"ETag": etag, "Cache-Control": f"public, max-age={max_age}"}
    if etag_matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    return Response(data, status_code=200, media_type=JSON, headers=headers)


def server_timing(timings: dict[str, float]) -> str:
    return ", ".join(f"{k};dur={v * 1000:.3f}" for k, v in timings.items())


# ----------------------------------------------------------------------------------------
# The app


class Api:
    """Everything one API process holds; endpoints are thin wrappers around its methods."""

    def __init__(
        self,
        cfg: AttuneConfig,
        *,
        client: ModelClient | None = None,
        sink: KafkaSink | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        self.metrics = ApiMetrics()
        self.keys = ReadKeys(cfg)
        self.admin_keys = HashedKeys(admin_keys_path(cfg), "admin")
        self.limiter = RateLimiter(cfg.api.rate_limit, dict(cfg.api.key_rate_limits))
        self.pseudonymize = Pseudonymizer(pseudonym_key(cfg))
        self.store = ApiStore(cfg)
        self.consent = ConsentStore.from_config(cfg)
        m = cfg.api.model_server
        self.breaker = CircuitBreaker(
            "model-server",
            m.breaker.failure_threshold,
            m.breaker.reset_timeout_s,
            on_change=self._breaker_changed,
        )
        self.metrics.breaker.labels("model-server").set(0)
        self._client = client
        self.models: GuardedModels | None = None
        self.recommender: Recommender | None = None
        self.clock = clock
        # experiment declarations now (a bad file stops the start-up), the state from Redis
        # at start and then every experiments.refresh_s (a changed file is re-read then too)
        self.experiments_path = experiments_path(cfg)
        self._experiments_mtime = self._mtime()
        self.experiments = experiments_of(cfg)
        self._experiment_state_raw: dict[Any, Any] | None = None
        self._experiment_warnings: list[str] = []
        from attune.api.events import EventSender

        self.sender = EventSender(
            cfg,
            self.pseudonymize,
            sink or KafkaSink(cfg),
            self.consent,
            on_impressions=lambda outcome, n: self.metrics.impressions.labels(outcome).inc(n),
        )
        self._tasks: list[asyncio.Task[None]] = []

    def _breaker_changed(self, name: str, state: str) -> None:
        log.warning("circuit breaker %s is now %s", name, state)
        self.metrics.breaker.labels(name).set(BREAKER_STATES[state])

    async def start(self) -> None:
        client: ModelClient = (
            self._client if self._client is not None else await open_model_client(self.cfg)
        )
        m = self.cfg.api.model_server
        self.models = GuardedModels(
            client,
            m.timeout_ms / 1000.0,
            self.breaker,
            on_call=lambda model, outcome, _s: self.metrics.model_calls.labels(
                model, outcome
            ).inc(),
        )
        self.recommender = Recommender(
            self.cfg,
            self.store,
            self.models,
            self.clock,
            experiments=self.experiments,
            observe=self._observe_variant,
        )
        try:
            await self.refresh_experiments()
        except Exception as exc:  # Redis may be down now: no experiment runs until it answers
            log.warning("experiments: could not read the running state at start-up: %s", exc)
        await self._warm_up(client)
        try:  # keys of older versions; if Redis is down now, the first consent read does it
            await self.consent.migrate()
        except Exception as exc:
            log.warning("consent: could not migrate older keys at start-up: %s", exc)
        try:
            n = await asyncio.to_thread(self.store.refresh_catalog_sync)
            log.info("catalog mirror: %d items", n)
        except Exception as exc:
            log.warning("could not read the catalog mirror yet: %s", exc)
        await self.sender.start()
        self._tasks.append(asyncio.create_task(self._refresh_catalog(), name="catalog"))
        self._tasks.append(asyncio.create_task(self._refresh_new_items(), name="new_items"))
        self._tasks.append(asyncio.create_task(self._refresh_experiments(), name="experiments"))

    async def _warm_up(self, client: ModelClient, rounds: int = 3) -> None:
        """A few calls to each model before taking traffic: the first calls of a fresh
        channel and a fresh model are slow, and would otherwise open the breaker."""
        import numpy as np

        m = self.cfg.api.model_server
        query = {
            "user_id": np.array([""], dtype=object),
            "recent_items": np.array([[""]], dtype=object),
            "recent_times": np.array([[0]], dtype=np.int64),
            "request_time": np.array([int(self.clock())], dtype=np.int64),
            "device": np.array([""], dtype=object),
            "placement": np.array([""], dtype=object),
            "segment": np.array([""], dtype=object),
        }
        ranking = {**query, "candidate_ids": np.array([[""]], dtype=object)}
        for _ in range(rounds):
            for model, inputs in ((m.retrieval_model, query), (m.ranking_model, ranking)):
                try:
                    await client.predict(model, inputs, timeout_s=10.0)
                except Exception as exc:  # the server may be down: the API starts anyway
                    log.warning("warm-up call to %s failed: %s", model, exc)
                    return

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.sender.stop()
        if self.models is not None:
            await self.models.close()
        await self.store.close()
        await self.consent.close()

    def _observe_variant(self, experiment: str, variant: str, outcome: str, seconds: float) -> None:
        self.metrics.variant_requests.labels(experiment, variant, outcome).inc()
        self.metrics.variant_latency.labels(experiment, variant).observe(seconds)

    def _mtime(self) -> int | None:
        if self.experiments_path is None:
            return None
        try:
            return self.experiments_path.stat().st_mtime_ns
        except OSError:
            return None

    async def refresh_experiments(self) -> None:
        """Re-read the experiments' running state from Redis, and the declarations file when
        it changed (an invalid file is logged and the previous declarations kept)."""
        assert self.recommender is not None
        raw = dict(await self.store.experiment_states())
        decls = self.experiments
        mtime = self._mtime()
        if self.experiments_path is not None and mtime != self._experiments_mtime:
            self._experiments_mtime = mtime
            try:
                decls = await asyncio.to_thread(
                    load_experiments, self.experiments_path, self.cfg.api.rule_sets
                )
            except ConfigError as exc:
                log.error("experiments: the file changed but is invalid; kept the last: %s", exc)
            else:
                log.info("experiments: re-read %s", self.experiments_path)
        if raw == self._experiment_state_raw and decls is self.experiments:
            return
        states, problems = parse_states(raw)
        assigner = Assigner(decls, states)
        self.recommender.set_experiments(assigner)
        self.experiments, self._experiment_state_raw = decls, raw
        warnings = problems + assigner.warnings
        if warnings != self._experiment_warnings:
            for w in warnings:
                log.warning("experiments: %s", w)
        self._experiment_warnings = warnings

    async def _refresh_experiments(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.experiments.refresh_s)
            try:
                await self.refresh_experiments()
            except Exception as exc:
                log.warning("experiments: refreshing the running state failed: %s", exc)

    def running_experiments(self) -> list[str]:
        if self.recommender is None:
            return []
        assigner = self.recommender.assigner
        now = datetime.fromtimestamp(self.clock(), UTC)
        return [
            e.id
            for e in assigner.decls.experiments
            if status_of(e, assigner.running.get(e.id), now) == "running"
        ]

    async def _refresh_catalog(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.api.catalog_refresh_s)
            try:
                await asyncio.to_thread(self.store.refresh_catalog_sync)
            except Exception as exc:
                log.warning("catalog refresh failed: %s", exc)

    async def _refresh_new_items(self) -> None:
        failing = False
        while True:
            try:
                await asyncio.to_thread(self.store.refresh_new_items_sync)
                failing = False
            except Exception as exc:
                if not failing:
                    log.warning("new items refresh failed: %s", exc)
                failing = True
            await asyncio.sleep(self.cfg.api.candidates.new_items_refresh_s)

    # -- auth ---------------------------------------------------------------------------
    def admin_denial(self, request: Request) -> Response | None:
        """None when ``request`` may read an admin endpoint (``/metrics``, ``/docs``,
        ``/openapi.json``: an admin key, or ``api.metrics_requires_admin`` is false), else the
        401/403 answer."""
        if not self.cfg.api.metrics_requires_admin:
            return None
        refused = admin_refusal(
            presented_key(request.headers, "x-admin-key") or request.headers.get("x-read-key"),
            self.admin_keys.name_for,
            self.keys.name_for,
            "read",
        )
        if refused is None:
            return None
        status, message = refused
        return _json(status, {"error": message}, {"WWW-Authenticate": "Bearer"})

    def authorize(self, request: Request) -> str:
        presented = presented_key(request.headers, "x-read-key")
        if not presented:
            error = ApiError(
                401,
                "missing read key: send 'Authorization: Bearer <read key>' or 'X-Read-Key'; "
                "create one with `attune keys create-read NAME`",
            )
            error.headers["WWW-Authenticate"] = "Bearer"
            raise error
        name = self.keys.name_for(presented)
        if name is None and self.admin_keys.name_for(presented) is not None:
            raise ApiError(
                403,
                "an admin key cannot call /v1 endpoints: send a read key "
                "(`attune keys create-read NAME`)",
            )
        if name is None:
            error = ApiError(
                401,
                "unknown read key: check the key, or create one with "
                "`attune keys create-read NAME`",
            )
            error.headers["WWW-Authenticate"] = "Bearer"
            raise error
        wait = self.limiter.check(name)
        if wait > 0:
            limit = self.limiter.limit_of(name)
            retry = max(1, math.ceil(wait))
            self.metrics.rate_limited.labels(name).inc()
            error = ApiError(
                429,
                f"read key {name!r} is over its rate limit of {limit.rate_per_s:g} requests/s "
                f"(burst {limit.burst}); retry after {retry} s or ask for a higher limit "
                "(api.key_rate_limits)",
                retry_after_s=retry,
            )
            error.headers["Retry-After"] = str(retry)
            raise error
        return name

    def subject(self, body: SubjectIn) -> tuple[str, bool]:
        if body.user_id is not None:
            return self.pseudonymize(body.user_id), True
        assert body.anonymous_id is not None
        return self.pseudonymize(body.anonymous_id), False

    # -- endpoints ----------------------------------------------------------------------
    async def recommendations(self, request: Request) -> Response:
        body: RecommendationsIn = await _parse(request, RecommendationsIn)
        api = self.cfg.api
        k = body.k or api.default_k
        if k > api.max_k:
            raise ApiError(422, f"k is {k}, over the limit of {api.max_k} (api.max_k)")
        subject, is_user = self.subject(body)
        assert self.recommender is not None
        result = await self.recommender.recommend(
            RecRequest(
                subject=subject,
                is_user=is_user,
                k=k,
                placement=body.context.placement,
                page=body.context.page,
                device=body.context.device,
                categories=tuple(body.filters.categories) if body.filters.categories else None,
                exclude=tuple(body.filters.exclude_items),
                seed_item=body.seed_item,
            )
        )
        for stage, seconds in result.timings.items():
            if stage != "total":
                self.metrics.stages.labels(stage).observe(seconds)
        self.metrics.sources.labels(result.source, result.variant).inc()
        if api.impressions:
            # a bandit-allocated experiment's first exposure: its decision, with the propensity
            for experiment, first in result.first_exposures:
                self.sender.log_impression(
                    self._slot_impression(
                        body,
                        experiment_policy(experiment),
                        first.variant,
                        first.propensity,
                        first.decision_id,
                    )
                )
        if api.impressions and result.items:
            self.sender.log_impression(self._impression(body, result))
        return _json(
            200,
            result.body(),
            {"Cache-Control": PRIVATE, "Server-Timing": server_timing(result.timings)},
        )

    def _impression(self, body: RecommendationsIn, result: RecResult) -> dict[str, Any]:
        event: dict[str, Any] = {
            "event_id": uuid.uuid4().hex,
            "type": "impression",
            "timestamp": format_time(datetime.fromtimestamp(self.clock(), UTC)),
            "items": [
                {"item_id": it.item_id, "position": pos}
                | ({"team": it.team} if it.team is not None else {})
                for pos, it in enumerate(result.items)
            ],
            "recommendation_id": result.recommendation_id,
        }
        return _with_subject(event, body)

    async def similar(self, request: Request, item_id: str) -> Response:
        k = _query_k(request, self.cfg.api.default_k, self.cfg.api.max_k)
        rows, kind = await self.store.similar(item_id, k)
        catalog = self.store.catalog
        body = {
            "item_id": item_id,
            "title": catalog.items[item_id].title if item_id in catalog.items else None,
            "kind": kind if rows else None,
            "items": [
                {
                    "item_id": i,
                    "score": round(s, 6),
                    "title": catalog.items[i].title if i in catalog.items else None,
                    "categories": list(catalog.categories(i)),
                }
                for i, s in rows
            ],
        }
        return public_response(request, body, self.cfg.api.similar_max_age_s)

    async def trending(self, request: Request) -> Response:
        k = _query_k(request, self.cfg.api.default_k, self.cfg.api.max_k)
        rows = await self.store.trending(k)
        window = self.cfg.api.candidates.trending_window_s
        kind = "trending"
        if not rows:
            rows, kind = await self.store.popular(k), "popular"
        catalog = self.store.catalog
        body = {
            "window_s": window if kind == "trending" else None,
            "kind": kind,
            "items": [
                {
                    "item_id": i,
                    "engagements": int(s),
                    "title": catalog.items[i].title if i in catalog.items else None,
                    "categories": list(catalog.categories(i)),
                }
                for i, s in rows
            ],
        }
        return public_response(request, body, self.cfg.api.trending_max_age_s)

    async def content(self, request: Request, slot: str) -> Response:
        rules = self.cfg.api.content_slots.get(slot)
        if not rules:
            raise ApiError(
                404,
                f"unknown content slot {slot!r}: configured slots are "
                f"{', '.join(sorted(self.cfg.api.content_slots)) or '(none)'} (api.content_slots)",
            )
        body: SubjectIn = await _parse(request, SubjectIn)
        subject, _ = self.subject(body)
        bandit = self.cfg.api.bandits.get(slot)
        if bandit is None:
            features, segment = await self.store.read_features(subject)
            index, rule = pick_content(rules, Profile.of(features, segment))
            return _json(
                200,
                {"slot": slot, "variant": rule.variant, "rule": index, "segment": segment},
                {"Cache-Control": PRIVATE},
            )
        policy = policy_name(slot)
        features, segment, state = await self.store.read_features_and_bandit(subject, policy)
        profile = Profile.of(features, segment)
        arms = slot_arms(rules, [rule_holds(r, profile) for r in rules])
        decision_id = uuid.uuid4().hex
        decision = decide(bandit, arms, state, segment, decision_id)
        index = next(i for i, r in enumerate(rules) if r.variant == decision.action)
        if self.cfg.api.impressions:
            self.sender.log_impression(
                self._slot_impression(
                    body, policy, decision.action, decision.propensity, decision_id
                )
            )
        return _json(
            200,
            {
                "slot": slot,
                "variant": decision.action,
                "rule": index,
                "segment": segment,
                "decision_id": decision_id,
                "policy": bandit.policy,
                "propensity": decision.propensity,
                "arms": dict(zip(decision.arms, decision.propensities, strict=True)),
            },
            {"Cache-Control": PRIVATE},
        )

    def _slot_impression(
        self, body: SubjectIn, policy: str, arm: str, propensity: float, decision_id: str
    ) -> dict[str, Any]:
        """The impression of a bandit's choice: the arm as the one item, with its propensity;
        ``context.placement`` names the policy (how the speed layer finds what to count)."""
        event: dict[str, Any] = {
            "event_id": uuid.uuid4().hex,
            "type": "impression",
            "timestamp": format_time(datetime.fromtimestamp(self.clock(), UTC)),
            "items": [{"item_id": arm, "position": 0, "propensity": propensity}],
            "recommendation_id": decision_id,
        }
        return _with_subject(event, body, placement=policy)

    async def messages(self, request: Request) -> Response:
        body: MessagesIn = await _parse(request, MessagesIn)
        subject, _ = self.subject(body)
        if self.cfg.api.message_bandit is not None:
            answer = await self._bandit_message(body, subject, self.cfg.api.message_bandit)
            return _json(200, answer, {"Cache-Control": PRIVATE})
        features, segment = await self.store.read_features(subject)
        now = int(self.clock() * 1000)
        shown: list[dict[str, Any]] = []
        capped: list[str] = []
        for m in eligible_messages(self.cfg.api.messages, Profile.of(features, segment)):
            if len(shown) >= body.max:
                break
            window_ms = int(m.cap_window.total_seconds() * 1000)
            if await self.store.take_message_slot(
                subject, m.id, now, window_ms, m.cap, uuid.uuid4().hex
            ):
                shown.append({"id": m.id, "text": m.text})
            else:
                capped.append(m.id)
        return _json(200, {"messages": shown, "capped": capped}, {"Cache-Control": PRIVATE})

    async def _bandit_message(
        self, body: MessagesIn, subject: str, bandit: BanditConfig
    ) -> dict[str, Any]:
        """One message chosen by the messages' bandit (:mod:`attune.bandits.messages`): the
        arms are the eligible messages whose cap leaves room, the cap is taken for the chosen
        one only, and its impression is logged with the propensity. The decision fields are
        set only when a message is shown (then an impression is logged for it)."""
        now = int(self.clock() * 1000)
        configured = self.cfg.api.messages
        features, segment, state, shown = await self.store.read_features_bandit_and_caps(
            subject, MESSAGES_POLICY, [(m.id, *cap_count_range(m, now)) for m in configured]
        )
        split = message_arms(eligible_messages(configured, Profile.of(features, segment)), shown)
        answer: dict[str, Any] = {
            "messages": [],
            "capped": list(split.capped),
            "decision_id": None,
            "policy": bandit.policy,
            "propensity": None,
            "arms": {},
        }
        if not split.arms:
            return answer
        decision_id = uuid.uuid4().hex
        decision = decide(bandit, split.ids, state, segment, decision_id)
        chosen = split.arms[decision.index]
        if not await self.store.take_message_slot(
            subject, chosen.id, now, window_ms(chosen), chosen.cap, uuid.uuid4().hex
        ):
            # another request of the same user took the last showing between the read and
            # this take: nothing is shown, so no impression (and no decision) is logged
            answer["capped"].append(chosen.id)
            return answer
        if self.cfg.api.impressions:
            self.sender.log_impression(
                self._slot_impression(
                    body, MESSAGES_POLICY, chosen.id, decision.propensity, decision_id
                )
            )
        return answer | {
            "messages": [{"id": chosen.id, "text": chosen.text}],
            "decision_id": decision_id,
            "propensity": decision.propensity,
            "arms": dict(zip(decision.arms, decision.propensities, strict=True)),
        }

    async def feedback(self, request: Request) -> Response:
        now = datetime.fromtimestamp(self.clock(), UTC)
        window = time_window(self.cfg.collector.event_times, now)
        body: FeedbackIn = await _parse(request, FeedbackIn, {TIME_WINDOW: window})
        subject, _ = self.subject(body)
        when = body.timestamp or now
        event_ms = int(when.timestamp() * 1000)
        items = list(dict.fromkeys(body.items))
        await self.store.write_feedback(subject, body.action, items, event_ms, body.undo)
        # Every feedback goes to the event log, undo included: an undo is an undo_feedback
        # event naming the undone action in `reason`. The derived id has the action in its
        # name ("undo:<action>" for an undo), so an undo's id never equals the dismissal's.
        action = f"undo:{body.action}" if body.undo else body.action
        event_id = body.event_id or str(
            uuid.uuid5(FEEDBACK_NAMESPACE, f"{subject}:{action}:{event_ms}:{items}")
        )
        event: dict[str, Any] = {
            "event_id": event_id,
            "type": "undo_feedback" if body.undo else body.action,
            "timestamp": format_time(when),
            "items": [{"item_id": i} for i in items],
        }
        if body.undo:
            event["reason"] = body.action
        for name in ("user_id", "anonymous_id", "recommendation_id"):
            value = getattr(body, name)
            if value is not None:
                event[name] = value
        ctx = body.context.model_dump(exclude_none=True)
        if ctx:
            event["context"] = ctx
        from attune.api.events import EventRejected

        try:
            stored, _dropped = await self.sender.send([event])
        except EventRejected as exc:
            raise ApiError(422, f"the feedback is not a valid event: {exc}") from None
        except KafkaUnavailable as exc:
            retry = self.cfg.collector.retry_after_s
            error = ApiError(
                503,
                f"the feedback is applied, but Kafka did not take its event ({exc}); "
                "retry the same request (it is idempotent)",
                applied=True,
                retry_after_s=retry,
            )
            error.headers["Retry-After"] = str(retry)
            raise error from None
        logged = stored > 0
        return _json(
            200,
            {
                "applied": True,
                "action": body.action,
                "undo": body.undo,
                "items": items,
                "logged": logged,
            },
            {"Cache-Control": PRIVATE},
        )


def _endpoint_of(path: str) -> str:
    """The endpoint label of a path, as the handlers count it (``/v1/content/home`` ->
    ``content``); paths that are no endpoint count as ``other``."""
    parts = path.split("/")
    if len(parts) >= 3 and parts[1] == "v1" and parts[2] in _ENDPOINTS:
        return parts[2]
    return "other"


_ENDPOINTS = frozenset(
    {"recommendations", "similar", "trending", "content", "messages", "feedback"}
)


def _query_k(request: Request, default: int, limit: int) -> int:
    raw = request.query_params.get("k")
    if raw is None:
        return default
    try:
        k = int(raw)
    except ValueError:
        raise ApiError(422, f"k must be an integer, got {raw!r}") from None
    if not 1 <= k <= limit:
        raise ApiError(422, f"k must be between 1 and {limit} (api.max_k), got {k}")
    return k


def create_app(
    cfg: AttuneConfig,
    *,
    client: ModelClient | None = None,
    sink: KafkaSink | None = None,
    clock: Callable[[], float] = time.time,
) -> FastAPI:
    """The API app; connections open in its lifespan. ``client`` and ``sink`` replace the model
    server client and the Kafka producer (tests)."""
    api = Api(cfg, client=client, sink=sink, clock=clock)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await api.start()
        try:
            yield
        finally:
            await api.stop()

    app = FastAPI(
        title="attune personalization API",
        version="1",
        lifespan=lifespan,
        docs_url=None,  # /docs and /openapi.json are admin endpoints, declared below
        openapi_url=None,
        redoc_url=None,
    )
    app.state.api = api
    app.add_middleware(
        BodyLimit,
        max_bytes=cfg.api.max_body_bytes,
        key="api.max_body_bytes",
        fix="send a smaller request, or ask the operator to raise api.max_body_bytes",
        on_refused=lambda path, status: api.metrics.requests.labels(
            _endpoint_of(path), str(status)
        ).inc(),
    )
    install_openapi(app, [RecommendationsIn, SubjectIn, MessagesIn, FeedbackIn])
    # what every /v1 endpoint may answer besides 200; each adds its own (404, 422 of a body)
    v1_errors = [401, 403, 413, 429, 500, 503]
    admin_errors = responses(
        [401, 403, 413],
        {403: {"description": "A read key, which is no admin key (api.metrics_requires_admin)."}},
    )
    query_k = {
        "parameters": [
            {
                "name": "k",
                "in": "query",
                "required": False,
                "description": f"How many items (default api.default_k = {cfg.api.default_k}).",
                "schema": {"type": "integer", "minimum": 1, "maximum": cfg.api.max_k},
            }
        ]
    }

    def body_of(model: type[BaseModel]) -> dict[str, Any]:
        return json_body(ref(model), f"{model.__doc__ or model.__name__} (docs/api.md)")

    async def guarded(
        endpoint: str, request: Request, work: Callable[[], Awaitable[Response]]
    ) -> Response:
        start = time.perf_counter()
        try:
            api.authorize(request)
            response = await work()
        except ApiError as exc:
            response = _json(exc.status, exc.body, exc.headers or None)
        except RedisError as exc:
            log.warning("Redis failed in %s: %s", endpoint, exc)
            retry = str(cfg.collector.retry_after_s)
            response = _json(
                503,
                {"error": f"Redis (the online store) is not reachable: {type(exc).__name__}"},
                {"Retry-After": retry},
            )
        except Exception:
            log.exception("unexpected error in %s", endpoint)
            response = _json(500, {"error": "internal error; the API log has the details"})
        api.metrics.requests.labels(endpoint, str(response.status_code)).inc()
        api.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)
        return response

    @app.post(
        "/v1/recommendations",
        summary="Recommendations for a user or visitor",
        openapi_extra=body_of(RecommendationsIn),
        responses=responses([400, 422, *v1_errors]),
    )
    async def post_recommendations(request: Request) -> Response:
        return await guarded("recommendations", request, lambda: api.recommendations(request))

    @app.get(
        "/v1/similar/{item_id}",
        summary="Items seen together with this one",
        openapi_extra=query_k,
        responses={**responses([422, *v1_errors]), 304: {"description": "Not Modified"}},
    )
    async def get_similar(request: Request, item_id: str) -> Response:
        return await guarded("similar", request, lambda: api.similar(request, item_id))

    @app.get(
        "/v1/trending",
        summary="Trending items",
        openapi_extra=query_k,
        responses={**responses([422, *v1_errors]), 304: {"description": "Not Modified"}},
    )
    async def get_trending(request: Request) -> Response:
        return await guarded("trending", request, lambda: api.trending(request))

    @app.post(
        "/v1/content/{slot}",
        summary="The content variant of a slot for a user",
        openapi_extra=body_of(SubjectIn),
        responses=responses([400, 404, 422, *v1_errors]),
    )
    async def post_content(request: Request, slot: str) -> Response:
        return await guarded("content", request, lambda: api.content(request, slot))

    @app.post(
        "/v1/messages",
        summary="Targeted messages within their frequency caps",
        openapi_extra=body_of(MessagesIn),
        responses=responses([400, 422, *v1_errors]),
    )
    async def post_messages(request: Request) -> Response:
        return await guarded("messages", request, lambda: api.messages(request))

    @app.post(
        "/v1/feedback",
        summary="Dismiss / not interested, or undo",
        openapi_extra=body_of(FeedbackIn),
        responses=responses([400, 422, *v1_errors]),
    )
    async def post_feedback(request: Request) -> Response:
        return await guarded("feedback", request, lambda: api.feedback(request))

    @app.get("/healthz", summary="Liveness", responses=responses([413]))
    async def healthz() -> Response:
        return _json(200, {"status": "ok"})

    @app.get(
        "/readyz",
        summary="Readiness: Redis reachable (the model server may be down)",
        responses={**responses([413]), 503: {"description": "Redis is not reachable."}},
    )
    async def readyz() -> Response:
        redis_ok = await api.store.ping()
        body = {
            "ready": redis_ok and api.recommender is not None,
            "redis": {"reachable": redis_ok},
            "model_server": {
                "protocol": cfg.api.model_server.protocol,
                "breaker": api.breaker.state,
            },
            "kafka": api.sender.sink.health(),
            "catalog_items": len(api.store.catalog.items),
            "new_items": {
                "items": len(api.store.new_items),
                "model_version": api.store.new_items.version,
            },
            "experiments": {
                "declared": len(api.experiments.experiments),
                "running": api.running_experiments(),
            },
        }
        return _json(200 if body["ready"] else 503, body)

    @app.get("/metrics", summary="Prometheus metrics (admin key)", responses=admin_errors)
    async def metrics(request: Request) -> Response:
        denied = api.admin_denial(request)
        if denied is not None:
            return denied
        return Response(api.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi_document(request: Request) -> Response:
        return api.admin_denial(request) or _json(200, app.openapi())

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> Response:
        return api.admin_denial(request) or get_swagger_ui_html(
            openapi_url="/openapi.json", title=f"{app.title} - docs"
        )

    return app


def cmd_serve(cfg: AttuneConfig, args: argparse.Namespace) -> int:
    """``attune serve api [--host H] [--port P] [--protocol grpc|rest]``."""
    import uvicorn

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("kafka").setLevel(logging.WARNING)
    if getattr(args, "protocol", None):
        ms = cfg.api.model_server.model_copy(update={"protocol": args.protocol})
        cfg = cfg.model_copy(update={"api": cfg.api.model_copy(update={"model_server": ms})})
    host = getattr(args, "host", None) or cfg.api.host
    port = getattr(args, "port", None) or cfg.api.port
    log.info(
        "personalization API on http://%s:%d (models over %s)",
        host,
        port,
        cfg.api.model_server.protocol,
    )
    uvicorn.run(
        create_app(cfg),
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="info",
        timeout_graceful_shutdown=10,
    )
    return 0
