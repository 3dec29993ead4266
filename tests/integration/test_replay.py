"""Replay real datasets through a running collector into this module's own topics."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from attune.collector.process import collector_process
from attune.config import AttuneConfig, isolated_config, write_config
from attune.events_cli import read_topic
from attune.replay import replay
from attune.secrets import create_write_key
from tests.integration.redaction import file_leaks, run_secrets, text_leaks
from tests.integration.speed_layer.helpers import delete_topics

pytestmark = pytest.mark.integration

REDIS_DB = 14
RUN = uuid.uuid4().hex[:8]
ROOT = Path(__file__).resolve().parents[2]


class Env:
    def __init__(self, cfg: AttuneConfig, url: str, key: str) -> None:
        self.cfg, self.url, self.key = cfg, url, key

    def events(self) -> list[dict[str, Any]]:
        topic = self.cfg.kafka.topic("events").name
        return [orjson.loads(r.value) for r in read_topic(self.cfg, topic, timeout_s=60)]


@pytest.fixture(scope="module")
def env(cfg: AttuneConfig, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    from attune.stack import create_topics

    test_cfg = isolated_config(
        cfg,
        suffix=f"test-replay-{RUN}",
        var_dir=tmp_path_factory.mktemp("replay-var"),
        redis_db=REDIS_DB,
    )
    key = create_write_key(test_cfg, "it-replay")
    create_topics(test_cfg)
    try:
        with collector_process(test_cfg) as url:
            yield Env(test_cfg, url, key)
    finally:
        delete_topics(test_cfg)


def test_mini_replay_lands_exact_counts_and_is_idempotent(env: Env) -> None:
    summary = replay(env.cfg, "movietweetings-mini", url=env.url, write_key=env.key, progress=False)
    # movietweetings-mini has 5,191 ratings (README) -> 5,191 item_view + 5,191 rating events.
    assert (summary.rows, summary.events, summary.accepted) == (5191, 10382, 10382)
    assert (summary.rejected, summary.failed, summary.dropped) == (0, 0, 0)
    assert summary.catalog_items == 99
    events = env.events()
    assert Counter(e["type"] for e in events) == {"item_view": 5191, "rating": 5191}
    ids = {e["event_id"] for e in events}
    assert len(ids) == 10382
    assert {e["source"] for e in events} == {"it-replay"}

    # The first row of ratings.csv is "7809,1853728,9,1362067909" (2013-02-28T16:11:49Z).
    first = [e for e in events if e["items"] == [{"item_id": "1853728"}] and e.get("rating")]
    assert any(e["rating"] == 9.0 and e["timestamp"] == "2013-02-28T16:11:49.000Z" for e in first)

    catalog = {
        r.key: orjson.loads(r.value)
        for r in read_topic(env.cfg, env.cfg.kafka.topic("catalog").name)
    }
    assert len(catalog) == 99
    # movies.csv: 0443272,Lincoln (2012),Biography|Drama|History|War
    assert catalog[b"0443272"] == {
        "item_id": "0443272",
        "title": "Lincoln",
        "year": 2012,
        "genres": ["Biography", "Drama", "History", "War"],
    }

    again = replay(
        env.cfg, "movietweetings-mini", url=env.url, write_key=env.key, limit=100, progress=False
    )
    assert again.accepted == 200
    events = env.events()
    assert len(events) == 10382 + 200
    assert {e["event_id"] for e in events} == ids  # the same 200 ids again, nothing new


def test_replay_cli_with_limit_prints_a_summary(env: Env, tmp_path: Path) -> None:
    config = write_config(env.cfg, tmp_path / "cfg.yaml")
    args = ["--config", str(config), "replay", "--dataset", "otto", "--limit", "40"]
    args += ["--collector-url", env.url, "--write-key", env.key, "--batch-size", "25"]
    result = subprocess.run(
        [sys.executable, "-m", "attune.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "dataset otto-sample: 40 rows, 40 events, 40 sent, 40 accepted" in result.stdout
    assert "events/s" in result.stdout
    assert "replay:" in result.stderr  # the progress bar


def test_otto_replay_maps_session_events(env: Env) -> None:
    summary = replay(env.cfg, "otto", url=env.url, write_key=env.key, progress=False)
    assert (summary.rows, summary.accepted) == (862, 862)
    otto = [e for e in env.events() if e.get("session_id") is not None]
    # 862 events: 800 clicks, 52 carts, 10 orders (grep -o '"type":"clicks"' etc.); the CLI
    # test above may have sent the first 40 again, with the same ids.
    assert len({e["event_id"] for e in otto}) == 862
    kinds = Counter(e["type"] for e in {e["event_id"]: e for e in otto}.values())
    assert kinds == {"item_view": 800, "add_to_cart": 52, "purchase": 10}
    assert all(e["anonymous_id"] and "user_id" not in e for e in otto)
    assert all(e["order_id"].startswith("otto-") for e in otto if e["type"] == "purchase")


def test_events_summary_cli_counts_this_topic(env: Env, tmp_path: Path) -> None:
    config = write_config(env.cfg, tmp_path / "cfg.yaml")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "attune.cli",
            "--config",
            str(config),
            "events",
            "summary",
            "--json",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    summary = orjson.loads(result.stdout)
    events = env.events()
    assert summary["events"]["records"] == len(events)
    assert summary["events"]["distinct_event_ids"] == len({e["event_id"] for e in events})
    # Counted independently from the records this test read itself.
    assert summary["events"]["by_type"] == dict(Counter(e["type"] for e in events))
    assert summary["events"]["by_type"]["rating"] >= 5191
    assert summary["catalog"]["distinct_keys"] == 99
    assert sum(summary["events"]["by_partition"].values()) == len(events)


# The whole demo twice (replay, speed layer, serving, the nightly batch and the retraining, on
# free ports): several minutes on a loaded 2-core machine, so the suite's default 300 s limit is
# too tight for this one test. The first run does the batch and the retraining in this process
# (`attune demo --direct`); the second goes through its own Airflow, which finds both done and
# triggers nothing. The nightly and retraining DAGs themselves run in
# tests/integration/airflow/ (running them here as well doubled the suite's longest test). The
# demo leaves Airflow running for its user; the test stops it. Last, no secret the run made
# (keys, pseudonym and profile keys, Airflow's password) is in any file it wrote.
@pytest.mark.timeout(900)
def test_demo_replays_once_then_skips(
    cfg: AttuneConfig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from attune.config import free_port
    from attune.demo import cmd_demo
    from attune.stack import create_topics
    from attune.stack.airflow import airflow_down

    base = isolated_config(
        cfg, suffix=f"test-demo-{RUN}", var_dir=tmp_path / "var", redis_db=REDIS_DB
    )
    demo_cfg = base.model_copy(
        update={
            "airflow": base.airflow.model_copy(
                update={"port": free_port(), "log_server_port": free_port()}
            )
        }
    )
    create_topics(demo_cfg)
    # The experiment's running state is this test's own: a state left in Redis by an earlier run
    # would put the recommendations stage's requests into the experiment as well.
    from attune.experiments.state import StateStore
    from attune.keys import Keys

    keys = Keys.from_config(demo_cfg)
    StateStore.from_config(demo_cfg).r.delete(keys.experiments_state, keys.experiments_history)
    try:
        # The first 150 rows of the 100K ratings.dat (users 1..): 300 events, 27 users, all of
        # whom then take part in the closing experiment (2 requests each).
        first_run = argparse.Namespace(limit=150, experiment_users=27, direct=True)
        assert cmd_demo(demo_cfg, first_run) == 0
        printed = capsys.readouterr().out
        # the three users' top-10 overlap, as personalization (1 - mean |A ∩ B| / 10)
        overlap = re.search(r"overlap of their top 10: .*personalization (\d\.\d\d)", printed)
        assert overlap, printed[-3000:]
        assert 0.0 <= float(overlap.group(1)) <= 1.0
        _check_demo_experiment(demo_cfg, users=27, lists=54)
        topic = demo_cfg.kafka.topic("events").name

        def landed() -> tuple[list[str], list[str]]:
            """(ids of the replayed ratings' events, ids of the demo's scripted clicks)."""
            events = [orjson.loads(r.value) for r in read_topic(demo_cfg, topic)]
            replayed = [e["event_id"] for e in events if e["type"] in ("item_view", "rating")]
            clicks = [e["event_id"] for e in events if e["type"] == "click"]
            return replayed, clicks

        first, clicks = landed()
        assert len(first) == 300 and len(set(first)) == 300
        assert len(clicks) == 1  # the scripted click (impressions come from the API too)
        assert cmd_demo(demo_cfg, argparse.Namespace(limit=150, experiment_users=0)) == 0
        again = capsys.readouterr().out
        printed += again
        # Through Airflow this time, which finds the first run's batch done: the nightly DAG is
        # not triggered. Retraining is, unless the first run published models (150 ratings are
        # too few for the gate to pass, so it normally is).
        assert "triggered attune_nightly" not in again, again[-3000:]
        skipped = (
            r"batch for \S+ done and latest models .* nothing triggered"
            r"|triggered attune_retrain \S+: the batch is done, the models are not"
        )
        assert re.search(skipped, again), again[-3000:]
        second, clicks = landed()
        assert second == first  # nothing of the dataset was sent again
        assert len(clicks) == 2  # the click is new behaviour: posted again
    finally:
        airflow_down(demo_cfg)
        delete_topics(demo_cfg)
    var = demo_cfg.paths.var_dir
    secrets = run_secrets(var)
    # the plain keys of the demo's own clients, Airflow's, the pseudonym and profile keys
    assert any(name.startswith("clients/") for name in secrets), sorted(secrets)
    assert {"pseudonym.key", "profile.key", "airflow-admin.json:admin"} <= set(secrets)
    assert file_leaks(var, secrets) == []
    # The demo prints Airflow's password for its user on purpose; no other secret is shown.
    shown = {k: v for k, v in secrets.items() if k != "airflow-admin.json:admin"}
    assert text_leaks("console", printed, shown) == []


def _check_demo_experiment(cfg: AttuneConfig, *, users: int, lists: int) -> None:
    """The demo's experiment report counts every simulated user and shown list, has a verdict,
    and the dashboard shows it (screenshot kept in var/test-artefacts/dashboard/)."""
    import contextlib
    import shutil

    from playwright.sync_api import sync_playwright

    from tests.integration.dashboards.test_dashboard_screenshots import (
        ARTEFACTS,
        _start,
        photograph,
    )

    doc = orjson.loads((cfg.var_dir / "reports" / "experiments" / "latest.json").read_bytes())
    entry = next(e for e in doc["experiments"] if e["id"] == "demo_ranking")
    assert entry["verdict"] in {"running", "ship", "no_difference", "stop"}
    assert sorted(v["name"] for v in entry["variants"]) == ["ranking_off", "ranking_on"]
    # every user asked twice and every answer was logged as one exposure (hash assignment:
    # each user in exactly one arm)
    assert sum(v["users"] for v in entry["variants"]) == users
    assert sum(v["exposures"] for v in entry["variants"]) == lists

    config = write_config(cfg, cfg.var_dir / "dashboard-demo.yaml")
    chromium = shutil.which("chromium")
    assert chromium, "Chromium is needed for the UI screenshots (make browser installs it)"
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    with contextlib.contextmanager(_start)(config) as dash, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            text = photograph(
                browser,
                f"{dash.url}/experiment?experiment=demo_ranking",
                "demo-experiment",
                "Experiment demo_ranking",
            )
        finally:
            browser.close()
    assert "Verdict" in text and "ranking_off" in text
