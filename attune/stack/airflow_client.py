"""Airflow's REST API (``/api/v2``), as ``attune airflow trigger``, the demo and the tests use it:
unpause a DAG, trigger a run for a logical date, follow it task by task until it ends.

Every call goes through the API server with the admin's token (``POST /auth/token``); nothing
here touches Airflow's database, which is Airflow's own business.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx

from attune.config import AttuneConfig
from attune.stack.airflow import ui_url
from attune.stack.common import StackError

FINISHED = {"success", "failed"}
"""Final states of a DAG run."""
TASK_DONE = {"success", "failed", "skipped", "upstream_failed", "removed"}
DB_RETRIES = 4
IDEMPOTENT = {"GET", "PATCH", "PUT", "DELETE"}


def is_transient_db_error(method: str, status: int, body: str) -> bool:
    """Whether an answer is the API server's 500 for a metadata-database error (SQLite's
    "database is locked" while the scheduler writes) to a call that is safe to repeat. A
    POST (trigger a run) is never repeated: it may have been recorded before the error."""
    return method.upper() in IDEMPOTENT and status == 500 and "Database error" in body


@dataclass(frozen=True)
class TaskRun:
    """One task instance of a DAG run, as the API reports it."""

    task_id: str
    state: str | None
    seconds: float | None
    try_number: int

    @classmethod
    def from_api(cls, ti: dict[str, Any]) -> TaskRun:
        return cls(ti["task_id"], ti.get("state"), ti.get("duration"), int(ti.get("try_number", 0)))


@dataclass(frozen=True)
class DagRunResult:
    dag_id: str
    run_id: str
    state: str
    seconds: float
    tasks: list[TaskRun]
    run: dict[str, Any]


def run_progress_line(dag_id: str, tasks: list[TaskRun], elapsed_s: float) -> str:
    """``attune_nightly: 95 s, 3/9 tasks done, running gold``: a run's tasks differ too much in
    size for an ETA, so the line says how far it is in tasks and what runs now."""
    done = sum(1 for t in tasks if t.state in TASK_DONE)
    running = sorted(t.task_id for t in tasks if t.state == "running")
    now = f", running {', '.join(running)}" if running else ""
    return f"{dag_id}: {elapsed_s:.0f} s, {done}/{len(tasks)} tasks done{now}"


class AirflowClient:
    """A logged-in client of one Airflow API server."""

    def __init__(self, base_url: str, user: str, password: str, timeout_s: float = 30.0) -> None:
        self.base = base_url.rstrip("/")
        self._user, self._password = user, password
        self._http = httpx.Client(timeout=timeout_s)
        self._token: str | None = None

    @classmethod
    def from_config(cls, cfg: AttuneConfig) -> AirflowClient:
        from attune.secrets import airflow_secrets

        _, keys = airflow_secrets(cfg)
        return cls(ui_url(cfg), cfg.airflow.admin_user, keys["password"])

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> AirflowClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing ---------------------------------------------------------------------------

    def token(self) -> str:
        """A JWT for the admin (also what the UI keeps in its ``_token`` cookie)."""
        if self._token is None:
            try:
                r = self._http.post(
                    f"{self.base}/auth/token",
                    json={"username": self._user, "password": self._password},
                )
            except httpx.HTTPError as exc:
                raise StackError(
                    f"Airflow at {self.base} does not answer ({exc}); start it with "
                    "`attune airflow up`"
                ) from None
            if r.status_code not in (200, 201):
                raise StackError(
                    f"Airflow at {self.base} refused the admin's credentials ({r.status_code}: "
                    f"{r.text[:200]}); they are in airflow.credentials_file"
                )
            self._token = str(r.json()["access_token"])
        return self._token

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """One API call. A 401 logs in again once. A 500 "Database error" to an idempotent
        call is retried (up to ``DB_RETRIES`` times, 1 s, 2 s, ...): on the default SQLite
        metadata database the scheduler holds the write lock for a moment, and the API server
        answers 500 rather than wait for it."""
        relogged = False
        db_retries = 0
        while True:
            headers = {"Authorization": f"Bearer {self.token()}"}
            try:
                r = self._http.request(method, f"{self.base}{path}", headers=headers, **kwargs)
            except httpx.HTTPError as exc:
                raise StackError(f"Airflow at {self.base}: {method} {path} failed: {exc}") from None
            if r.status_code == 401 and not relogged:
                self._token = None  # expired: log in again
                relogged = True
                continue
            if is_transient_db_error(method, r.status_code, r.text) and db_retries < DB_RETRIES:
                db_retries += 1
                time.sleep(float(db_retries))
                continue
            if r.status_code >= 400:
                raise StackError(
                    f"Airflow answered {r.status_code} to {method} {path}: {r.text[:300]}"
                )
            return r.json() if r.content else None

    # -- DAGs and runs --------------------------------------------------------------------

    def dag(self, dag_id: str) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = self.request("GET", f"/api/v2/dags/{dag_id}")
        except StackError as exc:
            if " 404 " in str(exc):
                return None
            raise
        return found

    def import_errors(self) -> list[dict[str, Any]]:
        answer = self.request("GET", "/api/v2/importErrors", params={"limit": 100})
        errors: list[dict[str, Any]] = answer.get("import_errors", [])
        return errors

    def wait_for_dags(
        self, dag_ids: list[str], timeout_s: float = 120.0, say: Callable[[str], None] = print
    ) -> None:
        """Wait until the DAG processor has parsed every one of ``dag_ids``; a DAG file that
        does not import fails at once with Airflow's error."""
        deadline = time.monotonic() + timeout_s
        missing = list(dag_ids)
        noted = 0.0
        while missing:
            missing = [d for d in missing if self.dag(d) is None]
            if not missing:
                return
            errors = self.import_errors()
            if errors:
                first = errors[0]
                raise StackError(
                    f"Airflow cannot import {first.get('filename')}:\n{first.get('stack_trace')}"
                )
            if time.monotonic() > deadline:
                raise StackError(
                    f"Airflow has not parsed {', '.join(missing)} after {timeout_s:.0f}s; see "
                    "var/log/airflow-dag-processor.log"
                )
            if time.monotonic() - noted > 10:
                say(f"waiting for the DAG processor to parse {', '.join(missing)}")
                noted = time.monotonic()
            time.sleep(1.0)

    def set_paused(self, dag_id: str, paused: bool) -> None:
        self.request("PATCH", f"/api/v2/dags/{dag_id}", json={"is_paused": paused})

    def trigger(
        self,
        dag_id: str,
        logical_date: date | None = None,
        conf: dict[str, Any] | None = None,
    ) -> str:
        """Trigger a run, then unpause the DAG (a run of a paused DAG stays queued); returns
        the run's id.

        For a ``logical_date`` D the run covers the day [D, D + 1) and may run after D + 1,
        like the scheduled run of that day would. That also puts it ahead of the catch-up run
        that unpausing makes the scheduler queue for the latest interval (queued runs start in
        ``run_after`` order); ``wait_run(..., drop_scheduled=True)`` removes that one."""
        body: dict[str, Any] = {"logical_date": None, "conf": conf or {}}
        if logical_date is not None:
            start = datetime(logical_date.year, logical_date.month, logical_date.day, tzinfo=UTC)
            end = start + timedelta(days=1)
            body.update(
                {
                    "logical_date": start.isoformat(),
                    "data_interval_start": start.isoformat(),
                    "data_interval_end": end.isoformat(),
                    "run_after": end.isoformat(),
                }
            )
        run = self.request("POST", f"/api/v2/dags/{dag_id}/dagRuns", json=body)
        self.set_paused(dag_id, False)
        return str(run["dag_run_id"])

    def runs(self, dag_id: str, limit: int = 20) -> list[dict[str, Any]]:
        answer = self.request(
            "GET",
            f"/api/v2/dags/{dag_id}/dagRuns",
            params={"limit": limit, "order_by": "-run_after"},
        )
        runs: list[dict[str, Any]] = answer.get("dag_runs", [])
        return runs

    def run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        found: dict[str, Any] = self.request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")
        return found

    def tasks(self, dag_id: str, run_id: str) -> list[TaskRun]:
        answer = self.request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances")
        return [TaskRun.from_api(ti) for ti in answer.get("task_instances", [])]

    def wait_run(
        self,
        dag_id: str,
        run_id: str,
        timeout_s: float,
        say: Callable[[str], None] = print,
        poll_s: float = 2.0,
        drop_scheduled: bool = False,
        heartbeat_s: float = 30.0,
    ) -> DagRunResult:
        """Follow a run until it ends, saying each task's new state (with its time), and every
        ``heartbeat_s`` without one (a long task) a :func:`run_progress_line`.

        ``drop_scheduled``: the queued *scheduled* runs of the DAG that appear meanwhile are
        ended without running. Unpausing a DAG makes the scheduler queue a run for the latest
        complete interval (catch-up is off, so only that one): right in production, but when
        you asked for one date (the demo's 2013 data, a test) it processes a day you did not ask
        for. Deleting it does not help (the DAG processor queues it again); marking it failed,
        with a note saying why, does: that interval then counts as done.
        """
        started = time.monotonic()
        seen: dict[str, str | None] = {}
        last_line = started
        while True:
            if drop_scheduled:
                for other in self.runs(dag_id):
                    if other["run_type"] == "scheduled" and other["state"] == "queued":
                        note = (
                            f"Not run: attune asked this Airflow for {run_id} only; this run "
                            "was queued when the DAG was unpaused."
                        )
                        self.request(
                            "PATCH",
                            f"/api/v2/dags/{dag_id}/dagRuns/{other['dag_run_id']}",
                            json={"state": "failed", "note": note},
                        )
                        say(f"{dag_id}: ended the catch-up run {other['dag_run_id']} unrun")
            run = self.run(dag_id, run_id)
            tasks = self.tasks(dag_id, run_id)
            for t in sorted(tasks, key=lambda t: t.task_id):
                if seen.get(t.task_id, "?") != t.state and t.state is not None:
                    took = f" in {t.seconds:.1f} s" if t.seconds and t.state in TASK_DONE else ""
                    retry = f" (try {t.try_number})" if t.try_number > 1 else ""
                    say(f"{dag_id} {t.task_id}: {t.state}{took}{retry}")
                    last_line = time.monotonic()
                seen[t.task_id] = t.state
            elapsed = time.monotonic() - started
            if tasks and time.monotonic() - last_line >= heartbeat_s:
                say(run_progress_line(dag_id, tasks, elapsed))
                last_line = time.monotonic()
            if run["state"] in FINISHED:
                if not tasks:
                    raise StackError(
                        f"{dag_id} run {run_id} ended {run['state']} without running a task: is "
                        "its logical date before the DAG's start_date?"
                    )
                return DagRunResult(dag_id, run_id, run["state"], elapsed, tasks, run)
            if elapsed > timeout_s:
                raise StackError(
                    f"{dag_id} run {run_id} is still {run['state']} after {timeout_s:.0f}s; "
                    f"follow it in the UI: {self.base}/dags/{dag_id}"
                )
            time.sleep(poll_s)

    def next_run(self, dag_id: str, after: set[str], timeout_s: float, poll_s: float = 2.0) -> str:
        """The id of the first run of ``dag_id`` not in ``after`` (e.g. the run an asset
        update triggered), waiting up to ``timeout_s`` for it to appear."""
        deadline = time.monotonic() + timeout_s
        while True:
            for run in self.runs(dag_id):
                if run["dag_run_id"] not in after:
                    return str(run["dag_run_id"])
            if time.monotonic() > deadline:
                raise StackError(
                    f"no new run of {dag_id} appeared within {timeout_s:.0f}s; is it paused? "
                    f"see {self.base}/dags/{dag_id}"
                )
            time.sleep(poll_s)
