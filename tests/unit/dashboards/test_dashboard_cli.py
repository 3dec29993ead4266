"""``attune dashboard``: its options, the Streamlit command it runs and its refusals.

Starting it for real (URL printed, pages served, SIGTERM stops it with exit 0) is
``tests/integration/dashboards/test_dashboard_screenshots.py``.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

from attune import dashboard
from attune.cli import build_parser, main
from attune.config import load_config


def test_options_and_defaults() -> None:
    args = build_parser().parse_args(["dashboard", "--port", "9000", "--host", "0.0.0.0"])
    assert (args.port, args.host) == (9000, "0.0.0.0")
    args = build_parser().parse_args(["dashboard"])
    assert (args.port, args.host) == (None, None)
    cfg = load_config(None, environ={})
    # 8501 is the model server's REST port: the dashboard takes the next one
    assert (cfg.dashboard.host, cfg.dashboard.port) == ("127.0.0.1", 8502)
    assert cfg.dashboard.port != cfg.serving.rest_port


def test_streamlit_command() -> None:
    cmd = dashboard.streamlit_command(Path("/x/app.py"), "127.0.0.1", 8600)
    assert cmd[:5] == [sys.executable, "-m", "streamlit", "run", "/x/app.py"]
    options = dict(zip(cmd[5::2], cmd[6::2], strict=True))
    assert options["--server.address"] == "127.0.0.1"
    assert options["--server.port"] == "8600"
    assert options["--server.headless"] == "true"
    assert options["--browser.gatherUsageStats"] == "false"
    assert dashboard.APP.exists() and dashboard.APP.name == "app.py"


def test_the_child_gets_this_configuration(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATTUNE__DASHBOARD__CACHE_TTL_S", "7")
    monkeypatch.setenv("ATTUNE_CONFIG", "/somewhere/else.yaml")
    cfg = load_config(None, environ={"ATTUNE__DASHBOARD__CACHE_TTL_S": "7"})
    cfg = cfg.model_copy(
        update={"paths": cfg.paths.model_copy(update={"var_dir": tmp_path / "var"})}
    )
    env = dashboard.child_environment(cfg, "dashboard-1")
    assert not any(k.startswith("ATTUNE__") for k in env)
    assert env["ATTUNE_CONFIG"] == str(tmp_path / "var" / "run" / "dashboard-1.yaml")
    child = load_config(env["ATTUNE_CONFIG"], environ={})
    assert child.dashboard.cache_ttl_s == 7  # the override reached the child through the file
    assert child.paths.var_dir == tmp_path / "var"
    assert env["PYTHONPATH"].split(":")[0] == str(dashboard.ROOT)


def test_a_taken_port_is_refused_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "cfg.yaml"
    config.write_text(f"paths:\n  var_dir: {tmp_path / 'var'}\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        code = main(["--config", str(config), "dashboard", "--port", str(port)])
    assert code == 2
    err = capsys.readouterr().err
    assert f"port {port} is taken" in err and "attune dashboard --port N" in err
