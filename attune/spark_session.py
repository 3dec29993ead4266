"""The one place Spark sessions are built.

Every Spark job (speed layer, nightly batch, ALS baseline, notebooks) gets its session from
:func:`build_spark_session`, which puts the Delta Lake and Kafka-connector jars that
``make jars`` copied from Maven Central on the classpath. Nothing is downloaded when a session
starts (``spark.jars.packages`` is never set), so sessions start the same way offline.

The JVM that a session starts writes its own lines (log4j warnings, "Using Spark's default
log4j profile", JDK notices) to its standard output and error, which it inherits from this
process: on a console they would land between attune's own lines. When this process's standard
error is a terminal or a pipe, :func:`build_spark_session` therefore starts the JVM with both
pointed at ``<log_dir>/spark-<app name>.log`` (appended), unless ``ATTUNE_VERBOSE=1``
(``attune --verbose``) asks to see them. A process whose standard error is already a file (a
detached server writing its own log, a test's capture) keeps the JVM's lines there, unless it
says it is a console program (``console=True``: the demo, whose output redirected to a file is
still a transcript for a person).
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from attune.config import AttuneConfig, ConfigError

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

# Jars the session cannot work without, by file-name prefix (versions come from jvm/spark/pom.xml).
REQUIRED_JAR_PREFIXES = (
    "delta-spark_",
    "delta-storage-",
    "spark-sql-kafka-0-10_",
    "spark-token-provider-kafka-0-10_",
    "kafka-clients-",
    "commons-pool2-",
)


def spark_jars(cfg: AttuneConfig) -> list[Path]:
    """The local jars for Spark sessions, or a :class:`ConfigError` saying how to fetch them."""
    jars_dir = cfg.paths.resolve(cfg.spark.jars_dir)
    jars = sorted(jars_dir.glob("*.jar")) if jars_dir.is_dir() else []
    missing = [p for p in REQUIRED_JAR_PREFIXES if not any(j.name.startswith(p) for j in jars)]
    if missing:
        raise ConfigError(
            f"Spark jars missing from {jars_dir}: {', '.join(p + '*.jar' for p in missing)}. "
            "Fetch them from Maven Central with `make jars` (jvm/spark/pom.xml)."
        )
    return jars


def build_spark_session(
    cfg: AttuneConfig,
    app_name: str | None = None,
    extra_conf: dict[str, str] | None = None,
    console: bool = False,
) -> SparkSession:
    """A Spark session with Delta Lake and the Kafka connector, configured from ``cfg.spark``.

    ``console``: this process is a console program (see :func:`driver_log`)."""
    from pyspark.sql import SparkSession

    jars = spark_jars(cfg)
    warehouse = cfg.paths.resolve("spark-warehouse")
    builder = (
        SparkSession.builder.master(cfg.spark.master)
        .appName(app_name or cfg.spark.app_name)
        .config("spark.jars", ",".join(str(j) for j in jars))
        .config("spark.sql.extensions", "io.delta.sql.DeltaSparkSessionExtension")
        .config(
            "spark.sql.catalog.spark_catalog", "org.apache.spark.sql.delta.catalog.DeltaCatalog"
        )
        .config("spark.driver.memory", cfg.spark.driver_memory)
        # Python workers must run this interpreter (the venv), not whatever `python3` is first
        # on PATH: UDFs need the same packages as the driver.
        .config("spark.pyspark.python", sys.executable)
        .config("spark.pyspark.driver.python", sys.executable)
        .config("spark.sql.shuffle.partitions", str(cfg.spark.shuffle_partitions))
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.warehouse.dir", str(warehouse))
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.ui.enabled", "false")
        .config("spark.databricks.delta.snapshotPartitions", "2")
    )
    for key, value in {**cfg.spark.conf, **(extra_conf or {})}.items():
        builder = builder.config(key, value)
    log = driver_log(cfg, app_name or cfg.spark.app_name, console)
    try:
        with _output_to(log):
            session = builder.getOrCreate()
    except Exception as exc:
        if log is not None and "gateway" in str(exc).lower():
            raise RuntimeError(f"{exc}: the JVM's own output is in {log}") from exc
        raise
    session.sparkContext.setLogLevel("WARN")
    return session


VERBOSE_ENV = "ATTUNE_VERBOSE"


def driver_log(cfg: AttuneConfig, app_name: str, console: bool = False) -> Path | None:
    """Where a JVM started by this process writes its output; None to let it inherit this
    process's (``ATTUNE_VERBOSE=1``, or a standard error that is already a file).

    ``console=True`` says this process is a console program (``attune demo``) whose output,
    even redirected to a file (``make demo > demo.log 2>&1``), is a transcript for a person:
    the JVM writes to the log then too."""
    if os.environ.get(VERBOSE_ENV, "") not in ("", "0"):
        return None
    if console:
        return cfg.log_dir / f"spark-{app_name}.log"
    try:
        if stat.S_ISREG(os.fstat(2).st_mode):
            return None
    except OSError:
        return None
    return cfg.log_dir / f"spark-{app_name}.log"


@contextmanager
def _output_to(log: Path | None) -> Iterator[None]:
    """Point file descriptors 1 and 2 at ``log`` while the block runs (children started in it,
    the JVM, keep writing there), then give this process its own back."""
    if log is None:
        yield
        return
    log.parent.mkdir(parents=True, exist_ok=True)
    target = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    try:
        os.dup2(target, 1)
        os.dup2(target, 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, target):
            os.close(fd)
