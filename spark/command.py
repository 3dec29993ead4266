"""What the batch layer's command handlers share (``attune batch run`` in :mod:`spark.job`,
``attune privacy apply|vacuum|verify``, ``attune experiments report``).

Each command is one Airflow task in its own process: exit code 0 means success, anything else a
failed task whose log ends with one line saying what failed and what to do (:func:`failed`).
Stage and command modules import this module, never :mod:`spark.job`.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from attune.config import AttuneConfig

log = logging.getLogger(__name__)


def setup_logging() -> None:
    """Progress and warnings on stderr (stdout stays for the result, e.g. ``--json``)."""
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for chatty in ("py4j", "kafka"):
        logging.getLogger(chatty).setLevel(logging.WARNING)


def parse_date(text: str, what: str = "--date") -> date:
    from attune.config import ConfigError

    try:
        return date.fromisoformat(text)
    except ValueError:
        raise ConfigError(
            f"{what} {text!r} is not a date: use YYYY-MM-DD, e.g. 2013-03-01"
        ) from None


def batch_spark_conf(cfg: AttuneConfig) -> dict[str, str]:
    conf = {
        "spark.sql.adaptive.enabled": "true",
        # Delta's VACUUM lists files with this many tasks (Spark's default is 10,000).
        "spark.sql.sources.parallelPartitionDiscovery.parallelism": "16",
    }
    conf.update(cfg.batch.spark_conf)
    return conf


def use_this_python_for_workers(session: SparkSession | None = None) -> None:
    """Make Python workers run this interpreter (its virtualenv has redis, attune, ...).

    PySpark starts workers with ``$PYSPARK_PYTHON``, else whatever ``python3`` is on the PATH,
    which outside an activated virtualenv lacks the packages the views' executors import. The
    ``spark.pyspark.python`` setting only applies under ``spark-submit``. Set the variable
    before a session exists; for a session built elsewhere, point its context at this
    interpreter (read each time a Python function is shipped).
    """
    import os

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    if session is not None:
        session.sparkContext.pythonExec = os.environ["PYSPARK_PYTHON"]


@contextmanager
def batch_session(
    cfg: AttuneConfig, app_name: str, console: bool = False
) -> Iterator[SparkSession]:
    """A session with the batch's settings (:func:`batch_spark_conf`), stopped at
    the end unless one was active before (tests, notebooks); ``console`` as in
    :func:`attune.spark_session.build_spark_session`."""
    from pyspark.sql import SparkSession

    from attune.spark_session import build_spark_session

    owned = SparkSession.getActiveSession() is None
    use_this_python_for_workers()
    spark = build_spark_session(cfg, app_name, batch_spark_conf(cfg), console=console)
    use_this_python_for_workers(spark)
    try:
        yield spark
    finally:
        if owned:
            spark.stop()


def failed(command: str, exc: BaseException, fix: str) -> int:
    """Log ``exc`` with its traceback, then end with one line: what failed and what to do.
    Returns the exit code (1)."""
    log.error("attune %s failed", command, exc_info=exc)
    text = (str(exc).strip().splitlines() or [""])[0][:400]
    print(f"attune {command}: FAILED: {type(exc).__name__}: {text}. {fix}", file=sys.stderr)
    return 1
