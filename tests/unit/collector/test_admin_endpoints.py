"""The collector's admin endpoints (/metrics, /docs, /openapi.json) behind the admin key that
the API shares (api.admin_keys_file); write keys get 403 there."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from attune.collector.app import create_app
from attune.config import AttuneConfig, CollectorConfig, PathsConfig
from attune.secrets import create_admin_key, create_write_key
from tests.unit.collector.test_app import NOW, FakeConsent, FakeSink

ADMIN_PATHS = ["/metrics", "/openapi.json", "/docs"]


def _client(tmp_path: Path, **collector: bool) -> tuple[TestClient, str, str]:
    cfg = AttuneConfig(
        paths=PathsConfig(var_dir=tmp_path / "var"), collector=CollectorConfig(**collector)
    )
    write, admin = create_write_key(cfg, "web"), create_admin_key(cfg, "prometheus")
    app = create_app(cfg, clock=lambda: NOW, sink=FakeSink(), consent=FakeConsent())  # type: ignore[arg-type]
    return TestClient(app), write, admin


@pytest.mark.parametrize("path", ADMIN_PATHS)
def test_admin_endpoints_need_the_admin_key(tmp_path: Path, path: str) -> None:
    c, write, admin = _client(tmp_path)
    r = c.get(path)
    assert r.status_code == 401 and "missing admin key" in r.json()["error"]
    r = c.get(path, headers={"Authorization": "Bearer ak_wrong"})
    assert r.status_code == 401 and "unknown admin key" in r.json()["error"]
    for headers in ({"X-Write-Key": write}, {"Authorization": f"Bearer {write}"}):
        r = c.get(path, headers=headers)
        assert r.status_code == 403 and "a write key cannot read admin" in r.json()["error"]
    for headers in ({"X-Admin-Key": admin}, {"Authorization": f"Bearer {admin}"}):
        assert c.get(path, headers=headers).status_code == 200


def test_the_admin_key_reads_metrics(tmp_path: Path) -> None:
    c, _, admin = _client(tmp_path)
    assert "attune_collector_" in c.get("/metrics", headers={"X-Admin-Key": admin}).text


def test_an_admin_key_created_after_start_works(tmp_path: Path) -> None:
    c, _, _ = _client(tmp_path)
    late = create_admin_key(c.app.state.collector.cfg, "late")  # type: ignore[attr-defined]
    # the index is re-read when the file changed; the first lookup after start may re-read it
    assert c.get("/metrics", headers={"X-Admin-Key": late}).status_code == 200


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/v1/schema"])
def test_the_other_gets_stay_open(tmp_path: Path, path: str) -> None:
    c, _, _ = _client(tmp_path)
    assert c.get(path).status_code == 200


@pytest.mark.parametrize("path", ADMIN_PATHS)
def test_metrics_requires_admin_false_opens_them(tmp_path: Path, path: str) -> None:
    c, _, _ = _client(tmp_path, metrics_requires_admin=False)
    assert c.get(path).status_code == 200
