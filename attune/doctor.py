"""``attune doctor``: is this machine ready to run attune, and if not, what to do about it.

Each check is judged by a pure rule (:func:`judge`) over facts gathered once (:func:`observe`),
so the rules are tested with hand-made facts and the command only looks at the machine:

================  ==============================================================================
check             passes when
================  ==============================================================================
python            the running interpreter is 3.11 (the lock pins wheels built for it)
java              a Java runtime 17 or newer is on PATH (Spark 4.1 and the Kafka broker need it)
maven             Maven 3.8+ is on PATH (only needed to fetch the jars: a warning once they are in)
go                Go 1.24+ is on PATH (a warning: only ``make test`` needs it, to build the
                  compose checker of ``docker/``)
jars              the Spark jars (Delta, the Kafka connector) and the Kafka broker jars are in
                  ``var/jars``, at the versions ``jvm/*/pom.xml`` asks for
packages          every key package is installed at the version ``requirements.lock`` pins
redis-server      on PATH (a warning: ``attune stack up`` installs it from Debian when
                  ``redis.manage`` is on)
chromium          on PATH (a warning: only the tests' screenshots need it)
port <key>        each configured port is free, or held by attune's own process
disk              at least 2 GiB free where ``paths.var_dir`` lives (a warning under 10 GiB)
memory            at least 4 GiB available (a warning under 8: the demo runs Kafka, Spark,
                  TensorFlow and Airflow side by side)
cpus              at least 2 (a warning below)
================  ==============================================================================

Exit status 0 when nothing fails (warnings allowed), 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Literal

from attune.config import AttuneConfig
from attune.spark_session import REQUIRED_JAR_PREFIXES
from attune.supervisor import cmdline, read_record

Status = Literal["ok", "warn", "fail"]

GIB = 1024**3
DISK_FAIL_GIB, DISK_WARN_GIB = 2, 10
MEMORY_FAIL_GIB, MEMORY_WARN_GIB = 4, 8
JAVA_MIN, MAVEN_MIN, GO_MIN, PYTHON = (17,), (3, 8), (1, 24), (3, 11)
KEY_PACKAGES = (
    "apache-airflow",
    "pyspark",
    "delta-spark",
    "kafka-python",
    "redis",
    "tensorflow",
    "tf-keras",
    "tensorflow-recommenders",
    "tensorflow-serving-api",
    "streamlit",
)
"""The packages whose version matters most; ``requirements.lock`` pins every other one too."""


@dataclass(frozen=True)
class Check:
    """One line of the report: what was checked, how it went, what was seen, how to fix it."""

    name: str
    status: Status
    detail: str
    fix: str = ""


@dataclass(frozen=True)
class PortUse:
    """A configured port: who listens on it (None: free), and whether that is attune's own."""

    key: str
    host: str
    port: int
    holder: str | None = None
    ours: bool = False
    node: int = 0
    """The Kafka node whose port this is (``kafka.broker.nodes`` > 1); 0 for the others."""


@dataclass(frozen=True)
class Facts:
    """Everything the checks look at, gathered by :func:`observe`."""

    python: tuple[int, int, int]
    python_exe: str
    java: str | None
    maven: str | None
    go: str | None
    redis_server: str | None
    redis_manage: bool
    chromium: str | None
    spark_jars_dir: str
    spark_jars: tuple[str, ...]
    kafka_jars_dir: str
    kafka_jars: tuple[str, ...]
    pom: Mapping[str, str] = field(default_factory=dict)
    packages: Mapping[str, tuple[str | None, str | None]] = field(default_factory=dict)
    ports: tuple[PortUse, ...] = ()
    disk_path: str = ""
    disk_free: int = 0
    mem_total: int = 0
    mem_available: int = 0
    cpus: int = 0


# ----------------------------------------------------------------------------------------
# the rules (pure)


def version_tuple(text: str | None) -> tuple[int, ...] | None:
    """The leading dotted number of a version string: ``"17.0.15"`` -> (17, 0, 15),
    ``"1.24.4"`` -> (1, 24, 4); None when there is none."""
    if not text:
        return None
    m = re.search(r"(\d+(?:\.\d+)*)", text)
    if m is None:
        return None
    return tuple(int(p) for p in m.group(1).split("."))


def java_version(text: str | None) -> tuple[int, ...] | None:
    """Java's version: 9 and later as they read, 8 and earlier ``"1.8.0_392"`` -> (8, 0)."""
    parts = version_tuple(text)
    return parts[1:] if parts is not None and parts[:1] == (1,) and len(parts) > 1 else parts


def _gib(n: int) -> str:
    return f"{n / GIB:.1f} GiB"


def judge(f: Facts) -> list[Check]:
    """Every check's verdict on the facts (the module docstring lists the rules)."""
    out: list[Check] = []
    py = ".".join(map(str, f.python))
    if f.python[:2] == PYTHON:
        out.append(Check("python", "ok", f"{py} ({f.python_exe})"))
    else:
        out.append(
            Check(
                "python",
                "fail",
                f"{py} ({f.python_exe}); attune needs 3.11",
                "install Python 3.11 and run `make setup PYTHON=/path/to/python3.11` "
                "(remove .venv first if it was made with another version)",
            )
        )

    java = java_version(f.java)
    if java is None:
        out.append(
            Check(
                "java",
                "fail",
                "no `java` on PATH",
                "apt-get install openjdk-17-jre-headless (Spark and the Kafka broker need it)",
            )
        )
    elif java[:1] < JAVA_MIN:
        out.append(
            Check(
                "java",
                "fail",
                f"Java {f.java}; Spark 4.1 needs 17 or newer",
                "apt-get install openjdk-17-jre-headless, and put it first on PATH",
            )
        )
    else:
        out.append(Check("java", "ok", f"Java {f.java}"))

    jars_missing = _missing_jars(f)
    maven = version_tuple(f.maven)
    if maven is not None and maven[:2] >= MAVEN_MIN:
        out.append(Check("maven", "ok", f"Maven {f.maven}"))
    else:
        seen = "no `mvn` on PATH" if maven is None else f"Maven {f.maven}; `make jars` needs 3.8+"
        out.append(
            Check(
                "maven",
                "fail" if jars_missing else "warn",
                seen + ("" if jars_missing else " (the jars are already fetched)"),
                "apt-get install maven",
            )
        )

    go = version_tuple(f.go)
    if go is not None and go[:2] >= GO_MIN:
        out.append(Check("go", "ok", f"Go {f.go}"))
    else:
        out.append(
            Check(
                "go",
                "warn",
                ("no `go` on PATH" if go is None else f"Go {f.go}; 1.24+ needed")
                + ": `make test` builds docker/'s compose checker with it",
                "install Go 1.24+ (https://go.dev/doc/install), or make test GO=/path/to/go",
            )
        )

    if jars_missing:
        out.append(
            Check(
                "jars",
                "fail",
                "missing: " + ", ".join(jars_missing),
                "`make jars` fetches them from Maven Central "
                "(jvm/spark/pom.xml, jvm/kafka/pom.xml)",
            )
        )
    else:
        out.append(
            Check(
                "jars",
                "ok",
                f"{len(f.spark_jars)} Spark jars in {f.spark_jars_dir}, "
                f"{len(f.kafka_jars)} Kafka jars in {f.kafka_jars_dir}",
            )
        )

    wrong = []
    for name, (installed, locked) in sorted(f.packages.items()):
        if installed != locked:
            wrong.append(f"{name} {installed or 'not installed'} (lock: {locked or 'not pinned'})")
    spark_pom = f.pom.get("spark.version")
    pyspark = f.packages.get("pyspark", (None, None))[0]
    if spark_pom and pyspark and pyspark != spark_pom:
        wrong.append(f"pyspark {pyspark} but jvm/spark/pom.xml spark.version {spark_pom}")
    if wrong:
        out.append(
            Check(
                "packages",
                "fail",
                "; ".join(wrong),
                "`make setup` syncs .venv with requirements.lock (and `make jars` the jars "
                "with the poms)",
            )
        )
    else:
        out.append(Check("packages", "ok", f"{len(f.packages)} key packages as locked"))

    if f.redis_server:
        out.append(Check("redis-server", "ok", f.redis_server))
    else:
        out.append(
            Check(
                "redis-server",
                "warn" if f.redis_manage else "fail",
                "no `redis-server` on PATH"
                + (" (`attune stack up` installs it from Debian)" if f.redis_manage else ""),
                "apt-get install redis-server",
            )
        )
    if f.chromium:
        out.append(Check("chromium", "ok", f.chromium))
    else:
        out.append(
            Check(
                "chromium",
                "warn",
                "no `chromium` on PATH: the tests' UI screenshots need it",
                "`make browser` (Chromium from Debian)",
            )
        )

    for p in f.ports:
        name = f"port {p.key}" + (f" (node {p.node})" if p.node else "")
        where = f"{p.host}:{p.port}"
        if p.holder is None:
            out.append(Check(name, "ok", f"{where} free"))
        elif p.ours:
            out.append(Check(name, "ok", f"{where} held by attune's own {p.holder}"))
        else:
            env = "ATTUNE__" + p.key.upper().replace(".", "__")
            out.append(
                Check(
                    name,
                    "fail",
                    f"{where} is taken by {p.holder}",
                    f"stop that process, or give attune another port: `{p.key}` in your "
                    f"config file or {env}=<port>"
                    + (
                        f" (node {p.node} listens at it + {p.node} * kafka.broker.port_step)"
                        if p.node
                        else ""
                    ),
                )
            )

    disk = f"{_gib(f.disk_free)} free at {f.disk_path}"
    if f.disk_free < DISK_FAIL_GIB * GIB:
        out.append(
            Check(
                "disk",
                "fail",
                disk,
                f"free at least {DISK_FAIL_GIB} GiB there, or point paths.var_dir elsewhere",
            )
        )
    elif f.disk_free < DISK_WARN_GIB * GIB:
        out.append(
            Check(
                "disk",
                "warn",
                disk + f"; the lake, checkpoints and models of a long run want {DISK_WARN_GIB}",
                "free space, or point paths.var_dir at a larger disk",
            )
        )
    else:
        out.append(Check("disk", "ok", disk))

    mem = f"{_gib(f.mem_available)} available of {_gib(f.mem_total)}"
    if f.mem_available < MEMORY_FAIL_GIB * GIB:
        out.append(
            Check(
                "memory",
                "fail",
                mem,
                f"the demo needs about {MEMORY_FAIL_GIB} GiB: stop other programs first",
            )
        )
    elif f.mem_available < MEMORY_WARN_GIB * GIB:
        out.append(
            Check(
                "memory",
                "warn",
                mem + f"; Kafka, Spark, TensorFlow and Airflow together want {MEMORY_WARN_GIB}",
                "stop other programs, or run the layers on separate machines (docs/scale-out.md)",
            )
        )
    else:
        out.append(Check("memory", "ok", mem))

    if f.cpus < 2:
        out.append(
            Check(
                "cpus",
                "warn",
                f"{f.cpus} CPU: the speed layer and the API will compete for it",
                "use a machine with at least 2 cores",
            )
        )
    else:
        out.append(Check("cpus", "ok", f"{f.cpus} CPUs"))
    return out


def _missing_jars(f: Facts) -> list[str]:
    missing = [
        f"{f.spark_jars_dir}/{p}*.jar"
        for p in REQUIRED_JAR_PREFIXES
        if not any(j.startswith(p) for j in f.spark_jars)
    ]
    wanted = {
        "delta-spark_": f.pom.get("delta.version"),
        "spark-sql-kafka-0-10_": f.pom.get("spark.version"),
    }
    for prefix, version in wanted.items():
        have = [j for j in f.spark_jars if j.startswith(prefix)]
        if have and version and not any(j.endswith(f"-{version}.jar") for j in have):
            missing.append(f"{prefix}*-{version}.jar (found {', '.join(have)})")
    kafka = f.pom.get("kafka.version")
    broker = [j for j in f.kafka_jars if j.startswith("kafka_2.13-")]
    if not broker:
        missing.append(f"{f.kafka_jars_dir}/kafka_2.13-*.jar")
    elif kafka and not any(j == f"kafka_2.13-{kafka}.jar" for j in broker):
        missing.append(f"kafka_2.13-{kafka}.jar (found {', '.join(broker)})")
    return missing


# ----------------------------------------------------------------------------------------
# the facts (I/O)


def _run_version(cmd: Sequence[str], pattern: str) -> str | None:
    exe = shutil.which(cmd[0])
    if exe is None:
        return None
    try:
        done = subprocess.run(
            [exe, *cmd[1:]], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = re.sub(r"\x1b\[[0-9;]*m", "", done.stdout + done.stderr)  # Maven colours it
    m = re.search(pattern, text)
    return m.group(1) if m else "unknown version"


def _pom_versions(root: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for pom in (root / "jvm/spark/pom.xml", root / "jvm/kafka/pom.xml"):
        if pom.exists():
            for key, value in re.findall(r"<([a-z.]+\.version)>([^<]+)<", pom.read_text()):
                out.setdefault(key, value.strip())
    return out


def _locked(root: Path) -> dict[str, str]:
    lock = root / "requirements.lock"
    if not lock.exists():
        return {}
    pins = re.findall(r"^([A-Za-z0-9_.\-]+)==([^\s;]+)", lock.read_text(), flags=re.M)
    return {name.lower().replace("_", "-"): version for name, version in pins}


def _installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _listeners() -> dict[int, int | None]:
    """Listening TCP port -> pid (None when ``ss`` cannot say), from ``ss -ltnpH``."""
    try:
        done = subprocess.run(
            ["ss", "-ltnpH"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return {}
    out: dict[int, int | None] = {}
    for line in done.stdout.splitlines():
        cols = line.split()
        if len(cols) < 4:
            continue
        port = cols[3].rsplit(":", 1)[-1]
        if not port.isdigit():
            continue
        pid = re.search(r"pid=(\d+)", line)
        out.setdefault(int(port), int(pid.group(1)) if pid else None)
    return out


def _recorded_pids(cfg: AttuneConfig) -> set[int]:
    """Pids attune's supervisor recorded under the run folder (the stack, the servers)."""
    files = sorted(cfg.run_dir.glob("*.pid")) if cfg.run_dir.is_dir() else []
    return {r.pid for r in map(read_record, files) if r is not None}


def configured_ports(cfg: AttuneConfig) -> list[tuple[str, str, int, int]]:
    """(config key, host, port, node) of every port attune listens on; node is the Kafka node
    (0 for everything else): with ``kafka.broker.nodes`` above 1, node i listens at the key's
    port + i * ``kafka.broker.port_step``."""
    b = cfg.kafka.broker
    kafka = []
    for node in range(b.nodes):
        broker, controller = b.node_ports(node)
        kafka += [
            ("kafka.broker.port", b.host, broker, node),
            ("kafka.broker.controller_port", b.host, controller, node),
        ]
    return [
        *kafka,
        ("redis.port", cfg.redis.host, cfg.redis.port, 0),
        ("collector.port", cfg.collector.host, cfg.collector.port, 0),
        ("serving.rest_port", cfg.serving.host, cfg.serving.rest_port, 0),
        ("serving.grpc_port", cfg.serving.host, cfg.serving.grpc_port, 0),
        ("api.port", cfg.api.host, cfg.api.port, 0),
        ("airflow.port", cfg.airflow.host, cfg.airflow.port, 0),
        ("airflow.log_server_port", cfg.airflow.host, cfg.airflow.log_server_port, 0),
        ("dashboard.port", cfg.dashboard.host, cfg.dashboard.port, 0),
    ]


def observe(cfg: AttuneConfig, root: Path | None = None) -> Facts:
    """Look at this machine: versions, jars, ports, disk, memory."""
    root = Path.cwd() if root is None else root
    spark_dir = cfg.paths.resolve(cfg.spark.jars_dir)
    kafka_dir = cfg.paths.resolve("jars/kafka")
    locked = _locked(root)
    listeners = _listeners()
    recorded = _recorded_pids(cfg)
    var = str(cfg.paths.var_dir.resolve())
    ports = []
    for key, host, port, node in configured_ports(cfg):
        if port not in listeners:
            ports.append(PortUse(key, host, port, node=node))
            continue
        pid = listeners[port]
        cmd = cmdline(pid) if pid else ""
        launched = "-m attune.cli" in cmd or "/bin/attune " in f"{cmd} "
        ours = pid is not None and (pid in recorded or var in cmd or launched)
        program = Path(cmd.split(" ", 1)[0]).name if cmd else "a process"
        holder = f"{program} (pid {pid})" if pid else "a process `ss` cannot name"
        ports.append(PortUse(key, host, port, holder, ours, node))
    disk_path = cfg.paths.var_dir.resolve()
    while not disk_path.exists():
        disk_path = disk_path.parent
    usage = shutil.disk_usage(disk_path)
    meminfo = _meminfo()
    return Facts(
        python=(sys.version_info.major, sys.version_info.minor, sys.version_info.micro),
        python_exe=sys.executable,
        java=_run_version(["java", "-version"], r'version "([^"]+)"'),
        maven=_run_version(["mvn", "-v"], r"Apache Maven (\S+)"),
        go=_run_version(["go", "version"], r"go version go(\S+)"),
        redis_server=_run_version(["redis-server", "--version"], r"v=(\S+)"),
        redis_manage=cfg.redis.manage,
        chromium=shutil.which("chromium") or shutil.which("chromium-browser"),
        spark_jars_dir=str(spark_dir),
        spark_jars=tuple(sorted(p.name for p in spark_dir.glob("*.jar"))),
        kafka_jars_dir=str(kafka_dir),
        kafka_jars=tuple(sorted(p.name for p in kafka_dir.glob("*.jar"))),
        pom=_pom_versions(root),
        packages={name: (_installed(name), locked.get(name)) for name in KEY_PACKAGES},
        ports=tuple(ports),
        disk_path=str(disk_path),
        disk_free=usage.free,
        mem_total=meminfo.get("MemTotal", 0),
        mem_available=meminfo.get("MemAvailable", 0),
        cpus=os.cpu_count() or 1,
    )


def _meminfo() -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            name, _, rest = line.partition(":")
            value = rest.split()
            if value and value[0].isdigit():
                out[name] = int(value[0]) * 1024  # kB
    except OSError:
        pass
    return out


# ----------------------------------------------------------------------------------------
# the command


def render(checks: Sequence[Check]) -> str:
    """The report a person reads: one line per check, the fix under each that is not ok."""
    width = max(len(c.name) for c in checks)
    lines = []
    for c in checks:
        mark = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}[c.status]
        lines.append(f"{mark}  {c.name:<{width}}  {c.detail}")
        if c.status != "ok" and c.fix:
            lines.append(f"      {'':<{width}}  fix: {c.fix}")
    fails = sum(c.status == "fail" for c in checks)
    warns = sum(c.status == "warn" for c in checks)
    lines.append(
        "doctor: ready" + (f" ({warns} warning(s))" if warns else "")
        if not fails
        else f"doctor: {fails} problem(s) to fix first" + (f", {warns} warning(s)" if warns else "")
    )
    return "\n".join(lines)


def cmd_doctor(cfg: AttuneConfig, args: argparse.Namespace) -> int:
    checks = judge(observe(cfg))
    if getattr(args, "json", False):
        print(json.dumps([asdict(c) for c in checks], indent=2))
    else:
        print(render(checks))
    return 1 if any(c.status == "fail" for c in checks) else 0
