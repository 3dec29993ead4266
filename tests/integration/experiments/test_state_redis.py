"""The experiments' running state on the real Redis: ``attune experiments start/stop`` through
the CLI, what the API's reader sees, and WATCH against a concurrent writer.

The keys live under this module's own key prefix (``P:{exp}:state``, ``P:{exp}:history``) in Redis
db 8, and are deleted afterwards."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis
import yaml

from attune.cli import main
from attune.config import AttuneConfig, write_config
from attune.experiments.spec import load_experiments
from attune.experiments.state import (
    RunningState,
    StateStore,
    Transition,
    parse_states,
    plan_start,
)
from attune.keys import Keys

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

RUN = uuid.uuid4().hex[:8]
REDIS_DB = 8  # 9-15 belong to other modules; the key prefix is this run's own anyway


@pytest.fixture
def env(cfg: AttuneConfig, tmp_path: Path) -> Iterator[tuple[Path, AttuneConfig, Path]]:
    exp_file = tmp_path / "experiments.yaml"
    exp_file.write_text(
        yaml.safe_dump(
            {
                "experiments": [
                    {
                        "id": "exp_it",
                        "hypothesis": "h",
                        "layer": "recs",
                        "variants": {"control": {}, "treatment": {"ranking": False}},
                    }
                ]
            }
        )
    )
    test_cfg = cfg.model_copy(
        update={
            "redis": cfg.redis.model_copy(update={"db": REDIS_DB}),
            "speed": cfg.speed.model_copy(
                update={
                    "online_store": cfg.speed.online_store.model_copy(
                        update={"key_prefix": f"texp{RUN}"}
                    )
                }
            ),
            "experiments": cfg.experiments.model_copy(update={"file": exp_file}),
        }
    )
    cfg_file = write_config(test_cfg, tmp_path / "attune.yaml")
    yield cfg_file, test_cfg, exp_file
    keys = Keys.from_config(test_cfg)
    r = redis.Redis(host=cfg.redis.host, port=cfg.redis.port, db=REDIS_DB)
    r.delete(keys.experiments_state, keys.experiments_history)
    r.close()


def test_start_and_stop_through_the_cli_are_what_the_api_reads(
    env: tuple[Path, AttuneConfig, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    cfg_file, test_cfg, exp_file = env
    keys = Keys.from_config(test_cfg)
    assert keys.experiments_state == f"texp{RUN}:{{exp}}:state"
    attune = ["--config", str(cfg_file), "experiments"]
    assert main([*attune, "start", "exp_it"]) == 0
    assert "exp_it started at" in capsys.readouterr().out

    async def api_read() -> dict[str, object]:
        client = aioredis.Redis(host=test_cfg.redis.host, port=test_cfg.redis.port, db=REDIS_DB)
        try:
            states, problems = parse_states(await client.hgetall(keys.experiments_state))
        finally:
            await client.aclose()  # type: ignore[attr-defined]
        assert problems == []
        return dict(states)

    states = asyncio.run(api_read())
    assert list(states) == ["exp_it"]
    st = StateStore.from_config(test_cfg).read()["exp_it"]
    assert st == states["exp_it"] and st.status == "running"
    assert dict(st.allocation.weights) == {"control": 1.0, "treatment": 1.0}

    changed = yaml.safe_load(exp_file.read_text())
    changed["experiments"][0]["traffic"] = 0.5
    exp_file.write_text(yaml.safe_dump(changed))
    assert main([*attune, "start", "exp_it"]) == 3
    assert "traffic 1 -> 0.5" in capsys.readouterr().err
    assert main([*attune, "start", "exp_it", "--force"]) == 0
    assert main([*attune, "stop", "exp_it"]) == 0
    capsys.readouterr()
    assert main([*attune, "show", "exp_it", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["status"] == "stopped"
    assert [h["action"] for h in shown["history"]] == ["start", "force", "stop"]
    assert shown["recorded_allocation"]["traffic"] == 0.5


def test_watch_replans_after_a_concurrent_start(env: tuple[Path, AttuneConfig, Path]) -> None:
    _, test_cfg, exp_file = env
    decls = load_experiments(exp_file)
    store = StateStore.from_config(test_cfg)
    other = StateStore.from_config(test_cfg)
    now = datetime(2026, 12, 5, tzinfo=UTC)
    calls: list[dict[str, RunningState]] = []

    def plan(states: Mapping[str, RunningState]) -> Transition | None:
        calls.append(dict(states))
        if len(calls) == 1:  # another process starts it between our WATCH and EXEC
            other.apply(lambda s: plan_start(decls, s, "exp_it", now), now)
        return plan_start(decls, states, "exp_it", now)

    assert store.apply(plan, now) is None  # the second plan sees it running: nothing to do
    assert len(calls) == 2 and calls[0] == {} and list(calls[1]) == ["exp_it"]
    assert [h["action"] for h in store.history("exp_it")] == ["start"]  # recorded once
