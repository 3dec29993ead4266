"""``attune airflow``: the environment Airflow gets, what its health answer means, and the
clear errors when it cannot start (a taken port, a database it cannot reach)."""

from __future__ import annotations

import json
import socket
import stat
from pathlib import Path

import pytest

from attune.config import AttuneConfig, free_port
from attune.secrets import airflow_secrets
from attune.stack.airflow import airflow_env, airflow_paths, airflow_up, unhealthy
from attune.stack.common import StackError

ROOT = Path(__file__).resolve().parents[2]


def _cfg(tmp_path: Path, **airflow: object) -> AttuneConfig:
    return AttuneConfig.model_validate(
        {
            "paths": {"var_dir": str(tmp_path / "var")},
            "airflow": {"dags_folder": str(ROOT / "dags"), **airflow},
        }
    )


def test_credentials_are_generated_once_private_and_in_airflows_format(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, admin_user="ops")
    creds, keys = airflow_secrets(cfg)
    assert creds == tmp_path / "var" / "secrets" / "airflow-admin.json"
    assert stat.S_IMODE(creds.stat().st_mode) == 0o600
    assert json.loads(creds.read_text()) == {"ops": keys["password"]}  # simple auth manager's
    assert len(keys["password"]) >= 20 and len(keys["jwt_secret"]) == 64
    again = airflow_secrets(cfg)[1]
    assert again == keys  # generated once, then read


def test_the_environment_names_every_setting_and_drops_attunes_overrides(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, port=8999)
    paths = airflow_paths(cfg)
    creds, keys = airflow_secrets(cfg)
    env = airflow_env(
        cfg,
        paths,
        creds,
        keys,
        {"PATH": "/bin", "ATTUNE__REDIS__PORT": "1", "ATTUNE_CONFIG": "/elsewhere.yaml"},
    )
    home = tmp_path / "var" / "airflow"
    assert env["PATH"] == "/bin"
    assert "ATTUNE__REDIS__PORT" not in env  # the task config already carries it
    assert env["ATTUNE_CONFIG"] == str(tmp_path / "var" / "run" / "airflow-tasks.yaml")
    assert env["AIRFLOW_HOME"] == str(home)
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == f"sqlite:///{home}/airflow.db"
    assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert env["AIRFLOW__CORE__DAGS_FOLDER"] == str(ROOT / "dags")
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://127.0.0.1:8999/execution/"
    assert env["AIRFLOW__API__PORT"] == "8999"
    assert env["AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT"] == "8281"
    assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"] == "admin:admin"
    assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"] == str(creds)
    assert env["AIRFLOW__API_AUTH__JWT_SECRET"] == keys["jwt_secret"]
    assert env["AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION"] == "True"
    assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "False"


def test_health_is_all_three_parts_reporting_healthy() -> None:
    healthy = {"status": "healthy"}
    assert unhealthy(None) == "the API server does not answer yet"
    assert (
        unhealthy(
            {
                "metadatabase": healthy,
                "scheduler": {"status": None},
                "dag_processor": healthy,
                "triggerer": {"status": None},  # not started by attune: not needed
            }
        )
        == "scheduler not reporting"
    )
    assert (
        unhealthy({"metadatabase": healthy, "scheduler": healthy, "dag_processor": healthy}) is None
    )


def test_a_taken_port_is_refused_with_the_fix(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(StackError) as err:
            airflow_up(_cfg(tmp_path, port=port, log_server_port=free_port()))
    assert f"port {port} on 127.0.0.1 is taken by another program" in str(err.value)
    assert "airflow.port" in str(err.value)


def test_a_database_airflow_cannot_reach_fails_with_the_logs_tail(tmp_path: Path) -> None:
    cfg = _cfg(
        tmp_path,
        port=free_port(),
        log_server_port=free_port(),
        sql_alchemy_conn=f"postgresql://nobody@127.0.0.1:{free_port()}/airflow",
    )
    with pytest.raises(StackError) as err:
        airflow_up(cfg)
    message = str(err.value)
    assert "`airflow db migrate` failed" in message
    assert "airflow-migrate.log" in message and "  | " in message  # the log's last lines


def test_only_idempotent_calls_are_repeated_after_a_database_error() -> None:
    from attune.stack.airflow_client import is_transient_db_error

    locked = '{"detail":{"reason":"Database error","statement":"hidden"}}'
    assert is_transient_db_error("PATCH", 500, locked)
    assert is_transient_db_error("get", 500, locked)
    assert not is_transient_db_error("POST", 500, locked)  # a trigger may have been recorded
    assert not is_transient_db_error("PATCH", 500, '{"detail":"Internal Server Error"}')
    assert not is_transient_db_error("PATCH", 409, locked)


def test_a_patch_answered_with_a_locked_database_is_repeated_until_it_lands(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import httpx

    from attune.stack import airflow_client

    monkeypatch.setattr(airflow_client.time, "sleep", lambda s: None)
    answers = [500, 500, 200]
    patches: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/auth/token":
            return httpx.Response(201, json={"access_token": "t"})
        patches.append(request.method)
        status = answers.pop(0)
        body = {"detail": {"reason": "Database error"}} if status == 500 else {"state": "failed"}
        return httpx.Response(status, json=body)

    client = airflow_client.AirflowClient("http://airflow", "admin", "pw")
    client._http = httpx.Client(transport=httpx.MockTransport(handle))
    assert client.request("PATCH", "/api/v2/dags/d/dagRuns/r", json={}) == {"state": "failed"}
    assert patches == ["PATCH"] * 3

    answers[:] = [500]
    with pytest.raises(airflow_client.StackError, match="500 to POST"):
        client.request("POST", "/api/v2/dags/d/dagRuns", json={})


def test_a_long_task_gets_a_line_with_the_runs_progress_in_tasks() -> None:
    from attune.stack.airflow_client import TaskRun, run_progress_line

    tasks = [
        TaskRun("silver", "success", 40.0, 1),
        TaskRun("quality", "skipped", None, 1),
        TaskRun("gold", "running", None, 1),
        TaskRun("views", None, None, 0),
    ]
    assert run_progress_line("attune_nightly", tasks, 95.4) == (
        "attune_nightly: 95 s, 2/4 tasks done, running gold"
    )
    assert run_progress_line("d", tasks[:2], 3) == "d: 3 s, 2/2 tasks done"
