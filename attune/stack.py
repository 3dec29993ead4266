"""The local stack: one Kafka broker (KRaft) and Redis on this machine, and the declared topics.

``attune stack up`` is what turns a checkout into a running platform:

* **Kafka** runs as a single combined broker + controller straight from the Apache Kafka jars
  that ``make jars`` copied into ``var/jars/kafka`` (no Kafka distribution, no ZooKeeper). Its
  settings are written to ``var/kafka/server.properties`` from ``cfg.kafka.broker`` on every
  start, its storage (``var/kafka/data``) is formatted on first start, and it logs to
  ``var/log/kafka.log``. Automatic topic creation is off: only the topics declared in
  ``cfg.kafka.topics`` exist, with the partitions, retention and cleanup policy declared there.
* **Redis** is the Debian ``redis-server`` (installed with apt-get when missing), run with a
  config written to ``var/redis/redis.conf``: append-only file with an fsync every second, so
  the online store survives a restart. A Redis that already answers at ``cfg.redis`` is used
  as it is and never stopped by attune.

Processes are started detached (their own session, so they outlive the CLI) and their pids
are kept in ``var/run/*.pid``; ``attune stack down`` stops only processes named there, after
checking the pid still belongs to the program attune started. Every step is idempotent:
running ``up`` on a running stack checks it and changes nothing that is already right.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from attune.config import AttuneConfig, TopicConfig

if TYPE_CHECKING:
    from kafka.admin import KafkaAdminClient

KAFKA_START_TIMEOUT_S = 90.0
REDIS_START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0
TOPICS_READY_TIMEOUT_S = 30.0
PROGRESS_EVERY_S = 3.0
LOG_TAIL_LINES = 30
NODE_ID = 1  # the one node of the local KRaft cluster

# Topic settings attune declares and keeps in line with the config.
MANAGED_TOPIC_CONFIGS = ("retention.ms", "cleanup.policy")


class StackError(RuntimeError):
    """A component could not be started, stopped or checked; the message says what to do."""


@dataclass(frozen=True)
class ComponentStatus:
    """Health of one part of the stack, as ``attune stack status`` shows it."""

    component: str
    address: str
    healthy: bool
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class StackPaths:
    """Where the stack keeps its files; everything lives under ``cfg.paths.var_dir``."""

    kafka_jars: Path
    kafka_dir: Path
    kafka_data: Path
    kafka_properties: Path
    kafka_log4j: Path
    kafka_log: Path
    kafka_out: Path
    kafka_pid: Path
    kafka_external: Path
    redis_dir: Path
    redis_conf: Path
    redis_log: Path
    redis_out: Path
    redis_pid: Path
    redis_external: Path


def stack_paths(cfg: AttuneConfig) -> StackPaths:
    r = cfg.paths.resolve
    log, run = cfg.log_dir, cfg.run_dir
    return StackPaths(
        kafka_jars=r("jars/kafka"),
        kafka_dir=r("kafka"),
        kafka_data=r("kafka/data"),
        kafka_properties=r("kafka/server.properties"),
        kafka_log4j=r("kafka/log4j2.xml"),
        kafka_log=log / "kafka.log",
        kafka_out=log / "kafka.out",
        kafka_pid=run / "kafka.pid",
        kafka_external=run / "kafka.external",
        redis_dir=r("redis"),
        redis_conf=r("redis/redis.conf"),
        redis_log=log / "redis.log",
        redis_out=log / "redis.out",
        redis_pid=run / "redis.pid",
        redis_external=run / "redis.external",
    )


def _say(message: str) -> None:
    print(f"stack: {message}", flush=True)


# ----------------------------------------------------------------------------------------
# Addresses


def _split_hostport(address: str, default_port: int) -> tuple[str, int]:
    host, sep, port = address.strip().rpartition(":")
    if not sep:
        return address.strip(), default_port
    try:
        return host.strip("[]"), int(port)
    except ValueError:
        raise StackError(f"bad address {address!r}: expected HOST:PORT") from None


def bootstrap_addresses(cfg: AttuneConfig) -> list[tuple[str, int]]:
    """``cfg.kafka.bootstrap_servers`` as (host, port) pairs."""
    servers = [s for s in cfg.kafka.bootstrap_servers.split(",") if s.strip()]
    if not servers:
        raise StackError("kafka.bootstrap_servers is empty; set it to HOST:PORT[,HOST:PORT...]")
    return [_split_hostport(s, 9092) for s in servers]


def _resolve_ip(host: str) -> str:
    try:
        return socket.gethostbyname(host)
    except OSError:
        return host


def _same_endpoint(a: tuple[str, int], b: tuple[str, int]) -> bool:
    return a[1] == b[1] and _resolve_ip(a[0]) == _resolve_ip(b[0])


def _port_open(host: str, port: int, timeout_s: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


# ----------------------------------------------------------------------------------------
# Processes


# Popen objects of the processes this Python process started, so they are reaped (a stopped
# child would otherwise linger as a zombie and still look alive to kill(pid, 0)).
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def _pid_alive(pid: int) -> bool:
    child = _CHILDREN.get(pid)
    if child is not None:
        return child.poll() is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    # the state is the first field after the parenthesised command name; Z = zombie
    return stat.rpartition(")")[2].split()[0] != "Z"


def _cmdline(pid: int) -> str:
    """The command line of ``pid`` ("" if gone). It reads as empty for a moment while the
    process is in exec (just after we spawned it), so an empty answer is retried briefly."""
    for _ in range(20):
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return ""
        if raw:
            return raw.replace(b"\0", b" ").decode(errors="replace")
        time.sleep(0.01)
    return ""


@dataclass(frozen=True)
class PidRecord:
    """A process attune started, as ``var/run/NAME.pid`` records it: pid and served address."""

    pid: int
    address: str


def _read_record(path: Path) -> PidRecord | None:
    try:
        fields = path.read_text().split()
        return PidRecord(int(fields[0]), fields[1] if len(fields) > 1 else "")
    except (OSError, ValueError, IndexError):
        return None


def _read_pid(path: Path) -> int | None:
    record = _read_record(path)
    return record.pid if record is not None else None


def _live_record(pid_file: Path, program: Callable[[str], bool]) -> PidRecord | None:
    """The record in ``pid_file`` if its process is alive and still runs ``program``.

    A stale file (process gone, or its pid reused by another program) is removed. Neither test
    depends on the caller's config, so a caller with other ports cannot disown a live process.
    """
    record = _read_record(pid_file)
    if record is None:
        pid_file.unlink(missing_ok=True)
        return None
    if _pid_alive(record.pid) and program(_cmdline(record.pid)):
        return record
    pid_file.unlink(missing_ok=True)
    return None


def _owned_pid(pid_file: Path, program: Callable[[str], bool], address: str) -> int | None:
    """The pid of the live ``program`` attune started to serve ``address``, else None."""
    record = _live_record(pid_file, program)
    return record.pid if record is not None and record.address == address else None


def _recorded_for(
    pid_file: Path, program: Callable[[str], bool], address: str, name: str
) -> int | None:
    """Like :func:`_owned_pid`, but a live process recorded for another address is an error:
    starting a second one would share its data folder."""
    record = _live_record(pid_file, program)
    if record is None:
        return None
    if record.address != address:
        raise StackError(
            f"{pid_file} records a {name} attune started for {record.address} (pid "
            f"{record.pid}), but the config now says {address}. Stop it with the config it "
            "was started with (`attune stack down`), or give this config its own paths.var_dir"
        )
    return record.pid


def _spawn(cmd: list[str], out_path: Path, pid_file: Path, cwd: Path, address: str) -> int:
    """Start ``cmd`` detached (own session, stdin closed, output to ``out_path``); record it."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    with out_path.open("ab") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
    _CHILDREN[proc.pid] = proc
    pid_file.write_text(f"{proc.pid} {address}\n")
    return proc.pid


def _stop(pid: int, name: str, timeout_s: float = STOP_TIMEOUT_S) -> bool:
    """SIGTERM, wait up to ``timeout_s``, then SIGKILL; True if it stopped on SIGTERM."""
    start = time.monotonic()
    graceful = True
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return True
    next_note = start + PROGRESS_EVERY_S
    while _pid_alive(pid):
        now = time.monotonic()
        if now - start > timeout_s:
            _say(f"{name} (pid {pid}) did not stop within {timeout_s:.0f}s; sending SIGKILL")
            graceful = False
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + 10
            while _pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            break
        if now >= next_note:
            _say(f"waiting for {name} (pid {pid}) to stop... {now - start:.0f}s")
            next_note = now + PROGRESS_EVERY_S
        time.sleep(0.1)
    _CHILDREN.pop(pid, None)
    _say(f"{name} stopped (pid {pid}, {time.monotonic() - start:.1f}s)")
    return graceful


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"  ({path} does not exist)"
    return "\n".join("  | " + line for line in text[-lines:]) or f"  ({path} is empty)"


def _wait_until(
    what: str,
    probe: Callable[[], str | None],
    timeout_s: float,
    alive: Callable[[], bool] | None = None,
    logs: Iterable[Path] = (),
) -> float:
    """Poll ``probe`` (None = ready, else the reason it is not) until ready; seconds waited.

    Prints progress every few seconds. Raises :class:`StackError` with the reason and the
    last lines of ``logs`` on timeout, or at once if ``alive`` says the process has died.
    """
    start = time.monotonic()
    next_note = start + PROGRESS_EVERY_S
    reason: str | None = "not checked yet"
    while True:
        reason = probe()
        elapsed = time.monotonic() - start
        if reason is None:
            return elapsed
        if alive is not None and not alive():
            failure = f"{what}: the process exited during start-up ({reason})"
            break
        if elapsed > timeout_s:
            failure = f"{what}: not ready after {timeout_s:.0f}s ({reason})"
            break
        if time.monotonic() >= next_note:
            _say(f"waiting for {what}: {reason} ({elapsed:.0f}s of at most {timeout_s:.0f}s)")
            next_note = time.monotonic() + PROGRESS_EVERY_S
        time.sleep(0.25)
    details = "\n".join(f"last lines of {p}:\n{_tail(p)}" for p in logs)
    raise StackError(f"{failure}\n{details}" if details else failure)


# ----------------------------------------------------------------------------------------
# Kafka


def kafka_cluster_id() -> str:
    """A new KRaft cluster id: 16 random bytes, URL-safe base64 without padding (22 chars).

    Kafka's own generator never returns an id starting with ``-`` (it would read as a flag).
    """
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cid.startswith("-"):
            return cid


def kafka_server_properties(cfg: AttuneConfig, data_dir: Path) -> str:
    """``server.properties`` for one combined broker + controller node, from ``cfg.kafka``."""
    b = cfg.kafka.broker
    broker, controller = f"{b.host}:{b.port}", f"{b.host}:{b.controller_port}"
    props = {
        "process.roles": "broker,controller",
        "node.id": str(NODE_ID),
        # with `format --standalone` the quorum is dynamic (KIP-853): bootstrap servers, not
        # the static controller.quorum.voters
        "controller.quorum.bootstrap.servers": controller,
        "listeners": f"PLAINTEXT://{broker},CONTROLLER://{controller}",
        "advertised.listeners": f"PLAINTEXT://{broker},CONTROLLER://{controller}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(data_dir),
        "num.partitions": str(b.num_partitions_default),
        # one node: every internal topic has one replica, and clients never create topics
        "auto.create.topics.enable": "false",
        "default.replication.factor": "1",
        "min.insync.replicas": "1",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "10",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "10",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        # consumer groups form at once instead of waiting 3 s for more members
        "group.initial.rebalance.delay.ms": "0",
        "num.recovery.threads.per.data.dir": "2",
        "log.retention.check.interval.ms": "300000",
    }
    header = (
        "# Written by `attune stack up` from the kafka.broker section of the attune config.\n"
        "# Edits here are overwritten on the next start; change the config instead.\n"
    )
    return header + "".join(f"{k}={v}\n" for k, v in props.items())


def kafka_log4j2_xml(log_file: Path) -> str:
    """log4j2 configuration sending the broker's logs to ``log_file`` (rolled at 50 MB)."""
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<!-- Written by `attune stack up`: the broker's logs go to {log_file}. -->
<Configuration status="WARN">
  <Appenders>
    <RollingFile name="file" fileName="{log_file}" filePattern="{log_file}.%i">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
      <Policies><SizeBasedTriggeringPolicy size="50 MB"/></Policies>
      <DefaultRolloverStrategy max="3"/>
    </RollingFile>
  </Appenders>
  <Loggers>
    <Logger name="org.apache.kafka.clients" level="WARN"/>
    <Logger name="state.change.logger" level="WARN"/>
    <Logger name="kafka.request.logger" level="WARN"/>
    <Root level="INFO"><AppenderRef ref="file"/></Root>
  </Loggers>
</Configuration>
"""


def _kafka_classpath(paths: StackPaths) -> str:
    if not any(paths.kafka_jars.glob("kafka_2.13-*.jar")):
        raise StackError(
            f"the Kafka broker jars are not in {paths.kafka_jars}; fetch them from Maven Central "
            "with `make jars` (jvm/kafka/pom.xml)"
        )
    return str(paths.kafka_jars / "*")


def _java() -> str:
    java = shutil.which("java")
    if java is None:
        raise StackError("`java` is not on PATH; the Kafka broker needs a Java 17 runtime")
    return java


def _java_cmd(
    cfg: AttuneConfig, paths: StackPaths, main_class: str, *args: str, jvm: Iterable[str] = ()
) -> list[str]:
    return [
        _java(),
        *jvm,
        f"-Xmx{cfg.kafka.broker.heap}",
        "-XX:+UseG1GC",
        "-XX:MaxGCPauseMillis=20",
        "-XX:+ExitOnOutOfMemoryError",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={paths.kafka_log4j}",
        "-cp",
        _kafka_classpath(paths),
        main_class,
        *args,
    ]


def kafka_class_archive(paths: StackPaths) -> Path:
    """Where the broker's class-data-sharing archive lives, named after what it depends on.

    The JVM writes it when the broker first exits cleanly and maps it on every later start,
    which halves start-up (about 5 s to 2.5 s on two busy cores): that is what makes the
    ``kafka_down`` + ``kafka_up`` of a broker-outage test cheap. New jars or another JVM give
    a new name, so a stale archive is never used (the JVM would ignore it anyway).
    """
    # the JVM also checks the class path itself, so a moved var/ must not reuse the name
    digest = hashlib.sha256(f"{os.path.realpath(_java())}|{paths.kafka_jars.resolve()}".encode())
    for jar in sorted(paths.kafka_jars.glob("*.jar")):
        st = jar.stat()
        digest.update(f"{jar.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return paths.kafka_dir / f"classes-{digest.hexdigest()[:16]}.jsa"


def _class_sharing_flags(paths: StackPaths) -> list[str]:
    archive = kafka_class_archive(paths)
    for old in paths.kafka_dir.glob("classes-*.jsa"):
        if old != archive:
            old.unlink(missing_ok=True)
    if archive.exists():
        return ["-Xshare:auto", f"-XX:SharedArchiveFile={archive}"]
    return [f"-XX:ArchiveClassesAtExit={archive}"]


def _is_our_kafka(paths: StackPaths) -> Callable[[str], bool]:
    return lambda cmdline: "kafka.Kafka" in cmdline and str(paths.kafka_properties) in cmdline


def _kafka_address(cfg: AttuneConfig) -> str:
    return f"{cfg.kafka.broker.host}:{cfg.kafka.broker.port}"


def _kafka_pid(cfg: AttuneConfig) -> int | None:
    paths = stack_paths(cfg)
    return _owned_pid(paths.kafka_pid, _is_our_kafka(paths), _kafka_address(cfg))


def _format_kafka_storage(cfg: AttuneConfig, paths: StackPaths) -> None:
    cluster_id = kafka_cluster_id()
    _say(f"formatting Kafka storage in {paths.kafka_data} (new cluster id {cluster_id})")
    cmd = _java_cmd(
        cfg,
        paths,
        "kafka.tools.StorageTool",
        "format",
        "-t",
        cluster_id,
        "-c",
        str(paths.kafka_properties),
        "--standalone",
    )
    result = subprocess.run(
        cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120, check=False
    )
    if result.returncode != 0:
        raise StackError(
            f"formatting Kafka storage failed (exit {result.returncode}):\n"
            f"{result.stdout}{result.stderr}\n"
            f"If {paths.kafka_data} holds a broken earlier attempt, remove it and retry."
        )


@contextmanager
def kafka_admin(cfg: AttuneConfig, timeout_s: float = 5.0) -> Iterator[KafkaAdminClient]:
    """A kafka-python admin client on ``cfg.kafka.bootstrap_servers``, closed on exit."""
    from kafka.admin import KafkaAdminClient

    ms = int(timeout_s * 1000)
    admin = KafkaAdminClient.__new__(KafkaAdminClient)
    try:
        admin.__init__(
            bootstrap_servers=cfg.kafka.bootstrap_servers,
            client_id="attune-stack",
            bootstrap_timeout_ms=ms,
            request_timeout_ms=ms,
        )
    except Exception:
        # kafka-python starts its I/O thread before bootstrapping and leaves it running when
        # bootstrapping fails; stop it so that polling a starting broker leaks nothing.
        net = getattr(admin, "_net", None)
        if net is not None:
            net.stop()
        raise
    try:
        yield admin
    finally:
        admin.close()


def _kafka_cluster(cfg: AttuneConfig, timeout_s: float = 3.0) -> dict[str, Any] | None:
    """``describe_cluster`` of the bootstrap servers, or None if nothing answers."""
    if not any(_port_open(h, p) for h, p in bootstrap_addresses(cfg)):
        return None
    try:
        with kafka_admin(cfg, timeout_s) as admin:
            return dict(admin.describe_cluster())
    except Exception:
        return None


def _kafka_not_ready(cfg: AttuneConfig) -> str | None:
    """Why the broker is not ready to serve the declared topics yet (None = ready)."""
    if not any(_port_open(h, p) for h, p in bootstrap_addresses(cfg)):
        return "port not open yet"
    try:
        with kafka_admin(cfg, 3.0) as admin:
            cluster = admin.describe_cluster()
            brokers = [b for b in cluster.get("brokers", []) if not b.get("is_fenced")]
            if not brokers:
                return "no unfenced broker in the metadata yet"
            names = [t.name for t in cfg.kafka.topics.values()]
            present = [t for t in admin.describe_topics(names) if t.get("error_code", 0) == 0]
            for topic in present:
                leaderless = [
                    p["partition_index"]
                    for p in topic.get("partitions", [])
                    if p.get("leader_id", -1) < 0
                ]
                if leaderless:
                    return f"topic {topic['name']} has no leader yet for partitions {leaderless}"
    except Exception as exc:
        return f"metadata request failed: {type(exc).__name__}: {exc}"
    return None


def kafka_up(cfg: AttuneConfig) -> None:
    """Start the local KRaft broker (or adopt one that already answers) and wait until ready.

    Ready means the broker answers a metadata request, is unfenced, and every declared topic
    that already exists has a leader for each partition (so producers work at once after a
    restart). Raises :class:`StackError` with the end of the broker log when it cannot start.
    """
    paths = stack_paths(cfg)
    b = cfg.kafka.broker
    address = f"{b.host}:{b.port}"
    logs = (paths.kafka_log, paths.kafka_out)

    pid = _recorded_for(paths.kafka_pid, _is_our_kafka(paths), address, "Kafka broker")
    if pid is not None:
        running: int = pid
        _say(f"Kafka already running (pid {pid}), checking it")
        waited = _wait_until(
            f"Kafka at {address}",
            lambda: _kafka_not_ready(cfg),
            KAFKA_START_TIMEOUT_S,
            alive=lambda: _pid_alive(running),
            logs=logs,
        )
        _say(f"Kafka ready at {address} (pid {pid}, {waited:.1f}s)")
        return

    cluster = _kafka_cluster(cfg)
    if cluster is not None:
        paths.kafka_external.parent.mkdir(parents=True, exist_ok=True)
        paths.kafka_external.write_text(f"{cfg.kafka.bootstrap_servers}\n")
        _say(
            f"a Kafka broker already answers at {cfg.kafka.bootstrap_servers} "
            f"(cluster {cluster.get('cluster_id')}); using it. It was not started by attune, "
            "so `attune stack down` leaves it running"
        )
        return
    paths.kafka_external.unlink(missing_ok=True)

    own = (b.host, b.port)
    if not any(_same_endpoint(own, a) for a in bootstrap_addresses(cfg)):
        raise StackError(
            f"no Kafka answers at kafka.bootstrap_servers={cfg.kafka.bootstrap_servers}, and "
            f"the local broker attune runs would listen at {address}, which clients would "
            "not use. Make them agree: set kafka.bootstrap_servers to "
            f"{address} or kafka.broker.host/port to the bootstrap address"
        )
    for port, key in ((b.port, "port"), (b.controller_port, "controller_port")):
        if _port_open(b.host, port):
            raise StackError(
                f"{b.host}:{port} is in use by a program that is not a Kafka broker attune "
                f"can talk to; stop it or choose another kafka.broker.{key}"
            )

    _kafka_classpath(paths)  # fail early, before writing anything
    paths.kafka_data.mkdir(parents=True, exist_ok=True)
    cfg.log_dir.mkdir(parents=True, exist_ok=True)
    paths.kafka_properties.write_text(kafka_server_properties(cfg, paths.kafka_data))
    paths.kafka_log4j.write_text(kafka_log4j2_xml(paths.kafka_log))
    if not (paths.kafka_data / "meta.properties").exists():
        _format_kafka_storage(cfg, paths)

    jvm = _class_sharing_flags(paths)
    cmd = _java_cmd(cfg, paths, "kafka.Kafka", str(paths.kafka_properties), jvm=jvm)
    pid = _spawn(cmd, paths.kafka_out, paths.kafka_pid, paths.kafka_dir, address)
    _say(f"Kafka starting (pid {pid}, heap {b.heap}, log {paths.kafka_log})")
    started_pid = pid
    try:
        waited = _wait_until(
            f"Kafka at {address}",
            lambda: _kafka_not_ready(cfg),
            KAFKA_START_TIMEOUT_S,
            alive=lambda: _pid_alive(started_pid),
            logs=logs,
        )
    except StackError:
        if not _pid_alive(started_pid):  # an archive of a failed start would be incomplete
            kafka_class_archive(paths).unlink(missing_ok=True)
        raise
    _say(f"Kafka ready at {address} (controller {b.host}:{b.controller_port}, {waited:.1f}s)")


def kafka_down(cfg: AttuneConfig) -> None:
    """Stop the broker ``kafka_up`` started (SIGTERM, then SIGKILL); leave any other alone."""
    paths = stack_paths(cfg)
    pid = _kafka_pid(cfg)
    if pid is None:
        other = _live_record(paths.kafka_pid, _is_our_kafka(paths))
        if other is not None:
            _say(
                f"the Kafka broker attune started (pid {other.pid}) serves {other.address}, "
                f"not {_kafka_address(cfg)}; leaving it running (stop it with its own config)"
            )
        elif paths.kafka_external.exists():
            _say("Kafka was not started by attune; leaving it running")
            paths.kafka_external.unlink(missing_ok=True)
        else:
            _say("Kafka is not running (no live pid in var/run/kafka.pid)")
        return
    _say(f"stopping Kafka (pid {pid})")
    if not _stop(pid, "Kafka"):
        # killed, perhaps while writing its class archive: drop it, the next clean stop redoes it
        kafka_class_archive(paths).unlink(missing_ok=True)
    paths.kafka_pid.unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------
# Topics


@dataclass(frozen=True)
class ExistingTopic:
    """What the broker reports about a topic."""

    name: str
    partitions: int
    replication_factor: int
    configs: Mapping[str, str]
    leaderless: tuple[int, ...] = ()


@dataclass
class TopicPlan:
    """What ``create_topics`` must do to make the broker match the declared topics."""

    create: list[TopicConfig] = field(default_factory=list)
    add_partitions: dict[str, tuple[int, int]] = field(default_factory=dict)  # (now, declared)
    alter_configs: dict[str, dict[str, str]] = field(default_factory=dict)
    problems: dict[str, list[str]] = field(default_factory=dict)  # topic name -> problems
    unchanged: list[str] = field(default_factory=list)

    def problem(self, topic: str, message: str) -> None:
        self.problems.setdefault(topic, []).append(message)

    def all_problems(self) -> list[str]:
        return [m for messages in self.problems.values() for m in messages]


def _partitions(n: int) -> str:
    return f"{n} partition" if n == 1 else f"{n} partitions"


def _same_config(key: str, a: str, b: str) -> bool:
    if key == "cleanup.policy":  # a list: "compact,delete" == "delete,compact"
        return sorted(a.replace(" ", "").split(",")) == sorted(b.replace(" ", "").split(","))
    return a == b


def plan_topics(
    declared: Mapping[str, TopicConfig], existing: Mapping[str, ExistingTopic]
) -> TopicPlan:
    """Compare the declared topics (role -> config) with the broker's; pure, no I/O.

    Missing topics are created; too few partitions are added (Kafka can add partitions);
    configs that differ are set to the declared value. What Kafka cannot change in place
    (fewer partitions, another replication factor) becomes a problem with the way out.
    """
    plan = TopicPlan()
    seen: dict[str, str] = {}
    for role, topic in declared.items():
        where = f"kafka.topics.{role}"
        if topic.name in seen:
            plan.problem(
                topic.name,
                f"{where} and kafka.topics.{seen[topic.name]} both name topic {topic.name!r}; "
                "give each role its own topic",
            )
            continue
        seen[topic.name] = role
        have = existing.get(topic.name)
        if have is None:
            plan.create.append(topic)
            continue
        changed = False
        if have.partitions < topic.partitions:
            plan.add_partitions[topic.name] = (have.partitions, topic.partitions)
            changed = True
        elif have.partitions > topic.partitions:
            plan.problem(
                topic.name,
                f"topic {topic.name!r} has {have.partitions} partitions but "
                f"{where}.partitions is {topic.partitions}; Kafka cannot remove partitions. "
                f"Set {where}.partitions to {have.partitions}, or delete the topic (its data "
                "is lost) and run `attune stack up` again",
            )
        if have.replication_factor != topic.replication_factor:
            plan.problem(
                topic.name,
                f"topic {topic.name!r} has replication factor {have.replication_factor} but "
                f"{where}.replication_factor is {topic.replication_factor}; attune does not "
                f"reassign replicas. Set {where}.replication_factor to "
                f"{have.replication_factor}, or delete and recreate the topic",
            )
        wanted = topic.topic_configs()
        diff = {
            k: v
            for k, v in wanted.items()
            if k not in have.configs or not _same_config(k, have.configs[k], v)
        }
        if diff:
            plan.alter_configs[topic.name] = diff
            changed = True
        if not changed:
            plan.unchanged.append(topic.name)
    return plan


def _existing_topics(admin: KafkaAdminClient, names: list[str]) -> dict[str, ExistingTopic]:
    from kafka.admin import ConfigResource, ConfigResourceType

    described = [t for t in admin.describe_topics(names) if t.get("error_code", 0) == 0]
    if not described:
        return {}
    resources = [
        ConfigResource(ConfigResourceType.TOPIC, t["name"], list(MANAGED_TOPIC_CONFIGS))
        for t in described
    ]
    configs = admin.describe_configs(resources, config_filter="all").get("topic", {})
    out = {}
    for t in described:
        parts = t.get("partitions", [])
        out[t["name"]] = ExistingTopic(
            name=t["name"],
            partitions=len(parts),
            replication_factor=max((len(p.get("replica_nodes", [])) for p in parts), default=0),
            configs={k: str(v.get("value")) for k, v in configs.get(t["name"], {}).items()},
            leaderless=tuple(
                sorted(p["partition_index"] for p in parts if p.get("leader_id", -1) < 0)
            ),
        )
    return out


def create_topics(cfg: AttuneConfig) -> None:
    """Make the broker's topics match ``cfg.kafka.topics``; idempotent.

    Creates missing topics, adds partitions up to the declared count, sets retention and
    cleanup policy to the declared values, then waits until every partition has a leader.
    Raises :class:`StackError` listing whatever could not be made to match.
    """
    from kafka.errors import TopicAlreadyExistsError, for_code

    declared = cfg.kafka.topics
    names = [t.name for t in declared.values()]
    with ExitStack() as exits:
        try:
            if not any(_port_open(h, p) for h, p in bootstrap_addresses(cfg)):
                raise ConnectionRefusedError("no bootstrap server accepts connections")
            admin = exits.enter_context(kafka_admin(cfg, 10.0))
        except Exception as exc:
            raise StackError(
                f"cannot reach Kafka at {cfg.kafka.bootstrap_servers} to create the topics "
                f"({type(exc).__name__}: {exc}); start it with `attune stack up`"
            ) from None
        plan = plan_topics(declared, _existing_topics(admin, names))
        failures = plan.all_problems()
        not_created: set[str] = set()
        by_name = declared_by_name(cfg)
        if plan.create:
            request = {
                t.name: {
                    "num_partitions": t.partitions,
                    "replication_factor": t.replication_factor,
                    "configs": t.topic_configs(),
                }
                for t in plan.create
            }
            response = admin.create_topics(request, raise_errors=False)
            for result in response.get("topics", []):
                error = for_code(result.get("error_code", 0))
                topic = by_name[result["name"]]
                if result.get("error_code", 0) == 0 or error is TopicAlreadyExistsError:
                    _say(
                        f"created topic {topic.name} ({_partitions(topic.partitions)}, "
                        f"replication {topic.replication_factor}, "
                        + ", ".join(f"{k}={v}" for k, v in topic.topic_configs().items())
                        + ")"
                    )
                else:
                    not_created.add(topic.name)
                    failures.append(
                        f"creating topic {result['name']!r} failed: {error.__name__}: "
                        f"{result.get('error_message') or ''} (check the declared partitions, "
                        "replication factor and configs; this stack has one broker)"
                    )
        for name, (now, wanted) in plan.add_partitions.items():
            try:
                admin.create_partitions({name: wanted}, raise_errors=True)
            except Exception as exc:
                failures.append(f"adding partitions to topic {name!r} failed: {exc}")
            else:
                _say(f"topic {name}: partitions {now} -> {wanted}")
        if plan.alter_configs:
            from kafka.admin import ConfigResource, ConfigResourceType

            resources = [
                ConfigResource(ConfigResourceType.TOPIC, name, dict(changes))
                for name, changes in plan.alter_configs.items()
            ]
            try:
                results = admin.alter_configs(resources).get("topic", {})
            except Exception as exc:
                results = {name: f"{type(exc).__name__}: {exc}" for name in plan.alter_configs}
            for name, changes in plan.alter_configs.items():
                outcome = results.get(name, "no answer")
                if outcome == "OK":
                    _say(f"topic {name}: set " + ", ".join(f"{k}={v}" for k, v in changes.items()))
                else:
                    failures.append(f"changing the configs of topic {name!r} failed: {outcome}")
        for name in plan.unchanged:
            _say(f"topic {name} exists as declared")
        ready = [n for n in names if n not in not_created]
        try:
            admin.wait_for_topics(ready, timeout_ms=int(TOPICS_READY_TIMEOUT_S * 1000))
        except Exception as exc:
            failures.append(f"topics not ready: {exc}")
        # New partitions and config changes reach the broker's metadata asynchronously (KRaft):
        # wait until describing the topics shows them, so a caller reads back what it declared.
        deadline = time.monotonic() + TOPICS_READY_TIMEOUT_S
        while (plan.alter_configs or plan.add_partitions) and time.monotonic() < deadline:
            settled = plan_topics(declared, _existing_topics(admin, names))
            if not settled.alter_configs and not settled.add_partitions:
                break
            time.sleep(0.2)
    if failures:
        raise StackError(
            "the Kafka topics do not match kafka.topics in the config:\n"
            + "\n".join(f"  - {f}" for f in failures)
        )


def declared_by_name(cfg: AttuneConfig) -> dict[str, TopicConfig]:
    return {t.name: t for t in cfg.kafka.topics.values()}


# ----------------------------------------------------------------------------------------
# Redis


def redis_conf(cfg: AttuneConfig, paths: StackPaths) -> str:
    """``redis.conf`` for the local online store, from ``cfg.redis``."""
    lines = [
        "# Written by `attune stack up` from the redis section of the attune config.",
        "# Edits here are overwritten on the next start; change the config instead.",
        f"bind {_resolve_ip(cfg.redis.host)}",
        f"port {cfg.redis.port}",
        "protected-mode yes",
        "daemonize no",
        f'dir "{paths.redis_dir}"',
        f'logfile "{paths.redis_log}"',
        "loglevel notice",
        "databases 16",
        "# the online store must survive a restart: append-only file, fsync once a second",
        "appendonly yes",
        "appendfsync everysec",
        "save 3600 1 300 100 60 10000",
    ]
    return "\n".join(lines) + "\n"


def _redis_client(cfg: AttuneConfig, timeout_s: float = 1.0) -> Any:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    # No retries: a health probe must answer at once (redis-py retries 3 times with backoff).
    return redis.Redis(
        host=cfg.redis.host,
        port=cfg.redis.port,
        db=cfg.redis.db,
        socket_connect_timeout=timeout_s,
        socket_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
    )


def _redis_not_ready(cfg: AttuneConfig) -> str | None:
    import redis

    client = _redis_client(cfg)
    try:
        client.ping()
    except redis.exceptions.BusyLoadingError:
        return "loading its data set"
    except redis.exceptions.RedisError as exc:
        return f"PING failed: {exc}"
    finally:
        client.close()
    return None


def _is_redis(cmdline: str) -> bool:
    return "redis-server" in cmdline


def _redis_address(cfg: AttuneConfig) -> str:
    return f"{cfg.redis.host}:{cfg.redis.port}"


def _redis_pid(cfg: AttuneConfig) -> int | None:
    return _owned_pid(stack_paths(cfg).redis_pid, _is_redis, _redis_address(cfg))


def ensure_redis_server() -> str:
    """Path of ``redis-server``; installs the Debian package first when it is missing."""
    found = shutil.which("redis-server")
    if found:
        return found
    how = (
        "install it (Debian/Ubuntu: `apt-get install -y redis-server`), or start a Redis "
        "yourself and point redis.host/redis.port at it"
    )
    if shutil.which("apt-get") is None:
        raise StackError(f"redis-server is not installed and apt-get is not available; {how}")
    if os.geteuid() != 0:
        raise StackError(f"redis-server is not installed and installing needs root; {how}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # Keep the package from starting a system-wide Redis on 6379 (invoke-rc.d honours
    # policy-rc.d); attune runs its own with its own config.
    policy = Path("/usr/sbin/policy-rc.d")
    placed_policy = False
    if not policy.exists():
        policy.write_text("#!/bin/sh\n# temporary, written by attune stack up\nexit 101\n")
        policy.chmod(0o755)
        placed_policy = True
    try:
        for cmd in (
            ["apt-get", "update", "-q"],
            ["apt-get", "install", "-y", "-q", "--no-install-recommends", "redis-server"],
        ):
            _say("redis-server is missing; running: " + " ".join(cmd))
            result = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, check=False)
            if result.returncode != 0:
                raise StackError(f"`{' '.join(cmd)}` failed (exit {result.returncode}); {how}")
    finally:
        if placed_policy:
            policy.unlink(missing_ok=True)
    found = shutil.which("redis-server")
    if not found:
        raise StackError(f"redis-server is still not on PATH after apt-get install; {how}")
    return found


def redis_up(cfg: AttuneConfig) -> None:
    """Start redis-server with attune's config, or use a Redis that already answers.

    With ``redis.manage`` false, only checks that a Redis answers.
    """
    paths = stack_paths(cfg)
    address = f"{cfg.redis.host}:{cfg.redis.port}"
    logs = (paths.redis_log, paths.redis_out)

    pid = _recorded_for(paths.redis_pid, _is_redis, address, "Redis")
    if pid is not None:
        running_redis: int = pid
        _say(f"Redis already running (pid {pid}), checking it")
        waited = _wait_until(
            f"Redis at {address}",
            lambda: _redis_not_ready(cfg),
            REDIS_START_TIMEOUT_S,
            alive=lambda: _pid_alive(running_redis),
            logs=logs,
        )
        _say(f"Redis ready at {address} (pid {pid}, {waited:.1f}s)")
        return

    if _redis_not_ready(cfg) is None:
        paths.redis_external.parent.mkdir(parents=True, exist_ok=True)
        paths.redis_external.write_text(f"{address}\n")
        _say(
            f"a Redis already answers at {address}; using it. It was not started by attune, "
            "so `attune stack down` leaves it running"
        )
        return
    paths.redis_external.unlink(missing_ok=True)

    if not cfg.redis.manage:
        raise StackError(
            f"no Redis answers at {address} and redis.manage is false; start that Redis, or "
            "set redis.manage: true to let `attune stack up` run one"
        )
    if _port_open(cfg.redis.host, cfg.redis.port):
        raise StackError(
            f"{address} is in use by a program that does not answer Redis PING; stop it or "
            "choose another redis.port"
        )
    server = ensure_redis_server()
    paths.redis_dir.mkdir(parents=True, exist_ok=True)
    cfg.log_dir.mkdir(parents=True, exist_ok=True)
    paths.redis_conf.write_text(redis_conf(cfg, paths))
    cmd = [server, str(paths.redis_conf)]
    pid = _spawn(cmd, paths.redis_out, paths.redis_pid, paths.redis_dir, address)
    _say(f"Redis starting (pid {pid}, data {paths.redis_dir}, log {paths.redis_log})")
    started_pid = pid
    waited = _wait_until(
        f"Redis at {address}",
        lambda: _redis_not_ready(cfg),
        REDIS_START_TIMEOUT_S,
        alive=lambda: _pid_alive(started_pid),
        logs=logs,
    )
    _say(f"Redis ready at {address} ({waited:.1f}s)")


def redis_down(cfg: AttuneConfig) -> None:
    """Stop the redis-server ``redis_up`` started (it writes its files on SIGTERM)."""
    paths = stack_paths(cfg)
    pid = _redis_pid(cfg)
    if pid is None:
        other = _live_record(paths.redis_pid, _is_redis)
        if other is not None:
            _say(
                f"the Redis attune started (pid {other.pid}) serves {other.address}, not "
                f"{_redis_address(cfg)}; leaving it running (stop it with its own config)"
            )
        elif paths.redis_external.exists():
            _say("Redis was not started by attune; leaving it running")
            paths.redis_external.unlink(missing_ok=True)
        else:
            _say("Redis is not running (no live pid in var/run/redis.pid)")
        return
    _say(f"stopping Redis (pid {pid})")
    _stop(pid, "Redis")
    paths.redis_pid.unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------
# The whole stack


def stack_up(cfg: AttuneConfig) -> list[ComponentStatus]:
    """Kafka, Redis and the topics, each idempotently; returns the final status."""
    start = time.monotonic()
    kafka_up(cfg)
    redis_up(cfg)
    create_topics(cfg)
    statuses = component_status(cfg)
    bad = [s for s in statuses if not s.healthy]
    if bad:
        raise StackError(
            "the stack started but is not healthy:\n"
            + "\n".join(f"  - {s.component} at {s.address}: {s.detail}" for s in bad)
        )
    _say(f"up in {time.monotonic() - start:.1f}s:")
    for s in statuses:
        if not s.component.startswith("topic:"):
            _say(f"  {s.component:<6} {s.address:<22} {s.detail}")
    _say(f"  topics {', '.join(t.name for t in cfg.kafka.topics.values())}")
    return statuses


def stack_down(cfg: AttuneConfig) -> None:
    """Stop what ``stack_up`` started; both components are tried even if one fails."""
    errors = []
    for stop in (kafka_down, redis_down):
        try:
            stop(cfg)
        except (StackError, OSError) as exc:
            errors.append(f"{stop.__name__}: {exc}")
    if errors:
        raise StackError("stopping the stack failed:\n" + "\n".join(errors))


def _started_by(pid: int | None) -> str:
    return f"started by attune (pid {pid})" if pid is not None else "not started by attune"


def _kafka_status(cfg: AttuneConfig) -> tuple[ComponentStatus, dict[str, ExistingTopic] | None]:
    address = cfg.kafka.bootstrap_servers
    own = (cfg.kafka.broker.host, cfg.kafka.broker.port)
    ours = any(_same_endpoint(own, a) for a in bootstrap_addresses(cfg))
    pid = _kafka_pid(cfg) if ours else None
    if not any(_port_open(h, p) for h, p in bootstrap_addresses(cfg)):
        why = "starting, port not open yet" if pid is not None else "not running"
        hint = f"; start it with `attune stack up` (log: {stack_paths(cfg).kafka_log})"
        return ComponentStatus("kafka", address, False, why + hint), None
    try:
        with kafka_admin(cfg, 3.0) as admin:
            cluster = admin.describe_cluster()
            existing = _existing_topics(admin, [t.name for t in cfg.kafka.topics.values()])
    except Exception as exc:
        detail = f"port open but metadata request failed ({type(exc).__name__}: {exc})"
        return ComponentStatus("kafka", address, False, detail), None
    brokers = cluster.get("brokers", [])
    live = [b for b in brokers if not b.get("is_fenced")]
    detail = (
        f"KRaft cluster {cluster.get('cluster_id')}, {len(live)}/{len(brokers)} broker(s) "
        f"unfenced, {_started_by(pid)}"
    )
    return ComponentStatus("kafka", address, bool(live), detail), existing


def _topic_statuses(
    cfg: AttuneConfig, existing: dict[str, ExistingTopic] | None
) -> list[ComponentStatus]:
    out = []
    address = cfg.kafka.bootstrap_servers
    plan = plan_topics(cfg.kafka.topics, existing or {})
    for role, topic in cfg.kafka.topics.items():
        component = f"topic:{topic.name}"
        if existing is None:
            out.append(ComponentStatus(component, address, False, "Kafka is not answering"))
            continue
        have = existing.get(topic.name)
        if have is None:
            detail = f"missing (kafka.topics.{role}); create it with `attune stack up`"
            out.append(ComponentStatus(component, address, False, detail))
            continue
        issues = list(plan.problems.get(topic.name, []))
        if topic.name in plan.add_partitions:
            now, wanted = plan.add_partitions[topic.name]
            issues.append(f"{now} partitions, {wanted} declared (`attune stack up` adds them)")
        if topic.name in plan.alter_configs:
            issues.append(
                "configs differ: "
                + ", ".join(
                    f"{k}={have.configs.get(k)} (declared {v})"
                    for k, v in plan.alter_configs[topic.name].items()
                )
            )
        if have.leaderless:
            issues.append(f"no leader for partitions {list(have.leaderless)}")
        summary = (
            f"{_partitions(have.partitions)}, replication {have.replication_factor}, "
            + ", ".join(f"{k}={have.configs.get(k)}" for k in MANAGED_TOPIC_CONFIGS)
        )
        detail = summary + ("; " + "; ".join(issues) if issues else "")
        out.append(ComponentStatus(component, address, not issues, detail))
    return out


def _redis_status(cfg: AttuneConfig) -> ComponentStatus:
    import redis

    address = f"{cfg.redis.host}:{cfg.redis.port}"
    pid = _redis_pid(cfg)
    client = _redis_client(cfg)
    try:
        client.ping()
        server = client.info("server")
        persistence = client.info("persistence")
    except redis.exceptions.RedisError as exc:
        hint = "start it with `attune stack up`" if cfg.redis.manage else "start that Redis"
        return ComponentStatus("redis", address, False, f"not answering ({exc}); {hint}")
    finally:
        client.close()
    aof = "append-only file on" if persistence.get("aof_enabled") else "append-only file off"
    detail = f"Redis {server.get('redis_version')}, {aof}, {_started_by(pid)}"
    return ComponentStatus("redis", address, True, detail)


def component_status(cfg: AttuneConfig) -> list[ComponentStatus]:
    """Kafka, Redis and every declared topic, each with its address and health."""
    kafka, existing = _kafka_status(cfg)
    return [kafka, _redis_status(cfg), *_topic_statuses(cfg, existing)]


# ----------------------------------------------------------------------------------------
# CLI handlers (wired in attune.cli)


def cmd_up(cfg: AttuneConfig, args: argparse.Namespace) -> int:
    try:
        stack_up(cfg)
    except StackError as exc:
        print(f"attune stack up: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_down(cfg: AttuneConfig, args: argparse.Namespace) -> int:
    try:
        stack_down(cfg)
    except StackError as exc:
        print(f"attune stack down: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_topics(cfg: AttuneConfig, args: argparse.Namespace) -> int:
    """Create the declared topics on whatever broker ``kafka.bootstrap_servers`` names (used by
    docker/compose.yaml, where Kafka is not started by attune)."""
    try:
        create_topics(cfg)
    except StackError as exc:
        print(f"attune stack topics: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_status(cfg: AttuneConfig, args: argparse.Namespace) -> int:
    try:
        statuses = component_status(cfg)
    except StackError as exc:
        print(f"attune stack status: {exc}", file=sys.stderr)
        return 1
    if getattr(args, "json", False):
        print(json.dumps([s.as_dict() for s in statuses], indent=2))
    else:
        width = max(len(s.component) for s in statuses)
        addr_width = max(len(s.address) for s in statuses)
        for s in statuses:
            health = "up" if s.healthy else "DOWN"
            print(f"{s.component:<{width}}  {s.address:<{addr_width}}  {health:<4}  {s.detail}")
    return 0 if all(s.healthy for s in statuses) else 1
