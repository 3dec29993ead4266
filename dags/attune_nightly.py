"""
### attune_nightly: the batch layer over one day

Runs the nightly batch of attune for one **batch date**, which is this run's logical date (the
run for a day starts once the day is over, at 00:30 UTC of the next). One task per stage, each
the same command a person runs by hand (`attune batch run --date <date> --stage <stage>`):

1. **check_quality**: the data-quality gate on bronze for the date (null rates, duplicates,
   volume against the trailing days). A failed check stops the run before anything is written:
   fix the data (or the thresholds in `batch.quality`), then clear the task.
2. **build_silver**: erasures, cleansed events for the late window, items and users.
3. **build_gold**: features, training examples, co-occurrence, segments, experiment metrics.
   Publishes the Asset `attune_gold_training_set`, which schedules `attune_retrain`.
4. **publish_views**: the drift report, then batch views and corrections written to Redis.
5. **maintain_lake**: retention, OPTIMIZE, VACUUM.

Every stage is idempotent over its date: clearing a task re-runs it safely. Trigger a backfill
from an earlier date with the parameter `since` (YYYY-MM-DD): silver is re-derived from it.
Failures are written to `var/reports/airflow/failures.jsonl` with the command to re-run.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import CronDataIntervalTimetable, Param, dag, get_current_context, task  # noqa: TID253
from attune_common import START_DATE, TRAINING_SET, default_args, run_attune


def _stage(stage: str) -> None:
    context = get_current_context()
    args = ["batch", "run", "--date", context["ds"], "--stage", stage]
    since = context["params"].get("since")
    if stage == "silver" and since:
        args += ["--from", since]
    run_attune(*args)


@dag(
    dag_id="attune_nightly",
    schedule=CronDataIntervalTimetable("30 0 * * *", timezone="UTC"),
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=6),
    default_args=default_args(),
    tags=["attune", "batch"],
    params={
        "since": Param(
            None,
            type=["null", "string"],
            format="date",
            description="Re-derive silver from this event date (a first run, or a backfill).",
        )
    },
    doc_md=__doc__,
)
def attune_nightly() -> None:
    @task
    def check_quality() -> None:
        """The data-quality gate on bronze for the batch date."""
        _stage("quality")

    @task
    def build_silver() -> None:
        """Erasures, cleansed events of the late window, items and users."""
        _stage("silver")

    @task(outlets=[TRAINING_SET])
    def build_gold() -> None:
        """Gold features, training examples, co-occurrence, segments, experiment metrics."""
        _stage("gold")
        context = get_current_context()
        context["outlet_events"][TRAINING_SET].extra = {"batch_date": context["ds"]}

    @task
    def publish_views() -> None:
        """Drift report, batch views and corrections into Redis."""
        _stage("views")

    @task
    def maintain_lake() -> None:
        """Retention, OPTIMIZE and VACUUM."""
        _stage("maintenance")

    check_quality() >> build_silver() >> build_gold() >> publish_views() >> maintain_lake()


attune_nightly()
