"""``attune dashboard`` for real: started as the CLI starts it, each page photographed.

The dashboard runs on a free port over a var/ written by hand (:mod:`tests.unit.dashboards.
world`: the fixture report plus an experiment that breaks its split and a guardrail, a model
repository, the data-quality tables, two bandit slots) and the real Redis (its own db and key
prefix, with today's live counts of ``ranking_v1`` and the state and 48 hours of history of the
``slot:home_banner`` bandit); the collector, the API and the model server are not running, so
the live page shows those states. A second dashboard runs over an empty var/. Headless Chromium
(Debian's, driven by playwright) loads each page, waits until Streamlit has finished running the
script, checks that no exception is shown, and saves a full-page screenshot to
``var/test-artefacts/dashboard/<page>.png`` for a person to look at.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from attune.config import free_port
from tests.unit.dashboards import world

pytestmark = pytest.mark.integration

ROOT = world.ROOT
ARTEFACTS = ROOT / "var" / "test-artefacts" / "dashboard"
REDIS_DB = 14
PREFIX = "attdash"


class Dashboard:
    def __init__(self, proc: subprocess.Popen[str], url: str, output: list[str]) -> None:
        self.proc, self.url, self.output = proc, url, output


def _start(config: Path) -> Iterator[Dashboard]:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "attune.cli",
            "--config",
            str(config),
            "dashboard",
            "--port",
            str(port),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("ATTUNE")},
    )
    assert proc.stdout is not None
    lines: list[str] = []
    first: list[str] = []
    got = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if not first and line.startswith("http://"):
                first.append(line.strip())
                got.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        assert got.wait(90), f"attune dashboard printed no URL: {''.join(lines)}"
        assert first[0] == f"http://127.0.0.1:{port}"
        yield Dashboard(proc, first[0], lines)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert code == 0, "".join(lines)  # SIGTERM stops the dashboard and its child cleanly


@pytest.fixture(scope="module")
def live_counts(cfg: Any) -> Iterator[None]:
    """Today's live counts of ranking_v1 in Redis, in the speed layer's layout."""
    import redis

    from attune.keys import Keys

    client = redis.Redis(host=cfg.redis.host, port=cfg.redis.port, db=REDIS_DB)
    keys = Keys(PREFIX)
    day = datetime.now(UTC).date().isoformat()
    client.hset(
        keys.experiment_live(day),
        mapping={
            "ranking_v1|control|impressions": 420,
            "ranking_v1|control|clicks": 35,
            "ranking_v1|treatment|impressions": 410,
            "ranking_v1|treatment|clicks": 38,
        },
    )
    for variant, users in (("control", 150), ("treatment", 148)):
        client.pfadd(
            keys.experiment_live_users(day, "ranking_v1", variant),
            *[f"u-{variant}-{i}" for i in range(users)],
        )
    try:
        yield
    finally:
        for k in client.scan_iter(match=f"{PREFIX}:*"):
            client.delete(k)
        client.close()


@pytest.fixture(scope="module")
def bandit_counts(cfg: Any) -> Iterator[None]:
    """``slot:home_banner``'s state and hourly history up to the current hour, written with
    HSET in the speed layer's layout (world.bandit_hashes); ``slot:search_tip`` has none."""
    import redis

    from attune.keys import Keys

    client = redis.Redis(host=cfg.redis.host, port=cfg.redis.port, db=REDIS_DB)
    keys = Keys(PREFIX)
    last_hour = int(time.time() * 1000) // world.HOUR_MS * world.HOUR_MS
    state, history = world.bandit_hashes(last_hour)
    written = [keys.bandit("slot:home_banner"), keys.bandit_history("slot:home_banner")]
    client.delete(*written)
    client.hset(written[0], mapping=state)
    client.hset(written[1], mapping=history)
    try:
        yield
    finally:
        client.delete(*written)
        client.close()


@pytest.fixture(scope="module")
def dashboard(
    tmp_path_factory: pytest.TempPathFactory, cfg: Any, live_counts: None, bandit_counts: None
) -> Iterator[Dashboard]:
    base = tmp_path_factory.mktemp("dashboard")
    var = base / "var"
    world.build(var, with_stopped=True)
    config = world.write_config(
        var,
        base / "cfg.yaml",
        redis_port=cfg.redis.port,
        redis_db=REDIS_DB,
        prefix=PREFIX,
        bandits=True,
    )
    yield from _start(config)


@pytest.fixture(scope="module")
def empty_dashboard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dashboard]:
    base = tmp_path_factory.mktemp("dashboard-empty")
    (base / "var").mkdir()
    yield from _start(world.write_config(base / "var", base / "cfg.yaml"))


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    assert chromium, "Chromium is needed for the UI screenshots (make browser installs it)"
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        b = pw.chromium.launch(
            executable_path=chromium,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        yield b
        b.close()


def photograph(browser: Any, url: str, name: str, heading: str) -> str:
    """Load ``url``, wait for Streamlit to finish, screenshot the whole page; its text."""
    page = browser.new_page(viewport={"width": 1440, "height": 900})
    try:
        page.goto(url, wait_until="networkidle")
        page.get_by_role("heading", name=heading).first.wait_for(timeout=60_000)
        # the script has finished when the status widget ("Running...") is gone
        deadline = time.monotonic() + 60
        while (
            page.locator('[data-testid="stStatusWidget"]').count() and time.monotonic() < deadline
        ):
            page.wait_for_timeout(200)
        page.wait_for_timeout(1500)  # charts and tables draw after the script ends
        # Streamlit scrolls inside its main block: make the window as tall as the content
        height = page.evaluate(
            '() => Math.max(...[...document.querySelectorAll(\'[data-testid="stMain"], '
            '[data-testid="stAppViewContainer"], section\')].map(e => e.scrollHeight))'
        )
        page.set_viewport_size({"width": 1440, "height": max(900, int(height) + 40)})
        page.wait_for_timeout(1000)
        page.screenshot(path=str(ARTEFACTS / f"{name}.png"), full_page=True)
        assert page.locator('[data-testid="stException"]').count() == 0, name
        text: str = page.inner_text("body")
    finally:
        page.close()
    assert "Traceback" not in text, text
    return text


PAGES = [
    ("experiments", "", "Experiments"),
    ("experiment", "experiment?experiment=ranking_v1", "Experiment ranking_v1"),
    ("experiment-interleaving", "experiment?experiment=rankers_il", "Experiment rankers_il"),
    ("experiment-stop", "experiment?experiment=banner_v2", "Experiment banner_v2"),
    ("models", "models", "Models"),
    ("live", "live", "Live"),
    ("bandits", "bandits", "Bandits"),
    ("quality", "quality", "Data quality"),
]


@pytest.mark.parametrize(("name", "path", "heading"), PAGES, ids=[p[0] for p in PAGES])
def test_each_page_renders_without_exception(
    dashboard: Dashboard, browser: Any, name: str, path: str, heading: str
) -> None:
    text = photograph(browser, f"{dashboard.url}/{path}", name, heading)
    expected = {
        "experiments": ["ranking_v1", "rankers_il", "banner_v2", "+6.2% [+2.0%, +10.4%]"],
        "experiment": ["Verdict: ship", "Relative lift over time", "Guardrails", "Segments"],
        "experiment-interleaving": ["Interleaving", "53.5%"],
        "experiment-stop": ["Sample ratio mismatch", "Guardrail breached"],
        # (table cells are drawn on a canvas: not in the page's text)
        "models": ["Served now", "v2", "Versions", "Promotions", "attune serve models"],
        "live": ["Not running:", "attune serve collector", "Experiments today", "8.8%"],
        # world.bandit_hashes: 48 h x 240 impressions, 600 clicks; search_tip counted nothing
        "bandits": [
            "slot:home_banner",
            "Allocation over time",
            "11,520",
            "drama_picks",
            "slot:search_tip",
            "No impressions counted yet",
        ],
        "quality": ["1 check(s) failed on 2026-12-05", "Stream vs batch drift"],
    }[name]
    for value in expected:
        assert value in text, (name, value)
    assert (ARTEFACTS / f"{name}.png").stat().st_size > 20_000


EMPTY_PAGES = [
    ("empty-experiments", "", "Experiments", "no data yet"),
    ("empty-models", "models", "Models", "no model yet"),
    ("empty-live", "live", "Live", "not running"),
    ("empty-bandits", "bandits", "Bandits", "no bandit configured"),
    ("empty-quality", "quality", "Data quality", "no data yet"),
]


@pytest.mark.parametrize(
    ("name", "path", "heading", "state"), EMPTY_PAGES, ids=[p[0] for p in EMPTY_PAGES]
)
def test_each_page_on_an_empty_var_says_no_data_yet(
    empty_dashboard: Dashboard, browser: Any, name: str, path: str, heading: str, state: str
) -> None:
    text = photograph(browser, f"{empty_dashboard.url}/{path}", name, heading)
    assert state in text
