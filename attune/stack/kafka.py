"""The local Kafka broker: one combined broker + controller node (KRaft) run from the Apache
Kafka jars that ``make jars`` copied into ``var/jars/kafka``, with no Kafka distribution and no
ZooKeeper.

Its settings are written to ``var/kafka/server.properties`` from ``cfg.kafka.broker`` on every
start, its storage (``var/kafka/data``) is formatted on first start, and it logs to
``var/log/kafka.log``. A broker that already answers at ``kafka.bootstrap_servers`` is used as
it is and never stopped by attune.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from attune import supervisor
from attune.config import ENV_PREFIX, AttuneConfig
from attune.stack.common import (
    StackError,
    owned_pid,
    recorded_for,
    same_endpoint,
    say,
    stop_component,
    wait_until,
)
from attune.stack.paths import StackPaths, stack_paths

if TYPE_CHECKING:
    from kafka.admin import KafkaAdminClient

KAFKA_START_TIMEOUT_S = 90.0
NODE_ID = 1  # the one node of the local KRaft cluster


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


def any_bootstrap_open(cfg: AttuneConfig) -> bool:
    """Whether any bootstrap server accepts TCP connections (cheap, before a Kafka client)."""
    return any(supervisor.port_open(h, p) for h, p in bootstrap_addresses(cfg))


def kafka_cluster_id() -> str:
    """A new KRaft cluster id: 16 random bytes, URL-safe base64 without padding (22 chars).

    Kafka's own generator never returns an id starting with ``-`` (it would read as a flag).
    """
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cid.startswith("-"):
            return cid


def cluster_replication(nodes: int) -> tuple[int, int]:
    """``(replication factor, min.insync.replicas)`` of a cluster of ``nodes``: 3 and 2 from
    three nodes on (a write survives one broker down and still needs two copies), else every
    node and one fewer (at least 1)."""
    rf = min(3, nodes)
    return rf, max(1, rf - 1)


def kafka_server_properties(cfg: AttuneConfig, data_dir: Path, node: int = 0) -> str:
    """``server.properties`` for combined broker + controller node ``node``, from
    ``cfg.kafka``: the only node (a dynamic quorum formatted ``--standalone``), or one of
    ``kafka.broker.nodes`` with the static ``controller.quorum.voters`` of all of them."""
    b = cfg.kafka.broker
    port, cport = b.node_ports(node)
    broker, controller = f"{b.host}:{port}", f"{b.host}:{cport}"
    rf, isr = cluster_replication(b.nodes)
    if b.nodes == 1:
        # with `format --standalone` the quorum is dynamic (KIP-853): bootstrap servers, not
        # the static controller.quorum.voters
        quorum = {"controller.quorum.bootstrap.servers": controller}
    else:
        voters = ",".join(f"{NODE_ID + i}@{b.host}:{b.node_ports(i)[1]}" for i in range(b.nodes))
        quorum = {
            "controller.quorum.voters": voters,
            # a dead broker is fenced (its partitions get new leaders) after 3 s, not 9 s: well
            # inside a producer's delivery timeout (kafka.producer.delivery_timeout_ms, 15 s),
            # so writes that were in flight to it are retried to the new leader, not failed
            "broker.session.timeout.ms": "3000",
            "broker.heartbeat.interval.ms": "500",
        }
    props = {
        "process.roles": "broker,controller",
        "node.id": str(NODE_ID + node),
        **quorum,
        "listeners": f"PLAINTEXT://{broker},CONTROLLER://{controller}",
        "advertised.listeners": f"PLAINTEXT://{broker},CONTROLLER://{controller}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(data_dir),
        "num.partitions": str(b.num_partitions_default),
        # internal topics replicated over up to 3 nodes; clients never create topics
        "auto.create.topics.enable": "false",
        "default.replication.factor": str(rf),
        "min.insync.replicas": str(isr),
        "offsets.topic.replication.factor": str(rf),
        "offsets.topic.num.partitions": "10",
        "transaction.state.log.replication.factor": str(rf),
        "transaction.state.log.min.isr": str(isr),
        "transaction.state.log.num.partitions": "10",
        "share.coordinator.state.topic.replication.factor": str(rf),
        "share.coordinator.state.topic.min.isr": str(isr),
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
    cfg: AttuneConfig,
    paths: StackPaths,
    main_class: str,
    *args: str,
    jvm: Iterable[str] = (),
    log4j: Path | None = None,
) -> list[str]:
    return [
        _java(),
        *jvm,
        f"-Xmx{cfg.kafka.broker.heap}",
        "-XX:+UseG1GC",
        "-XX:MaxGCPauseMillis=20",
        "-XX:+ExitOnOutOfMemoryError",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={log4j or paths.kafka_log4j}",
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


def class_sharing_flags(paths: StackPaths) -> list[str]:
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


def kafka_pid(cfg: AttuneConfig) -> int | None:
    paths = stack_paths(cfg)
    return owned_pid(paths.kafka_pid, _is_our_kafka(paths), _kafka_address(cfg))


def _format_kafka_storage(
    cfg: AttuneConfig,
    paths: StackPaths,
    properties: Path | None = None,
    data: Path | None = None,
    cluster_id: str | None = None,
) -> None:
    """Format one node's storage: the only node ``--standalone`` (a dynamic quorum of one), a
    node of a cluster with the cluster's id and its static voters."""
    properties = properties or paths.kafka_properties
    data = data or paths.kafka_data
    standalone = cluster_id is None
    cluster_id = cluster_id or kafka_cluster_id()
    say(f"formatting Kafka storage in {data} (cluster id {cluster_id})")
    cmd = _java_cmd(
        cfg,
        paths,
        "kafka.tools.StorageTool",
        "format",
        "-t",
        cluster_id,
        "-c",
        str(properties),
        *(["--standalone"] if standalone else []),
    )
    result = subprocess.run(
        cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120, check=False
    )
    if result.returncode != 0:
        raise StackError(
            f"formatting Kafka storage failed (exit {result.returncode}):\n"
            f"{result.stdout}{result.stderr}\n"
            f"If {data} holds a broken earlier attempt, remove it and retry."
        )


@dataclass(frozen=True)
class KafkaNode:
    """One node of a multi-node local cluster: its ports and files (node 0 keeps the single
    broker's files, so ``attune stack down`` finds every node whatever the config says)."""

    index: int
    port: int
    controller_port: int
    properties: Path
    log4j: Path
    log: Path
    out: Path
    pid: Path
    data: Path

    def is_ours(self, cmdline: str) -> bool:
        return "kafka.Kafka" in cmdline and str(self.properties) in cmdline


def kafka_node(cfg: AttuneConfig, index: int) -> KafkaNode:
    paths = stack_paths(cfg)
    port, cport = cfg.kafka.broker.node_ports(index)
    if index == 0:
        return KafkaNode(
            0,
            port,
            cport,
            paths.kafka_properties,
            paths.kafka_log4j,
            paths.kafka_log,
            paths.kafka_out,
            paths.kafka_pid,
            paths.kafka_data,
        )
    home = paths.kafka_dir / f"node-{index}"
    return KafkaNode(
        index,
        port,
        cport,
        home / "server.properties",
        home / "log4j2.xml",
        cfg.log_dir / f"kafka-{index}.log",
        cfg.log_dir / f"kafka-{index}.out",
        cfg.run_dir / f"kafka-{index}.pid",
        home / "data",
    )


def with_brokers(cfg: AttuneConfig, nodes: int) -> AttuneConfig:
    """``cfg`` for a local cluster of ``nodes``: the clients bootstrap from every node, and
    every topic gets :func:`cluster_replication`'s replication factor and min.insync.replicas
    (``attune stack up --brokers N``; :func:`cluster_settings` says how to make it lasting)."""
    b = cfg.kafka.broker
    rf, isr = cluster_replication(nodes)
    bootstrap = ",".join(f"{b.host}:{b.port + i * b.port_step}" for i in range(nodes))
    topics = {
        role: t.model_copy(update={"replication_factor": rf, "min_insync_replicas": isr})
        for role, t in cfg.kafka.topics.items()
    }
    kafka = cfg.kafka.model_copy(
        update={
            "bootstrap_servers": bootstrap,
            "broker": b.model_copy(update={"nodes": nodes}),
            "topics": topics,
        }
    )
    return cfg.model_copy(update={"kafka": kafka})


def cluster_settings(cfg: AttuneConfig) -> dict[str, str]:
    """The ``ATTUNE__`` variables that give every attune process ``cfg``'s cluster settings."""
    k = cfg.kafka
    out = {
        f"{ENV_PREFIX}KAFKA__BOOTSTRAP_SERVERS": k.bootstrap_servers,
        f"{ENV_PREFIX}KAFKA__BROKER__NODES": str(k.broker.nodes),
    }
    for role, t in k.topics.items():
        out[f"{ENV_PREFIX}KAFKA__TOPICS__{role.upper()}__REPLICATION_FACTOR"] = str(
            t.replication_factor
        )
        if t.min_insync_replicas is not None:
            out[f"{ENV_PREFIX}KAFKA__TOPICS__{role.upper()}__MIN_INSYNC_REPLICAS"] = str(
                t.min_insync_replicas
            )
    return out


def _nodes_file(paths: StackPaths) -> Path:
    return paths.kafka_dir / "nodes"


def _cluster_up(cfg: AttuneConfig) -> None:
    """Start ``kafka.broker.nodes`` combined nodes (formatted together on first start) and
    wait until every one is unfenced and every declared topic has leaders."""
    paths = stack_paths(cfg)
    b = cfg.kafka.broker
    nodes = [kafka_node(cfg, i) for i in range(b.nodes)]
    recorded = _nodes_file(paths)
    formatted = (nodes[0].data / "meta.properties").exists()
    if formatted and (not recorded.exists() or recorded.read_text().strip() != str(b.nodes)):
        was = recorded.read_text().strip() if recorded.exists() else "1"
        raise StackError(
            f"{paths.kafka_dir} holds a Kafka cluster of {was} node(s), not {b.nodes}; a KRaft "
            f"quorum is not resized by restarting it. Stop it (`attune stack down`), remove "
            f"{paths.kafka_dir} (its events are lost) and start again, or start it with "
            f"--brokers {was}"
        )
    _kafka_classpath(paths)
    cfg.log_dir.mkdir(parents=True, exist_ok=True)
    for node in nodes:
        node.data.mkdir(parents=True, exist_ok=True)
        node.properties.write_text(kafka_server_properties(cfg, node.data, node.index))
        node.log4j.write_text(kafka_log4j2_xml(node.log))
    if not formatted:
        cluster_id = kafka_cluster_id()
        for node in nodes:
            _format_kafka_storage(cfg, paths, node.properties, node.data, cluster_id)
        recorded.write_text(f"{b.nodes}\n")
    started: list[int] = []
    for node in nodes:
        address = f"{b.host}:{node.port}"
        pid = recorded_for(node.pid, node.is_ours, address, f"Kafka node {node.index}")
        if pid is not None:
            say(f"Kafka node {node.index} already running (pid {pid})")
            started.append(pid)
            continue
        for port, what in ((node.port, "port"), (node.controller_port, "controller port")):
            if supervisor.port_open(b.host, port):
                raise StackError(
                    f"{b.host}:{port} ({what} of Kafka node {node.index}) is in use; stop what "
                    "holds it or move the nodes with kafka.broker.port / port_step"
                )
        cmd = _java_cmd(cfg, paths, "kafka.Kafka", str(node.properties), log4j=node.log4j)
        child = supervisor.spawn(
            cmd,
            name=f"Kafka node {node.index}",
            log=node.out,
            detached=True,
            cwd=paths.kafka_dir,
            pid_file=node.pid,
            address=address,
        )
        started.append(child.pid)
        say(f"Kafka node {node.index} starting (pid {child.pid}, {address}, log {node.log})")
    waited = wait_until(
        f"a Kafka cluster of {b.nodes} nodes",
        lambda: _kafka_not_ready(cfg, need=b.nodes),
        KAFKA_START_TIMEOUT_S,
        started[0],
        [n.log for n in nodes],
    )
    say(f"Kafka cluster of {b.nodes} nodes ready at {cfg.kafka.bootstrap_servers} ({waited:.1f}s)")


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
    if not any_bootstrap_open(cfg):
        return None
    try:
        with kafka_admin(cfg, timeout_s) as admin:
            return dict(admin.describe_cluster())
    except Exception:
        return None


def _kafka_not_ready(cfg: AttuneConfig, need: int = 1) -> str | None:
    """Why the broker (``need`` brokers) is not ready to serve the declared topics yet
    (None = ready)."""
    if not any_bootstrap_open(cfg):
        return "port not open yet"
    try:
        with kafka_admin(cfg, 3.0) as admin:
            cluster = admin.describe_cluster()
            brokers = [b for b in cluster.get("brokers", []) if not b.get("is_fenced")]
            if len(brokers) < need:
                return f"{len(brokers)} of {need} brokers unfenced in the metadata yet"
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
    if cfg.kafka.broker.nodes > 1:
        _cluster_up(cfg)
        return
    paths = stack_paths(cfg)
    b = cfg.kafka.broker
    address = f"{b.host}:{b.port}"
    logs = (paths.kafka_log, paths.kafka_out)

    pid = recorded_for(paths.kafka_pid, _is_our_kafka(paths), address, "Kafka broker")
    if pid is not None:
        say(f"Kafka already running (pid {pid}), checking it")
        waited = wait_until(
            f"Kafka at {address}", lambda: _kafka_not_ready(cfg), KAFKA_START_TIMEOUT_S, pid, logs
        )
        say(f"Kafka ready at {address} (pid {pid}, {waited:.1f}s)")
        return

    cluster = _kafka_cluster(cfg)
    if cluster is not None:
        paths.kafka_external.parent.mkdir(parents=True, exist_ok=True)
        paths.kafka_external.write_text(f"{cfg.kafka.bootstrap_servers}\n")
        say(
            f"a Kafka broker already answers at {cfg.kafka.bootstrap_servers} "
            f"(cluster {cluster.get('cluster_id')}); using it. It was not started by attune, "
            "so `attune stack down` leaves it running"
        )
        return
    paths.kafka_external.unlink(missing_ok=True)

    own = (b.host, b.port)
    if not any(same_endpoint(own, a) for a in bootstrap_addresses(cfg)):
        raise StackError(
            f"no Kafka answers at kafka.bootstrap_servers={cfg.kafka.bootstrap_servers}, and "
            f"the local broker attune runs would listen at {address}, which clients would "
            "not use. Make them agree: set kafka.bootstrap_servers to "
            f"{address} or kafka.broker.host/port to the bootstrap address"
        )
    for port, key in ((b.port, "port"), (b.controller_port, "controller_port")):
        if supervisor.port_open(b.host, port):
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

    jvm = class_sharing_flags(paths)
    cmd = _java_cmd(cfg, paths, "kafka.Kafka", str(paths.kafka_properties), jvm=jvm)
    child = supervisor.spawn(
        cmd,
        name="Kafka",
        log=paths.kafka_out,
        detached=True,
        cwd=paths.kafka_dir,
        pid_file=paths.kafka_pid,
        address=address,
    )
    say(f"Kafka starting (pid {child.pid}, heap {b.heap}, log {paths.kafka_log})")
    try:
        waited = wait_until(
            f"Kafka at {address}",
            lambda: _kafka_not_ready(cfg),
            KAFKA_START_TIMEOUT_S,
            child.pid,
            logs,
        )
    except StackError:
        if not child.alive():  # an archive of a failed start would be incomplete
            kafka_class_archive(paths).unlink(missing_ok=True)
        raise
    say(f"Kafka ready at {address} (controller {b.host}:{b.controller_port}, {waited:.1f}s)")


def kafka_down(cfg: AttuneConfig) -> None:
    """Stop the broker ``kafka_up`` started (SIGTERM, then SIGKILL); leave any other alone."""
    paths = stack_paths(cfg)
    how = stop_component(
        "Kafka", paths.kafka_pid, _is_our_kafka(paths), _kafka_address(cfg), paths.kafka_external
    )
    if how is supervisor.Stopped.KILLED:
        # killed, perhaps while writing its class archive: drop it, the next clean stop redoes it
        kafka_class_archive(paths).unlink(missing_ok=True)
    if how is not None:
        paths.kafka_pid.unlink(missing_ok=True)
    # the other nodes of a cluster (`stack up --brokers N`), whatever the config says now
    for index in range(1, 10):
        node = kafka_node(cfg, index)
        if not node.pid.exists():
            continue
        record = supervisor.read_record(node.pid)
        address = record.address if record is not None else ""
        stop_component(f"Kafka node {index}", node.pid, node.is_ours, address, paths.kafka_external)
        node.pid.unlink(missing_ok=True)
