"""
### attune_rollback: serve an earlier model version (manual)

Trigger it by hand (the play button, with parameters) when a promoted model misbehaves:
`attune models rollback` serves the version served before the current one, or the version in
`to`; the model server picks it up within its poll interval, and the rollback is recorded in
the repository's `promotions.jsonl` with the served version it replaced.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import Param, dag, get_current_context, task  # noqa: TID253
from attune_common import START_DATE, default_args, run_attune


@dag(
    dag_id="attune_rollback",
    schedule=None,
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args=default_args(retries=0, timeout=timedelta(minutes=10)),
    tags=["attune", "models"],
    params={
        "model": Param(
            "both", enum=["both", "retrieval", "ranking"], description="Which model to roll back."
        ),
        "to": Param(
            None,
            type=["null", "integer"],
            minimum=1,
            description="The version to serve (empty: the one served before the current one).",
        ),
    },
    doc_md=__doc__,
)
def attune_rollback() -> None:
    @task
    def roll_back() -> None:
        """Serve the previous (or the given) version and record why."""
        params = get_current_context()["params"]
        args = ["models", "rollback"]
        if params.get("model") not in (None, "both"):
            args += ["--model", params["model"]]
        if params.get("to"):
            args += ["--to", str(params["to"])]
        run_attune(*args)

    roll_back()


attune_rollback()
