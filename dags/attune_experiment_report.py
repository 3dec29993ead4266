"""
### attune_experiment_report: verdicts of the running experiments

Daily, after the nightly batch has had time to finish, `attune experiments report --date
<date>`: per experiment (declared in `config/experiments.yaml`), variant and metric, the lift
with its intervals (fixed-horizon and always-valid), the chance to beat the control, the
sample-ratio check, the guardrails and the verdict (running / ship / no difference / stop),
from the attributed per-user rows the nightly gold stage wrote (`gold/experiment_users`).
Written to the gold table `gold/experiment_results` (one partition per report date, replaced on
a re-run) and `var/reports/experiments/<date>.json`, which `attune dashboard` reads. See
docs/experiments.md.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import CronDataIntervalTimetable, dag, get_current_context, task  # noqa: TID253
from attune_common import START_DATE, default_args, run_attune


@dag(
    dag_id="attune_experiment_report",
    schedule=CronDataIntervalTimetable("0 6 * * *", timezone="UTC"),
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=1),
    default_args=default_args(timeout=timedelta(minutes=45)),
    tags=["attune", "experiments"],
    doc_md=__doc__,
)
def attune_experiment_report() -> None:
    @task
    def report_experiments() -> None:
        """The verdicts of the experiments with traffic up to the date."""
        run_attune("experiments", "report", "--date", get_current_context()["ds"])

    report_experiments()


attune_experiment_report()
