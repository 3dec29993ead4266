"""Shared fixtures.

* ``cfg``: the configuration, loaded exactly as the CLI loads it (``$ATTUNE_CONFIG`` if set,
  then ``ATTUNE__*`` environment overrides), so tests talk to the same stack as ``attune``.
* ``stack_required``: integration tests need the local stack (``attune stack up``). Every test
  marked ``integration`` gets this check automatically; when the stack is not up the test is
  skipped with the reason, or, when ``CI`` is set, fails with it (CI must never pass by
  skipping everything).
* ``spark``: one Spark session for the whole run (local[2], few shuffle partitions), built by
  :func:`attune.spark_session.build_spark_session` like every job's session.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from attune.config import AttuneConfig, load_config

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

ROOT = Path(__file__).resolve().parents[1]


def pytest_configure(config: pytest.Config) -> None:
    # Relative config paths (var/...) are taken from the working directory, as for the CLI,
    # which is run from the repository root; make `pytest` from any folder see the same var/.
    os.chdir(ROOT)


@pytest.fixture(scope="session")
def cfg() -> AttuneConfig:
    """The configuration, loaded the way ``attune`` loads it."""
    return load_config(None)


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


_stack_problem: list[str | None] = []  # cached result of the full check: [None] = healthy


def stack_problem(cfg: AttuneConfig) -> str | None:
    """Why the local stack cannot serve integration tests, or None when it can.

    The full check (``component_status``: Kafka metadata, Redis PING, every declared topic) runs
    once per session; afterwards only the ports are probed, which catches a broker a previous
    test stopped without restarting.
    """
    from attune.stack import bootstrap_addresses, component_status
    from attune.supervisor import port_open

    if not _stack_problem:
        try:
            statuses = component_status(cfg)
        except Exception as exc:
            _stack_problem.append(f"checking the stack failed: {type(exc).__name__}: {exc}")
        else:
            bad = [s for s in statuses if not s.healthy]
            if any(s.component == "kafka" for s in bad):  # then every topic is down too
                bad = [s for s in bad if not s.component.startswith("topic:")]
            _stack_problem.append(
                "; ".join(f"{s.component} at {s.address}: {s.detail}" for s in bad) or None
            )
    if _stack_problem[0] is not None:
        return _stack_problem[0]
    if not any(port_open(h, p) for h, p in bootstrap_addresses(cfg)):
        return f"Kafka at {cfg.kafka.bootstrap_servers} stopped answering"
    if not port_open(cfg.redis.host, cfg.redis.port):
        return f"Redis at {cfg.redis.host}:{cfg.redis.port} stopped answering"
    return None


def require_stack(cfg: AttuneConfig) -> None:
    """Skip (locally) or fail (with ``CI`` set) when the local stack is not up."""
    problem = stack_problem(cfg)
    if problem is None:
        return
    message = f"the local stack is not up: {problem}"
    if in_ci():
        pytest.fail(f"CI: {message}", pytrace=False)
    pytest.skip(message)


@pytest.fixture
def stack_required(cfg: AttuneConfig) -> AttuneConfig:
    """Use in a test that needs Kafka + Redis + the topics; returns the config."""
    require_stack(cfg)
    return cfg


@pytest.fixture(autouse=True)
def _integration_needs_stack(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("integration") is not None:
        require_stack(request.getfixturevalue("cfg"))


@pytest.fixture(scope="session")
def spark(cfg: AttuneConfig) -> Iterator[SparkSession]:
    """One Spark session (Delta + Kafka connector, local jars) shared by all tests."""
    from attune.spark_session import build_spark_session

    test_cfg = cfg.model_copy(
        update={
            "spark": cfg.spark.model_copy(update={"master": "local[2]", "shuffle_partitions": 2})
        }
    )
    session = build_spark_session(test_cfg, app_name="attune-tests")
    # getOrCreate may hand back a session an earlier test module built with other settings
    session.conf.set("spark.sql.shuffle.partitions", "2")
    yield session
    session.stop()
