"""A Spark standalone cluster on this machine, from pyspark's own launcher.

The compose stack runs Spark the way a production deployment does: a ``spark-master`` and a
``spark-worker`` container started with ``spark-class org.apache.spark.deploy.master.Master`` /
``...worker.Worker``, and every attune driver pointed at it with ``spark.master``
(``ATTUNE__SPARK__MASTER=spark://spark-master:7077``). The same two classes ship inside the
pyspark wheel (``<site-packages>/pyspark/bin/spark-class``), so the same topology runs here
without containers: :func:`start_cluster` starts one master and N workers as local processes,
each on free loopback ports, and waits until the master lists every worker as ``ALIVE``.

It exists for the tests and the benchmarks that check attune's jobs on a real cluster (a driver
in one process, executors in another JVM that the driver reaches over the network, Python
workers forked by that executor), not as a way to run the local stack: on one machine,
``local[N]`` does the same work without the network hops.

**What a driver needs.** Only ``spark.master`` (:attr:`SparkCluster.master_url`). The Delta and
Kafka jars reach the executors through ``spark.jars``, which :func:`attune.spark_session.
build_spark_session` already sets from ``var/jars/spark``: the driver serves them and every
executor fetches them when it starts. The executors' Python workers run ``spark.pyspark.python``
(this virtualenv's interpreter, a path that exists on this machine). Delta tables are written by
the executors themselves, so the lake's paths must mean the same files to the driver and to
every worker: trivially true here, a shared volume (``attune-var``) in the compose stack.

**Sizing.** Each worker offers ``cores`` cores and ``memory`` to the applications; an
application takes all the free cores unless capped with ``spark.cores.max``, and gets one
executor per worker of ``spark.executor.memory`` (1 GiB by default). :meth:`SparkCluster.
app_conf` gives the settings of an application that uses the whole cluster.

**Logs.** Everything goes under ``log_dir``: ``master.log``, ``worker-<i>.log`` and each
worker's work directory ``work-<i>/`` (``<app id>/<executor id>/stderr`` is an executor's log;
the default, ``$SPARK_HOME/work``, is inside the installed pyspark). A failure to come up is
raised as :class:`attune.supervisor.NotReady` with the last lines of the logs and their paths.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attune import supervisor
from attune.config import free_port

MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"
# The daemons only schedule; the work happens in the executors each worker starts.
DAEMON_MEMORY = "256m"


def spark_home() -> Path:
    """The installed pyspark, which is a complete ``SPARK_HOME`` (``bin/spark-class``, jars)."""
    import pyspark

    return Path(pyspark.__file__).resolve().parent


def master_state(web_url: str, timeout_s: float = 5.0) -> dict[str, Any]:
    """The master's own view of the cluster: ``GET <web UI>/json/`` (workers with their
    ``state``, ``activeapps``, ``completedapps``, cores and memory in use)."""
    with urllib.request.urlopen(f"{web_url}/json/", timeout=timeout_s) as resp:
        return dict(json.load(resp))


def workers_alive_probe(web_url: str, workers: int) -> supervisor.Probe:
    """Ready when the master lists at least ``workers`` workers as ``ALIVE``."""

    def probe() -> str | None:
        try:
            state = master_state(web_url, timeout_s=2.0)
        except (OSError, ValueError) as exc:
            return f"master web UI {web_url}: {exc}"
        alive = sum(1 for w in state.get("workers", []) if w.get("state") == "ALIVE")
        return None if alive >= workers else f"{alive} of {workers} workers ALIVE"

    return probe


@dataclass
class SparkCluster:
    """A running master and its workers (from :func:`start_cluster`)."""

    master_url: str  # spark://127.0.0.1:PORT, what a driver's spark.master is set to
    web_url: str  # the master's web UI, whose /json/ describes the cluster
    log_dir: Path
    cores_per_worker: int
    memory_per_worker: str
    master: supervisor.Child
    workers: list[supervisor.Child] = field(default_factory=list)

    @property
    def cores(self) -> int:
        return self.cores_per_worker * len(self.workers)

    def state(self) -> dict[str, Any]:
        return master_state(self.web_url)

    def applications(self) -> list[dict[str, Any]]:
        """Every application the master has seen, running first, then completed."""
        state = self.state()
        return [*state.get("activeapps", []), *state.get("completedapps", [])]

    def work_dir(self, worker: int) -> Path:
        """Worker ``worker``'s work directory: one folder per application, one per executor."""
        return self.log_dir / f"work-{worker}"

    def app_conf(self, executor_memory: str | None = None) -> dict[str, str]:
        """Settings of an application that uses the whole cluster: all its cores, one
        executor per worker with ``executor_memory`` (default: the worker's memory)."""
        return {
            "spark.cores.max": str(self.cores),
            "spark.executor.cores": str(self.cores_per_worker),
            "spark.executor.memory": executor_memory or self.memory_per_worker,
        }

    def stop(self, timeout_s: float = 20.0, *, say: supervisor.Say | None = None) -> None:
        """Stop the workers (and the executors they started), then the master."""
        for worker in self.workers:
            worker.stop(timeout_s, say=say)
        self.master.stop(timeout_s, say=say)


def _spark_class(
    args: list[str], *, name: str, log: Path, home: Path, env: dict[str, str]
) -> supervisor.Child:
    cmd = [str(home / "bin" / "spark-class"), *args]
    # detached: its own process group, so stopping it also ends the executors it forked
    return supervisor.spawn(cmd, name=name, log=log, env=env, detached=True)


def start_cluster(
    log_dir: Path,
    *,
    workers: int = 1,
    cores: int = 2,
    memory: str = "2g",
    host: str = "127.0.0.1",
    timeout_s: float = 120.0,
    say: supervisor.Say | None = None,
) -> SparkCluster:
    """Start a master and ``workers`` workers of ``cores`` cores and ``memory`` each, on free
    ports of ``host``; return once the master lists them all ``ALIVE``.

    Raises :class:`attune.supervisor.NotReady` (with the logs' last lines and paths) if the
    cluster is not up within ``timeout_s``; whatever was started is stopped again.
    """
    if workers < 1 or cores < 1:
        raise ValueError(f"a cluster needs at least 1 worker of 1 core (got {workers} x {cores})")
    home = spark_home()
    if not (home / "bin" / "spark-class").is_file():
        raise FileNotFoundError(
            f"{home / 'bin' / 'spark-class'} not found: install attune's spark extra "
            "(pyspark) in this virtualenv"
        )
    log_dir.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "SPARK_HOME": str(home),
        "SPARK_DAEMON_MEMORY": DAEMON_MEMORY,
        # both JVMs bind the loopback address, never the machine's outward interface
        "SPARK_LOCAL_IP": host,
    }
    port, ui = free_port(host), free_port(host)
    master_url, web_url = f"spark://{host}:{port}", f"http://{host}:{ui}"
    master = _spark_class(
        [MASTER_CLASS, "--host", host, "--port", str(port), "--webui-port", str(ui)],
        name=f"the Spark master at {master_url}",
        log=log_dir / "master.log",
        home=home,
        env=env,
    )
    cluster = SparkCluster(master_url, web_url, log_dir, cores, memory, master)
    try:
        for i in range(workers):
            args = [
                WORKER_CLASS, master_url, "--host", host,
                "--port", str(free_port(host)), "--webui-port", str(free_port(host)),
                "--cores", str(cores), "--memory", memory,
                "--work-dir", str(log_dir / f"work-{i}"),
            ]  # fmt: skip
            cluster.workers.append(
                _spark_class(
                    args,
                    name=f"Spark worker {i}",
                    log=log_dir / f"worker-{i}.log",
                    home=home,
                    env=env,
                )
            )
        supervisor.wait_ready(
            f"the Spark cluster at {master_url} ({workers} x {cores} cores)",
            _all_alive(cluster, workers_alive_probe(web_url, workers)),
            timeout_s,
            logs=[master.log, *(w.log for w in cluster.workers)],
            say=say,
            poll_s=0.5,
        )
    except BaseException:
        cluster.stop()
        raise
    if say is not None:
        say(f"Spark master {master_url} (UI {web_url}), {workers} x {cores} cores, {memory}")
    return cluster


def _all_alive(cluster: SparkCluster, probe: supervisor.Probe) -> supervisor.Probe:
    """``probe``, but give up at once when the master or a worker has exited."""

    def check() -> str | None:
        for child in (cluster.master, *cluster.workers):
            if not child.alive():
                raise supervisor.GaveUp(
                    f"{child.name} exited with code {child.exit_code} (log: {child.log})"
                )
        return probe()

    return check


@contextmanager
def running_cluster(
    log_dir: Path,
    *,
    workers: int = 1,
    cores: int = 2,
    memory: str = "2g",
    host: str = "127.0.0.1",
    timeout_s: float = 120.0,
    say: supervisor.Say | None = None,
) -> Iterator[SparkCluster]:
    """:func:`start_cluster` for the length of a ``with`` block; stopped on exit."""
    cluster = start_cluster(
        log_dir, workers=workers, cores=cores, memory=memory, host=host,
        timeout_s=timeout_s, say=say,
    )  # fmt: skip
    try:
        yield cluster
    finally:
        cluster.stop(say=say)


def wait_for_completed_app(
    cluster: SparkCluster, name: str, timeout_s: float = 60.0
) -> dict[str, Any]:
    """The master's record of the finished application ``name`` (the driver's JVM may outlive
    its Python by a moment before it unregisters)."""
    found: dict[str, Any] = {}

    def probe() -> str | None:
        try:
            apps = cluster.state().get("completedapps", [])
        except (OSError, urllib.error.URLError) as exc:
            return str(exc)
        for app in apps:
            if app.get("name") == name:
                found.update(app)
                return None
        return f"no completed application named {name!r} yet"

    supervisor.wait_ready(
        f"the application {name!r} to finish on {cluster.master_url}",
        probe,
        timeout_s,
        logs=[cluster.master.log],
        poll_s=0.5,
    )
    return found
