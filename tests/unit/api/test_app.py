"""The API's HTTP layer before any service is touched: body limits, strict request bodies and
the OpenAPI document (no Redis, Kafka or model server: the app's lifespan is not entered)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from attune.api.app import create_app
from attune.api.keys import create_read_key
from attune.config import ApiConfig, AttuneConfig, PathsConfig
from attune.secrets import ensure_admin_key
from tests.unit.api.test_feedback import FakeSink

ERRORS = {"400", "401", "403", "413", "422", "429", "503"}


@pytest.fixture
def client(tmp_path: Path) -> Iterator[tuple[TestClient, dict[str, str]]]:
    cfg = AttuneConfig(
        paths=PathsConfig(var_dir=tmp_path / "var"), api=ApiConfig(max_body_bytes=2048)
    )
    key = create_read_key(cfg, "tests")
    app = create_app(cfg, sink=FakeSink())  # type: ignore[arg-type]
    yield TestClient(app), {"X-Read-Key": key}


def test_a_body_over_the_limit_is_413_by_header(client: Any) -> None:
    c, auth = client
    # 60 MB used to be read and parsed, then answered 422; now refused from Content-Length
    r = c.post("/v1/recommendations", content=b" " * 3000, headers=auth)
    assert r.status_code == 413
    assert r.json() == {
        "error": "body of 3000 bytes is over the limit of 2048 bytes (api.max_body_bytes): "
        "send a smaller request, or ask the operator to raise api.max_body_bytes"
    }


def test_a_body_over_the_limit_is_413_while_streaming(client: Any) -> None:
    c, auth = client

    def chunks() -> Iterator[bytes]:  # no Content-Length: chunked transfer
        for _ in range(3):
            yield b" " * 1000

    r = c.post("/v1/feedback", content=chunks(), headers=auth)
    assert r.status_code == 413
    assert r.json()["error"].startswith("body is over the limit of 2048 bytes (api.max_body_bytes)")


@pytest.mark.parametrize(
    "path", ["/v1/trending", "/v1/similar/i1", "/healthz", "/readyz", "/metrics", "/openapi.json"]
)
def test_every_endpoint_has_the_body_limit(client: Any, path: str) -> None:
    c, auth = client
    r = c.request("GET", path, content=b"x" * 2049, headers=auth)
    assert r.status_code == 413 and "2048 bytes" in r.json()["error"]


@pytest.mark.parametrize(
    ("path", "body", "field", "got"),
    [
        ("/v1/recommendations", {"user_id": "u", "k": True}, "k", "a boolean"),
        ("/v1/recommendations", {"user_id": "u", "k": "10"}, "k", "a string"),
        ("/v1/recommendations", {"user_id": "u", "k": 10.0}, "k", "a number"),
        ("/v1/recommendations", {"user_id": 42}, "user_id", "a number"),
        ("/v1/messages", {"user_id": "u", "max": "2"}, "max", "a string"),
        (
            "/v1/feedback",
            {"user_id": "u", "action": "dismiss", "items": ["i1"], "undo": "yes"},
            "undo",
            "a string",
        ),
        (
            "/v1/feedback",
            {"user_id": "u", "action": "dismiss", "items": [1]},
            "items.0",
            "a number",
        ),
    ],
)
def test_loose_types_are_422_naming_the_field(
    client: Any, path: str, body: dict[str, Any], field: str, got: str
) -> None:
    c, auth = client
    r = c.post(path, json=body, headers=auth)
    assert r.status_code == 422
    (error,) = r.json()["errors"]
    assert error["field"] == field and error["message"].endswith(f", got {got}")


def test_feedback_time_outside_the_window_is_refused_before_it_is_applied(client: Any) -> None:
    c, auth = client
    body = {"user_id": "u", "action": "dismiss", "items": ["i1"]}
    for sent in ("0001-01-01T00:00:00Z", "9999-01-01T00:00:00Z", 0):
        r = c.post("/v1/feedback", json={**body, "timestamp": sent}, headers=auth)
        assert r.status_code == 422
        (error,) = r.json()["errors"]
        assert error["field"] == "timestamp"
        assert "is outside the accepted window 2000-01-01T00:00:00.000Z to " in error["message"]
    r = c.post("/v1/feedback", json={**body, "timestamp": "2024-05-01 12:00"}, headers=auth)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "timestamp"


def test_openapi_declares_every_body_and_every_answer(client: Any) -> None:
    c, _ = client
    admin = {"X-Admin-Key": ensure_admin_key(c.app.state.api.cfg, "tests")}
    doc = c.get("/openapi.json", headers=admin).json()
    schemas = doc["components"]["schemas"]
    posts = {path: ops["post"] for path, ops in doc["paths"].items() if "post" in ops}
    assert set(posts) == {
        "/v1/recommendations",
        "/v1/content/{slot}",
        "/v1/messages",
        "/v1/feedback",
    }
    for path, op in posts.items():
        schema = op["requestBody"]["content"]["application/json"]["schema"]
        assert schema["$ref"].removeprefix("#/components/schemas/") in schemas, path
        assert set(op["responses"]) >= ERRORS, f"{path}: {sorted(op['responses'])}"
        for status in ERRORS:
            answer = op["responses"][status]["content"]["application/json"]["schema"]
            assert answer == {"$ref": "#/components/schemas/ErrorBody"}
    assert "404" in posts["/v1/content/{slot}"]["responses"]
    # the request models as declared: strict types, bounds and the required fields
    rec = schemas["RecommendationsIn"]["properties"]
    assert rec["k"]["anyOf"][0] == {"type": "integer", "minimum": 1}
    assert schemas["FeedbackIn"]["required"] == ["action", "items"]
    assert schemas["ErrorBody"]["required"] == ["error"]
    trending = doc["paths"]["/v1/trending"]["get"]
    assert [p["name"] for p in trending["parameters"]] == ["k"]
    assert trending["parameters"][0]["schema"] == {"type": "integer", "minimum": 1, "maximum": 100}
