"""Run ``attune serve api`` or ``attune serve models`` as a child process (demo, tests,
benchmark), the way :func:`attune.collector.process.collector_process` runs the collector.

The child gets the parent's configuration exactly (written to a YAML file with absolute paths,
``ATTUNE__*`` overrides removed from its environment), its output goes to a log file, and the
context manager waits until the child is ready and stops it (SIGTERM, then SIGKILL) on exit.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx

from attune.collector.process import write_config
from attune.config import CONFIG_ENV, ENV_PREFIX, AttuneConfig, ConfigError


def _host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


def api_url(cfg: AttuneConfig) -> str:
    return f"http://{_host(cfg.api.host)}:{cfg.api.port}"


def model_server_rest_url(cfg: AttuneConfig) -> str:
    return f"http://{_host(cfg.serving.host)}:{cfg.serving.rest_port}"


class ChildProcess:
    """A started child: its ``Popen``, URL and log; :meth:`stop` and :meth:`kill` end it."""

    def __init__(self, proc: subprocess.Popen[bytes], url: str, log_path: Path) -> None:
        self.proc = proc
        self.url = url
        self.log_path = log_path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: the way a crash looks to its clients."""
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout_s: float = 20.0) -> None:
        if not self.alive():
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def _wait(
    check: Callable[[], str | None], child: ChildProcess, what: str, timeout_s: float
) -> None:
    """Poll ``check`` (None = ready, else why not) until ready; raise with the log tail."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        if not child.alive():
            raise ConfigError(
                f"{what} exited with code {child.proc.returncode} while starting; "
                f"last log lines ({child.log_path}):\n{child.tail()}"
            )
        problem = check()
        if problem is None:
            return
        last = problem
        time.sleep(0.25)
    raise ConfigError(
        f"{what} was not ready after {timeout_s:.0f} s ({last}); see {child.log_path}:\n"
        + child.tail()
    )


def start_child(
    cfg: AttuneConfig, args: Sequence[str], url: str, log_path: Path, name: str
) -> ChildProcess:
    """Start ``attune --config <cfg as a file> ARGS...``."""
    config_file = write_config(cfg, cfg.run_dir / f"{name}.yaml")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX) and k != CONFIG_ENV}
    env.setdefault("TF_USE_LEGACY_KERAS", "1")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    cmd = [sys.executable, "-m", "attune.cli", "--config", str(config_file), *args]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )
    return ChildProcess(proc, url, log_path)


def _refuse_if_taken(url: str, what: str) -> None:
    try:
        httpx.get(f"{url}/healthz", timeout=1.0)
    except httpx.HTTPError:
        return
    raise ConfigError(f"something already answers at {url}; stop it or give {what} a free port")


def start_api(
    cfg: AttuneConfig, log_path: Path | None = None, ready_timeout_s: float = 120.0
) -> ChildProcess:
    url = api_url(cfg)
    _refuse_if_taken(url, "api.port")
    log_path = log_path or cfg.log_dir / f"api-{cfg.api.port}.log"
    child = start_child(cfg, ["serve", "api"], url, log_path, f"api-{cfg.api.port}")

    def ready() -> str | None:
        try:
            r = httpx.get(f"{url}/readyz", timeout=2.0)
        except httpx.HTTPError as exc:
            return type(exc).__name__
        return None if r.status_code == 200 else f"{r.status_code} {r.text[:200]}"

    try:
        _wait(ready, child, "the personalization API", ready_timeout_s)
    except BaseException:
        child.stop()
        raise
    return child


def start_model_server(
    cfg: AttuneConfig,
    models: Sequence[str] = ("retrieval", "ranking"),
    log_path: Path | None = None,
    ready_timeout_s: float = 180.0,
) -> ChildProcess:
    """Start ``attune serve models`` and wait until every model in ``models`` is AVAILABLE."""
    url = model_server_rest_url(cfg)
    try:
        httpx.get(f"{url}/v1/models/{models[0]}", timeout=1.0)
    except httpx.HTTPError:
        pass
    else:
        raise ConfigError(f"a model server already answers at {url}; stop it first")
    log_path = log_path or cfg.log_dir / f"models-{cfg.serving.rest_port}.log"
    child = start_child(cfg, ["serve", "models"], url, log_path, f"models-{cfg.serving.rest_port}")

    def ready() -> str | None:
        for name in models:
            try:
                r = httpx.get(f"{url}/v1/models/{name}", timeout=2.0)
            except httpx.HTTPError as exc:
                return type(exc).__name__
            states = (
                [s.get("state") for s in r.json().get("model_version_status", [])]
                if (r.status_code == 200)
                else []
            )
            if "AVAILABLE" not in states:
                return f"{name}: {r.status_code} {r.text[:200]}"
        return None

    try:
        _wait(ready, child, "the model server", ready_timeout_s)
    except BaseException:
        child.stop()
        raise
    return child


@contextmanager
def api_process(cfg: AttuneConfig, log_path: Path | None = None) -> Iterator[ChildProcess]:
    child = start_api(cfg, log_path)
    try:
        yield child
    finally:
        child.stop()


@contextmanager
def model_server_process(
    cfg: AttuneConfig,
    models: Sequence[str] = ("retrieval", "ranking"),
    log_path: Path | None = None,
) -> Iterator[ChildProcess]:
    child = start_model_server(cfg, models, log_path)
    try:
        yield child
    finally:
        child.stop()
