"""The dependency groups: a process role installs (and imports) only what it needs.

``pyproject.toml`` splits the dependencies into a small base and one extra per role, so that
``pip install attune[collector]`` pulls no TensorFlow, Spark, Airflow or Streamlit. These tests
check the declaration (the extras, the lock) and prove the promise where it matters: in a fresh
interpreter in which importing those libraries fails, the collector and the API still import,
build their apps from the default configuration and answer, and the CLI still parses.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
EXTRAS: dict[str, list[str]] = PROJECT["optional-dependencies"]

# Distribution names (as pip installs them) of the heavy stacks a light role must not pull.
HEAVY_DISTRIBUTIONS = {
    "tensorflow",
    "tensorflow-recommenders",
    "tensorflow-serving-api",
    "tf-keras",
    "pyspark",
    "delta-spark",
    "apache-airflow",
    "streamlit",
}

# Runs first in the child interpreter: importing any of these top-level modules fails there, as
# it would where the role's extra is installed without them.
BLOCKER = """
import importlib.abc
import sys

BLOCKED = {blocked!r}


class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{{name}} is blocked: this role must not need it")
        return None


sys.meta_path.insert(0, Blocker())
for name in BLOCKED:  # the blocker itself works (else these tests would prove nothing)
    try:
        __import__(name)
    except ImportError:
        pass
    else:
        raise SystemExit(f"{{name}} was imported despite the blocker")
"""


def _name(requirement: str) -> str:
    """``"uvicorn[standard]>=0.30"`` -> ``"uvicorn"`` (PEP 503 normalized)."""
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement)
    assert match, requirement
    return re.sub(r"[-_.]+", "-", match.group(0)).lower()


def _role(extra: str) -> set[str]:
    """The distributions ``pip install attune[extra]`` asks for directly (base included)."""
    names: set[str] = {_name(r) for r in PROJECT["dependencies"]}
    for requirement in EXTRAS[extra]:
        name = _name(requirement)
        if name == "attune":  # attune[a,b]: the extras it names
            inner = re.search(r"\[(.*)\]", requirement)
            assert inner, requirement
            for other in inner.group(1).split(","):
                names |= _role(other.strip())
        else:
            names.add(name)
    return names


def _run_without(blocked: set[str], body: str, tmp_path: Path) -> str:
    code = BLOCKER.format(blocked=sorted(blocked)) + textwrap.dedent(body)
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        # Default configuration, but runtime state (secrets the apps create) in a temporary folder.
        env={"PATH": "/usr/bin:/bin", "ATTUNE__PATHS__VAR_DIR": str(tmp_path / "var")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    return done.stdout


@pytest.mark.parametrize("extra", ["collector", "api"])
def test_light_roles_declare_no_heavy_dependency(extra: str) -> None:
    assert _role(extra) & HEAVY_DISTRIBUTIONS == set()


def test_all_is_every_role_and_the_lock_pins_it() -> None:
    roles = set(EXTRAS) - {"all", "dev"}
    assert _role("all") == set().union(*(_role(r) for r in roles))
    # requirements.lock (what `make setup` installs) holds every role and the dev tools.
    pinned = {
        _name(line.split("==")[0])
        for line in (ROOT / "requirements.lock").read_text().splitlines()
        if "==" in line and not line.startswith((" ", "#"))
    }
    assert (_role("all") | _role("dev")) - pinned == set()


def test_collector_runs_without_tensorflow_spark_airflow_streamlit(tmp_path: Path) -> None:
    out = _run_without(
        {"tensorflow", "tensorflow_recommenders", "tf_keras", "pyspark", "delta", "airflow"}
        | {"streamlit"},
        """
        from fastapi.testclient import TestClient

        from attune.cli import build_parser
        from attune.collector.app import create_app
        from attune.config import load_config

        app = create_app(load_config())
        client = TestClient(app)  # no lifespan: no Kafka or Redis connection is opened
        assert client.get("/healthz").json() == {"status": "ok"}
        assert client.get("/v1/schema").status_code == 200

        args = build_parser().parse_args(["serve", "collector", "--port", "9000"])
        assert args.port == 9000 and callable(args.handler)
        try:
            build_parser().parse_args(["serve", "collector", "--help"])
        except SystemExit as exit:
            assert exit.code == 0
        blocked = [m for m in sys.modules if m.split(".")[0] in BLOCKED]
        print("loaded:", blocked)
        """,
        tmp_path,
    )
    assert "loaded: []" in out


def test_api_runs_without_tensorflow_spark_airflow_streamlit(tmp_path: Path) -> None:
    out = _run_without(
        {"tensorflow", "tensorflow_serving", "pyspark", "delta", "airflow", "streamlit"},
        """
        from fastapi.testclient import TestClient

        from attune.api.app import create_app
        from attune.cli import build_parser
        from attune.config import load_config

        app = create_app(load_config())
        client = TestClient(app)  # no lifespan: no Redis, Kafka or model server connection
        assert client.get("/healthz").json() == {"status": "ok"}

        # The model client: REST needs no TensorFlow; gRPC (the default) says how to do without.
        import asyncio

        from attune.api.model_client import RestModelClient, open_model_client

        rest = load_config(environ={"ATTUNE__API__MODEL_SERVER__PROTOCOL": "rest"})
        assert isinstance(asyncio.run(open_model_client(rest)), RestModelClient)
        try:
            asyncio.run(open_model_client(load_config()))
        except ImportError as exc:
            assert "protocol: rest" in str(exc), exc
        else:
            raise AssertionError("the gRPC client loaded without tensorflow-serving-api")

        args = build_parser().parse_args(["serve", "api", "--port", "9001"])
        assert args.port == 9001 and callable(args.handler)
        blocked = [m for m in sys.modules if m.split(".")[0] in BLOCKED]
        print("loaded:", blocked)
        """,
        tmp_path,
    )
    assert "loaded: []" in out
