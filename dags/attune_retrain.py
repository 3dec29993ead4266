"""
### attune_retrain: new models, behind the gate

Scheduled on the Asset `attune_gold_training_set`: it runs each time the nightly's gold task has
written new training examples. Each task is one step of `attune models retrain`, in its own
process, handing files to the next in `var/runs/retrain/<run id>/`:

1. **train**: retrieval and ranking on the gold training set; SavedModels kept in the run folder.
2. **evaluate**: the candidates, the served versions and the baselines on the same holdout,
   restricted to interactions the served version did not train on.
3. **gate**: promote only what beats the served version (by `models.promotion_margin`) and is
   not below the baselines. When nothing passes, the task is **skipped** with the reason, the
   served version stays, and the run goes straight to `record`.
4. **publish**: the passing candidates become new versions in the model repository, served.
5. **await_serving**: the model server reports the new versions AVAILABLE.
6. **smoke_test**: recommendations through the personalization API come from the new model;
   if not, the previous version is served again and the task fails.
7. **record**: the decisions (promoted or not, and why) appended to `promotions.jsonl`.

Roll back by hand with the `attune_rollback` DAG or `attune models rollback`.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import TriggerRule, dag, get_current_context, task  # noqa: TID253
from attune_common import START_DATE, TRAINING_SET, default_args, run_attune, run_folder

GATE_SAID_NO = 3
"""`attune models retrain --step gate` exits with this when no model passed the gate."""


def _step(step: str, skip_on: int | None = None) -> None:
    run_dir = run_folder("retrain", get_current_context()["run_id"])
    run_attune(
        "models",
        "retrain",
        "--run-dir",
        str(run_dir),
        "--step",
        step,
        "--no-progress",
        skip_on=skip_on,
    )


@dag(
    dag_id="attune_retrain",
    schedule=[TRAINING_SET],
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=4),
    default_args=default_args(retries=1),
    tags=["attune", "models"],
    doc_md=__doc__,
)
def attune_retrain() -> None:
    @task
    def train() -> None:
        """Train retrieval and ranking on the gold training set."""
        _step("train")

    @task
    def evaluate() -> None:
        """Candidates vs served versions vs baselines on an unseen holdout."""
        _step("evaluate")

    @task(retries=0)
    def gate() -> None:
        """The promotion gate; skipped (with the reason) when nothing passes."""
        _step("gate", skip_on=GATE_SAID_NO)

    @task(retries=0)
    def publish() -> None:
        """Publish the passing candidates and serve them."""
        _step("publish")

    @task
    def await_serving() -> None:
        """Wait until the model server has loaded the new versions."""
        _step("await-serving")

    @task(retries=0)
    def smoke_test() -> None:
        """Recommendations through the API come from the new model (else roll back)."""
        _step("smoke")

    @task(trigger_rule=TriggerRule.NONE_FAILED)
    def record() -> None:
        """Record the promotion decisions in promotions.jsonl."""
        _step("record")

    train() >> evaluate() >> gate() >> publish() >> await_serving() >> smoke_test() >> record()


attune_retrain()
