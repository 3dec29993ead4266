"""``attune dashboard``: the Streamlit results dashboard as a child process.

The dashboard itself is ``dashboards/app.py`` in the repository (an entry point like the
notebooks: it may import every layer). This command runs ``streamlit run`` on it as an attached
child (:mod:`attune.supervisor`): the child gets exactly this command's configuration (written
to ``var/run/dashboard-<port>.yaml`` and named by ``$ATTUNE_CONFIG``), its output goes to
``var/log/dashboard-<port>.log``, and the command waits until Streamlit's health endpoint
answers, prints the URL and stays in the foreground until Ctrl-C or SIGTERM, which stop the
child too.

Exit codes: 0 stopped by Ctrl-C or SIGTERM; 1 Streamlit exited by itself (its log says why);
2 it could not start (the port is taken, the app is missing, it did not become ready).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from attune import supervisor
from attune.config import CONFIG_ENV, ENV_PREFIX, write_config

if TYPE_CHECKING:
    from attune.config import AttuneConfig

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "dashboards" / "app.py"


class _Stop(Exception):
    """SIGTERM arrived: stop the dashboard and exit 0."""


def streamlit_command(app: Path, host: str, port: int) -> list[str]:
    """``streamlit run`` on ``app``, headless, on ``host:port``, without telemetry and without
    the file watcher (a served dashboard does not reload on edits)."""
    return [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(app),
        "--server.address",
        host,
        "--server.port",
        str(port),
        "--server.headless",
        "true",
        "--server.fileWatcherType",
        "none",
        "--browser.gatherUsageStats",
        "false",
        "--global.developmentMode",
        "false",
        "--client.toolbarMode",
        "viewer",
    ]


def child_environment(cfg: AttuneConfig, config_name: str) -> dict[str, str]:
    """The child's environment: ``$ATTUNE_CONFIG`` names ``cfg`` written to a file (so overrides
    made in code reach it, and ``ATTUNE__*`` variables do not apply twice), and the repository
    root is importable (``dashboards``, ``models``, ``spark``)."""
    config_file = write_config(cfg, cfg.run_dir / f"{config_name}.yaml")
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX) and k != CONFIG_ENV}
    env[CONFIG_ENV] = str(config_file)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


def cmd_dashboard(cfg: AttuneConfig, args: argparse.Namespace) -> int:
    """``attune dashboard [--host H] [--port P]``: run the dashboard until Ctrl-C or SIGTERM."""
    host = args.host or cfg.dashboard.host
    port = args.port or cfg.dashboard.port
    if not APP.exists():
        raise supervisor.ProcessError(
            f"{APP} does not exist: the dashboard runs from a checkout of the repository "
            "(pip install -e .), not from an installed wheel"
        )
    url = supervisor.local_url(host, port)
    probe_host = url.removeprefix("http://").rsplit(":", 1)[0]
    if supervisor.port_open(probe_host, port):
        raise supervisor.ProcessError(
            f"port {port} is taken on {host} (a dashboard already running?): open {url}, stop "
            "what listens there, or pick another port with `attune dashboard --port N`"
        )
    name = f"dashboard-{port}"
    log = cfg.log_dir / f"{name}.log"
    child = supervisor.spawn(
        streamlit_command(APP, host, port),
        name=f"the dashboard at {url}",
        log=log,
        env=child_environment(cfg, name),
        cwd=Path.cwd(),
        url=url,
    )

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise _Stop

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        child.wait_ready(
            supervisor.http_probe(f"{url}/_stcore/health"), cfg.dashboard.start_timeout_s
        )
        print(url, flush=True)
        print(f"dashboard: serving at {url} (log {log}); Ctrl-C stops it", file=sys.stderr)
        code = child.proc.wait()
        print(
            f"dashboard: streamlit exited with code {code}; see {log}\n{supervisor.tail(log)}",
            file=sys.stderr,
        )
        return 1
    except (_Stop, KeyboardInterrupt):
        child.stop()
        print("dashboard: stopped", file=sys.stderr)
        return 0
    finally:
        if child.alive():
            child.stop()
        signal.signal(signal.SIGTERM, previous)
