"""
### attune_experiment_report: how each variant is doing

Daily, after the nightly batch has had time to finish, `attune experiments report --date
<date>`: per running experiment and variant, impressions, clicks, click rate and the other
counted metrics for the day and since the start, from gold's per-variant metrics. Written to
the gold table `gold/experiment_report` (one partition per report date) and
`var/reports/experiments/<date>.json`, which the dashboard reads.
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
        """Per-variant results of the running experiments for the date."""
        run_attune("experiments", "report", "--date", get_current_context()["ds"])

    report_experiments()


attune_experiment_report()
