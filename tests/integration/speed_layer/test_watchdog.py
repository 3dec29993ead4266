"""``attune speed watchdog`` as Airflow runs it (a separate process each time): dead, restarted,
then healthy; with restarts off, dead is a failure that says what to do."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from attune.config import AttuneConfig, write_config
from attune.stack import create_topics
from speed_layer.job import speed_paths
from tests.integration.speed_layer.helpers import attune, delete_topics, speed_config, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]

RUN = uuid.uuid4().hex[:8]


@pytest.fixture
def setup(
    cfg: AttuneConfig, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[AttuneConfig, Path]]:
    c = speed_config(
        cfg, suffix=f"test-watchdog-{RUN}", var_dir=tmp_path_factory.mktemp("wd"), redis_db=11
    )
    create_topics(c)
    config = write_config(c, c.var_dir / "attune.yaml")
    try:
        yield c, config
    finally:
        attune(config, "speed", "stop", "--timeout", "30")
        delete_topics(c)


def test_watchdog_restarts_a_dead_speed_layer(setup: tuple[AttuneConfig, Path]) -> None:
    c, config = setup
    # restarts off: not running is a failure whose last line says how to fix it
    off = c.model_copy(
        update={
            "speed": c.speed.model_copy(
                update={"watchdog": c.speed.watchdog.model_copy(update={"restart": False})}
            )
        }
    )
    no_restart = attune(write_config(off, c.var_dir / "no-restart.yaml"), "speed", "watchdog")
    assert no_restart.returncode == 1, no_restart.stdout + no_restart.stderr
    assert no_restart.stderr.strip().splitlines()[-1] == (
        "attune speed watchdog: UNHEALTHY: the speed layer is not running. Fix: start it: "
        f"`attune speed start` (log {speed_paths(c).log_file}); speed.watchdog.restart is off"
    )
    assert not speed_paths(c).pid_file.exists()

    restarted = attune(config, "speed", "watchdog")
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    assert "speed watchdog: was not running; restarted (pid " in restarted.stdout
    assert "bronze,online) and running after" in restarted.stdout

    # the next run finds it healthy: both queries active, nothing to read (lag 0)
    def healthy() -> str | None:
        run = attune(config, "speed", "watchdog", timeout=60)
        return run.stdout if run.returncode == 0 else None

    out = wait_until(healthy, 120, "the watchdog to find the speed layer healthy", poll_s=2)
    assert out.startswith("speed watchdog: OK (pid ")
    assert "bronze: lag 0 events" in out and "online: lag 0 events" in out
