"""
### attune_privacy: the right to erasure, applied and proven

Every hour, for the erasure requests recorded by `attune privacy erase` (which clears Redis at
once):

1. **apply_erasures**: `attune privacy apply`: the users' rows are deleted from every Delta
   table (bronze, silver, gold) now rather than at the next nightly run.
2. **vacuum_when_due**: `attune privacy vacuum`: tables whose erasure deletions are older than
   the vacuum retention (`batch.maintenance.vacuum_retention`) are vacuumed, so the deleted rows
   leave the old data files too.
3. **verify_erasure**: `attune privacy verify`: a report (`var/reports/privacy/`) counting,
   for every erased user, the rows left in every table; the task fails if any remains.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import dag, get_current_context, task  # noqa: TID253
from attune_common import START_DATE, default_args, run_attune


@dag(
    dag_id="attune_privacy",
    schedule="0 * * * *",
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=1),
    default_args=default_args(timeout=timedelta(minutes=50)),
    tags=["attune", "privacy"],
    doc_md=__doc__,
)
def attune_privacy() -> None:
    @task
    def apply_erasures() -> None:
        """Delete erased users' rows from every Delta table."""
        run_attune("privacy", "apply", "--date", get_current_context()["ds"])

    @task
    def vacuum_when_due() -> None:
        """VACUUM the tables whose erasure deletions passed the retention."""
        run_attune("privacy", "vacuum")

    @task
    def verify_erasure() -> None:
        """Prove no row of an erased user remains (report under var/reports/privacy/)."""
        run_attune("privacy", "verify")

    apply_erasures() >> vacuum_when_due() >> verify_erasure()


attune_privacy()
