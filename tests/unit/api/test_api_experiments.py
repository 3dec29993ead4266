"""How the API follows the experiments: the running state and the file are re-read by the
refresh (not per request), the impression carries interleaving teams, and every request is
measured per variant (fakes for Redis and Kafka; the real ones: tests/integration/api)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from attune.api.app import Api, RecommendationsIn
from attune.api.recommender import RecItem, Recommender, RecResult
from attune.config import AttuneConfig, ConfigError, PathsConfig
from attune.experiments.spec import parse_experiments
from attune.experiments.state import RunningState, declared_allocations
from tests.unit.api.test_feedback import FakeSink

DECL: dict[str, Any] = {
    "experiments": [
        {
            "id": "e1",
            "hypothesis": "h",
            "layer": "recs",
            "variants": {"on": {"weight": 1}, "off": {"weight": 1, "ranking": False}},
        }
    ]
}


class StateOnly:
    """Stands in for ApiStore's experiment-state read."""

    def __init__(self) -> None:
        self.raw: dict[bytes, bytes] = {}
        self.reads = 0
        self.catalog: Any = None

    async def experiment_states(self) -> dict[bytes, bytes]:
        self.reads += 1
        return dict(self.raw)


def record(store: StateOnly, decl: dict[str, Any], exp: str = "e1") -> RunningState:
    d = parse_experiments(decl)
    st = RunningState(exp, "running", _t("2026-12-01T00:00:00Z"), declared_allocations(d)[exp])
    store.raw[exp.encode()] = json.dumps(st.to_json()).encode()
    return st


def _t(s: str) -> datetime:
    return datetime.fromisoformat(s.replace("Z", "+00:00"))


@pytest.fixture
def env(tmp_path: Path) -> tuple[Api, StateOnly, Path]:
    exp_file = tmp_path / "experiments.yaml"
    exp_file.write_text(yaml.safe_dump(DECL))
    cfg = AttuneConfig(paths=PathsConfig(var_dir=tmp_path / "var"))
    cfg = cfg.model_copy(
        update={"experiments": cfg.experiments.model_copy(update={"file": exp_file})}
    )
    api = Api(cfg, sink=FakeSink())  # type: ignore[arg-type]
    store = StateOnly()
    api.store = store  # type: ignore[assignment]
    api.recommender = Recommender(cfg, store, None, experiments=api.experiments)  # type: ignore[arg-type]
    return api, store, exp_file


def test_a_bad_experiments_file_stops_the_start_up(tmp_path: Path) -> None:
    exp_file = tmp_path / "experiments.yaml"
    exp_file.write_text(yaml.safe_dump({"experiments": [{"id": "e1"}]}))
    cfg = AttuneConfig(paths=PathsConfig(var_dir=tmp_path / "var"))
    cfg = cfg.model_copy(
        update={"experiments": cfg.experiments.model_copy(update={"file": exp_file})}
    )
    with pytest.raises(ConfigError, match=r"experiments\[0\]\.hypothesis"):
        Api(cfg, sink=FakeSink())  # type: ignore[arg-type]


def test_the_refresh_follows_the_running_state(env: Any) -> None:
    api, store, _ = env
    asyncio.run(api.refresh_experiments())
    assert api.recommender.assigner.running == {} and api.running_experiments() == []
    st = record(store, DECL)
    asyncio.run(api.refresh_experiments())
    assert api.recommender.assigner.running == {"e1": st}
    assert api.running_experiments() == ["e1"]
    before = api.recommender.assigner
    asyncio.run(api.refresh_experiments())  # nothing changed: the same assigner
    assert api.recommender.assigner is before and store.reads == 3


def test_a_changed_file_is_re_read_and_an_allocation_change_is_logged(
    env: Any, caplog: pytest.LogCaptureFixture
) -> None:
    api, store, exp_file = env
    record(store, DECL)
    asyncio.run(api.refresh_experiments())
    changed = json.loads(json.dumps(DECL))
    changed["experiments"][0]["variants"]["on"]["weight"] = 3
    exp_file.write_text(yaml.safe_dump(changed))
    os.utime(exp_file, ns=(1, 10**18))  # a new mtime, whatever the file system's resolution
    with caplog.at_level(logging.WARNING, logger="attune.api.app"):
        asyncio.run(api.refresh_experiments())
    assert api.experiments.experiments[0].variants["on"].weight == 3
    # the running experiment keeps the split it started with; the API says so
    assert "e1 keeps the allocation it started with" in caplog.text
    assert "split on 50% -> 75%, off 50% -> 25%" in caplog.text
    assert dict(api.recommender.assigner.running["e1"].allocation.weights) == {
        "on": 1.0,
        "off": 1.0,
    }
    # an invalid edit is logged and the last good declarations stay
    exp_file.write_text("experiments: [{id: e1}]")
    os.utime(exp_file, ns=(1, 2 * 10**18))
    with caplog.at_level(logging.ERROR, logger="attune.api.app"):
        asyncio.run(api.refresh_experiments())
    assert "the file changed but is invalid; kept the last" in caplog.text
    assert api.experiments.experiments[0].variants["on"].weight == 3


def test_the_impression_carries_the_teams_of_an_interleaved_list(env: Any) -> None:
    api, _, _ = env
    result = RecResult(
        "e2:interleaved:0123456789abcdef0123",
        "e2",
        "interleaved",
        "model",
        [
            RecItem("i1", 1.0, "r", "retrieval", team="served"),
            RecItem("i2", 1.0, "r", "retrieval", team="canary"),
        ],
    )
    body = RecommendationsIn.model_validate({"user_id": "u"})
    event = api._impression(body, result)
    assert event["items"] == [
        {"item_id": "i1", "position": 0, "team": "served"},
        {"item_id": "i2", "position": 1, "team": "canary"},
    ]
    assert event["recommendation_id"] == "e2:interleaved:0123456789abcdef0123"
    plain = RecResult("none:default:x", "none", "default", "model", [RecItem("i1", 1.0, "r", "x")])
    assert api._impression(body, plain)["items"] == [{"item_id": "i1", "position": 0}]


def test_requests_are_measured_per_variant(env: Any) -> None:
    api, _, _ = env
    api._observe_variant("e1", "off", "ok", 0.004)
    api._observe_variant("e1", "off", "error", 0.2)
    text = api.metrics.render().decode()
    assert (
        'attune_api_variant_requests_total{experiment="e1",outcome="ok",variant="off"} 1.0' in text
    )
    assert (
        'attune_api_variant_requests_total{experiment="e1",outcome="error",variant="off"} 1.0'
        in text
    )
    # 0.004 s falls in the 0.005 bucket, 0.2 s in the 0.25 one
    assert 'attune_api_variant_seconds_bucket{experiment="e1",le="0.005",variant="off"} 1.0' in text
    assert 'attune_api_variant_seconds_bucket{experiment="e1",le="0.25",variant="off"} 2.0' in text
