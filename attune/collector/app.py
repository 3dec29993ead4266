"""The collector's HTTP API (FastAPI on uvicorn) and ``attune serve collector``.

Endpoints:

``POST /v1/events``
    One event, a JSON array of events, or ``{"batch": [...]}`` (at most
    ``collector.max_batch_events``), authenticated with the source's write key
    (``Authorization: Bearer <key>`` or ``X-Write-Key: <key>``). Answers
    ``{"accepted": n, "dropped": n, "rejected": [{"index", "event_id", "errors": [{"field",
    "message"}]}]}`` only after Kafka acknowledged every accepted and dead-lettered event:

    * **200** – nothing was rejected (events may have been ``dropped`` for lack of analytics
      consent: acknowledged, deliberately not stored);
    * **207** – some events were rejected, the others were accepted or dropped;
    * **400** – every event was rejected (the reasons are in ``rejected``), or the body is not
      JSON / not an event, array or batch (``{"error": ...}`` with the parse position);
    * **401** – missing or unknown write key; **413** – body over ``collector.max_body_bytes``
      (by Content-Length or by the bytes actually streamed, on every endpoint:
      :class:`attune.web.BodyLimit`) or batch over ``collector.max_batch_events``;
    * **503** + ``Retry-After: collector.retry_after_s`` – Kafka (or Redis, which holds consent)
      is unreachable or did not acknowledge in ``collector.ack_timeout_s``. Nothing in the
      request was acknowledged; retrying it is safe because ``event_id`` makes it idempotent
      downstream (some events of a 503'd request may still land, once).

    Rejected events go to the dead-letter topic with their reasons, the source, and the raw
    payload with ids pseudonymized. The consent state of ``consent_update`` events is written
    to Redis before the events are produced (a choice the user made is stored even if Kafka is
    down and the client has to retry).

``GET /v1/schema`` – the JSON Schema of an event (derived from :mod:`attune.events`).
``GET /healthz`` – liveness. ``GET /readyz`` – 200 when Kafka and Redis are reachable, else 503.
``GET /metrics`` – Prometheus metrics (:mod:`attune.collector.metrics`). ``/metrics``, ``/docs``
and ``GET /openapi.json`` are admin endpoints: they need an admin key (``Authorization: Bearer``
or ``X-Admin-Key``; ``attune keys create-admin NAME``, shared with the API through
``api.admin_keys_file``) unless ``collector.metrics_requires_admin`` is false; a write key there
gets 403.

``GET /openapi.json`` declares the request body (derived from :class:`attune.events.Event`) and
every answer with its schema (:func:`attune.web.install_openapi`).
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import shutil
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from fastapi import FastAPI, Request, Response
from fastapi.openapi.docs import get_swagger_ui_html
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, Field

from attune.collector.metrics import METRICS_DIR_ENV, CollectorMetrics
from attune.config import AttuneConfig
from attune.events import Event, format_time, json_schema
from attune.ingest.consent import ConsentStore
from attune.ingest.pipeline import (
    BatchProcessor,
    RequestError,
    dead_letter_record,
    encode,
    parse_body,
    response_status,
)
from attune.ingest.producer import KafkaSink, KafkaUnavailable
from attune.secrets import (
    HashedKeys,
    Pseudonymizer,
    WriteKeyIndex,
    admin_keys_path,
    admin_refusal,
    load_write_keys,
    presented_key,
    pseudonym_key,
)
from attune.web import BodyLimit, ErrorBody, FieldError, install_openapi, json_body, ref, responses

log = logging.getLogger(__name__)

JSON = "application/json"


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type=JSON, headers=headers)


class _WriteKeys:
    """The write-key index, reloaded when the keys file changes (checked on unknown keys)."""

    def __init__(self, cfg: AttuneConfig) -> None:
        self.cfg = cfg
        self.path: Path = cfg.paths.resolve(cfg.collector.write_keys_file)
        self._mtime: float | None = None
        self._index = WriteKeyIndex({})
        self._checked = 0.0
        self.reload()

    def reload(self) -> None:
        mtime = self.path.stat().st_mtime if self.path.exists() else None
        if mtime != self._mtime:
            keys = load_write_keys(self.cfg)
            self._index = WriteKeyIndex(keys)
            self._mtime = mtime
            log.info("loaded write keys of %d source(s) from %s", len(keys), self.path)

    def source_for(self, presented: str) -> str | None:
        source = self._index.source_for(presented)
        if source is None and time.monotonic() - self._checked > 1.0:
            self._checked = time.monotonic()
            self.reload()
            source = self._index.source_for(presented)
        return source


class Collector:
    """Everything one collector process holds: producer, consent store, keys, metrics."""

    def __init__(
        self,
        cfg: AttuneConfig,
        *,
        clock: Callable[[], datetime] | None = None,
        sink: KafkaSink | None = None,
        consent: ConsentStore | None = None,
    ) -> None:
        self.cfg = cfg
        self.clock = clock or (lambda: datetime.now(UTC))
        self.metrics = CollectorMetrics()
        self.sink = sink or KafkaSink(
            cfg, on_error=self.metrics.kafka_error, on_probe=self.metrics.kafka_up.set
        )
        self.consent = consent or ConsentStore.from_config(cfg)
        self.pseudonymize = Pseudonymizer(pseudonym_key(cfg))
        self.processor = BatchProcessor(self.pseudonymize, cfg.collector.event_times)
        self.keys = _WriteKeys(cfg)
        self.admin_keys = HashedKeys(admin_keys_path(cfg), "admin")
        self.events_topic = cfg.kafka.topic("events").name
        self.dead_letter_topic = cfg.kafka.topic("dead_letter").name
        self.default_consent = cfg.privacy.default_consent.model_dump()
        self.retry_after = str(cfg.collector.retry_after_s)
        self.schema = orjson.dumps(json_schema())

    # -- request steps ----------------------------------------------------------------------
    def admin_denial(self, request: Request) -> Response | None:
        """None when ``request`` may read an admin endpoint (``/metrics``, ``/docs``,
        ``/openapi.json``: an admin key from ``api.admin_keys_file``, or
        ``collector.metrics_requires_admin`` is false), else the 401/403 answer."""
        if not self.cfg.collector.metrics_requires_admin:
            return None
        refused = admin_refusal(
            presented_key(request.headers, "x-admin-key") or request.headers.get("x-write-key"),
            self.admin_keys.name_for,
            self.keys.source_for,
            "write",
        )
        if refused is None:
            return None
        status, message = refused
        return _json(status, {"error": message}, {"WWW-Authenticate": "Bearer"})

    def authenticate(self, request: Request) -> str:
        presented = None
        auth = request.headers.get("authorization")
        if auth:
            scheme, _, token = auth.strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                presented = token.strip()
        if presented is None:
            presented = request.headers.get("x-write-key")
        if not presented:
            raise RequestError(
                401,
                "missing write key: send 'Authorization: Bearer <key>' or 'X-Write-Key: <key>' "
                "(an operator creates one with `attune keys create SOURCE`)",
            )
        source = self.keys.source_for(presented)
        if source is None:
            raise RequestError(
                401,
                "unknown write key: check the key of your source, or ask an operator to create "
                "one with `attune keys create SOURCE`",
            )
        return source

    async def handle_events(self, request: Request) -> Response:
        source = self.authenticate(request)
        # within collector.max_body_bytes: BodyLimit refused larger bodies before this point
        body = await request.body()
        raw_events = parse_body(body, self.cfg.collector.max_batch_events)
        received_at = self.clock()
        batch = self.processor.validate(raw_events, received_at)
        try:
            stored = await self.consent.read_many(batch.subjects())
        except Exception as exc:
            raise _Unavailable(f"Redis (consent state) is not reachable: {exc}") from None
        plan = batch.plan(
            stored,
            default=self.default_consent,
            drop_without_analytics=self.cfg.privacy.drop_without_analytics_consent,
            received_at=received_at,
            source=source,
        )
        rejections = sorted(batch.rejections + plan.rejections, key=lambda r: r.index)
        topic = self.events_topic
        records = [(topic, key, value) for key, value in plan.records]
        if rejections:
            received = format_time(received_at)
            source_key = source.encode()
            for r in rejections:
                dl = dead_letter_record(raw_events[r.index], r, source, received, self.pseudonymize)
                records.append((self.dead_letter_topic, source_key, encode(dl)))
        if plan.consent_writes:
            try:
                await self.consent.write_many(plan.consent_writes)
            except Exception as exc:
                raise _Unavailable(f"Redis (consent state) is not reachable: {exc}") from None
        try:
            await self.sink.send(records)
        except KafkaUnavailable as exc:
            raise _Unavailable(str(exc)) from None

        m = self.metrics
        m.count_events(source, "accepted", plan.accepted)
        m.count_events(source, "dropped", plan.dropped)
        if rejections:
            by_type: dict[str, int] = {}
            for r in rejections:
                by_type[r.event_type] = by_type.get(r.event_type, 0) + 1
            m.count_events(source, "rejected", by_type)
        accepted = len(plan.records)
        dropped = sum(plan.dropped.values())
        status = response_status(accepted, dropped, len(rejections))
        return _json(
            status,
            {
                "accepted": accepted,
                "dropped": dropped,
                "rejected": [r.to_dict() for r in rejections],
            },
        )

    def unavailable(self, message: str) -> Response:
        return _json(
            503,
            {
                "error": f"{message}; nothing was stored from this request, retry later",
                "retry_after_s": self.cfg.collector.retry_after_s,
            },
            headers={"Retry-After": self.retry_after},
        )


class _Unavailable(Exception):
    pass


# ----------------------------------------------------------------------------------------
# The OpenAPI document: what POST /v1/events answers


class RejectedEvent(BaseModel):
    index: int = Field(description="Position of the event in the request (0-based).")
    event_id: str | None = Field(description="Its event_id, if it had a string one.")
    errors: list[FieldError]


class EventsAnswer(BaseModel):
    """The answer of ``POST /v1/events`` (200, 207, and 400 when every event was rejected)."""

    accepted: int = Field(description="Events Kafka acknowledged.")
    dropped: int = Field(description="Events acknowledged but not stored (no analytics consent).")
    rejected: list[RejectedEvent]


def _events_body(max_batch_events: int) -> dict[str, Any]:
    """``POST /v1/events``: one event, a JSON array of events, or ``{"batch": [...]}``."""
    array = {"type": "array", "items": ref(Event), "minItems": 1, "maxItems": max_batch_events}
    return {
        "oneOf": [
            ref(Event),
            array,
            {
                "type": "object",
                "properties": {"batch": array},
                "required": ["batch"],
                "additionalProperties": False,
            },
        ]
    }


_EVENTS_ANSWERS: dict[int, dict[str, Any]] = {
    200: {"description": "Every event was accepted (or dropped).", "schema": ref(EventsAnswer)},
    207: {"description": "Some events were rejected.", "schema": ref(EventsAnswer)},
    400: {
        "description": "Every event was rejected (`rejected` says why), or the body is not "
        "JSON / not an event, array or batch (`error`).",
        "schema": {"anyOf": [ref(EventsAnswer), ref(ErrorBody)]},
    },
    413: {
        "description": "The body is over collector.max_body_bytes, or the batch over "
        "collector.max_batch_events.",
    },
}


def create_app(
    cfg: AttuneConfig,
    *,
    clock: Callable[[], datetime] | None = None,
    sink: KafkaSink | None = None,
    consent: ConsentStore | None = None,
) -> FastAPI:
    """The collector app; Kafka and Redis connections are opened by its lifespan.

    ``clock``, ``sink`` and ``consent`` replace the real clock, Kafka producer and Redis store
    (unit tests pass fakes; production passes nothing).
    """
    collector = Collector(cfg, clock=clock, sink=sink, consent=consent)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await collector.sink.start()
        try:  # keys of older versions; if Redis is down now, the first read does it
            await collector.consent.migrate()
        except Exception as exc:
            log.warning("consent: could not migrate older keys at start-up: %s", exc)
        if not collector.keys.path.exists():
            log.warning(
                "no write keys file at %s: every request will get 401; "
                "create a key with `attune keys create SOURCE`",
                collector.keys.path,
            )
        try:
            yield
        finally:
            await collector.sink.stop()
            await collector.consent.close()

    app = FastAPI(
        title="attune event collector",
        version="1",
        lifespan=lifespan,
        docs_url=None,  # /docs and /openapi.json are admin endpoints, declared below
        openapi_url=None,
        redoc_url=None,
    )
    app.state.collector = collector
    app.add_middleware(
        BodyLimit,
        max_bytes=cfg.collector.max_body_bytes,
        key="collector.max_body_bytes",
        fix="send smaller batches",
        on_refused=lambda _path, status: collector.metrics.requests.labels(str(status)).inc(),
    )
    install_openapi(app, [Event, EventsAnswer])
    # every endpoint: a body over the limit is refused (413), whatever the method
    limited = responses([413])

    @app.post(
        "/v1/events",
        summary="Send one event, an array of events or {batch: [...]}",
        openapi_extra=json_body(
            _events_body(cfg.collector.max_batch_events),
            'One event, a JSON array of events or {"batch": [...]}; GET /v1/schema has the '
            "event's schema with each type's required fields.",
        ),
        responses=responses([200, 207, 400, 401, 413, 500, 503], _EVENTS_ANSWERS),
    )
    async def post_events(request: Request) -> Response:
        start = time.perf_counter()
        try:
            response = await collector.handle_events(request)
        except RequestError as exc:
            headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
            response = _json(exc.status, {"error": exc.message}, headers)
        except _Unavailable as exc:
            response = collector.unavailable(str(exc))
        except Exception:
            log.exception("unexpected error handling POST /v1/events")
            response = _json(500, {"error": "internal error; the collector log has the details"})
        collector.metrics.requests.labels(str(response.status_code)).inc()
        collector.metrics.latency.observe(time.perf_counter() - start)
        return response

    @app.get("/v1/schema", summary="JSON Schema of an event", responses=limited)
    async def get_schema() -> Response:
        return Response(collector.schema, media_type=JSON)

    @app.get("/healthz", summary="Liveness", responses=limited)
    async def healthz() -> Response:
        return _json(200, {"status": "ok"})

    @app.get(
        "/readyz",
        summary="Readiness: Kafka and Redis reachable",
        responses={**limited, 503: {"description": "Kafka or Redis is not reachable."}},
    )
    async def readyz() -> Response:
        redis_ok = await collector.consent.ping()
        kafka = collector.sink.health()
        ready = collector.sink.ready and redis_ok
        body = {
            "ready": ready,
            "kafka": kafka,
            "redis": {"reachable": redis_ok},
            "worker_pid": os.getpid(),  # with collector.workers > 1: which worker answered
        }
        return _json(200 if ready else 503, body)

    admin_errors = responses(
        [401, 403, 413],
        {
            403: {
                "description": "A write key, which is no admin key "
                "(collector.metrics_requires_admin)."
            }
        },
    )

    @app.get("/metrics", summary="Prometheus metrics (admin key)", responses=admin_errors)
    async def metrics(request: Request) -> Response:
        denied = collector.admin_denial(request)
        if denied is not None:
            return denied
        return Response(collector.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi_document(request: Request) -> Response:
        return collector.admin_denial(request) or _json(200, app.openapi())

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> Response:
        return collector.admin_denial(request) or get_swagger_ui_html(
            openapi_url="/openapi.json", title=f"{app.title} - docs"
        )

    return app


WORKER_CONFIG_ENV = "ATTUNE_COLLECTOR_WORKER_CONFIG"


def worker_app() -> FastAPI:
    """App factory for uvicorn worker processes (``collector.workers > 1``).

    uvicorn starts each worker in a fresh interpreter and calls this; the parent wrote its
    configuration to the file named by ``$ATTUNE_COLLECTOR_WORKER_CONFIG`` (environment
    overrides were already applied there, so they are not applied again).
    """
    from attune.config import load_config

    _configure_logging()
    cfg = load_config(os.environ[WORKER_CONFIG_ENV], environ={})
    app = create_app(cfg)
    tune_gc(cfg.collector.gc_young_threshold)
    return app


def tune_gc(young_threshold: int) -> bool:
    """Make the garbage collector cheap for the collector's allocation pattern; True if tuned.

    Every event allocates a few dozen container objects (the parsed JSON, the pydantic
    models, kafka-python's per-record future), and a request's objects live until Kafka
    acknowledges it, milliseconds later. With CPython's default threshold (a young collection
    every 700 net allocations) the collector runs a young collection every few dozen events, each
    scanning the in-flight requests' objects again, and their survivors trigger full
    collections that scan everything the process imported (FastAPI, pydantic, kafka-python).
    ``collector.gc_young_threshold`` = N > 0: freeze what is alive now (start-up state, never
    garbage: :func:`gc.freeze`, left out of every later collection) and collect the young
    generation every N allocations (the older generations keep their thresholds). Cyclic
    garbage is still collected, just in fewer, larger passes; reference counting frees
    everything else at once as before. 0 leaves Python's defaults.
    """
    if young_threshold <= 0:
        return False
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(young_threshold, older, oldest)
    return True


def _configure_logging() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("kafka").setLevel(logging.WARNING)  # connection chatter at INFO


def cmd_serve(cfg: AttuneConfig, args: argparse.Namespace) -> int:
    """``attune serve collector [--host H] [--port P]``.

    One process by default. With ``collector.workers`` = N > 1, uvicorn runs N worker processes
    on the same socket, each with its own Kafka producer and Redis connections (the collector
    is CPU-bound in Python, so this is how it uses more than one core); ``/metrics`` then
    aggregates all workers through prometheus-client's multiprocess mode.
    """
    import uvicorn

    _configure_logging()
    host = getattr(args, "host", None) or cfg.collector.host
    port = getattr(args, "port", None) or cfg.collector.port
    workers = cfg.collector.workers
    common: dict[str, Any] = {
        "host": host,
        "port": port,
        "loop": "uvloop",
        "http": "httptools",
        "access_log": False,
        "log_level": "info",
        "timeout_graceful_shutdown": int(cfg.collector.ack_timeout_s) + 5,
    }
    log.info("collector listening on http://%s:%d (%d process(es))", host, port, workers)
    if workers == 1:
        app = create_app(cfg)
        tune_gc(cfg.collector.gc_young_threshold)
        uvicorn.run(app, **common)
        return 0

    from attune.config import write_config

    run_dir = cfg.run_dir / f"collector-{port}"
    metrics_dir = run_dir / "metrics"
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True)
    os.environ[METRICS_DIR_ENV] = str(metrics_dir)
    os.environ[WORKER_CONFIG_ENV] = str(write_config(cfg, run_dir / "config.yaml"))
    uvicorn.run("attune.collector.app:worker_app", factory=True, workers=workers, **common)
    return 0
