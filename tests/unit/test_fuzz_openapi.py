"""Schema-driven fuzzing of the collector's and the API's requests (issue 14).

Both services publish complete OpenAPI documents (request bodies and error answers, see
:mod:`attune.web`). Schemathesis reads each document from the app itself and generates requests
for every operation that takes input (bodies, query and path parameters): **valid** ones
(positive mode: a request the document allows must be answered, not crash), **invalid** ones
(negative mode: a wrong type, a missing or unknown field, a value out of bounds) and, for the
collector, valid events at a plausible time (the way to its 200 path). A second test sends
bodies the document does not describe at all: any bytes, any JSON. The requests go in-process
to the ASGI app (its lifespan runs), whose Kafka producer, Redis stores and model server are
in-memory fakes, so no stack is needed. For every answer:

* never a 5xx;
* every 4xx names the problem: an ``error`` sentence (:class:`attune.web.ErrorBody`) or the
  collector's ``rejected`` events, and every entry of ``errors`` names a field (one that was
  sent, one the document declares, or ``(body)`` / ``(event)``) with a message;
* the status is one the document declares for the operation, with the declared content type,
  and the answer matches its schema (schemathesis' conformance checks).

Bounded and deterministic in CI: ``ATTUNE_FUZZ_EXAMPLES`` examples per operation and strategy
(default 40; the file takes about 25 s on a quiet machine), generated with
``derandomize=True`` (the same examples on every run) and no example database. A longer fuzz by
hand (``ATTUNE_FUZZ_RANDOM=1``: random, so each run explores new inputs; ``-s`` prints the
answers per operation; ``--timeout 0`` lifts the per-test limit)::

    ATTUNE_FUZZ_EXAMPLES=2000 ATTUNE_FUZZ_RANDOM=1 \\
        .venv/bin/pytest tests/unit/test_fuzz_openapi.py -s --timeout 0

What the document cannot say, and the fuzzer therefore meets as 4xx in positive mode: the
plausible window of event times (it moves with the clock), each event type's required fields
(``GET /v1/schema``), and strict integers: JSON Schema counts ``5.0`` as an integer, the
services' strict types refuse it (422/400 naming the field), as they refuse integers beyond
64 bits (parsed as floats).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from attune.api.app import create_app as create_api
from attune.api.keys import create_read_key
from attune.api.new_items import NewItems
from attune.api.store import CatalogCache, ItemInfo, RequestData
from attune.collector.app import create_app as create_collector
from attune.config import AttuneConfig, PathsConfig, RateLimitConfig
from attune.online_store import RecentItem, UserFeatures
from attune.secrets import create_write_key
from tests.unit.collector.test_app import FakeConsent, FakeSink

# the field of an error about the whole body (the API) or a whole event (the collector)
WHOLE = ("(body)", "(event)")
FUZZ_EXAMPLES = int(os.environ.get("ATTUNE_FUZZ_EXAMPLES", "40"))
RANDOM = os.environ.get("ATTUNE_FUZZ_RANDOM", "") not in ("", "0")
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]

# The collector's clock: event times are accepted from 2000-01-01 to a day after this.
NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
PLAUSIBLE = "2024-05-01T11:00:00Z"

CATALOG = CatalogCache({"i1": ItemInfo("One", ("Drama",)), "i2": ItemInfo("Two", ("Comedy",))})


class FakeStore:
    """Stands in for ApiStore: a user with a little history, a catalog of two items."""

    def __init__(self) -> None:
        self.catalog = CATALOG
        self.new_items = NewItems()

    def _features(self, subject: str) -> UserFeatures:
        return UserFeatures(user=subject, recent=[RecentItem("i1", "item_view", 1)])

    async def read_request(self, subject: str, now_ms: int) -> RequestData:
        return RequestData(
            features=self._features(subject),
            segment="active",
            batch_recs=[("i2", 1.0)],
            suppressed={},
            consent={},
            trending=["i2"],
            popular=["i1", "i2"],
        )

    async def neighbours(self, seeds: Any, per_seed: int, kind: str = "session") -> Any:
        return {s: [("i2", 0.5)][:per_seed] for s in seeds}

    async def similar(self, item_id: str, k: int) -> tuple[list[tuple[str, float]], str]:
        return [("i2", 0.5)][:k], "session_cooccurrence"

    async def trending(self, k: int) -> list[tuple[str, float]]:
        return [("i2", 3.0)][:k]

    async def popular(self, k: int) -> list[tuple[str, float]]:
        return [("i1", 9.0)][:k]

    async def experiment_states(self) -> dict[Any, Any]:
        return {}

    async def read_features(self, subject: str) -> tuple[UserFeatures, str | None]:
        return self._features(subject), "active"

    async def write_feedback(self, *args: Any) -> None:
        pass

    async def take_message_slot(self, *args: Any) -> bool:
        return True

    def refresh_catalog_sync(self) -> int:
        return len(self.catalog.items)

    def refresh_new_items_sync(self) -> int:
        return 0

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        pass


class FakeModels:
    """Stands in for the model server: retrieval returns both items, ranking scores them."""

    protocol = "fake"

    async def predict(self, model: str, inputs: Any, **kw: Any) -> dict[str, np.ndarray]:
        if "candidate_ids" in inputs:
            n = len(inputs["candidate_ids"][0])
            return {"scores": np.array([[float(n - i) for i in range(n)]], dtype=np.float32)}
        return {
            "item_ids": np.array([["i1", "i2"]], dtype=object),
            "scores": np.array([[0.9, 0.8]], dtype=np.float32),
        }

    async def close(self) -> None:
        pass


# ----------------------------------------------------------------------------------------
# The apps


def _collector(tmp_path: Path) -> tuple[FastAPI, dict[str, str]]:
    cfg = AttuneConfig(paths=PathsConfig(var_dir=tmp_path / "var"))
    key = create_write_key(cfg, "web")
    app = create_collector(
        cfg,
        clock=lambda: NOW,
        sink=FakeSink(),  # type: ignore[arg-type]
        consent=FakeConsent(),  # type: ignore[arg-type]
    )
    return app, {"X-Write-Key": key}


def _api(tmp_path: Path) -> tuple[FastAPI, dict[str, str]]:
    cfg = AttuneConfig(paths=PathsConfig(var_dir=tmp_path / "var"))
    # the fuzzer is one very fast client: no 429 from the rate limit
    api_cfg = cfg.api.model_copy(
        update={"rate_limit": RateLimitConfig(rate_per_s=1e6, burst=10**6)}
    )
    cfg = cfg.model_copy(update={"api": api_cfg})
    key = create_read_key(cfg, "fuzz")
    app = create_api(cfg, client=FakeModels(), sink=FakeSink())  # type: ignore[arg-type]
    api = app.state.api
    api.store = FakeStore()
    api.consent = api.sender.consent = FakeConsent()
    return app, {"X-Read-Key": key}


APPS: dict[str, Callable[[Path], tuple[FastAPI, dict[str, str]]]] = {
    "collector": _collector,
    "api": _api,
}
# The operations that take input (a body or parameters); the others (/healthz, /metrics, ...)
# have nothing to fuzz. Listed, so that a new endpoint is added here on purpose.
OPERATIONS = [
    ("collector", "POST", "/v1/events"),
    ("api", "POST", "/v1/recommendations"),
    ("api", "POST", "/v1/content/{slot}"),
    ("api", "POST", "/v1/messages"),
    ("api", "POST", "/v1/feedback"),
    ("api", "GET", "/v1/trending"),
    ("api", "GET", "/v1/similar/{item_id}"),
]


# ----------------------------------------------------------------------------------------
# What an answer must be


def _names_the_problem(sent: Any, declared: set[str], status: int, body: Any) -> None:
    """A 4xx answer says what is wrong: an error sentence and, per invalid field, its path
    (a field of ``sent``, one of the ``declared`` properties, or the whole body or event)."""
    assert isinstance(body, dict), f"{status} without a JSON object: {body!r}"
    if "error" not in body and "rejected" in body:  # the collector's 400: all events rejected
        rejected = body["rejected"]
        assert rejected and all(r.get("errors") for r in rejected), f"{status}: {body!r}"
    else:
        error = body.get("error")
        assert isinstance(error, str) and len(error) >= 10, f"{status} without an error: {body!r}"
    sent = _keys(sent)
    for field_error in _field_errors(body):
        field, message = field_error.get("field"), field_error.get("message")
        assert isinstance(field, str) and field, f"{status}: an error without a field: {body!r}"
        assert isinstance(message, str) and message, f"{status}: {field} without a message"
        # "items.0.item_id" names items; "user_id or anonymous_id" names either
        for name in field.split(" or "):
            top = name.split(".")[0]  # (an unknown key with a dot in it: the name is the key)
            known = name in sent or top in sent or top in declared or top in WHOLE or top.isdigit()
            assert known, f"{status}: field {field!r} is neither sent nor declared: {body!r}"


def _field_errors(body: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    yield from body.get("errors") or ()
    for rejected in body.get("rejected") or ():
        yield from rejected.get("errors") or ()


def _keys(value: Any) -> set[str]:
    """Every key of every object in a JSON value (an event's field names, in a batch too)."""
    if isinstance(value, dict):
        return set(value).union(*(_keys(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(_keys(v) for v in value))
    return set()


def _declared_fields(document: Mapping[str, Any]) -> set[str]:
    """Every property name of the document's schemas (any depth)."""
    names: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            names.update(node.get("properties", {}))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(document.get("components", {}))
    return names


def _plausible(case: Any) -> Any:
    """A positive case as a careful client sends it: every event at a time within the window
    (the document states the window in words only: it moves with the server's clock), with a
    subject, and integers written as integers (JSON Schema counts ``5.0`` as an integer, the
    services' strict types do not: see the module)."""
    body = case.body
    events = body if isinstance(body, list) else body.get("batch", [body])
    for event in events:
        if isinstance(event, dict):
            event["timestamp"] = PLAUSIBLE
            if event.get("user_id") is None and event.get("anonymous_id") is None:
                event["user_id"] = "fuzz-user"
            _integral_floats_to_ints(event)
    return case


def _integral_floats_to_ints(node: Any) -> None:
    items = node.items() if isinstance(node, dict) else enumerate(node)
    for key, value in list(items):
        if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
            node[key] = int(value)
        elif isinstance(value, dict | list):
            _integral_floats_to_ints(value)


def _fuzz(app_name: str, method: str, path: str, tmp_path: Path) -> dict[int, int]:
    app, auth = APPS[app_name](tmp_path)
    # the document as the app builds it (GET /openapi.json may need an admin key), as JSON
    document = json.loads(json.dumps(app.openapi()))
    declared = _declared_fields(document)
    schema = schemathesis.openapi.from_dict(document)
    schema.app = app  # requests go in-process to the ASGI app (what from_asgi does)
    operation = schema[path][method]
    positive = operation.as_strategy(generation_mode=GenerationMode.POSITIVE)
    negative = operation.as_strategy(generation_mode=GenerationMode.NEGATIVE)
    strategies = [positive, negative]
    if path == "/v1/content/{slot}":
        # a configured slot: the way past 404 to the body
        strategies.append(operation.as_strategy(path_parameters={"slot": "home_banner"}))
    if path == "/v1/events":
        # events a careful client sends: the way to the 200 path
        strategies.append(positive.map(_plausible))
    strategy = st.one_of(*strategies)
    statuses: dict[int, int] = {}

    @settings(
        max_examples=FUZZ_EXAMPLES * len(strategies),
        derandomize=not RANDOM,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )
    @given(case=strategy)
    def run(case: Any) -> None:
        response = case.call(headers=auth)
        status = response.status_code
        statuses[status] = statuses.get(status, 0) + 1
        assert status < 500, f"{status} for {case.body!r}: {response.text}"
        if 400 <= status < 500:
            _names_the_problem(case.body, declared, status, response.json())
        case.validate_response(response, checks=CHECKS, headers=auth)

    run()
    return statuses


@pytest.mark.parametrize(("app_name", "method", "path"), OPERATIONS)
def test_fuzz_request(app_name: str, method: str, path: str, tmp_path: Path) -> None:
    start = time.perf_counter()
    statuses = _fuzz(app_name, method, path, tmp_path)
    took = time.perf_counter() - start
    print(
        f"{app_name} {method} {path}: {sum(statuses.values())} requests in {took:.1f} s, {statuses}"
    )
    assert sum(statuses.values()) > 0


# ----------------------------------------------------------------------------------------
# Bodies the document does not describe: any bytes, any JSON


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=20,
)
RAW_BODIES = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=200).map(str.encode),
    JSON_VALUES.map(lambda value: json.dumps(value).encode()),
    # a JSON object with the fields the endpoints know, holding anything
    st.dictionaries(
        st.sampled_from(["user_id", "anonymous_id", "k", "max", "items", "action", "type"]),
        JSON_VALUES,
    ).map(lambda value: json.dumps(value).encode()),
)
POSTS = [
    ("collector", "/v1/events"),
    ("api", "/v1/recommendations"),
    ("api", "/v1/content/home_banner"),
    ("api", "/v1/messages"),
    ("api", "/v1/feedback"),
]


@pytest.mark.parametrize(("app_name", "path"), POSTS)
def test_fuzz_raw_body(app_name: str, path: str, tmp_path: Path) -> None:
    """Not JSON, invalid UTF-8, JSON of any shape: a 4xx naming the problem, never a 5xx."""
    app, auth = APPS[app_name](tmp_path)
    declared = _declared_fields(app.openapi())
    statuses: dict[int, int] = {}
    start = time.perf_counter()
    with TestClient(app) as client:

        @settings(
            max_examples=FUZZ_EXAMPLES * 2,
            derandomize=not RANDOM,
            database=None,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            print_blob=True,
        )
        @given(body=RAW_BODIES)
        def run(body: bytes) -> None:
            response = client.post(path, content=body, headers=auth)
            status = response.status_code
            statuses[status] = statuses.get(status, 0) + 1
            assert status < 500, f"{status} for {body!r}: {response.text}"
            if 400 <= status < 500:
                try:
                    sent = json.loads(body)
                except ValueError:
                    sent = None
                _names_the_problem(sent, declared, status, response.json())

        run()
    took = time.perf_counter() - start
    print(
        f"{app_name} POST {path} (raw): {sum(statuses.values())} requests in {took:.1f} s, "
        f"{statuses}"
    )


# ----------------------------------------------------------------------------------------
# What the fuzzer found


def test_an_integral_decimal_time_is_not_called_a_fraction(tmp_path: Path) -> None:
    # Schemathesis sends 5.0 for an integer (JSON Schema counts it as one); the strict event
    # time refuses it, and used to say "got a number with a fraction", which 5.0 has not.
    app, auth = _collector(tmp_path)
    event = {
        "event_id": "e1",
        "type": "page_view",
        "user_id": "u1",
        "timestamp": 5.0,
        "context": {"page": "/"},
    }
    with TestClient(app) as client:
        r = client.post("/v1/events", json=event, headers=auth)
    assert r.status_code == 400
    (rejected,) = r.json()["rejected"]
    (error,) = rejected["errors"]
    assert error["field"] == "timestamp"
    assert error["message"].startswith(
        "expected a time, got 5.0, a number written with a decimal point or an exponent: send "
    )
