"""Scoped keys at the API's door: read keys for /v1, the admin key for /metrics, /docs and
/openapi.json (no Redis, Kafka or model server: the app's lifespan is not entered)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from attune.api.app import create_app
from attune.api.keys import create_read_key
from attune.config import ApiConfig, AttuneConfig, PathsConfig
from attune.secrets import create_admin_key
from tests.unit.api.test_feedback import FakeSink

ADMIN_PATHS = ["/metrics", "/openapi.json", "/docs"]


def _client(tmp_path: Path, **api: bool) -> tuple[TestClient, str, str]:
    cfg = AttuneConfig(paths=PathsConfig(var_dir=tmp_path / "var"), api=ApiConfig(**api))
    read, admin = create_read_key(cfg, "web"), create_admin_key(cfg, "prometheus")
    return TestClient(create_app(cfg, sink=FakeSink())), read, admin  # type: ignore[arg-type]


# {"user_id": 42} passes the key check and fails the body check (422): the key was accepted
BAD_BODY = {"user_id": 42}


def test_a_read_key_reads_v1_and_a_wrong_one_is_401(tmp_path: Path) -> None:
    c, read, _ = _client(tmp_path)
    r = c.post("/v1/recommendations", json=BAD_BODY, headers={"Authorization": f"Bearer {read}"})
    assert r.status_code == 422
    r = c.post("/v1/recommendations", json=BAD_BODY, headers={"X-Read-Key": read + "x"})
    assert r.status_code == 401 and r.json()["error"].startswith("unknown read key")


def test_an_admin_key_is_no_read_key(tmp_path: Path) -> None:
    c, _, admin = _client(tmp_path)
    r = c.post("/v1/recommendations", json=BAD_BODY, headers={"X-Read-Key": admin})
    assert r.status_code == 403
    assert "admin key cannot call /v1" in r.json()["error"]


@pytest.mark.parametrize("path", ADMIN_PATHS)
def test_admin_endpoints_need_the_admin_key(tmp_path: Path, path: str) -> None:
    c, read, admin = _client(tmp_path)
    r = c.get(path)
    assert r.status_code == 401 and "missing admin key" in r.json()["error"]
    assert r.headers["www-authenticate"] == "Bearer"
    r = c.get(path, headers={"X-Admin-Key": "ak_wrong"})
    assert r.status_code == 401 and "unknown admin key" in r.json()["error"]
    for headers in ({"X-Read-Key": read}, {"Authorization": f"Bearer {read}"}):
        r = c.get(path, headers=headers)
        assert r.status_code == 403 and "a read key cannot read admin" in r.json()["error"]
    for headers in ({"X-Admin-Key": admin}, {"Authorization": f"Bearer {admin}"}):
        assert c.get(path, headers=headers).status_code == 200


def test_the_admin_key_reads_metrics_and_the_document(tmp_path: Path) -> None:
    c, _, admin = _client(tmp_path)
    auth = {"X-Admin-Key": admin}
    assert "attune_api_" in c.get("/metrics", headers=auth).text
    doc = c.get("/openapi.json", headers=auth).json()
    assert set(doc["paths"]["/metrics"]["get"]["responses"]) >= {"200", "401", "403"}
    assert "/openapi.json" not in doc["paths"] and "/docs" not in doc["paths"]
    assert "swagger-ui" in c.get("/docs", headers=auth).text


def test_health_and_readiness_stay_open(tmp_path: Path) -> None:
    c, _, _ = _client(tmp_path)
    assert c.get("/healthz").status_code == 200


@pytest.mark.parametrize("path", ADMIN_PATHS)
def test_metrics_requires_admin_false_opens_them(tmp_path: Path, path: str) -> None:
    c, _, _ = _client(tmp_path, metrics_requires_admin=False)
    assert c.get(path).status_code == 200
