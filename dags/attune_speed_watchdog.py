"""
### attune_speed_watchdog: is the speed layer keeping up?

Every 5 minutes, `attune speed watchdog`: the speed layer's process is alive, its Kafka consumer
lag and the age of its last progress are under the thresholds of `speed.watchdog` in the
config. A dead speed layer is restarted (the task says so and succeeds once it runs again); a
live one that lags or has stalled fails the task loudly, with what is wrong and what to do.
No retries: the next check is 5 minutes away.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import dag, task  # noqa: TID253
from attune_common import START_DATE, default_args, run_attune


@dag(
    dag_id="attune_speed_watchdog",
    schedule="*/5 * * * *",
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(minutes=5),
    default_args=default_args(retries=0, timeout=timedelta(minutes=4)),
    tags=["attune", "speed-layer", "monitoring"],
    doc_md=__doc__,
)
def attune_speed_watchdog() -> None:
    @task
    def check_speed_layer() -> None:
        """Alive, lag and freshness under the thresholds; restart when dead."""
        run_attune("speed", "watchdog")

    check_speed_layer()


attune_speed_watchdog()
