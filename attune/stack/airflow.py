"""A local Airflow 3 on the project's DAGs: ``attune airflow up | down | status``.

Three detached processes, each recorded in a pid file like the stack's Kafka and Redis: the API
server (REST API, the UI, and the execution API that task processes report to), the scheduler
(with Airflow's LocalExecutor, which runs each task in a child process) and the DAG processor
(parses ``dags/``). No triggerer: no DAG of attune defers a task. The metadata database is
SQLite in ``AIRFLOW_HOME`` unless ``airflow.sql_alchemy_conn`` names another (Airflow 3.3 runs
its LocalExecutor on SQLite; ``airflow standalone`` does the same).

Everything Airflow needs is passed as ``AIRFLOW__*`` environment variables built from the
config (:func:`airflow_env`), so no ``airflow.cfg`` has to be edited. The admin password and the
signing keys are generated once into ``var/secrets/`` (:func:`attune.secrets.airflow_secrets`).
Tasks run ``attune`` commands with exactly the configuration ``up`` was given: it is written to
``var/run/airflow-tasks.yaml`` and named by ``ATTUNE_CONFIG`` in Airflow's environment.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from attune import supervisor
from attune.config import CONFIG_ENV, ENV_PREFIX, AttuneConfig, write_config
from attune.stack.common import ComponentStatus, StackError, owned_pid, say

COMPONENTS = ("api-server", "scheduler", "dag-processor")
MIGRATE_TIMEOUT_S = 600.0
SIMPLE_AUTH_MANAGER = (
    "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
)


@dataclass(frozen=True)
class AirflowPaths:
    home: Path
    dags_folder: Path
    task_config: Path
    migrate_log: Path

    def log(self, component: str) -> Path:
        return self.home.parent / "log" / f"airflow-{component}.log"

    def pid(self, component: str) -> Path:
        return self.home.parent / "run" / f"airflow-{component}.pid"


def airflow_paths(cfg: AttuneConfig) -> AirflowPaths:
    return AirflowPaths(
        home=cfg.paths.resolve(cfg.airflow.home),
        dags_folder=cfg.airflow.dags_folder.absolute(),
        task_config=cfg.run_dir / "airflow-tasks.yaml",
        migrate_log=cfg.log_dir / "airflow-migrate.log",
    )


def ui_url(cfg: AttuneConfig) -> str:
    return supervisor.local_url(cfg.airflow.host, cfg.airflow.port)


def _address(cfg: AttuneConfig) -> str:
    return f"{cfg.airflow.host}:{cfg.airflow.port}"


def airflow_env(
    cfg: AttuneConfig,
    paths: AirflowPaths,
    credentials_file: Path,
    keys: dict[str, str],
    base: dict[str, str],
) -> dict[str, str]:
    """The environment of every Airflow process: ``base`` without attune's own overrides (the
    task config carries them), plus Airflow's settings as ``AIRFLOW__SECTION__KEY``."""
    url = ui_url(cfg)
    conn = cfg.airflow.sql_alchemy_conn or f"sqlite:///{paths.home / 'airflow.db'}"
    env = {k: v for k, v in base.items() if not k.startswith(ENV_PREFIX) and k != CONFIG_ENV}
    env.update(
        {
            "AIRFLOW_HOME": str(paths.home),
            CONFIG_ENV: str(paths.task_config),
            "TF_USE_LEGACY_KERAS": "1",
            "AIRFLOW__CORE__DAGS_FOLDER": str(paths.dags_folder),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": str(cfg.airflow.parallelism),
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            "AIRFLOW__CORE__AUTH_MANAGER": SIMPLE_AUTH_MANAGER,
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{cfg.airflow.admin_user}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(credentials_file),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{url}/execution/",
            "AIRFLOW__CORE__FERNET_KEY": keys["fernet_key"],
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": conn,
            "AIRFLOW__API__HOST": cfg.airflow.host,
            "AIRFLOW__API__PORT": str(cfg.airflow.port),
            "AIRFLOW__API__BASE_URL": url,
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API__SECRET_KEY": keys["secret_key"],
            "AIRFLOW__API_AUTH__JWT_SECRET": keys["jwt_secret"],
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": str(cfg.airflow.dag_refresh_s),
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(paths.home / "logs"),
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(cfg.airflow.log_server_port),
        }
    )
    return env


def _is_component(component: str) -> Callable[[str], bool]:
    # the API server renames its process "airflow api_server -- host:... port:..."
    return lambda cmdline: "airflow" in cmdline and f" {component}" in cmdline.replace("_", "-")


def component_pid(cfg: AttuneConfig, component: str) -> int | None:
    paths = airflow_paths(cfg)
    return owned_pid(paths.pid(component), _is_component(component), _address(cfg))


def health(cfg: AttuneConfig, timeout_s: float = 2.0) -> dict[str, object] | None:
    """Airflow's ``/api/v2/monitor/health`` answer, or None when the API server does not answer."""
    try:
        status, body = supervisor.http_get(f"{ui_url(cfg)}/api/v2/monitor/health", timeout_s)
    except supervisor.NoAnswer:
        return None
    if status != 200:
        return None
    try:
        loaded: dict[str, object] = json.loads(body)
    except ValueError:
        return None
    return loaded


def unhealthy(answer: dict[str, object] | None) -> str | None:
    """What is not healthy yet in a health answer (None: the metadata database, the scheduler
    and the DAG processor all are)."""
    if answer is None:
        return "the API server does not answer yet"
    waiting = []
    for part in ("metadatabase", "scheduler", "dag_processor"):
        entry = answer.get(part)
        state = entry.get("status") if isinstance(entry, dict) else None
        if state != "healthy":
            waiting.append(f"{part} {state or 'not reporting'}")
    return ", ".join(waiting) or None


def _check_installed() -> None:
    if importlib.util.find_spec("airflow") is None:
        raise StackError(
            "Apache Airflow is not installed in this environment: run `make setup` (or "
            "`pip install 'attune[airflow]'`)"
        )


def _migrate(env: dict[str, str], paths: AirflowPaths) -> None:
    say(f"airflow: preparing the metadata database (log {paths.migrate_log})")
    paths.migrate_log.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with paths.migrate_log.open("ab") as log:
        try:
            done = subprocess.run(
                [sys.executable, "-m", "airflow", "db", "migrate"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                timeout=MIGRATE_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise StackError(
                f"`airflow db migrate` did not finish in {MIGRATE_TIMEOUT_S:.0f}s; last lines of "
                f"{paths.migrate_log}:\n{supervisor.tail(paths.migrate_log)}"
            ) from None
    if done.returncode != 0:
        raise StackError(
            f"`airflow db migrate` failed (exit {done.returncode}); last lines of "
            f"{paths.migrate_log}:\n{supervisor.tail(paths.migrate_log)}"
        )
    say(f"airflow: metadata database ready ({time.monotonic() - started:.1f}s)")


def airflow_up(cfg: AttuneConfig) -> str:
    """Start the API server, scheduler and DAG processor (those not running yet) and wait until
    Airflow reports them healthy. Returns the UI's URL."""
    from attune.secrets import airflow_secrets

    _check_installed()
    paths = airflow_paths(cfg)
    if not paths.dags_folder.is_dir():
        raise StackError(
            f"no DAG folder at {paths.dags_folder}: run from the repository root, or set "
            "airflow.dags_folder"
        )
    running = {c: component_pid(cfg, c) for c in COMPONENTS}
    url = ui_url(cfg)
    for component, port, key in (
        ("api-server", cfg.airflow.port, "airflow.port"),
        ("scheduler", cfg.airflow.log_server_port, "airflow.log_server_port"),
    ):
        if running[component] is None and supervisor.port_open(cfg.airflow.host, port):
            raise StackError(
                f"port {port} on {cfg.airflow.host} is taken by another program; stop it, or "
                f"choose another {key}"
            )
    creds_file, keys = airflow_secrets(cfg)
    paths.home.mkdir(parents=True, exist_ok=True)
    write_config(cfg, paths.task_config)
    env = airflow_env(cfg, paths, creds_file, keys, dict(os.environ))
    if all(pid is None for pid in running.values()):
        _migrate(env, paths)
    started: list[int] = []
    for component in COMPONENTS:
        pid = running[component]
        if pid is not None:
            say(f"airflow: {component} already running (pid {pid})")
            continue
        child = supervisor.spawn(
            [sys.executable, "-m", "airflow", component],
            name=f"airflow {component}",
            log=paths.log(component),
            detached=True,
            cwd=Path.cwd(),
            env=env,
            pid_file=paths.pid(component),
            address=_address(cfg),
        )
        started.append(child.pid)
        say(f"airflow: {component} starting (pid {child.pid}, log {paths.log(component)})")
    pids = [p for p in (component_pid(cfg, c) for c in COMPONENTS) if p is not None]

    def probe() -> str | None:
        for component in COMPONENTS:
            if component_pid(cfg, component) is None:
                raise supervisor.GaveUp(f"the {component} exited during start-up")
        return unhealthy(health(cfg))

    try:
        waited = supervisor.wait_ready(
            f"Airflow at {url}",
            probe,
            cfg.airflow.start_timeout_s,
            logs=[paths.log(c) for c in COMPONENTS],
            say=say,
            poll_s=1.0,
        )
    except supervisor.NotReady as exc:
        for pid in started:
            supervisor.stop(pid, "airflow", 20.0, group=True)
        raise StackError(str(exc)) from None
    say(f"airflow: healthy in {waited:.1f}s (pids {', '.join(map(str, pids))})")
    say(f"airflow: UI {url}  user {cfg.airflow.admin_user}  (password in {creds_file})")
    say(f"airflow: DAGs from {paths.dags_folder}")
    return url


def airflow_down(cfg: AttuneConfig) -> None:
    """Stop what :func:`airflow_up` started (each process with its task children)."""
    paths = airflow_paths(cfg)
    for component in reversed(COMPONENTS):
        pid = component_pid(cfg, component)
        if pid is None:
            say(f"airflow: {component} is not running")
            continue
        say(f"airflow: stopping {component} (pid {pid})")
        supervisor.stop(pid, f"airflow {component}", 30.0, group=True, say=say)
        paths.pid(component).unlink(missing_ok=True)


def airflow_status(cfg: AttuneConfig) -> list[ComponentStatus]:
    """One line per component: its pid and what Airflow's health endpoint says of it."""
    answer = health(cfg)
    parts = {"api-server": None, "scheduler": "scheduler", "dag-processor": "dag_processor"}
    out = []
    for component, key in parts.items():
        pid = component_pid(cfg, component)
        if key is None:
            ok = answer is not None
            detail = "answers" if ok else "does not answer"
        else:
            entry = answer.get(key) if answer else None
            state = entry.get("status") if isinstance(entry, dict) else None
            ok = state == "healthy"
            detail = f"{state or 'unknown'}"
        who = f"pid {pid}" if pid is not None else "not started by attune"
        hint = "" if ok else "; start it with `attune airflow up`"
        out.append(
            ComponentStatus(f"airflow {component}", ui_url(cfg), ok, f"{detail}, {who}{hint}")
        )
    return out
