"""Every answer in the collector's and the API's OpenAPI documents says what it means (issue 14).

FastAPI fills a response declared without a description with the bare HTTP reason phrase
("Forbidden"), which tells a client nothing about this service; :func:`attune.web.responses`
gives every error answer a description of its own and refuses a status that has none. The apps
are built as the admin-endpoint tests build them (fakes for Kafka and Redis, no lifespan).
"""

from __future__ import annotations

import http
from pathlib import Path
from typing import Any

import pytest

from attune.api.app import create_app as create_api
from attune.collector.app import create_app as create_collector
from attune.config import AttuneConfig, PathsConfig
from attune.web import responses
from tests.unit.collector.test_app import NOW, FakeConsent, FakeSink

SCOPE_403 = (
    "The key is valid but its scope does not allow this endpoint (write, read and admin keys "
    "each open their own endpoints)."
)


def _documents(tmp_path: Path) -> dict[str, dict[str, Any]]:
    cfg = AttuneConfig(paths=PathsConfig(var_dir=tmp_path / "var"))
    sink: Any = FakeSink()  # duck-typed stand-ins for the Kafka producer and the Redis store
    consent: Any = FakeConsent()
    collector = create_collector(cfg, clock=lambda: NOW, sink=sink, consent=consent)
    api = create_api(cfg, sink=sink)
    return {"collector": collector.openapi(), "api": api.openapi()}


def _answers(document: dict[str, Any]) -> dict[tuple[str, str, str], str]:
    """``(method, path, status) -> description`` of every declared answer."""
    return {
        (method.upper(), path, status): answer.get("description", "")
        for path, operations in document["paths"].items()
        for method, operation in operations.items()
        for status, answer in operation.get("responses", {}).items()
    }


def test_every_answer_of_both_documents_has_a_description_of_its_own(tmp_path: Path) -> None:
    for service, document in _documents(tmp_path).items():
        answers = _answers(document)
        assert answers, f"{service}: no operations"
        empty = [k for k, d in answers.items() if not d.strip()]
        assert empty == [], f"{service}: answers without a description: {empty}"
        # an error answer whose description is only FastAPI's fallback (the reason phrase)
        generic = [
            k
            for k, d in answers.items()
            if int(k[2]) >= 400 and d == http.HTTPStatus(int(k[2])).phrase
        ]
        assert generic == [], f"{service}: answers described only by the HTTP phrase: {generic}"


def test_every_documented_403_says_which_key_is_refused(tmp_path: Path) -> None:
    docs = _documents(tmp_path)
    api = {k: d for k, d in _answers(docs["api"]).items() if k[2] == "403"}
    collector = {k: d for k, d in _answers(docs["collector"]).items() if k[2] == "403"}
    # the /v1 endpoints refuse an admin key (the generic scope answer); /metrics a read or
    # write key (the description each service passes by hand)
    assert api == {
        ("POST", "/v1/recommendations", "403"): SCOPE_403,
        ("POST", "/v1/content/{slot}", "403"): SCOPE_403,
        ("POST", "/v1/messages", "403"): SCOPE_403,
        ("POST", "/v1/feedback", "403"): SCOPE_403,
        ("GET", "/v1/trending", "403"): SCOPE_403,
        ("GET", "/v1/similar/{item_id}", "403"): SCOPE_403,
        ("GET", "/metrics", "403"): "A read key, which is no admin key "
        "(api.metrics_requires_admin).",
    }
    assert collector == {
        ("GET", "/metrics", "403"): "A write key, which is no admin key "
        "(collector.metrics_requires_admin).",
    }


def test_a_status_without_a_description_is_refused_when_the_app_is_built() -> None:
    with pytest.raises(ValueError, match=r"HTTP 418 has no description: add one to attune\.web"):
        responses([401, 418])
    assert responses([418], {418: {"description": "A teapot."}})[418]["description"] == (
        "A teapot."
    )
